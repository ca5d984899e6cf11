"""Every failure dbprotect reports, with a stable exit code, a one-line message and a hint.

The hierarchy is deliberately shallow (as in psycopg's ``errors``): a few broad bases whose
instances carry structured detail, not dozens of leaf classes::

    DbprotectError                 anything we diagnosed ourselves
    ├── ConfigError                dbprotect.yaml is missing, unreadable or invalid
    ├── CredentialIsolationError   a deployment holds another deployment's secrets
    ├── DatabaseError              cannot connect, authenticate or query PostgreSQL
    ├── ToolError                  pg_dump / pg_restore missing, too old, or failed
    ├── StorageError               the backup store failed to save, list or load
    ├── IntegrityError             a backup is corrupt, truncated or does not match its manifest
    ├── CryptoError                a key is missing, malformed or not the right one
    ├── RefusedError               a guard refused an action; ``refusal`` (one of :class:`Refusals`) names the rule
    └── NotFoundError              no such database, backup or object

Each class carries its ``code`` and ``exit_code``. :data:`EXIT_STATUSES` is the one table of every
exit status the CLI can return (these classes' plus success, RPO violated, RTO exceeded, usage,
internal error and interrupted); the CLI's help text and the README's table are rendered from it
(``python -m dbprotect.core.errors`` prints the README's), so the three cannot disagree.

The CLI prints ``error[CODE]: message`` and ``hint: ...`` and exits with ``exit_code``; Dagster
ops raise them so the run fails with the same sentence. Messages never contain secrets: DSNs are
masked by :func:`dbprotect.core.pg.dsn.mask_dsn` before they reach an error, and every registered
secret is removed by value (:mod:`dbprotect.core.redact`) when the error is made.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

from dbprotect.core.redact import redact


class DbprotectError(Exception):
    """Base of every error dbprotect raises on purpose."""

    exit_code: int = 1
    code: str = "DBP001"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.hint = redact(hint) if hint else hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message as the user sees it: one line, newlines folded."""
        return " ".join(self.message.split())


class ConfigError(DbprotectError):
    exit_code = 2
    code = "DBP002"


class CredentialIsolationError(DbprotectError):
    exit_code = 3
    code = "DBP003"


class DatabaseError(DbprotectError):
    exit_code = 4
    code = "DBP004"


class ToolError(DbprotectError):
    exit_code = 5
    code = "DBP005"


class StorageError(DbprotectError):
    exit_code = 6
    code = "DBP006"


class IntegrityError(DbprotectError):
    exit_code = 7
    code = "DBP007"


class CryptoError(DbprotectError):
    exit_code = 8
    code = "DBP008"


@dataclass(frozen=True)
class Refusal:
    """One kind of refusal: its own stable code (``DBP9nn``, exit status 9) and what it means.

    Every guard names the rule it applies, so a script (or an alert) can tell "the typed
    confirmation was wrong" from "development data into production" without parsing messages.
    """

    code: str
    meaning: str


