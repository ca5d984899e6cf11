"""The on-call restore: plan, then execute, behind every guard. One implementation for CLI and Dagster.

A restore goes to a **new database** (the default; created with the environment marker the user
named) or over an **existing database** of a named environment. Either way the backup is first
restored into a staging database (a scratch database on the target's server), verified against the
manifest exactly as rung 3 does (the one staged pipeline, :func:`dbprotect.core.restore.staged.staged_restore`),
and only then put in place by the one crash-safe swap (:mod:`dbprotect.core.pg.swap`), so a restore
that fails or is interrupted never leaves a half-restored target: the target is untouched until the
swap, and a swap killed half-way is finished or rolled back by the next restore on that server.

Before an existing database is replaced, in this order, each refusing with a one-line error and
without changing anything:

1. the direction policy (:mod:`dbprotect.core.restore.guards`): development data never goes to production;
2. the confirmation must equal the target database's name;
3. the target's environment marker (:mod:`dbprotect.core.pg.markers`) must equal the environment the
   user named;
4. a safety backup of the target is taken into the store (under ``<database>-safety``, so it is
   never mistaken for a backup of the source) and must pass integrity (rungs 1 and 2).

The plan says what the restore will drop (objects in the target the backup does not contain),
replace and create, how big it is, and how long the last drill took. ``dry_run`` returns the plan.

The database's own settings that the backup recorded (``ALTER DATABASE … SET``, ``ALTER ROLE … IN
DATABASE … SET``; ``pg_restore`` without ``--create`` never restores them) are applied to the staging
database after the data, read back, and named in the result (:mod:`dbprotect.core.restore.settings`:
what it does not apply from an untrusted manifest, and why).

Limitations: the replaced database's owner and marker are carried over to the restored one; its
connection limit, ``ALLOW_CONNECTIONS`` and database ACLs describe the place and are not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
import pyrage

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.errors import DbprotectError, IntegrityError, NotFoundError, Refusals, RefusedError
from dbprotect.core.pg.dsn import dbname_of, mask_dsn, server_label, with_dbname
from dbprotect.core.pg.markers import read_marker, require_marker
from dbprotect.core.pg.pg_restore import Progress
from dbprotect.core.pg.swap import SwapDone, SwapHook, pending_swaps, swap_in
from dbprotect.core.pg.tools import connect, server_major
from dbprotect.core.restore.decrypt import read_archive_listing
from dbprotect.core.restore.drill import LastDrill, last_drill
from dbprotect.core.restore.guards import check_confirmation, check_direction, check_target_server_version
from dbprotect.core.restore.settings import AppliedSettings, apply_database_settings
from dbprotect.core.restore.staged import (
    ENVIRONMENT_FAILURE_OUTCOME,
    ENVIRONMENT_FAILURES,
    PhaseClock,
    prepare_server,
    staged_restore,
    swap_intent_recorder,
)
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import record_verification
from dbprotect.core.store.manifest import Manifest, Verification, with_kind
from dbprotect.core.verify.compare import (
    CatalogObjects,
    ObjectKey,
    catalog_objects,
    describe_object,
    parse_toc_listing,
)
from dbprotect.core.verify.integrity import verify_backup

if TYPE_CHECKING:
    from dbprotect.core.audit import AuditLog

MAINTENANCE_DB = "postgres"
log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore goes: ``dsn`` names the target database (to create, or to overwrite)."""

    dsn: str
    environment: str
    existing: bool = False

    @property
    def name(self) -> str:
        name = dbname_of(self.dsn)
        if not name:
            raise RefusedError(f"the target DSN {mask_dsn(self.dsn)} names no database",
                               hint="add the database name to the DSN (…/dbname)",
                               refusal=Refusals.DSN_WITHOUT_DATABASE)
        return name

    @property
    def admin_dsn(self) -> str:
        return with_dbname(self.dsn, MAINTENANCE_DB)


