"""The operations users run, resolved from configuration: one implementation for CLI and Dagster.

Each function takes the validated :class:`Config` and a database name, finds the DSN (from its
environment variable, now), the primary store and the keys, and calls the engine modules
(:mod:`backup`, :mod:`verify`, :mod:`rpo`). Dagster assets and CLI commands are thin calls to
these, so the rules cannot drift apart between the two.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyrage

from dbprotect.core.audit import AuditLog, AuditRecord
from dbprotect.core.backup.stream import BackupResult, ProgressCallback, run_backup
from dbprotect.core.config.model import Config, resolve_dsn
from dbprotect.core.copy import CopyPlan, CopyResult, copy_backup, holdings, plan_copy, verify_copy
from dbprotect.core.crypto import load_identity
from dbprotect.core.errors import CredentialIsolationError, DbprotectError, NotFoundError, RefusedError
from dbprotect.core.retention.cleanup import CleanupResult, execute_cleanup, plan_cleanup
from dbprotect.core.retention.policy import RetentionPlan, plan_retention
from dbprotect.core.store import Storage, open_storage
from dbprotect.core.store.catalog import BackupEntry, find_backup, list_backups
from dbprotect.core.verify.integrity import IntegrityReport, verify_backup
from dbprotect.core.verify.rpo import RpoStatus, evaluate_rpo

if TYPE_CHECKING:
    from dbprotect.core.restore.oncall import RestorePlan, RestoreResult, RestoreTarget


#: The audit actor when a caller names none; the CLI passes ``cli:<user>``, Dagster ``dagster:<job>``.
DEFAULT_ACTOR = "dbprotect"


def cli_actor() -> str:
    """``cli:<login name>``: who ran a command, as the audit log records it."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container with an unknown uid)
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def _audit_failure(audit: AuditLog, action: str, database: str, exc: DbprotectError, *, target: str = "") -> None:
    """Record a refused or failed action; a store too broken to record it must not hide ``exc``."""
    outcome = "refused" if isinstance(exc, RefusedError | CredentialIsolationError) else "failed"
    with contextlib.suppress(DbprotectError):
        audit.record(action, database=database, outcome=outcome, target=target, detail=exc.one_line(),
                     data={"error": exc.code})


def primary_store(config: Config, database: str) -> Storage:
    return open_storage(config, config.primary_storage(database))


def backup_database(config: Config, database: str, *, dsn: str | None = None,
                    progress: ProgressCallback | None = None,
                    environ: Mapping[str, str] | None = None, actor: str = DEFAULT_ACTOR) -> BackupResult:
    """Back up the production environment of ``database`` to its primary store.

    The outcome (the backup id and sizes, or the failure or refusal) goes to the primary store's
    audit log as ``actor`` (``cli:<user>``, ``dagster:<job>``).
    """
    storage = primary_store(config, database)
    audit = AuditLog(storage, actor=actor)
    try:
        dsn = dsn or resolve_dsn(config, database, "production", environ)
        result = run_backup(
            database=database, dsn=dsn, storage=storage,
            recipients=config.keys.raw.recipients, environment="production", pg_bin_dir=config.pg_bin_dir,
            progress=progress, exclude_table_data=config.database(database).exclude_table_data,
            zstd_level=config.database(database).compression_level,
        )
    except DbprotectError as exc:
        _audit_failure(audit, "backup", database, exc)
        raise
    metrics = result.metrics()
    audit.record("backup", database=database, outcome="ok", target=result.manifest.backup_id,
                 detail=f"stored at {result.uri}",
                 data={"stored_bytes": int(metrics["stored_bytes"]), "seconds": metrics["duration_seconds"]})
    return result


def raw_identity(config: Config, environ: Mapping[str, str] | None = None) -> pyrage.x25519.Identity:
    return load_identity(config.keys.raw.identity_env, environ)


