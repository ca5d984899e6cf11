"""A fresh, verified backup before a destructive change: shared by schema push and ``dbprotect guard``.

Seed 004 asks for "a backup before every downgrade, DROP, TRUNCATE or bulk DELETE"; the design asks
that it has *passed integrity* before the change runs, because an unreadable backup protects
nothing. Production backups go to the database's usual place in its primary store (they are real
recovery points); a development database's pre-change backups go under ``<database>.development``
(a name no configured database can have, since names allow no dot), so they never count for the
production RPO and are never the default backup of a production restore.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dbprotect.core.audit import AuditLog
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.model import Config, resolve_dsn
from dbprotect.core.errors import DbprotectError, RefusedError
from dbprotect.core.ops.operations import (
    backup_database,
    primary_store,
    raw_identity,
    verify_database_backup,
)
from dbprotect.core.store.catalog import list_backups
from dbprotect.core.verify.integrity import verify_backup

#: How fresh a production backup must be for a schema push (the issue: "taken in the last hour").
FRESH_BACKUP = timedelta(hours=1)


@dataclass(frozen=True)
class ProtectingBackup:
    """The verified backup a destructive change stands on: where it is and whether it was taken now."""

    database: str
    store_name: str
    backup_id: str
    started_at: datetime
    taken_now: bool

    def describe(self) -> str:
        how = "taken now" if self.taken_now else "existing"
        return f"{how} backup {self.backup_id} of {self.store_name}, integrity verified"


def store_name(database: str, environment: str) -> str:
    """The folder of the store a database environment's backups go to (see module docstring)."""
    return database if environment == "production" else f"{database}.{environment}"


def fresh_verified_backup(config: Config, database: str, *, max_age: timedelta, now: datetime | None = None) -> \
        ProtectingBackup | None:
    """The newest production backup that passed integrity and started within ``max_age``, if any."""
    now = now or datetime.now(UTC)
    for entry in list_backups(primary_store(config, database), database):
        if entry.integrity_ok and now - entry.started_at <= max_age:
            return ProtectingBackup(database, database, entry.backup_id, entry.started_at, taken_now=False)
    return None


def take_verified_backup(config: Config, database: str, environment: str, *, why: str, actor: str,
                         environ: Mapping[str, str] | None = None) -> ProtectingBackup:
    """Back up the database behind ``environment`` now and check its integrity (rungs 1 and 2).

    Any failure, of the backup or of its verification, becomes one :class:`RefusedError` saying
    that ``why`` (the change it was to protect) does not happen.
    """
    try:
        if environment == "production":
            result = backup_database(config, database, environ=environ, actor=actor)
            report = verify_database_backup(config, database, result.manifest.backup_id, by=actor,
                                            environ=environ, actor=actor)
        else:
            storage = primary_store(config, database)
            name = store_name(database, environment)
            audit = AuditLog(storage, actor=actor)
            result = run_backup(database=name, dsn=resolve_dsn(config, database, environment, environ),
                                storage=storage, recipients=config.keys.raw.recipients, environment=environment,
                                pg_bin_dir=config.pg_bin_dir)
            report = verify_backup(storage, name, result.manifest.backup_id, raw_identity(config, environ), by=actor)
            audit.record("backup", database=name, outcome="ok" if report.ok else "failed",
                         target=result.manifest.backup_id, detail=f"before {why}; {report.summary()}")
    except DbprotectError as exc:
        raise RefusedError(f"refused: the backup before {why} failed ({exc.one_line()}); nothing was changed",
                           hint=exc.hint or "fix the backup first: 'dbprotect backup' shows the same error") from None
    if not report.ok:
        raise RefusedError(f"refused: the backup before {why} failed integrity ({report.summary()}); "
                           "nothing was changed", hint="check the store, then retry")
    return ProtectingBackup(database, store_name(database, environment), result.manifest.backup_id,
                            result.manifest.started_at, taken_now=True)
