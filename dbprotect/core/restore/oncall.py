"""The on-call restore: plan, then execute, behind every guard. One implementation for CLI and Dagster.

A restore goes to a **new database** (the default; created with the environment marker the user
named) or over an **existing database** of a named environment. Either way the backup is first
restored into a staging database (a scratch database on the target's server), verified against the
manifest exactly as rung 3 does, and only then put in place by renaming, so a restore that fails or
is interrupted never leaves a half-restored target: the target is untouched until the final swap.

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

Limitations: the replaced database's owner and marker are carried over to the restored one; other
database-level settings (``ALTER DATABASE ... SET``) and database ACLs are not.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
import pyrage
from psycopg import sql

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.errors import DbprotectError, IntegrityError, NotFoundError, Refusals, RefusedError
from dbprotect.core.pg.dsn import dbname_of, mask_dsn, with_dbname
from dbprotect.core.pg.markers import read_marker, require_marker, set_marker
from dbprotect.core.pg.pg_restore import Progress, list_archive, run_pg_restore
from dbprotect.core.pg.scratch import drop_database, new_scratch_name
from dbprotect.core.pg.tools import connect, server_major
from dbprotect.core.restore.decrypt import decrypted_archive, read_archive_listing
from dbprotect.core.restore.drill import LastDrill, last_drill
from dbprotect.core.restore.guards import check_confirmation, check_direction, check_target_server_version
from dbprotect.core.store import Storage
from dbprotect.core.store.manifest import Manifest
from dbprotect.core.verify.compare import (
    CatalogObjects,
    ObjectKey,
    catalog_objects,
    describe_object,
    parse_toc_listing,
    verify_restored_database,
)
from dbprotect.core.verify.integrity import verify_backup
from dbprotect.core.verify.tables import TableVerifier

if TYPE_CHECKING:
    from dbprotect.core.audit import AuditLog

MAINTENANCE_DB = "postgres"



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

    def summary(self) -> str:
        """The plan as an on-call engineer reads it before typing the confirmation."""
        t = self.target
        lines = [
            f"restore {self.database} backup {self.backup_id} ({self.backup_environment})",
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
        }


@dataclass
class RestoreResult:
    plan: RestorePlan
    target_database: str
    safety_backup_id: str | None
    timings: dict[str, float]
    objects: int

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
            audit.record("restore", database=manifest.database, outcome="failed", target=manifest.backup_id,
                         detail=reason, data={"restore_target": target.name, "environment": target.environment})
        raise


def execute_restore(storage: Storage, plan: RestorePlan, identity: pyrage.x25519.Identity, *,
                    confirmation: str | None, recipients: list[str], safety_database: str | None = None,
                    pg_bin_dir: str | None = None, jobs: int | None = None,
                    work_dir: str | os.PathLike[str] | None = None, by: str = "dbprotect",
                    progress: Progress | None = None, audit: AuditLog | None = None,
                    analyze: bool | None = None) -> RestoreResult:
    """Carry out a plan. Every guard is checked again here, immediately before acting.

    ``analyze``: ANALYZE before the database is put in place. Default: only when it replaces an
    existing database, whose traffic lands on it the moment it is renamed in; a new database is
    analyzed by autovacuum within a minute or so, before anyone relies on its plans, and skipping
    it spares the restore a pass over every table.
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
        objects = _restore_staged(storage, plan, identity, timings, pg_bin_dir=pg_bin_dir, jobs=jobs,
                                  work_dir=work_dir, progress=progress,
                                  analyze=target.existing if analyze is None else analyze)
    result = RestoreResult(plan, target.name, safety_id, timings, objects)
    if audit:
        audit.record("restore", database=plan.database, outcome="ok", target=plan.backup_id,
                     detail=f"restored into {target.environment} database {target.name!r}"
                            + (f" after safety backup {safety_id}" if safety_id else ""),
                     data={"restore_target": target.name, "environment": target.environment,
                           "safety_backup_id": safety_id, "metrics": result.metrics()})
    return result


def restore(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, target: RestoreTarget, *,
            confirmation: str | None = None, recipients: list[str], dry_run: bool = False,
            audit: AuditLog | None = None, **options: object) -> RestorePlan | RestoreResult:
    """Plan, and unless ``dry_run``, execute: the one entry point the CLI and the Dagster job call.

    ``options`` are those of :func:`execute_restore` (``pg_bin_dir``, ``jobs``, ``work_dir``, ``by``,
    ``progress``, ``safety_database``, ``analyze``).
    """
    with _audited(audit, manifest, target):
        plan = plan_restore(storage, manifest, identity, target, pg_bin_dir=options.get("pg_bin_dir"))  # type: ignore[arg-type]
    if dry_run:
        return plan
    return execute_restore(storage, plan, identity, confirmation=confirmation, recipients=recipients,
                           audit=audit, **options)  # type: ignore[arg-type]


def _safety_backup(storage: Storage, plan: RestorePlan, identity: pyrage.x25519.Identity, recipients: list[str],
                   safety_database: str | None, pg_bin_dir: str | None, by: str) -> str:
    """Back up the target and check rungs 1-2; any failure refuses the restore before it starts."""
    target = plan.target
    folder = safety_database or f"{plan.database}-safety"
    try:
        backup = run_backup(database=folder, dsn=target.dsn, storage=storage, recipients=recipients,
                            environment=target.environment, pg_bin_dir=pg_bin_dir)
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