def verify_database_backup(config: Config, database: str, backup_id: str | None = None, *,
                           identity: pyrage.x25519.Identity | None = None, stored_only: bool = False,
                           by: str = "dbprotect", environ: Mapping[str, str] | None = None,
                           actor: str | None = None) -> IntegrityReport:
    """Integrity-check one backup (default: the newest); rung 2 needs the raw identity.

    The result (or why there was none) goes to the primary store's audit log as ``actor``
    (default: ``by``, the name recorded with each rung's result).
    """
    storage = primary_store(config, database)
    audit = AuditLog(storage, actor=actor or by)
    try:
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
        report = verify_backup(storage, database, backup_id, identity, by=by)
    except DbprotectError as exc:
        _audit_failure(audit, "verify", database, exc, target=backup_id or "")
        raise
    _audit_report(audit, database, report)
    return report


def _audit_report(audit: AuditLog, database: str, report: IntegrityReport) -> None:
    audit.record("verify", database=database, outcome="ok" if report.ok else "failed", target=report.backup_id,
                 detail=report.summary(), data={r.rung: r.ok for r in report.results})


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
    #: Per storage target, primary first: what it holds and what its next cleanup would delete.
    targets: tuple[TargetStatus, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.database, "storage": self.storage_uri, "backups": self.backups,
            "newest_backup": self.newest.to_dict() if self.newest else None, "rpo": self.rpo.to_dict(),
            "targets": [target.to_dict() for target in self.targets],
        }


def database_status(config: Config, database: str, now: datetime | None = None, *,
                    targets: bool = True) -> DatabaseStatus:
    """RPO from the primary store, and (``targets``) every target's holdings and next cleanup.

    Reads listings only (one LIST per 1,000 keys on S3 per target), never a manifest: counts,
    bytes, ages and the retention plan all come from object keys and sizes.
    """
    now = now or datetime.now(UTC)
    spec = config.database(database)
    names = config.storage_names(database)
    storage = primary_store(config, database)
    listed = list_backups(storage, database, include_incomplete=True)
    entries = [entry for entry in listed if entry.has_manifest]
    rpo = evaluate_rpo(database, entries, timedelta(hours=spec.rpo_hours), now)
    found: list[TargetStatus] = []
    if targets:
        found.append(target_status(config, database, names[0], now, storage=storage, listed=listed))
        found += [target_status(config, database, name, now) for name in names[1:]]
    return DatabaseStatus(database, storage.uri, entries[0] if entries else None, len(entries), rpo, tuple(found))


# -- on-call restores and drills (issue 3), resolved from configuration -------------------------
# oncall/drill import this module (primary_store, raw_identity), so they are imported lazily here.

def newest_verified_backup(storage: Storage, database: str) -> str:
    """The default backup to restore: the newest one whose every recorded rung passed (at least 1-2).

    A backup that failed any rung (integrity, restore verification, a drill) is skipped, and so
    is one never verified: an on-call restore should not be the first test of a backup.
    """
    from dbprotect.core.store.catalog import newest_backup

    entry = newest_backup(storage, database, integrity_ok=True)
    if entry is None:
        raise NotFoundError(f"database {database!r} has no backup that passed verification in {storage.uri}",
                            hint=f"verify one ('dbprotect verify latest -d {database}') or name a BACKUP_ID")
    return entry.backup_id


def default_restore_name(database: str, backup_id: str) -> str:
    """``<database>_restored_<backup id>``, lower case: a new database's name that says what it holds."""
    return f"{database}_restored_{backup_id}".lower().replace("-", "_")[:63]


