"""Point-in-time drills: restore to a random moment within the retained range and *prove* where it landed.

A restore to T that starts and answers proves little: recovery may have stopped early (WAL missing) or
late (a wrong target). The proof uses the heartbeat rows (:mod:`.heartbeat`) the receiver writes on the
source: T is chosen strictly between two consecutive heartbeats ``before`` and ``after``; the restored
server must hold ``before`` (with the same ``at`` as the source's) and nothing with a later id. Anything
else fails the drill as a failed backup (exit 7), the way a logical drill fails on a wrong row count.

Choosing T, and why:

- The *retained range* runs from the oldest base backup's end (nothing earlier is consistent) to the
  newest safely stored WAL (a completed segment's ``end_lsn``, or the newest partial upload's).
- A pair is eligible only when ``before`` is after the oldest base's end and the heartbeat *after*
  ``after`` was made below the stored WAL end: then ``after``'s commit record is certainly in the store,
  so its absence proves recovery stopped at T, not that the WAL ran out.
- A pair further apart than ``max_gap_seconds`` (twice the heartbeat interval by default) bounds T too
  loosely: when no pair is close enough the drill says the heartbeats are too sparse (DBP967) instead of
  passing.
- T is the midpoint of the pair, so the commit of ``before`` (milliseconds after its ``at``) falls before
  it and ``after``'s after it.

Measured: **RTO**, seconds from the drill's start to a promoted server whose proof held; **achieved
RPO**, T minus the newest heartbeat present (what a restore to T would have lost at most, as far as the
markers can tell). Both go into the audit record and a check record at
``<database>/continuous/drills/<at>-<token>.json`` (write-once, plain JSON), the PITR counterpart of the
logical drill's *drilled* rung.

Environment failures (no pg_ctl, no free port, a server that will not start for reasons of its own) are
raised as they are and recorded as such — never as a failed backup. A damaged backup object is never
reported as the environment either: the restore reads the failed fetch's own ``error[DBPnnn]`` line in
the scratch server's log (:func:`~.pitr._classified`), so a WAL segment that fails its SHA-256, does not
decrypt or is truncated fails the drill (recorded, naming the segment), before or after the server opened
for reads, while a store that cannot be reached mid-recovery is raised and recorded against nothing —
even when PostgreSQL, which reads any failed fetch as "no such file", then says recovery ended before
the target. The scratch data directory is always stopped and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from dbprotect.core.continuous.base import format_lsn, list_base_backups, parse_lsn
from dbprotect.core.continuous.heartbeat import APPLICATION_NAME, Heartbeat, read_heartbeats
from dbprotect.core.continuous.objects import read_json_record
from dbprotect.core.continuous.pitr import FETCH_FAILED, PitrResult, does_not_answer, stop_restored
from dbprotect.core.continuous.wal import (
    SegmentRecord,
    partial_record_key,
    segment_name,
    segment_number,
    segment_record_key,
    stored_segments,
    wal_gaps,
)
from dbprotect.core.errors import (
    CryptoError,
    DbprotectError,
    IntegrityError,
    NotFoundError,
    Refusals,
    RefusedError,
    ToolError,
)
from dbprotect.core.pg.tools import connect
from dbprotect.core.store import Storage
from dbprotect.core.store.base import ObjectNotFound

RUNG = "pitr-drilled"

#: ``restore(to_time, data_dir) -> PitrResult``: the configured point-in-time restore.
Restore = Callable[[datetime, Path], PitrResult]


def drills_prefix(database: str) -> str:
    return f"{database}/continuous/drills"


@dataclass(frozen=True)
class DrillMoment:
    target: datetime
    before: Heartbeat
    after: Heartbeat


@dataclass
class PitrDrillResult:
    database: str
    ok: bool
    detail: str
    target_time: str
    rto_seconds: float
    rpo_seconds: float
    chain: list[str] = field(default_factory=list)
    heartbeat_before: int | None = None
    heartbeat_after: int | None = None

    def metrics(self) -> dict[str, float]:
        return {"rto_seconds": self.rto_seconds, "rpo_seconds": self.rpo_seconds}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_stored_lsn(storage: Storage, database: str) -> int | None:
    """End of the newest WAL safely in the store (newest timeline): the partial upload following the newest
    completed segment when there is one, else that segment's end. None when no WAL is stored."""
    timelines = stored_segments(storage, database)
    if not timelines:
        return None
    timeline = max(timelines)
    newest = timelines[timeline][-1]
    record = SegmentRecord.from_store(storage, segment_record_key(database, newest), database=database, name=newest)
    end = parse_lsn(record.end_lsn)
    following = segment_name(timeline, segment_number(newest) + 1)
    with contextlib.suppress(ObjectNotFound, IntegrityError):
        partial = SegmentRecord.from_store(storage, partial_record_key(database, following), database=database,
                                           name=following)
        end = max(end, parse_lsn(partial.end_lsn))
    return end