@dataclass
class RestorePlan:
    database: str
    backup_id: str
    backup_environment: str
    target: RestoreTarget
    target_marker: str | None
    confirmation_required: str | None
    will_drop: list[str]
    will_replace: list[str]
    will_create: list[str]
    dump_bytes: int
    stored_bytes: int
    source_size_bytes: int
    tables: int
    rows: int
    last_drill: LastDrill | None
    manifest: Manifest = field(repr=False)
    #: The archive's objects (from its table of contents), compared after the restore.
    incoming: set[ObjectKey] = field(default_factory=set, repr=False)
    #: Interrupted swaps on the target's server that the restore would first finish or roll back
    #: (filled by a dry run, which changes nothing; see :func:`dbprotect.core.pg.swap.pending_swaps`).
    pending_swaps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The plan as an on-call engineer reads it before typing the confirmation."""
        t = self.target
        lines = [f"  PENDING: {swap}; the restore finishes or rolls it back first" for swap in self.pending_swaps]
        lines = [
            f"restore {self.database} backup {self.backup_id} ({self.backup_environment})", *lines,
            f"  into {'EXISTING' if t.existing else 'new'} {t.environment} database {t.name!r} "
            f"at {mask_dsn(t.admin_dsn)}",
            f"  size: {self.dump_bytes / 1e6:.1f} MB archive ({self.stored_bytes / 1e6:.1f} MB stored), "
            f"source database was {self.source_size_bytes / 1e6:.1f} MB; {self.tables} tables, {self.rows} rows",
        ]
        if self.last_drill and self.last_drill.rto_seconds is not None:
            d = self.last_drill
            lines.append(f"  last drill: {d.rto_seconds:.1f} s to a verified database "
                         f"({'passed' if d.ok else 'FAILED'}, {d.at:%Y-%m-%d %H:%M} UTC)")
        else:
            lines.append("  last drill: none recorded")
        if t.existing:
            lines.append(f"  a safety backup of {t.name!r} is taken first and must pass integrity")
            lines.append(f"  will DROP {len(self.will_drop)} object(s) the backup does not contain:")
            lines += [f"    - {item}" for item in self.will_drop] or ["    (none)"]
            lines.append(f"  will replace {len(self.will_replace)} object(s), create {len(self.will_create)}")
            lines.append(f"  confirmation required: type {self.confirmation_required!r}")
        else:
            lines.append(f"  will create {len(self.will_create)} object(s)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        drill = self.last_drill
        return {
            "database": self.database, "backup_id": self.backup_id, "backup_environment": self.backup_environment,
            "target": {"database": self.target.name, "environment": self.target.environment,
                       "existing": self.target.existing, "server": mask_dsn(self.target.admin_dsn),
                       "marker": self.target_marker},
            "confirmation_required": self.confirmation_required, "will_drop": self.will_drop,
            "will_replace": len(self.will_replace), "will_create": len(self.will_create),
            "dump_bytes": self.dump_bytes, "stored_bytes": self.stored_bytes,
            "source_size_bytes": self.source_size_bytes, "tables": self.tables, "rows": self.rows,
            "last_drill": None if drill is None else {"backup_id": drill.backup_id, "at": drill.at.isoformat(),
                                                      "ok": drill.ok, "rto_seconds": drill.rto_seconds},
            "pending_swaps": self.pending_swaps,
        }


@dataclass
class RestoreResult:
    plan: RestorePlan
    target_database: str
    safety_backup_id: str | None
    timings: dict[str, float]
    objects: int
    #: Housekeeping after the swap's commit point that failed (the restore itself succeeded).
    warnings: list[str] = field(default_factory=list)
    #: Databases the restore left behind because of those failures (the next restore drops them).
    leftovers: list[str] = field(default_factory=list)
    #: The store folder of the safety backup (``<database>-safety``, or the development side's).
    safety_folder: str | None = None
    #: The backup's database settings applied to the restored database, and those not applied (why).
    settings: AppliedSettings | None = None

    def metrics(self) -> dict[str, float]:
        return {**self.timings, "objects": self.objects, "tables": self.plan.tables, "rows": self.plan.rows}


def _target_state(target: RestoreTarget, manifest: Manifest) -> tuple[bool, str | None, CatalogObjects]:
    """(exists, marker, objects) of the target, after the checks that need only a look."""
    with connect(target.admin_dsn, autocommit=True, application_name="dbprotect-restore") as admin:
        check_target_server_version(int(manifest.source["server_major"]), server_major(admin))
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.name,)).fetchone() is not None
        marker = read_marker(admin, target.name) if exists else None
    if target.existing and not exists:
        raise NotFoundError(f"target database {target.name!r} does not exist on {mask_dsn(target.admin_dsn)}",
                            hint="restore into a new database instead (the default)")
    if not target.existing and exists:
        raise RefusedError(f"refused: database {target.name!r} already exists; a restore to a new database "
                           "never overwrites one", hint="pick another name, or target it as an existing database",
                           refusal=Refusals.TARGET_EXISTS)
    if not exists:
        return False, None, CatalogObjects(set(), set())
    with connect(target.dsn, autocommit=True, application_name="dbprotect-restore") as conn:
        return True, marker, catalog_objects(conn)


def plan_restore(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                 target: RestoreTarget, *, pg_bin_dir: str | None = None) -> RestorePlan:
    """Check the guards that need no confirmation and describe what the restore would do."""
    check_direction(manifest.environment, target.environment)
    _exists, marker, present = _target_state(target, manifest)
    if target.existing:
        with connect(target.admin_dsn, autocommit=True, application_name="dbprotect-restore") as admin:
            require_marker(admin, target.name, target.environment)
    incoming = parse_toc_listing(read_archive_listing(storage, manifest, identity, pg_bin_dir=pg_bin_dir))

    def names(keys: set[ObjectKey]) -> list[str]:
        return [describe_object(key) for key in sorted(keys, key=str)]

    return RestorePlan(
        database=manifest.database, backup_id=manifest.backup_id, backup_environment=manifest.environment,
        target=target, target_marker=marker, confirmation_required=target.name if target.existing else None,
        will_drop=names(present.strict - incoming), will_replace=names(present.all & incoming),
        will_create=names(incoming - present.all), dump_bytes=int(manifest.bytes.get("dump", 0)),
        stored_bytes=manifest.stored_bytes, source_size_bytes=int(manifest.source.get("size_bytes", 0)),
        tables=len(manifest.tables), rows=manifest.total_rows,
        last_drill=last_drill(storage, manifest.database), manifest=manifest, incoming=incoming,
    )


@contextlib.contextmanager
def _audited(audit: AuditLog | None, plan_or_manifest: RestorePlan | Manifest, target: RestoreTarget) -> Iterator[None]:
    """Record refusals and failures of a restore in the audit log, then let them propagate."""
    manifest = plan_or_manifest.manifest if isinstance(plan_or_manifest, RestorePlan) else plan_or_manifest
    try:
        yield
    except RefusedError as exc:
        if audit:
            audit.record("refused", database=manifest.database, outcome="refused", target=manifest.backup_id,
                         detail=exc.one_line(), data={"restore_target": target.name,
                                                      "environment": target.environment})
        raise
    except BaseException as exc:
        if audit:
            reason = exc.one_line() if isinstance(exc, DbprotectError) else type(exc).__name__
            outcome = ENVIRONMENT_FAILURE_OUTCOME if isinstance(exc, ENVIRONMENT_FAILURES) else "failed"
            audit.record("restore", database=manifest.database, outcome=outcome, target=manifest.backup_id,
                         detail=reason, data={"restore_target": target.name, "environment": target.environment})
        raise


def execute_restore(storage: Storage, plan: RestorePlan, identity: pyrage.x25519.Identity, *,
                    confirmation: str | None, recipients: list[str], safety_database: str | None = None,
                    pg_bin_dir: str | None = None, jobs: int | None = None,
                    work_dir: str | os.PathLike[str] | None = None, by: str = "dbprotect",
                    progress: Progress | None = None, audit: AuditLog | None = None,
                    analyze: bool | None = None, swap_hooks: SwapHook | None = None) -> RestoreResult:
    """Carry out a plan. Every guard is checked again here, immediately before acting.

    ``analyze``: ANALYZE before the database is put in place. Default: only when it replaces an
    existing database, whose traffic lands on it the moment it is renamed in; a new database is
    analyzed by autovacuum within a minute or so, before anyone relies on its plans, and skipping
    it spares the restore a pass over every table. ``swap_hooks``: see :func:`dbprotect.core.pg.swap.swap_in`
    (fault injection in tests).
    """
    target, manifest = plan.target, plan.manifest
    timings: dict[str, float] = {}
    with _audited(audit, plan, target):
        check_direction(manifest.environment, target.environment)
        if target.existing:
            check_confirmation(target.name, confirmation)
            with connect(target.admin_dsn, autocommit=True, application_name="dbprotect-restore") as admin:
                require_marker(admin, target.name, target.environment)
        _target_state(target, manifest)  # still there (or still absent), still a usable server
        safety_id = None
        if target.existing:
            started = time.perf_counter()
            if progress:
                progress("safety_backup")
            safety_id = _safety_backup(storage, plan, identity, recipients, safety_database, pg_bin_dir, by)
            timings["safety_backup_seconds"] = round(time.perf_counter() - started, 3)
        objects, done, settings = _restore_staged(storage, plan, identity, timings, pg_bin_dir=pg_bin_dir, jobs=jobs,
                                  work_dir=work_dir, progress=progress,
                                  analyze=target.existing if analyze is None else analyze, audit=audit,
                                  swap_hooks=swap_hooks)
    result = RestoreResult(plan, target.name, safety_id, timings, objects,
                           warnings=[done.warning] if done.warning else [],
                           leftovers=[done.leftover] if done.leftover else [],
                           safety_folder=(safety_database or f"{plan.database}-safety") if safety_id else None,
                           settings=settings)
    if audit:
        # Once the swap committed, the restore succeeded: a failed cleanup after it is a warning
        # naming what is left behind, never a "failed" restore of a database that was replaced.
        audit.record("restore", database=plan.database, outcome="ok", target=plan.backup_id,
                     detail=f"restored into {target.environment} database {target.name!r}"
                            + (f" after safety backup {safety_id}" if safety_id else "")
                            + "".join(f"; warning: {warning}" for warning in result.warnings),
                     data={"restore_target": target.name, "environment": target.environment,
                           "safety_backup_id": safety_id, "metrics": result.metrics(),
                           "database_settings": result.settings.to_dict() if result.settings else None,
                           **({"warnings": result.warnings, "leftovers": result.leftovers}
                              if result.warnings else {})})
    return result


def restore(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, target: RestoreTarget, *,
            confirmation: str | None = None, recipients: list[str], dry_run: bool = False,
            audit: AuditLog | None = None, **options: object) -> RestorePlan | RestoreResult:
    """Plan, and unless ``dry_run``, execute: the one entry point the CLI and the Dagster job call.

    ``options`` are those of :func:`execute_restore` (``pg_bin_dir``, ``jobs``, ``work_dir``, ``by``,
    ``progress``, ``safety_database``, ``analyze``, ``swap_hooks``). Unless ``dry_run`` (which changes
    nothing), the target's server is first put in order (:func:`prepare_server`): an interrupted swap
    of a killed restore is finished or rolled back before the target is looked at.
    """
    try:
        with _audited(audit, manifest, target):
            if not dry_run:
                prepare_server(target.admin_dsn, audit=audit, database=manifest.database,
                               work_dir=options.get("work_dir"))  # type: ignore[arg-type]
            plan = plan_restore(storage, manifest, identity, target,
                                pg_bin_dir=options.get("pg_bin_dir"))  # type: ignore[arg-type]
        if dry_run:
            # A dry run recovers nothing, but must say that the real run would first act on the server.
            plan.pending_swaps = pending_swaps(target.admin_dsn)
            return plan
        return execute_restore(storage, plan, identity, confirmation=confirmation, recipients=recipients,
                               audit=audit, **options)  # type: ignore[arg-type]
    except IntegrityError as exc:
        if not dry_run:
            record_failed_restore(storage, manifest, exc, by=str(options.get("by") or "dbprotect"))
        raise


def record_failed_restore(storage: Storage, manifest: Manifest, exc: IntegrityError, *, by: str) -> None:
    """A backup that does not restore as recorded is a failed ``restored`` rung: RPO turns red, and the
    default restore skips it from now on (:func:`dbprotect.core.store.catalog.newest_verified_backup`).

    Only :class:`IntegrityError` is the backup's fault; a wrong key (:class:`CryptoError`), an
    unreachable server or store are the environment's and are never recorded against it. If the
    store cannot take the record, the restore's own error still reaches the user (the failure is logged).
    """
    try:
        record_verification(storage, manifest, Verification(
            rung="restored", ok=False, at=datetime.now(UTC), by=by,
            detail=f"restore failed: {exc.one_line()}", metrics={}))
    except DbprotectError as failure:
        log.error("could not record the failed restore of backup %s: %s", manifest.backup_id, failure.one_line())
        return
    if not exc.hint:
        exc.hint = (f"backup {manifest.backup_id} is now recorded as failed; without a BACKUP_ID, restore takes "
                    "the newest backup that passed verification")


def _safety_backup(storage: Storage, plan: RestorePlan, identity: pyrage.x25519.Identity, recipients: list[str],
                   safety_database: str | None, pg_bin_dir: str | None, by: str) -> str:
    """Back up the target and check rungs 1-2; any failure refuses the restore before it starts."""
    target = plan.target
    folder = safety_database or f"{plan.database}-safety"
    try:
        backup = run_backup(database=folder, dsn=target.dsn, storage=storage, recipients=recipients,
                            environment=target.environment, pg_bin_dir=pg_bin_dir, finish=safety_finish(plan))
        report = verify_backup(storage, folder, backup.manifest.backup_id, identity, by=by)
    except DbprotectError as exc:
        raise RefusedError(f"refused: the safety backup of {target.name!r} failed ({exc.one_line()}); "
                           "the restore did not start and nothing was changed",
                           hint=exc.hint or "fix the cause and run the restore again",
                           refusal=Refusals.SAFETY_BACKUP_FAILED) from None
    if not report.ok:
        raise RefusedError(f"refused: the safety backup of {target.name!r} did not pass integrity "
                           f"({report.summary()}); the restore did not start and nothing was changed",
                           refusal=Refusals.SAFETY_BACKUP_FAILED)
    return backup.manifest.backup_id


def protected_target_label(target: RestoreTarget) -> str:
    """How a safety backup names the database it was taken of: environment, name and server (no user)."""
    return f"{target.environment}: {server_label(target.dsn)}"


def safety_finish(plan: RestorePlan) -> Callable[[Manifest], Manifest]:
    """The safety backup's manifest records its kind and the restore it protects (its undo): retention
    keeps it while that restore is the newest over the target (:mod:`dbprotect.core.retention.plan`)."""
    kind = with_kind("safety")

    def finish(manifest: Manifest) -> Manifest:
        return Manifest.model_validate({**kind(manifest).model_dump(mode="json"), "protects": {
            "target": protected_target_label(plan.target), "restore_of": f"{plan.database}/{plan.backup_id}"}})
    return finish


def _restore_staged(storage: Storage, plan: RestorePlan, identity: pyrage.x25519.Identity,
                    timings: dict[str, float], *, pg_bin_dir: str | None, jobs: int | None,
                    work_dir: str | os.PathLike[str] | None, progress: Progress | None,
                    analyze: bool, audit: AuditLog | None,
                    swap_hooks: SwapHook | None) -> tuple[int, SwapDone, AppliedSettings | None]:
    """Restore into a staging database (the one staged pipeline), apply the backup's database settings
    to it, then swap it in; it never outlives a failure."""
    target, manifest = plan.target, plan.manifest
    clock = PhaseClock(progress, timings)
    with staged_restore(storage, manifest, identity, target.admin_dsn, clock, pg_bin_dir=pg_bin_dir, jobs=jobs,
                        work_dir=work_dir, progress=progress, keep_owners=True, analyze=analyze) as staged:
        if staged.problems:
            raise IntegrityError(f"restored data does not match backup {manifest.backup_id}: "
                                 + "; ".join(staged.problems[:5]) + f"; {target.name!r} was not changed")
        record = manifest.catalog.database_settings if manifest.catalog else None
        settings = None
        if record is not None:
            with clock("settings"):
                settings = apply_database_settings(target.admin_dsn, staged.database.name, record)
        with clock("swap"):
            done = _put_in_place(target, staged.database.name, manifest.database, audit, swap_hooks)
        return staged.objects, done, settings


def _put_in_place(target: RestoreTarget, staging: str, database: str, audit: AuditLog | None,
                  hooks: SwapHook | None) -> SwapDone:
    """The one swap (:func:`dbprotect.core.pg.swap.swap_in`), its guards re-checked immediately before acting."""

    def still_guarded(admin: psycopg.Connection) -> None:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.name,)).fetchone()
        if target.existing:
            require_marker(admin, target.name, target.environment)
        elif exists:
            raise RefusedError(f"refused: database {target.name!r} appeared while restoring; a restore to a new "
                               "database never overwrites one", refusal=Refusals.TARGET_EXISTS)

    return swap_in(target.admin_dsn, staging, target.name, environment=target.environment,
                   replace=target.existing, before_acting=still_guarded,
                   on_intent=swap_intent_recorder(audit, database), hooks=hooks)