def restore_target(config: Config, database: str, *, environment: str = "production", existing: bool = False,
                   name: str | None = None, environ: Mapping[str, str] | None = None) -> RestoreTarget:
    """Where a restore goes, from the configured DSN of ``environment`` (read from its variable now).

    ``existing``: the database the environment's DSN names (or ``name`` on the same server) is
    overwritten, behind core's guards. Otherwise a new database ``name`` is created on that
    environment's server. Credential isolation applies: a deployment reaches only its own DSNs.
    """
    from dbprotect.core.pg.dsn import with_dbname
    from dbprotect.core.restore.oncall import RestoreTarget

    dsn = resolve_dsn(config, database, environment, environ)
    if existing:
        return RestoreTarget(with_dbname(dsn, name) if name else dsn, environment, existing=True)
    if not name:
        raise RefusedError("a restore to a new database needs the new database's name",
                           hint=f"name it, e.g. {database}_restored")
    return RestoreTarget(with_dbname(dsn, name), environment, existing=False)


def restore_database(config: Config, database: str, backup_id: str | None = None, *, environment: str = "production",
                     existing: bool = False, target_name: str | None = None, confirmation: str | None = None,
                     dry_run: bool = False, by: str = "dbprotect", environ: Mapping[str, str] | None = None,
                     progress: Callable[[str], None] | None = None,
                     analyze: bool | None = None) -> RestorePlan | RestoreResult:
    """The on-call restore of a configured database: what ``dbprotect restore`` and the ``restore`` job call.

    ``backup_id`` defaults to the newest verified backup (:func:`newest_verified_backup`); a new
    database's name defaults to :func:`default_restore_name`. Every guard is
    :func:`dbprotect.core.restore.oncall.restore`'s; this resolves the store, keys, tools and work folder
    from the configuration and audits the outcome (refusals included) in the store.
    """
    from dbprotect.core.audit import AuditLog
    from dbprotect.core.restore.oncall import restore
    from dbprotect.core.store.catalog import load_manifest

    storage = primary_store(config, database)
    if backup_id is None:
        backup_id = newest_verified_backup(storage, database)
    else:
        backup_id = find_backup(storage, [database], backup_id).backup_id
    if not existing and not target_name:
        target_name = default_restore_name(database, backup_id)
    target = restore_target(config, database, environment=environment, existing=existing, name=target_name,
                            environ=environ)
    manifest = load_manifest(storage, database, backup_id)
    return restore(storage, manifest, raw_identity(config, environ), target, confirmation=confirmation,
                   recipients=config.keys.raw.recipients, dry_run=dry_run,
                   audit=AuditLog(storage, actor=by), pg_bin_dir=config.pg_bin_dir,
                   work_dir=config.scratch.work_dir, by=by, progress=progress, analyze=analyze)


# -- storage targets: holdings, retention cleanup, copies (issue 4) -------------------------------

def _timezone(config: Config) -> tzinfo:
    """The zone whose days, weeks and months the retention period rules count in."""
    try:
        return ZoneInfo(config.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def target_store(config: Config, database: str, target: str) -> Storage:
    """One of the database's storage targets; :class:`NotFoundError` names the ones it has."""
    names = config.storage_names(database)
    if target not in names:
        raise NotFoundError(f"database {database!r} is not stored on target {target!r}",
                            hint=f"its targets: {', '.join(names)}")
    return open_storage(config, target)


@dataclass(frozen=True)
class TargetStatus:
    """What one storage target holds of a database, and what its next cleanup would delete."""

    database: str
    target: str
    uri: str
    primary: bool
    backups: int = 0
    verified: int = 0
    total_bytes: int = 0
    oldest: BackupEntry | None = None
    newest: BackupEntry | None = None
    plan: RetentionPlan | None = None
    error: DbprotectError | None = None

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "target": self.target, "uri": self.uri, "primary": self.primary, "backups": self.backups,
            "verified": self.verified, "total_bytes": self.total_bytes,
            "oldest_backup": self.oldest.backup_id if self.oldest else None,
            "oldest_started_at": self.oldest.started_at.isoformat() if self.oldest else None,
            "newest_backup": self.newest.backup_id if self.newest else None,
            "newest_started_at": self.newest.started_at.isoformat() if self.newest else None,
        }
        if self.plan is not None:
            doc["next_cleanup"] = {
                "policy": str(self.plan.policy), "refused": self.plan.refusal,
                "deletes": [d.backup_id for d in self.plan.deletions],
                "incomplete_uploads": [d.backup_id for d in self.plan.garbage],
            }
        if self.error is not None:
            doc["error"] = {"code": self.error.code, "message": self.error.one_line()}
        return doc


