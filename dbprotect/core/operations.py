"""The operations users run, resolved from configuration: one implementation for CLI and Dagster.

Each function takes the validated :class:`Config` and a database name, finds the DSN (from its
environment variable, now), the primary store and the keys, and calls the engine modules
(:mod:`backup`, :mod:`verify`, :mod:`rpo`). Dagster assets and CLI commands are thin calls to
these, so the rules cannot drift apart between the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyrage

from dbprotect.core.backup import BackupResult, ProgressCallback, run_backup
from dbprotect.core.catalog import BackupEntry, find_backup, list_backups
from dbprotect.core.config import Config, resolve_dsn
from dbprotect.core.crypto import load_identity
from dbprotect.core.errors import NotFoundError
from dbprotect.core.rpo import RpoStatus, evaluate_rpo
from dbprotect.core.storage import Storage, open_storage
from dbprotect.core.verify import IntegrityReport, verify_backup


def primary_store(config: Config, database: str) -> Storage:
    return open_storage(config, config.primary_storage(database))


def backup_database(config: Config, database: str, *, dsn: str | None = None,
                    progress: ProgressCallback | None = None,
                    environ: Mapping[str, str] | None = None) -> BackupResult:
    """Back up the production environment of ``database`` to its primary store."""
    dsn = dsn or resolve_dsn(config, database, "production", environ)
    return run_backup(
        database=database, dsn=dsn, storage=primary_store(config, database),
        recipients=config.keys.raw.recipients, environment="production", pg_bin_dir=config.pg_bin_dir,
        progress=progress,
    )


def raw_identity(config: Config, environ: Mapping[str, str] | None = None) -> pyrage.x25519.Identity:
    return load_identity(config.keys.raw.identity_env, environ)


def verify_database_backup(config: Config, database: str, backup_id: str | None = None, *,
                           identity: pyrage.x25519.Identity | None = None, stored_only: bool = False,
                           by: str = "dbprotect", environ: Mapping[str, str] | None = None) -> IntegrityReport:
    """Integrity-check one backup (default: the newest); rung 2 needs the raw identity."""
    storage = primary_store(config, database)
    if backup_id is None:
        entries = list_backups(storage, database)
        if not entries:
            raise NotFoundError(f"database {database!r} has no backups in {storage.uri}",
                                hint=f"take one with 'dbprotect backup {database}'")
        backup_id = entries[0].backup_id
    else:
        backup_id = find_backup(storage, [database], backup_id).backup_id
    if identity is None and not stored_only:
        identity = raw_identity(config, environ)
    return verify_backup(storage, database, backup_id, identity, by=by)


def locate_backup(config: Config, backup_id: str, database: str | None = None) -> BackupEntry:
    """Find a backup by id across the configured databases' primary stores."""
    names = [database] if database else sorted(config.databases)
    for name in names:
        storage = primary_store(config, name)
        try:
            return find_backup(storage, [name], backup_id)
        except NotFoundError:
            continue
    raise NotFoundError(f"no backup {backup_id!r} in any configured database ({', '.join(names)})",
                        hint="'dbprotect list DATABASE' shows the backups that exist")


@dataclass(frozen=True)
class DatabaseStatus:
    database: str
    storage_uri: str
    newest: BackupEntry | None
    backups: int
    rpo: RpoStatus

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.database, "storage": self.storage_uri, "backups": self.backups,
            "newest_backup": self.newest.to_dict() if self.newest else None, "rpo": self.rpo.to_dict(),
        }


def database_status(config: Config, database: str, now: datetime | None = None) -> DatabaseStatus:
    storage = primary_store(config, database)
    entries = list_backups(storage, database)
    spec = config.database(database)
    rpo = evaluate_rpo(database, entries, timedelta(hours=spec.rpo_hours), now or datetime.now(UTC))
    return DatabaseStatus(database, storage.uri, entries[0] if entries else None, len(entries), rpo)