class Refusals:
    """Every refusal dbprotect has, one per rule; the README's refusal table is rendered from this."""

    UNKNOWN_ENVIRONMENT = Refusal("DBP901", "an environment name dbprotect does not know")
    DEVELOPMENT_INTO_PRODUCTION = Refusal("DBP902", "development data is never restored into production")
    RAW_INTO_DEVELOPMENT = Refusal("DBP903", "a raw production backup is never restored into development")
    UNKNOWN_BACKUP_ENVIRONMENT = Refusal("DBP904", "the backup comes from an environment dbprotect does not know")
    NOT_PRODUCTION_INTO_STANDBY = Refusal("DBP905", "a standby (`backup`) database receives production backups only")
    CONFIRMATION = Refusal("DBP906", "overwriting a database needs its exact name typed as confirmation")
    OLDER_TARGET_SERVER = Refusal("DBP907", "a dump never restores into an older PostgreSQL major version")
    UNMARKED_DATABASE = Refusal("DBP908", "the target database carries no environment marker")
    MARKER_MISMATCH = Refusal("DBP909", "the target database's environment marker differs from the one named")
    SCRATCH_VERSION = Refusal("DBP910", "the scratch server runs another PostgreSQL major version than the backup's")
    DSN_WITHOUT_DATABASE = Refusal("DBP911", "a DSN names no database; dbprotect does not guess one")
    TARGET_EXISTS = Refusal("DBP912", "a restore to a new database never overwrites an existing one")
    SAFETY_BACKUP_FAILED = Refusal("DBP913", "the safety backup before an overwrite failed or did not verify")
    TARGET_NAME_MISSING = Refusal("DBP914", "a restore to a new database needs the new database's name")
    NOT_A_WARM_COPY = Refusal("DBP915", "the warm copy target is not a warm copy dbprotect owns")
    STAGING_NAME_TAKEN = Refusal("DBP916", "the staging name a refresh needs is taken by a database that is not ours")
    RETENTION_REFUSED = Refusal("DBP917", "the retention plan would break a rule (e.g. delete every verified backup)")
    COPY_TO_PRIMARY = Refusal("DBP918", "backups are written to the primary store, never copied into it")
    SANITIZED_COPY_FAILED_CHECKS = Refusal("DBP919", "a sanitized copy that failed a blocking check is never promoted")
    PROMOTION_UNCONFIRMED = Refusal("DBP920", "promoting a sanitized copy replaces development and needs --confirm")
    SYNC_SAME_ENVIRONMENT = Refusal("DBP921", "schema sync needs two different environments")
    PROTECTING_BACKUP_FAILED = Refusal("DBP922", "the verified backup before a destructive change failed")
    NO_COMMAND = Refusal("DBP923", "`guard` was given no command to run")
    LINT_FINDINGS = Refusal("DBP924", "migration lint found problems that are not waived")
    SCHEMA_DRIFT = Refusal("DBP925", "development's schema differs from production's beyond the allowed changes")
    DATABASE_LOCKED = Refusal("DBP930", "another dbprotect writer holds the database's lock in the store")
    DEVELOPMENT_KEY_NOT_HELD = Refusal("DBP934", "a backup encrypted to the development key (a promotion's safety "
                                                 "backup) is read only where the development identity is held")
    PLAINTEXT_PRODUCTION_DSN = Refusal("DBP940", "a production deployment reaches production over TLS "
                                                 "(sslmode require or stronger) unless `allow_plaintext: true`")
    KEY_FILE_EXISTS = Refusal("DBP941", "`keygen` never overwrites an existing file (a lost key loses its backups)")
    SCHEMA_UNPLANNABLE = Refusal("DBP950", "the schema plan cannot express every difference between the schemas")
    SCHEMA_PLAN_UNPROVEN = Refusal("DBP951", "the plan, applied to a scratch copy of the target's schema, "
                                   "did not make it equal the source's")
    PLAN_OUTSIDE_PRODUCTION = Refusal("DBP952", "`schema push --plan` runs only in a deployment that holds "
                                      "production (a development deployment only writes plans)")
    PLAN_OTHER_SNAPSHOT = Refusal("DBP953", "a plan file was made against a production schema other than "
                                  "production's current one (its snapshot hash differs)")
    WAL_LEVEL_TOO_LOW = Refusal("DBP960", "continuous protection needs the server's wal_level at replica or logical")
    NO_REPLICATION_ROLE = Refusal("DBP961", "continuous protection connects with a role that may replicate "
                                            "(REPLICATION or superuser)")
    WAL_SUMMARIES_OFF = Refusal("DBP962", "incremental base backups need the server's summarize_wal = on")
    UNBOUNDED_SLOT = Refusal("DBP963", "a replication slot needs max_slot_wal_keep_size set: a dead receiver "
                                       "would otherwise fill the server's disk")
    PITR_HEARTBEATS_TOO_SPARSE = Refusal("DBP967", "a point-in-time drill needs two close heartbeats inside the "
                                         "retained range to prove where a restore landed")
    CONTINUOUS_RECORD_UNREADABLE = Refusal("DBP970", "continuous retention deletes nothing while a base backup or "
                                                     "WAL record it must weigh cannot be read")
    IDENTITY_FILE_TOO_OPEN = Refusal("DBP989", "an age identity is never read from a key file its group or "
                                                "others may access (as ssh refuses such a private key)")

    @classmethod
    def all(cls) -> tuple[Refusal, ...]:
        """Every refusal, in code order."""
        return tuple(sorted((value for value in vars(cls).values() if isinstance(value, Refusal)),
                            key=lambda refusal: refusal.code))