def target_status(config: Config, database: str, target: str, now: datetime, *, storage: Storage | None = None,
                  listed: list[BackupEntry] | None = None) -> TargetStatus:
    """A target's count, bytes, oldest and newest backup and next cleanup; a failing store is reported, not raised."""
    primary = target == config.primary_storage(database)
    try:
        storage = storage or target_store(config, database, target)
        if listed is None:
            listed = list_backups(storage, database, include_incomplete=True)
    except DbprotectError as exc:
        return TargetStatus(database, target, config.storage[target].type, primary, error=exc)
    complete = [entry for entry in listed if entry.has_manifest]
    plan = plan_retention(listed, config.database(database).policy_for(target), now, database=database,
                          tz=_timezone(config))
    return TargetStatus(
        database, target, storage.uri, primary, backups=len(complete),
        verified=sum(1 for entry in complete if entry.integrity_ok),
        total_bytes=sum(entry.dump_bytes or 0 for entry in complete),
        oldest=complete[-1] if complete else None, newest=complete[0] if complete else None, plan=plan)


class _TargetAuditLog(AuditLog):
    """The primary store's audit log, with the storage target each record is about in its data."""

    def __init__(self, storage: Storage, *, actor: str, target: str) -> None:
        super().__init__(storage, actor=actor)
        self.target_name = target

    def record(self, action: str, *, database: str, outcome: str, target: str = "", detail: str = "",
               data: dict[str, Any] | None = None) -> AuditRecord:
        return super().record(action, database=database, outcome=outcome, target=target, detail=detail,
                              data={"store": self.target_name, **(data or {})})


def audit_log(config: Config, database: str, *, actor: str, target: str | None = None) -> AuditLog:
    """The audit log actions on ``database`` are recorded in: its primary store's, whatever the target."""
    storage = primary_store(config, database)
    return _TargetAuditLog(storage, actor=actor, target=target) if target else AuditLog(storage, actor=actor)


@dataclass(frozen=True)
class TargetCleanup:
    """One target's cleanup: the plan, and what the sweep did or why it stopped."""

    target: str
    uri: str
    plan: RetentionPlan
    result: CleanupResult | None
    error: DbprotectError | None

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "uri": self.uri, "plan": self.plan.to_dict(),
                "result": self.result.to_dict() if self.result else None,
                "error": {"code": self.error.code, "exit_code": self.error.exit_code,
                          "message": self.error.one_line(), "hint": self.error.hint} if self.error else None}


def cleanup_database(config: Config, database: str, *, target: str | None = None, dry_run: bool = False,
                     actor: str = DEFAULT_ACTOR, now: datetime | None = None) -> list[TargetCleanup]:
    """Plan and sweep retention on one target or every target of ``database`` (each with its policy).

    Every target is attempted even when one refuses or fails, so one broken bucket does not stop
    the others' cleanup; the caller reports ``error`` per target (:func:`first_cleanup_error`).
    Deletions, refusals and failures go to the primary store's audit log (not in a dry run).
    """
    now = now or datetime.now(UTC)
    spec = config.database(database)
    names = [target] if target else config.storage_names(database)
    done: list[TargetCleanup] = []
    for name in names:
        storage = target_store(config, database, name)
        plan = plan_cleanup(storage, database, spec.policy_for(name), now, tz=_timezone(config))
        try:
            result = execute_cleanup(storage, plan, dry_run=dry_run,
                                     audit=audit_log(config, database, actor=actor, target=name))
        except DbprotectError as exc:
            done.append(TargetCleanup(name, storage.uri, plan, None, exc))
            continue
        done.append(TargetCleanup(name, storage.uri, plan, result, None))
    return done


