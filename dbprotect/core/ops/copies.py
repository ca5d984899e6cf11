"""Copies to further storage targets and the warm standby copy, resolved from configuration."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyrage

from dbprotect.core.config.isolation import may_reach_warm_copy
from dbprotect.core.config.model import Config
from dbprotect.core.copy import CopyPlan, CopyResult, copy_backup, holdings, plan_copy, verify_copy
from dbprotect.core.errors import (
    ConfigError,
    CredentialIsolationError,
    DbprotectError,
    NotFoundError,
    Refusals,
    RefusedError,
)
from dbprotect.core.ops.context import (
    DEFAULT_ACTOR,
    audit_failure,
    audit_log,
    audit_report,
    primary_store,
    raw_identity,
    target_store,
)
from dbprotect.core.pg.dsn import dbname_of, mask_dsn, register_dsn, with_dbname
from dbprotect.core.restore.interrupts import terminate_as_interrupt
from dbprotect.core.restore.warm import (
    WarmCopyOutcome,
    WarmCopyVerification,
    refresh_into,
    verify_live_warm_copy,
)
from dbprotect.core.store.catalog import BackupEntry, find_backup, list_backups, load_manifest, newest_verified_backup
from dbprotect.core.store.lock import database_lock
from dbprotect.core.verify.integrity import IntegrityReport


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
                   actor: str = DEFAULT_ACTOR, environ: Mapping[str, str] | None = None) -> CopyOutcome:
    """Copy the newest verified backup (or ``backup_id``) from the primary store to ``target``.

    Without ``backup_id``, nothing is copied when the target already holds the newest verified
    backup (verified there). The copy, or its failure, is in the primary store's audit log.
    """
    if target == config.primary_storage(database):
        raise RefusedError(f"{target!r} is the primary store of {database!r}: backups are written there, not copied",
                           hint=f"copy targets: {', '.join(copy_targets(config, database)) or 'none configured'}",
                           refusal=Refusals.COPY_TO_PRIMARY)
    src, dst = primary_store(config, database, environ), target_store(config, database, target, environ)
    audit = audit_log(config, database, actor=actor, target=target, environ=environ)
    try:
        if backup_id is None:
            plan = plan_copy(src, dst, database)
        else:
            entry = find_backup(src, [database], backup_id)
            plan = CopyPlan(database, entry.backup_id, f"backup {entry.backup_id} requested")
        if plan.backup_id is None:
            return CopyOutcome(target, plan, None)
        with database_lock(dst, database, owner=actor):  # the target's copy of the database is written
            result = copy_backup(src, dst, database, plan.backup_id, by=actor)
    except DbprotectError as exc:
        audit_failure(audit, "copy", database, exc, target=backup_id or "")
        raise
    audit.record("copy", database=database, outcome="ok", target=result.backup_id,
                 detail=f"to {result.destination_uri}" + (" (server-side)" if result.server_side else ""),
                 data={"bytes": result.bytes, "seconds": round(result.seconds, 3),
                       "server_side_copy": result.server_side})
    return CopyOutcome(target, plan, result)


def verify_target_copy(config: Config, database: str, target: str, *, backup_id: str | None = None,
                       actor: str = DEFAULT_ACTOR, environ: Mapping[str, str] | None = None) -> IntegrityReport:
    """Rung *stored* of the newest copy (or ``backup_id``) on ``target``, recorded there and audited."""
    dst = target_store(config, database, target, environ)
    audit = audit_log(config, database, actor=actor, target=target, environ=environ)
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
        audit_failure(audit, "verify", database, exc, target=backup_id or "")
        raise
    audit_report(audit, database, report)
    return report


def target_holdings(config: Config, database: str, *,
                    environ: Mapping[str, str] | None = None) -> dict[str, dict[str, BackupEntry]]:
    """Per storage target (primary first), the backups it holds by id: who holds which backup."""
    return holdings({name: target_store(config, database, name, environ) for name in config.storage_names(database)},
                    database)


def warm_copy_dsn(config: Config, database: str, environ: Mapping[str, str] | None = None) -> str:
    """The DSN of ``database``'s warm copy (read from its variable now), naming the warm copy database."""
    environ = os.environ if environ is None else environ
    spec = config.database(database).warm_copy
    if spec is None:
        raise NotFoundError(f"database {database!r} has no warm copy configured in {config.source}",
                            hint=f"add databases.{database}.warm_copy: {{dsn_env: VARIABLE}} naming the backup "
                            "server's DSN")
    if not may_reach_warm_copy(config):
        raise CredentialIsolationError(f"a {config.deployment} deployment may not reach the warm copy of "
                                       f"{database!r}: it holds production data")
    dsn = environ.get(spec.dsn_env)
    register_dsn(dsn or "")  # its password is redacted from all output
    if not dsn:
        raise ConfigError(f"${spec.dsn_env} is not set (the warm copy DSN of database {database!r})",
                          hint=f"export {spec.dsn_env}=postgresql://user:password@backup-host:5432/{database}_warm")
    name = spec.database or dbname_of(dsn)
    if not name:
        raise ConfigError(f"${spec.dsn_env} ({mask_dsn(dsn)}) names no database and warm_copy.database is unset",
                          hint="add the warm copy's name to the DSN (…/dbname) or set warm_copy.database")
    return with_dbname(dsn, name)


def refresh_warm_copy(config: Config, database: str, *, force: bool = False, actor: str = "dbprotect",
                      environ: Mapping[str, str] | None = None,
                      progress: Callable[[str], None] | None = None,
                      identity: pyrage.x25519.Identity | None = None) -> WarmCopyOutcome:
    """Put the newest verified backup of ``database`` into its warm copy, unless it is there already.

    The rules are :func:`dbprotect.core.restore.warm.refresh_into`'s; the refresh, or its failure,
    is in the primary store's audit log.
    """
    storage = primary_store(config, database, environ)
    audit = audit_log(config, database, actor=actor, environ=environ)
    backup_id = ""
    try:
        dsn = warm_copy_dsn(config, database, environ)
        backup_id = newest_verified_backup(storage, database)
        with terminate_as_interrupt():
            outcome = refresh_into(storage, load_manifest(storage, database, backup_id),
                                   raw_identity(config, environ, identity),
                                   dsn, recipients=config.keys.raw.recipients, pg_bin_dir=config.tool_dirs,
                                   work_dir=config.scratch.work_dir, actor=actor, force=force,
                                   progress=progress, audit=audit)
    except DbprotectError as exc:
        audit_failure(audit, "warm_copy", database, exc, target=backup_id)
        raise
    if outcome.refreshed:
        audit.record("warm_copy", database=database, outcome="ok", target=backup_id,
                     detail=f"{outcome.reason} on {outcome.server}",
                     data={"warm_database": outcome.warm_database, "previous": outcome.previous,
                           "tables": outcome.tables, "rows": outcome.rows, "metrics": outcome.timings})
    return outcome


def verify_warm_copy(config: Config, database: str, *, actor: str = "dbprotect",
                     environ: Mapping[str, str] | None = None) -> WarmCopyVerification:
    """Compare the live warm copy with the manifest of the backup it holds; audited."""
    storage = primary_store(config, database, environ)
    report = verify_live_warm_copy(storage, database, warm_copy_dsn(config, database, environ))
    with contextlib.suppress(DbprotectError):
        audit_log(config, database, actor=actor, environ=environ).record(
            "verify", database=database, outcome="ok" if report.ok else "failed", target=report.backup_id,
            detail=report.detail, data={"warm_copy": report.warm_database, "seconds": report.seconds})
    return report