def choose_moment(heartbeats: list[Heartbeat], *, earliest: datetime, stored_end: int, max_gap_seconds: float,
                  rng: random.Random) -> DrillMoment:
    """A random T between two consecutive heartbeats inside the retained range; DBP967 when none fits."""
    eligible = []
    for before, after, following in zip(heartbeats, heartbeats[1:], heartbeats[2:], strict=False):
        if before.at <= earliest or parse_lsn(following.lsn) > stored_end:
            continue
        if (after.at - before.at).total_seconds() <= max_gap_seconds and after.at > before.at:
            eligible.append((before, after))
    if not eligible:
        inside = [h for h in heartbeats if h.at > earliest and parse_lsn(h.lsn) <= stored_end]
        raise RefusedError(
            f"no two consecutive heartbeats at most {max_gap_seconds:g} s apart lie between the oldest base "
            f"backup's end ({earliest.isoformat()}) and the newest stored WAL ({format_lsn(stored_end)}): "
            f"{len(inside)} heartbeats there; a drill there could not prove where the restore landed",
            refusal=Refusals.PITR_HEARTBEATS_TOO_SPARSE,
            hint="run 'dbprotect wal receive' (it writes the heartbeats) for a few intervals, then drill")
    before, after = rng.choice(eligible)
    return DrillMoment(before.at + (after.at - before.at) / 2, before, after)


def prove_landing(conn: psycopg.Connection, moment: DrillMoment) -> tuple[datetime, str | None]:
    """(the newest heartbeat's ``at`` present on the restored server, a problem or None)."""
    present = read_heartbeats(conn)
    if not present:
        return moment.target, "the restored server holds no heartbeat at all"
    newest = present[-1]
    by_id = {h.id: h for h in present}
    if moment.before.id not in by_id:
        return newest.at, (f"heartbeat {moment.before.id} written at {moment.before.at.isoformat()} (before the "
                           f"target) is missing: the restore stopped early")
    if by_id[moment.before.id].at != moment.before.at:
        return newest.at, f"heartbeat {moment.before.id} differs from the source's"
    if newest.id != moment.before.id:
        return newest.at, (f"heartbeat {newest.id} written at {newest.at.isoformat()} (after the target) is "
                           f"present: the restore went past {moment.target.isoformat()}")
    return newest.at, None