class RefusedError(DbprotectError):
    """A guard refused and nothing was changed; ``refusal`` names the rule, and its code is this error's code."""

    exit_code = 9
    code = "DBP9nn"  # the family; each instance carries its rule's own code

    def __init__(self, message: str, *, refusal: Refusal, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.refusal = refusal
        self.code = refusal.code


class NotFoundError(DbprotectError):
    exit_code = 10
    code = "DBP010"


class SanitizeError(DbprotectError):
    """A sanitized copy could not be built: a transformer or the load failed on a named column."""

    exit_code = 13
    code = "DBP013"


#: Success.
EXIT_OK = 0
#: ``status`` found a database whose newest verified backup is older than its RPO (or none).
EXIT_RPO_VIOLATED = 11
#: ``drill``: the backup restored and verified, but slower than the database's RTO target.
EXIT_RTO_EXCEEDED = 12
#: Wrong command line (unknown option, missing argument): sysexits' EX_USAGE.
EXIT_USAGE = 64
#: A bug: an exception nobody diagnosed (sysexits' EX_SOFTWARE).
EXIT_INTERNAL = 70
#: Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ExitStatus:
    """One row of the exit-code table: what a script sees (``exit_status``) and what it means.

    ``code`` names the status; for a failure it is the ``CODE`` of ``error[CODE]`` and ``error.code``
    under ``--json`` (``DBP00n`` for a :class:`DbprotectError`). ``meaning`` may hold Markdown code
    spans (backticks), dropped in the plain rendering.
    """

    code: str
    exit_status: int
    meaning: str


def _status_of(error: type[DbprotectError], meaning: str) -> ExitStatus:
    """The row of an error class: its code and exit status come from the class, never retyped."""
    return ExitStatus(error.code, error.exit_code, meaning)


#: Every exit status of the ``dbprotect`` command, in exit-status order.
EXIT_STATUSES: tuple[ExitStatus, ...] = (
    ExitStatus("OK", EXIT_OK, "success"),
    _status_of(DbprotectError, "other diagnosed failure"),
    _status_of(ConfigError, "configuration missing or invalid"),
    _status_of(CredentialIsolationError, "credential isolation: this deployment holds another deployment's secrets"),
    _status_of(DatabaseError, "cannot connect to / query PostgreSQL"),
    _status_of(ToolError, "pg_dump / pg_restore missing, too old or failed"),
    _status_of(StorageError, "the backup store failed"),
    _status_of(IntegrityError, "a backup or copy failed verification (corrupt, truncated, does not match its "
               "manifest), or `audit --verify` found the chain broken"),
    _status_of(CryptoError, "key problem (missing, malformed, not a recipient of this backup)"),
    _status_of(RefusedError, "refused by a guard, nothing changed; each rule has its own code (the refusal "
               "table)"),
    _status_of(NotFoundError, "no such database or backup"),
    ExitStatus("RPO_VIOLATED", EXIT_RPO_VIOLATED, "`status`: a database violates its RPO (so a cron line or "
               "monitor can alert on it)"),
    ExitStatus("RTO_EXCEEDED", EXIT_RTO_EXCEEDED, "`drill`: the backup restored and verified, but slower than the "
               "database's RTO target"),
    _status_of(SanitizeError, "`sanitize build`: a transformer or the load failed on the named table and column; "
               "nothing stored, the previous sanitized copy stays the newest"),
    ExitStatus("USAGE", EXIT_USAGE, "wrong command line"),
    ExitStatus("INTERNAL", EXIT_INTERNAL, "internal error (set `DBPROTECT_DEBUG=1` for the traceback)"),
    ExitStatus("INTERRUPTED", EXIT_INTERRUPTED, "interrupted"),
)


def exit_status_markdown() -> str:
    """The table as the README shows it (Markdown, one row per exit status)."""
    rows = [f"| {row.exit_status} | {row.code} | {row.meaning} |" for row in EXIT_STATUSES]
    return "\n".join(["| exit | code | meaning |", "|---|---|---|", *rows])


def refusal_markdown() -> str:
    """The refusal codes as the README shows them (Markdown, one row per rule; each exits with status 9)."""
    rows = [f"| {refusal.code} | {refusal.meaning} |" for refusal in Refusals.all()]
    return "\n".join(["| refusal | refused because |", "|---|---|", *rows])


def exit_status_plain(width: int = 78) -> str:
    """The table as ``dbprotect --help`` shows it: aligned plain text, meanings wrapped to ``width``."""
    lines = []
    for row in EXIT_STATUSES:
        prefix = f"{row.exit_status:>4}  "
        lines.extend(textwrap.wrap(row.meaning.replace("`", ""), width=width, initial_indent=prefix,
                                   subsequent_indent=" " * len(prefix)))
    return "\n".join(lines)


__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RPO_VIOLATED",
    "EXIT_RTO_EXCEEDED",
    "EXIT_STATUSES",
    "EXIT_USAGE",
    "ConfigError",
    "CredentialIsolationError",
    "CryptoError",
    "DatabaseError",
    "DbprotectError",
    "ExitStatus",
    "IntegrityError",
    "NotFoundError",
    "Refusal",
    "Refusals",
    "RefusedError",
    "SanitizeError",
    "StorageError",
    "ToolError",
    "exit_status_markdown",
    "exit_status_plain",
    "refusal_markdown",
]


if __name__ == "__main__":  # python -m dbprotect.core.errors [--plain]: the table, for pasting
    if "--refusals" in sys.argv[1:]:
        print(refusal_markdown())
    else:
        print(exit_status_plain() if "--plain" in sys.argv[1:] else exit_status_markdown())
