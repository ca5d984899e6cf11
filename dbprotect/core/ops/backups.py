"""Backups and their integrity checks, resolved from configuration (the CLI's and Dagster's one path)."""

from __future__ import annotations

from collections.abc import Mapping

import pyrage

from dbprotect.core.audit import AuditLog
from dbprotect.core.backup.stream import BackupResult, ProgressCallback, run_backup
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.errors import (
    DbprotectError,
    NotFoundError,
)
from dbprotect.core.ops.context import (
    DEFAULT_ACTOR,
    audit_failure,
    audit_report,
    backup_identity,
    primary_store,
)
from dbprotect.core.pg.dsn import register_dsn
from dbprotect.core.schema.stored import write_schema_snapshot
from dbprotect.core.store.catalog import BackupEntry, find_backup, list_backups, recorded_verifications
from dbprotect.core.store.manifest import Verification, with_kind
from dbprotect.core.verify.integrity import IntegrityReport, verify_backup


def backup_database(config: Config, database: str, *, dsn: str | None = None,
                    progress: ProgressCallback | None = None,
                    environ: Mapping[str, str] | None = None, actor: str = DEFAULT_ACTOR,
                    kind: str | None = None) -> BackupResult:
    """Back up the production environment of ``database`` to its primary store.

    ``kind`` (recorded in the manifest) defaults to ``scheduled`` for Dagster's runs
    (``dagster:…`` actors) and ``manual`` for everyone else.

    The outcome (the backup id and sizes, or the failure or refusal) goes to the primary store's
    audit log as ``actor`` (``cli:<user>``, ``dagster:<job>``).
    """
    storage = primary_store(config, database, environ)
    audit = AuditLog(storage, actor=actor)
    try:
        dsn = register_dsn(dsn or resolve_dsn(config, database, "production", environ))
        result = run_backup(
            database=database, dsn=dsn, storage=storage,
            recipients=config.keys.raw.recipients, environment="production", pg_bin_dir=config.tool_dirs,
            progress=progress, exclude_table_data=config.database(database).exclude_table_data,
            zstd_level=config.database(database).compression_level, owner=actor,
            finish=with_kind(kind or ("scheduled" if actor.startswith("dagster") else "manual")),
        )
    except DbprotectError as exc:
        audit_failure(audit, "backup", database, exc)
        raise
    metrics = result.metrics()
    audit.record("backup", database=database, outcome="ok", target=result.manifest.backup_id,
                 detail=f"stored at {result.uri}",
                 data={"stored_bytes": int(metrics["stored_bytes"]), "seconds": metrics["duration_seconds"]})
    if config.keys.development is not None:  # issue 14: development's drift check reads production's schema
        try:
            snapshot = write_schema_snapshot(storage, database=database, backup_id=result.manifest.backup_id,
                                             dsn=dsn, recipients=config.keys.development.recipients,
                                             pg_bin_dir=config.pg_bin_dir)
            audit.record("schema-snapshot", database=database, outcome="ok", target=result.manifest.backup_id,
                         detail=f"schema sha256 {snapshot.sha256}")
        except DbprotectError as exc:  # the backup stands; a missing snapshot shows as stale drift input
            audit_failure(audit, "schema-snapshot", database, exc)
    return result


def verify_database_backup(config: Config, database: str, backup_id: str | None = None, *,
                           identity: pyrage.x25519.Identity | None = None, stored_only: bool = False,
                           by: str = "dbprotect", environ: Mapping[str, str] | None = None,
                           actor: str | None = None, folder: str | None = None) -> IntegrityReport:
    """Integrity-check one backup (default: the newest); rung 2 needs the raw identity.

    ``folder``: the store folder the backup sits in when it is not ``database``'s own (a safety or
    guard backup, see :func:`dbprotect.core.ops.catalog.locate_any_backup`).

    The result (or why there was none) goes to the primary store's audit log as ``actor``
    (default: ``by``, the name recorded with each rung's result).
    """
    storage = primary_store(config, database, environ)
    audit = AuditLog(storage, actor=actor or by)
    try:
        if backup_id is None:
            entries = [entry for entry in list_backups(storage, database, tolerance=config.clock_skew_tolerance)
                       if not entry.clock_skew]  # a backup dated in the future is never "the newest"
            if not entries:
                raise NotFoundError(f"database {database!r} has no backups in {storage.uri}",
                                    hint=f"take one with 'dbprotect backup {database}'")
            backup_id = entries[0].backup_id
        else:
            backup_id = find_backup(storage, [folder or database], backup_id).backup_id
        if not stored_only:
            identity = backup_identity(config, database, folder or database, environ, raw=identity)
        report = verify_backup(storage, folder or database, backup_id, identity, by=by)
    except DbprotectError as exc:
        audit_failure(audit, "verify", database, exc, target=backup_id or "")
        raise
    audit_report(audit, database, report)
    return report


def readability_recorded(config: Config, database: str, backup_id: str, *,
                         environ: Mapping[str, str] | None = None) -> Verification | None:
    """The newest rung-*readable* result recorded in the store for ``backup_id``, by whichever
    deployment ran it (a split deployment's verification location), or None if none has."""
    return rung_recorded(config, database, backup_id, "readable", environ=environ)


def rung_recorded(config: Config, database: str, backup_id: str, rung: str, *,
                  environ: Mapping[str, str] | None = None) -> Verification | None:
    """The newest result of ``rung`` recorded in the store for ``backup_id``, or None if none is."""
    found = [check for check in recorded_verifications(primary_store(config, database, environ), database, backup_id)
             if check.rung == rung]
    return found[-1] if found else None


def newest_recorded_rung(config: Config, database: str, rung: str, *,
                         environ: Mapping[str, str] | None = None) -> tuple[str, Verification] | None:
    """The newest backup (by id, newest first) with a ``rung`` result recorded, and that result.

    For a check shown where it does not run (a split deployment's drill, recorded by the
    verification location): what the store says happened, or None when nothing has been recorded,
    which a caller must report as *no result*, never as a pass. The listing names the backups
    that carry such a record; the record itself is read (and validated) from the store.
    """
    storage = primary_store(config, database, environ)
    for entry in list_backups(storage, database):
        if not entry.complete or not any(check.rung == rung for check in entry.checks):
            continue
        found = rung_recorded(config, database, entry.backup_id, rung, environ=environ)
        if found is not None:
            return entry.backup_id, found
    return None


def locate_backup(config: Config, backup_id: str, database: str | None = None, *,
                  environ: Mapping[str, str] | None = None) -> BackupEntry:
    """Find a backup by id across the configured databases' primary stores."""
    names = [database] if database else sorted(config.databases)
    for name in names:
        storage = primary_store(config, name, environ)
        try:
            return find_backup(storage, [name], backup_id)
        except NotFoundError:
            continue
    raise NotFoundError(f"no backup {backup_id!r} in any configured database ({', '.join(names)})",
                        hint="'dbprotect list DATABASE' shows the backups that exist")