def run_pitr_drill(*, storage: Storage, database: str, source_dsn: str, restore: Restore,
                   heartbeat_seconds: float, max_gap_seconds: float | None = None,
                   work_dir: str | os.PathLike[str] | None = None, by: str = "pitr-drill",
                   rng: random.Random | None = None, pg_bin_dir: Any = None,
                   now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> PitrDrillResult:
    """One point-in-time drill (see the module docstring). Records the check; returns the result (its
    ``ok`` False when the proof failed). Environment errors and refusals are raised, not recorded."""
    started = time.perf_counter()
    bases = list_base_backups(storage, database)
    if not bases:
        raise NotFoundError(f"{database} has no base backup to drill", hint=f"'dbprotect wal base-backup {database}'")
    stored_end = newest_stored_lsn(storage, database)
    if stored_end is None:
        raise NotFoundError(f"{database} has no WAL in the store to drill", hint=f"'dbprotect wal receive {database}'")
    if wal_gaps(storage, database):
        raise IntegrityError(f"the WAL of {database} has gaps ('dbprotect wal status {database}'): no drill "
                             "across them")
    earliest = datetime.fromisoformat(bases[0].finished_at)
    with contextlib.closing(connect(source_dsn, autocommit=True, application_name=APPLICATION_NAME)) as conn:
        heartbeats = read_heartbeats(conn, after=earliest)
        dbname = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
    moment = choose_moment(heartbeats, earliest=earliest, stored_end=stored_end,
                           max_gap_seconds=max_gap_seconds or 2 * heartbeat_seconds + 1,
                           rng=rng or random.Random(secrets.randbits(64)))
    scratch = Path(tempfile.mkdtemp(prefix="dbprotect-pitr-drill-", dir=work_dir))
    if os.geteuid() == 0:
        scratch.chmod(0o711)  # as root the restored server runs as 'postgres', which must reach data/
    data_dir = scratch / "data"
    restored: PitrResult | None = None
    try:
        try:
            restored = restore(moment.target, data_dir)
        except (IntegrityError, CryptoError) as exc:  # the stored backup itself is damaged
            return _finish(storage, database, by, now, moment, started, None, exc.one_line(), [])
        except OSError as exc:  # a tool missing or unrunnable, a disk full: the environment
            raise ToolError(f"the scratch server for the drill could not be run: {exc}") from None
        except ToolError as exc:
            if "recovery ended before" not in str(exc) or FETCH_FAILED in str(exc):
                raise  # the environment (the WAL stopped coming because a fetch failed so), not the backup
            return _finish(storage, database, by, now, moment, started, None, exc.one_line(), [])
        try:
            with psycopg.connect(restored.dsn(dbname), autocommit=True, connect_timeout=30) as restored_conn:
                newest_at, problem = prove_landing(restored_conn, moment)
        except psycopg.OperationalError as exc:  # named with its log's tail, as the restore names it
            raise ToolError(does_not_answer(exc, restored.data_dir)) from None
        return _finish(storage, database, by, now, moment, started, newest_at, problem, restored.chain)
    finally:
        if restored is not None:
            with contextlib.suppress(Exception):
                stop_restored(restored, pg_bin_dir=pg_bin_dir)
        shutil.rmtree(scratch, ignore_errors=True)


def _finish(storage: Storage, database: str, by: str, now: Callable[[], datetime], moment: DrillMoment,
            started: float, newest_at: datetime | None, problem: str | None, chain: list[str]) -> PitrDrillResult:
    rto = round(time.perf_counter() - started, 3)
    rpo = round((moment.target - newest_at).total_seconds(), 3) if newest_at else -1.0
    if problem is None:
        detail = (f"restored to {moment.target.isoformat()} in {rto:.1f} s: heartbeat {moment.before.id} present, "
                  f"{moment.after.id} absent; achieved RPO {rpo:.1f} s")
    else:
        detail = f"point-in-time drill failed: {problem}"
    result = PitrDrillResult(database, problem is None, detail, moment.target.isoformat(), rto, rpo, chain,
                             moment.before.id, moment.after.id)
    at = now()
    body = {"rung": RUNG, "at": at.isoformat(), "by": by, **result.to_dict(), "metrics": result.metrics()}
    key = f"{drills_prefix(database)}/{at.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}.json"
    storage.put_if_absent(key, json.dumps(body, indent=2, sort_keys=True).encode())
    return result


def recorded_pitr_drills(storage: Storage, database: str) -> list[dict[str, Any]]:
    """The recorded drills of ``database``, oldest first (untrusted: a record that does not parse is skipped
    and named by an ``unreadable`` entry rather than crashing the caller)."""
    found: list[dict[str, Any]] = []
    for info in sorted(storage.list(drills_prefix(database) + "/"), key=lambda i: i.key):
        if not info.key.endswith(".json"):
            continue
        try:
            record = read_json_record(storage, info.key)
        except DbprotectError as exc:
            found.append({"key": info.key, "unreadable": exc.one_line()})
            continue
        if record.get("rung") != RUNG or record.get("database") != database:
            found.append({"key": info.key, "unreadable": "not a point-in-time drill record of this database"})
            continue
        found.append(record)
    return found
