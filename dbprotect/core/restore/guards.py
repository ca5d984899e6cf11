"""The direction policy and the guards every destructive restore passes, in one place.

Which data may flow where (ARCHITECTURE.md, "the flows that must never exist")::

    backup of      restored into    rule
    -----------    -------------    ------------------------------------------------------------
    production     scratch          always (verification, drills); dbprotect creates and drops it
    production     production       with a typed confirmation and a safety backup of the target
    development    development      with a typed confirmation and a safety backup of the target
    development    production       NEVER, no override
    production     development      never as a raw restore: only sanitized copies go to development
    production     backup           the warm copy (:mod:`dbprotect.core.restore.warm`): a standby on the backup server
    development    backup           never: a backup database is a standby of production, nothing else

``backup`` is a target-only environment: the database it marks holds production data but is not
production (a mistyped DSN can never make a warm copy refresh overwrite production or development,
whose markers differ), and no backup is ever taken *from* it, so it never appears as the
environment of a backup.

The guards are plain functions that raise :class:`RefusedError` with a one-line reason and a
hint; the CLI and Dagster call the restore in :mod:`dbprotect.core.restore.oncall`, which calls these
before it changes anything, so there is no path around them.
"""

from __future__ import annotations

from dbprotect.core.errors import Refusals, RefusedError

TARGET_ENVIRONMENTS = ("production", "development", "backup")
#: Environments a backup can come from (``backup`` databases are restored into, never backed up).
SOURCE_ENVIRONMENTS = ("production", "development")


def check_direction(backup_environment: str, target_environment: str) -> None:
    """Refuse data flows the design forbids (see the table in the module docstring)."""
    if target_environment not in TARGET_ENVIRONMENTS:
        raise RefusedError(f"unknown target environment {target_environment!r}",
                           hint=f"name one of: {', '.join(TARGET_ENVIRONMENTS)}",
                           refusal=Refusals.UNKNOWN_ENVIRONMENT)
    if backup_environment == "development" and target_environment == "production":
        raise RefusedError(
            "refused: development data is never restored into production (no override exists)",
            hint="restore a production backup instead: 'dbprotect list DATABASE' shows them",
            refusal=Refusals.DEVELOPMENT_INTO_PRODUCTION,
        )
    if backup_environment == "production" and target_environment == "development":
        raise RefusedError(
            "refused: a raw production backup is never restored into development",
            hint="development receives sanitized copies only",
            refusal=Refusals.RAW_INTO_DEVELOPMENT,
        )
    if backup_environment not in SOURCE_ENVIRONMENTS:
        raise RefusedError(f"backup is from an unknown environment {backup_environment!r}; not restored",
                           refusal=Refusals.UNKNOWN_BACKUP_ENVIRONMENT)
    if target_environment == "backup" and backup_environment != "production":
        raise RefusedError(
            f"refused: a backup database is a standby of production; a {backup_environment} backup is never "
            "restored into it", hint="restore a production backup instead",
            refusal=Refusals.NOT_PRODUCTION_INTO_STANDBY,
        )


#: What a refused confirmation asks for: by description, never the value itself, so that the
#: confirmation stays something a person types after reading which database it is (a hint holding
#: the exact text to paste would make the confirmation a copy-and-paste formality).
CONFIRMATION_HINT = "repeat with --confirm followed by that database's name, typed by you"


def check_confirmation(target_database: str, confirmation: str | None, *, action: str = "overwriting") -> None:
    """Changing a database in place requires typing its exact name, as on-call engineers expect.

    One rule and one wording for every command that asks (restore, guard, push): ``action`` says
    what would be done to ``target_database`` ("overwriting", "running 'psql -f x.sql' against").
    """
    if confirmation != target_database:
        typed = "nothing" if not confirmation else repr(confirmation)
        raise RefusedError(
            f"refused: {action} database {target_database!r} needs its name as confirmation "
            f"(you typed {typed}); nothing was changed",
            hint=CONFIRMATION_HINT,
            refusal=Refusals.CONFIRMATION,
        )


def check_target_server_version(source_major: int, target_major: int) -> None:
    """A dump restores into the same or a newer major version, never an older one."""
    if target_major < source_major:
        raise RefusedError(
            f"refused: the target server runs PostgreSQL {target_major}, older than the backup's "
            f"source (PostgreSQL {source_major})",
            hint=f"restore onto a PostgreSQL {source_major} (or newer) server",
            refusal=Refusals.OLDER_TARGET_SERVER,
        )