def _restore_staged(storage: Storage, plan: RestorePlan, identity: pyrage.x25519.Identity,
                    timings: dict[str, float], *, pg_bin_dir: str | None, jobs: int | None,
                    work_dir: str | os.PathLike[str] | None, progress: Progress | None,
                    analyze: bool) -> int:
    """Restore into a staging database, verify it, then put it in place; the staging db never outlives a failure."""
    target, manifest = plan.target, plan.manifest
    major = int(manifest.source["server_major"])
    staging = new_scratch_name()
    staging_dsn = with_dbname(target.dsn, staging)

    @contextlib.contextmanager
    def phase(name: str):  # type: ignore[no-untyped-def]
        if progress:
            progress(name)
        started = time.perf_counter()
        yield
        timings[f"{name}_seconds"] = round(time.perf_counter() - started, 3)

    placed = False
    try:
        with connect(target.admin_dsn, autocommit=True, application_name="dbprotect-restore") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(staging)))
            set_marker(admin, staging, "scratch")
        with TableVerifier(staging_dsn, manifest, workers=jobs, server_major=major,
                           pg_bin_dir=pg_bin_dir) as tables:
            with contextlib.ExitStack() as plaintext:
                with phase("decrypt"):
                    archive = plaintext.enter_context(decrypted_archive(storage, manifest, identity, work_dir))
                    tables.expect(list_archive(archive, server_major=major, pg_bin_dir=pg_bin_dir))
                with phase("restore"):
                    run_pg_restore(archive, staging_dsn, server_major=major, jobs=jobs, keep_owners=True,
                                   pg_bin_dir=pg_bin_dir, progress=progress, on_table_data=tables.release)
            timings["tables_released_during_restore"] = tables.released_early
            with _analyze_alongside(staging_dsn, timings, enabled=analyze) as analyzed, phase("verify"):
                problems, objects = verify_restored_database(staging_dsn, manifest, plan.incoming, tables=tables)
                if problems and analyzed is not None:
                    analyzed.cancel()
        if problems:
            raise IntegrityError(f"restored data does not match backup {manifest.backup_id}: "
                                 + "; ".join(problems[:5]) + f"; {target.name!r} was not changed")
        with phase("swap"):
            _put_in_place(target, staging)
        placed = True
        return objects
    finally:
        if not placed:
            drop_database(target.admin_dsn, staging)


class _Analyze:
    """ANALYZE of the staging database on its own connection and thread."""

    def __init__(self, dsn: str) -> None:
        self._conn = connect(dsn, autocommit=True, application_name="dbprotect-restore")
        self._failure: BaseException | None = None
        self._cancelled = False
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="dbprotect-analyze", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._conn.execute("ANALYZE")
        except BaseException as exc:  # handed to the thread that waits for it
            self._failure = exc
        self.seconds = round(time.perf_counter() - started, 3)

    def cancel(self) -> None:
        self._cancelled = True
        with contextlib.suppress(Exception):
            self._conn.cancel_safe(timeout=5)

    def wait(self) -> None:
        self._thread.join()
        self._conn.close()
        if self._failure is not None and not self._cancelled:
            raise self._failure


@contextlib.contextmanager
def _analyze_alongside(dsn: str, timings: dict[str, float], *, enabled: bool = True) -> Iterator[_Analyze | None]:
    """ANALYZE the restored database while the block (verification) runs; wait for it after.

    Why: the restored database needs planner statistics before it is put in use, and ANALYZE
    only samples each table, so it fits beside the verification's full reads on the other
    connections instead of after them. ``analyze_seconds`` is ANALYZE's own duration, which
    overlaps ``verify_seconds``; ``analyze_wait_seconds`` is how long it ran on after verification.
    If the block fails, ANALYZE is cancelled; the staging database is dropped anyway.
    """
    if not enabled:
        yield None
        return
    analyze = _Analyze(dsn)
    try:
        yield analyze
    except BaseException:
        analyze.cancel()
        with contextlib.suppress(Exception):
            analyze.wait()
        raise
    started = time.perf_counter()
    analyze.wait()
    timings["analyze_wait_seconds"] = round(time.perf_counter() - started, 3)
    timings["analyze_seconds"] = analyze.seconds


def _put_in_place(target: RestoreTarget, staging: str) -> None:
    """Rename the verified staging database to the target's name (replacing an existing target)."""
    with connect(target.admin_dsn, autocommit=True, application_name="dbprotect-restore") as admin:
        if not target.existing:
            _rename(admin, staging, target.name)
            set_marker(admin, target.name, target.environment)
            return
        owner = admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                              (target.name,)).fetchone()
        retired = new_scratch_name()
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(target.name)))
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                          "AND pid <> pg_backend_pid()", (target.name,))
            _rename(admin, target.name, retired)
        except BaseException:
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(target.name)))
            raise
        try:
            _rename(admin, staging, target.name)
        except BaseException:
            _rename(admin, retired, target.name)
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(target.name)))
            raise
        set_marker(admin, target.name, target.environment)
        if owner and owner[0]:
            admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(target.name), sql.Identifier(owner[0])))
    drop_database(target.admin_dsn, retired)


def _rename(admin: psycopg.Connection, old: str, new: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))