def first_cleanup_error(cleanups: list[TargetCleanup]) -> DbprotectError | None:
    """The error a cleanup run ends with: a store failure first (exit 6), else a refusal (exit 9)."""
    errors = [c.error for c in cleanups if c.error is not None]
    storage = [e for e in errors if not isinstance(e, RefusedError)]
    return (storage or errors or [None])[0]


def copy_targets(config: Config, database: str) -> list[str]:
    """The targets that hold copies: every storage target of the database beyond the primary."""
    return config.storage_names(database)[1:]


@dataclass(frozen=True)
class CopyOutcome:
    """One copy run on one target: the plan (what and why), and the copy when one was needed."""

    target: str
    plan: CopyPlan
    result: CopyResult | None

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "reason": self.plan.reason, "copied": self.result is not None,
                **(self.result.to_dict() if self.result else {"backup_id": None})}


def copy_to_target(config: Config, database: str, target: str, *, backup_id: str | None = None,
                   actor: str = DEFAULT_ACTOR) -> CopyOutcome:
    """Copy the newest verified backup (or ``backup_id``) from the primary store to ``target``.

    Without ``backup_id``, nothing is copied when the target already holds the newest verified
    backup (verified there). The copy, or its failure, is in the primary store's audit log.
    """
    if target == config.primary_storage(database):
        raise RefusedError(f"{target!r} is the primary store of {database!r}: backups are written there, not copied",
                           hint=f"copy targets: {', '.join(copy_targets(config, database)) or 'none configured'}")
    src, dst = primary_store(config, database), target_store(config, database, target)
    audit = audit_log(config, database, actor=actor, target=target)
    try:
        if backup_id is None:
            plan = plan_copy(src, dst, database)
        else:
            entry = find_backup(src, [database], backup_id)
            plan = CopyPlan(database, entry.backup_id, f"backup {entry.backup_id} requested")
        if plan.backup_id is None:
            return CopyOutcome(target, plan, None)
        result = copy_backup(src, dst, database, plan.backup_id, by=actor)
    except DbprotectError as exc:
        _audit_failure(audit, "copy", database, exc, target=backup_id or "")
        raise
    audit.record("copy", database=database, outcome="ok", target=result.backup_id,
                 detail=f"to {result.destination_uri}" + (" (server-side)" if result.server_side else ""),
                 data={"bytes": result.bytes, "seconds": round(result.seconds, 3),
                       "server_side_copy": result.server_side})
    return CopyOutcome(target, plan, result)


def verify_target_copy(config: Config, database: str, target: str, *, backup_id: str | None = None,
                       actor: str = DEFAULT_ACTOR) -> IntegrityReport:
    """Rung *stored* of the newest copy (or ``backup_id``) on ``target``, recorded there and audited."""
    dst = target_store(config, database, target)
    audit = audit_log(config, database, actor=actor, target=target)
    try:
        if backup_id is None:
            entries = list_backups(dst, database)
            if not entries:
                raise NotFoundError(f"target {target!r} holds no backup of {database!r} ({dst.uri})",
                                    hint=f"materialize its copy asset, or 'dbprotect copy {database} --target "
                                    f"{target}'")
            backup_id = entries[0].backup_id
        report = verify_copy(dst, database, backup_id, by=actor)
    except DbprotectError as exc:
        _audit_failure(audit, "verify", database, exc, target=backup_id or "")
        raise
    _audit_report(audit, database, report)
    return report


def target_holdings(config: Config, database: str) -> dict[str, dict[str, BackupEntry]]:
    """Per storage target (primary first), the backups it holds by id: who holds which backup."""
    return holdings({name: target_store(config, database, name) for name in config.storage_names(database)},
                    database)
