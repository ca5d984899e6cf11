"""Rung 3 of the verification ladder, *restored*: a backup restored into a scratch database and compared.

The pipeline: the stored object is streamed from the store through SHA-256, age and zstd
(:mod:`dbprotect.core.restore.decrypt`) into pg_restore section by section, the data section's
tables loaded in parallel (:func:`dbprotect.core.pg.pg_restore.run_pg_restore_streamed`): no
plaintext copy ever touches the disk. Each committed table is already being read back
(:mod:`dbprotect.core.verify.tables`) while the rest restores, then the whole database is
compared with the manifest and the archive's table of contents (:mod:`dbprotect.core.verify.compare`).
The result is recorded as the backup's ``restored`` rung and audited.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyrage

from dbprotect.core.errors import CryptoError, DatabaseError, DbprotectError, StorageError, ToolError
from dbprotect.core.pg.pg_restore import Progress, run_pg_restore_streamed
from dbprotect.core.pg.scratch import ScratchDatabase, ScratchServer, staging_database
from dbprotect.core.pg.swap import SwapIntent, SwapRecovery, recover_and_sweep
from dbprotect.core.pg.tools import ToolPlace, connect
from dbprotect.core.restore.decrypt import feed_archive, read_archive_listing, sweep_restore_folders
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import record_verification
from dbprotect.core.store.manifest import Manifest, Verification
from dbprotect.core.verify.compare import parse_toc_listing, verify_restored_database
from dbprotect.core.verify.integrity import summarize_problems
from dbprotect.core.verify.tables import TableVerifier

if TYPE_CHECKING:
    from dbprotect.core.audit import AuditLog

CHUNK = 1 << 20

#: Failures of the environment (the scratch or target server unreachable or refusing, tools
#: missing or of the wrong version): the backup was not judged, so they are never recorded as a
#: failed check of it, and the audit log files them under their own outcome.
ENVIRONMENT_FAILURES: tuple[type[DbprotectError], ...] = (DatabaseError, ToolError)
#: The audit outcome of such a failure, distinct from ``failed`` (a backup that does not restore).
ENVIRONMENT_FAILURE_OUTCOME = "environment_failure"


def record_environment_failure(audit: AuditLog | None, action: str, *, database: str, backup_id: str,
                               failure: DbprotectError) -> None:
    """Audit a restore's or drill's environment failure as such (see :data:`ENVIRONMENT_FAILURES`).

    Why its own outcome: an auditor reading "failed" against a backup id concludes the backup is
    bad; an unreachable scratch server says nothing about it. A failure to write the record (the
    store is the environment too) must not hide the failure being reported, so it is swallowed.
    """
    if audit is None:
        return
    with contextlib.suppress(Exception):
        audit.record(action, database=database, outcome=ENVIRONMENT_FAILURE_OUTCOME, target=backup_id,
                     detail=failure.one_line(), data={"failure": "environment", "error": failure.code})


# -- rung 3 ------------------------------------------------------------------------------------

@dataclass
class RestoreVerification:
    """The outcome of restoring one backup into a scratch database and comparing it."""

    database: str
    backup_id: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tables: int = 0
    rows: int = 0
    objects: int = 0
    scratch_database: str = ""

    @property
    def detail(self) -> str:
        if self.ok:
            return (f"restored and verified: {self.tables} tables, {self.rows} rows, {self.objects} schema "
                    f"objects, sequences and large objects match the manifest")
        return "restore verification failed: " + summarize_problems(self.problems)

    def metrics(self) -> dict[str, float]:
        return {**self.timings, "tables": self.tables, "rows": self.rows, "objects": self.objects,
                "problems": len(self.problems)}

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "backup_id": self.backup_id, "ok": self.ok, "detail": self.detail,
                "problems": self.problems, "metrics": self.metrics(), "scratch_database": self.scratch_database}


class PhaseClock:
    """Per-phase wall-clock timings: ``with clock('restore'): ...`` adds ``restore_seconds`` to ``timings``."""

    def __init__(self, progress: Progress | None, timings: dict[str, float] | None = None) -> None:
        self.timings: dict[str, float] = {} if timings is None else timings
        self._progress = progress
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self._progress:
            self._progress(phase)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[f"{phase}_seconds"] = round(time.perf_counter() - started, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def verify_restore(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                   server: ScratchServer, *, pg_bin_dir: ToolPlace = None, jobs: int | None = None,
                   work_dir: str | os.PathLike[str] | None = None, by: str = "dbprotect",
                   record: bool = True, progress: Progress | None = None,
                   audit: AuditLog | None = None, prepare: bool = True) -> RestoreVerification:
    """Restore ``manifest``'s backup into a new scratch database, compare it, drop it, record the result.

    Refuses (:class:`RefusedError`) a scratch server of another major version, and raises
    :class:`CryptoError` for a wrong identity, :class:`DatabaseError` / :class:`StorageError` when
    the scratch server or the store fails, :class:`ToolError` when the environment's tools do not
    fit (missing, too old, no SSL, an archive version they cannot read); none is recorded, since
    the backup may be fine.
    A backup that does not decrypt, restore or compare is a failed ``restored`` rung.
    ``prepare``: first put the scratch server in order (:func:`prepare_server`); a drill does it itself.
    """
    server.require_major(int(manifest.source["server_major"]))
    if prepare:
        prepare_server(server.admin_dsn, audit=audit, database=manifest.database, work_dir=work_dir)
    result = RestoreVerification(manifest.database, manifest.backup_id, ok=False)
    clock = PhaseClock(progress)
    try:
        _restore_and_compare(storage, manifest, identity, server, clock, result,
                             pg_bin_dir=pg_bin_dir, jobs=jobs, work_dir=work_dir, progress=progress)
    except (CryptoError, DatabaseError, StorageError, ToolError):
        raise  # the key, the server, the store or the tools failed, not the backup: never recorded against it
    except DbprotectError as exc:
        result.problems.append(exc.one_line())
    result.ok = not result.problems
    result.timings = {**clock.timings, "total_seconds": clock.total()}
    if record:
        record_verification(storage, manifest, Verification(
            rung="restored", ok=result.ok, at=datetime.now(UTC), detail=result.detail, by=by,
            metrics=result.metrics()))
    if audit:
        audit.record("verify", database=manifest.database, outcome="ok" if result.ok else "failed",
                     target=manifest.backup_id, detail=result.detail,
                     data={"rung": "restored", "metrics": result.metrics()})
    return result


@dataclass
class StagedRestore:
    """A backup restored into a staging database and compared: ``problems`` empty means it matches."""

    database: ScratchDatabase
    problems: list[str]
    objects: int


@contextlib.contextmanager
def staged_restore(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, admin_dsn: str,
                   clock: PhaseClock, *, pg_bin_dir: ToolPlace = None, jobs: int | None = None,
                   work_dir: str | os.PathLike[str] | None = None, progress: Progress | None = None,
                   encoding: str | None = None, keep_owners: bool = False,
                   analyze: bool = False) -> Iterator[StagedRestore]:
    """The one staged pipeline: restore into a new staging database on ``admin_dsn``'s server and compare.

    Rung 3 (:func:`verify_restore`, drills) and the on-call restore
    (:mod:`dbprotect.core.restore.oncall`, the warm copy) both use it. The staging database is
    held by this process and dropped when the block ends, however it ends (unless the block
    renamed it into place); the archive is streamed, never written in plaintext.
    ``analyze`` runs ANALYZE beside the comparison (for a database about to take traffic).
    """
    major = int(manifest.source["server_major"])
    archive_major = int(manifest.pg_dump.get("major") or major)
    with staging_database(admin_dsn, encoding=encoding, application_name="dbprotect-restore") as staging:
        with TableVerifier(staging.dsn, manifest, workers=jobs, server_major=major, pg_bin_dir=pg_bin_dir) as tables:
            with clock("decrypt"):  # the table of contents only: the first megabytes of the object
                listing = read_archive_listing(storage, manifest, identity, pg_bin_dir=pg_bin_dir)
                expected = parse_toc_listing(listing)
                tables.expect(listing)

            def feed(write: Callable[[bytes], object], whole: bool) -> bool:
                return feed_archive(storage, manifest, identity, write, whole=whole)

            sections: dict[str, float] = {}
            with clock("restore"):
                run_pg_restore_streamed(feed, staging.dsn, listing=listing, server_major=major,
                                        archive_major=archive_major, jobs=jobs, keep_owners=keep_owners,
                                        pg_bin_dir=pg_bin_dir, progress=progress, on_table_data=tables.release,
                                        timings=sections)
            clock.timings.update(sections)  # within restore_seconds
            clock.timings["tables_released_during_restore"] = tables.released_early
            with _analyze_alongside(staging.dsn, clock.timings, enabled=analyze) as analyzed, clock("verify"):
                problems, objects = verify_restored_database(staging.dsn, manifest, expected, tables=tables,
                                                             pg_bin_dir=pg_bin_dir, owners=keep_owners)
                if problems and analyzed is not None:
                    analyzed.cancel()
        yield StagedRestore(staging, problems, objects)


def _restore_and_compare(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                         server: ScratchServer, clock: PhaseClock, result: RestoreVerification, *,
                         pg_bin_dir: ToolPlace, jobs: int | None, work_dir: str | os.PathLike[str] | None,
                         progress: Progress | None) -> None:
    with staged_restore(storage, manifest, identity, server.admin_dsn, clock, pg_bin_dir=pg_bin_dir, jobs=jobs,
                        work_dir=work_dir, progress=progress, encoding=manifest.source.get("encoding")) as staged:
        result.scratch_database = staged.database.name
        result.problems.extend(staged.problems)
        result.objects = staged.objects
        result.tables = len(manifest.tables)
        result.rows = manifest.total_rows


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


# -- what killed runs left: swaps, staging databases, plaintext folders ------------------------

def swap_intent_recorder(audit: AuditLog | None, database: str) -> Callable[[SwapIntent], None] | None:
    """The ``on_intent`` of a swap: the intent in the store's audit log before the first rename."""
    if audit is None:
        return None

    def record(intent: SwapIntent) -> None:
        audit.record("swap", database=database, outcome="started", target=intent.swap_id, detail=intent.describe(),
                     data={"swap_target": intent.target, "incoming": intent.incoming, "retired": intent.retired,
                           "environment": intent.environment})
    return record


def swap_recovery_recorder(audit: AuditLog | None, database: str) -> Callable[[SwapRecovery], None] | None:
    """The ``on_recovered`` of a swap recovery: what was finished or rolled back, in the audit log."""
    if audit is None:
        return None

    def record(outcome: SwapRecovery) -> None:
        audit.record("swap", database=database, outcome=outcome.action.replace(" ", "_"),
                     target=outcome.intent.swap_id, detail=outcome.detail,
                     data={"swap_target": outcome.intent.target, "incoming": outcome.intent.incoming,
                           "retired": outcome.intent.retired})
    return record


def prepare_server(admin_dsn: str, *, audit: AuditLog | None, database: str,
                   work_dir: str | os.PathLike[str] | None) -> list[SwapRecovery]:
    """What a restore does first on a server: finish or roll back interrupted swaps, sweep what killed runs left.

    Swaps are recovered (and audited), staging databases whose holder died are dropped by marker,
    and private plaintext folders a SIGKILLed restore left in the work folder are removed.
    """
    sweep_restore_folders(work_dir)
    return recover_and_sweep(admin_dsn, on_recovered=swap_recovery_recorder(audit, database))
