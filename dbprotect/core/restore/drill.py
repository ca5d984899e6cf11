"""Restore drills, rung 4 (*drilled*): how long until a usable, verified database, and is it fast enough?

A drill restores the newest complete backup into a scratch database and verifies it exactly as
rung 3 does (:func:`dbprotect.core.restore.staged.verify_restore`). Its **RTO** is the wall-clock time
from the start of the drill (reading the manifest, fetching and decrypting the object) to a
verified database: what an on-call engineer would wait. A drill fails when verification fails or
when the RTO exceeds the database's target (``rto_minutes``, default 30 from seed 003).

The **RPO at drill time** is the age of the restored data: now minus the backup's snapshot time.
Both are recorded as numbers (``rto_seconds``, ``rpo_seconds``) so the UI can plot them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyrage

from dbprotect.core.errors import NotFoundError
from dbprotect.core.pg.pg_restore import Progress
from dbprotect.core.pg.scratch import ScratchServer
from dbprotect.core.restore.staged import RestoreVerification, prepare_server, verify_restore
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import list_backups, load_manifest, record_verification, recorded_verifications
from dbprotect.core.store.manifest import Verification

if TYPE_CHECKING:
    from dbprotect.core.audit import AuditLog


@dataclass
class DrillResult:
    database: str
    backup_id: str
    ok: bool
    rto_seconds: float
    rto_target_seconds: float
    rpo_seconds: float
    verification: RestoreVerification
    reason: str

    def metrics(self) -> dict[str, float]:
        return {**self.verification.timings, "rto_seconds": self.rto_seconds,
                "rto_target_seconds": self.rto_target_seconds, "rpo_seconds": self.rpo_seconds,
                "rows": self.verification.rows, "tables": self.verification.tables}

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "backup_id": self.backup_id, "ok": self.ok, "reason": self.reason,
                "metrics": self.metrics(), "problems": self.verification.problems}


def run_drill(storage: Storage, database: str, identity: pyrage.x25519.Identity, server: ScratchServer, *,
              rto_minutes: float, backup_id: str | None = None, pg_bin_dir: str | None = None,
              jobs: int | None = None, work_dir: str | os.PathLike[str] | None = None, by: str = "drill",
              record: bool = True, progress: Progress | None = None, audit: AuditLog | None = None,
              now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> DrillResult:
    """Drill the newest complete backup of ``database`` (or ``backup_id``) and record rung *drilled*."""
    started = time.perf_counter()
    backup_id = backup_id or newest_complete_backup(storage, database)
    manifest = load_manifest(storage, database, backup_id)
    prepare_server(server.admin_dsn, audit=audit, database=database, work_dir=work_dir)
    rpo_seconds = round((now() - manifest.snapshot_at).total_seconds(), 3)
    verification = verify_restore(storage, manifest, identity, server, pg_bin_dir=pg_bin_dir, jobs=jobs,
                                  work_dir=work_dir, by=by, record=record, progress=progress, prepare=False)
    rto = round(time.perf_counter() - started, 3)
    target = rto_minutes * 60
    if not verification.ok:
        ok, reason = False, f"drill failed: {verification.detail}"
    elif rto > target:
        ok, reason = False, f"drill failed: RTO {rto:.1f} s exceeds the target of {_minutes(rto_minutes)}"
    else:
        ok, reason = True, f"verified database in {rto:.1f} s (RTO target {_minutes(rto_minutes)})"
    result = DrillResult(database, backup_id, ok, rto, round(target, 3), rpo_seconds, verification, reason)
    if record:
        record_verification(storage, manifest, Verification(
            rung="drilled", ok=ok, at=now(), detail=reason, by=by, metrics=result.metrics()))
    if audit:
        audit.record("drill", database=database, outcome="ok" if ok else "failed", target=backup_id,
                     detail=reason, data={"metrics": result.metrics()})
    return result


def _minutes(value: float) -> str:
    return f"{value:g} min"


def newest_complete_backup(storage: Storage, database: str) -> str:
    for entry in list_backups(storage, database):
        if entry.complete and not entry.clock_skew:
            return entry.backup_id
    raise NotFoundError(f"database {database!r} has no complete backup in {storage.uri} to drill",
                        hint=f"take one with 'dbprotect backup {database}'")


@dataclass(frozen=True)
class LastDrill:
    backup_id: str
    at: datetime
    ok: bool
    rto_seconds: float | None
    detail: str


def last_drill(storage: Storage, database: str) -> LastDrill | None:
    """The most recent drill of ``database`` (for restore plans: "the last drill took ...")."""
    newest = None
    for entry in list_backups(storage, database):
        check = entry.latest("drilled")
        if check and (newest is None or check.at > newest[1].at):
            newest = (entry, check)
    if newest is None:
        return None
    entry, check = newest
    drills = [v for v in recorded_verifications(storage, database, entry.backup_id) if v.rung == "drilled"]
    if not drills:
        return LastDrill(entry.backup_id, check.at, check.ok, None, "")
    latest = drills[-1]  # recorded in write order: the sequence, not a clock, says which is newest
    return LastDrill(entry.backup_id, latest.at, latest.ok, latest.metrics.get("rto_seconds"), latest.detail)


# -- resolved from configuration: what the CLI and Dagster call ---------------------------------


