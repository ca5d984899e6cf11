"""The measured RPO of continuous protection: how much committed work would a restore lose *now*?

The answer is the seconds between now and the newest moment through which every acknowledged
commit is in the store. That moment is not guessed from a shipping time: the receiver records, with
each stored WAL object, a commit-time sample of the source server (its ``clock_timestamp()`` and,
read after it, its flush LSN) that the object's end LSN covers (:class:`~dbprotect.core.continuous.
wal.CommitSampler`). The rule here is pure (:func:`evaluate_continuous_rpo`); reading the store and the
server is kept apart (:func:`newest_stored_point`, :func:`read_server_position`).

Everything read from the store is untrusted, and every way a record could overstate safety fails:

* a sample time after the server's own ``now`` (the two are one clock: no skew to excuse it);
* a record whose end LSN lies beyond the server's current LSN (forged, or another server's WAL; a
  partial's end is rounded up to its WAL page, so that page is allowed);
* a sample LSN beyond the record's own end;
* a record stamped by the store later than the store's "now" (:class:`~dbprotect.core.store.lock.
  StoreClock`, as locks judge leases) beyond the tolerance.

While nothing changes, the receiver keeps the newest record's sample fresh (an idle server writes no
WAL and must not turn red): it rewrites the partial's record, or, when no partial follows the newest
completed segment (an idle server after a WAL switch), writes ``progress.json`` for that segment,
which is trusted only for the segment it names and within its end.

And the RPO is never younger than the record itself by the store's clock: a stale record whose
sample was forged recent still shows its age. No base backup, a gap inside the stored WAL, a missing
or ``lost`` slot: the WAL cannot be replayed to that point, so the check fails whatever the age.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import psycopg

from dbprotect.core.continuous.base import format_lsn, parse_lsn
from dbprotect.core.continuous.objects import read_json_record
from dbprotect.core.continuous.wal import (
    HISTORY_NAME,
    SEGMENT_NAME,
    SegmentRecord,
    parse_record_time,
    partial_record_key,
    progress_record_key,
    segment_name,
    segment_number,
    segment_record_key,
    stored_segments,
    wal_prefix,
)
from dbprotect.core.errors import IntegrityError
from dbprotect.core.store import Storage
from dbprotect.core.store.base import ObjectNotFound

#: How many of the newest completed segments are tried when newer records are unreadable.
FALLBACK_RECORDS = 3
#: A partial's recorded end is rounded up to its WAL page, so it may lie up to one page past the server's LSN.
WAL_PAGE = 8192


@dataclass(frozen=True)
class StoredPoint:
    """The newest WAL object whose record carries a commit-time sample."""

    record_key: str
    kind: str  # "segment" | "partial"
    segment: str
    timeline: int
    end_lsn: int
    safe_time: datetime | None
    safe_lsn: int | None
    #: The record's ``modified`` time, stamped by the store (None when the store keeps no times).
    modified: datetime | None
    #: Why the record contradicts the object it speaks for (a progress record naming this segment with
    #: another end: only forgery or corruption writes one); such a point always fails.
    conflict: str | None = None


@dataclass(frozen=True)
class ServerPosition:
    """What the source server says now: its clock, current LSN and timeline, and the slot's state."""

    now: datetime
    current_lsn: int
    timeline: int
    slot_found: bool
    slot_wal_status: str | None
    slot_active: bool | None


@dataclass(frozen=True)
class ContinuousRpo:
    database: str
    target_seconds: float
    measured_seconds: float | None
    lag_bytes: int | None
    newest_lsn: str | None
    safe_time: datetime | None
    slot_wal_status: str | None
    slot_active: bool | None
    newest_base: str | None
    ok: bool
    reason: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "ok": self.ok, "rpo_seconds_target": self.target_seconds,
                "rpo_seconds_measured": self.measured_seconds, "receiver_lag_bytes": self.lag_bytes,
                "newest_stored_lsn": self.newest_lsn,
                "safe_through": self.safe_time.isoformat() if self.safe_time else None,
                "slot_wal_status": self.slot_wal_status, "slot_active": self.slot_active,
                "newest_base": self.newest_base, "reason": self.reason, "notes": list(self.notes)}


def _point(storage: Storage, database: str, key: str, name: str, modified: datetime | None) -> StoredPoint:
    record = SegmentRecord.from_store(storage, key, database=database, name=name)
    if record.kind not in ("segment", "partial") or record.timeline != int(name[:8], 16):
        raise IntegrityError(f"{key}: a {record.kind} record of timeline {record.timeline} in a segment's place")
    return StoredPoint(key, record.kind, name, record.timeline, parse_lsn(record.end_lsn),
                       *(record.sample() or (None, None)), modified)


def newest_stored_point(storage: Storage, database: str, notes: list[str] | None = None) -> StoredPoint | None:
    """The newest readable WAL record of the newest timeline: the current partial when it continues the
    completed segments (or there are none), else the newest completed segment; unreadable records are
    skipped (named in ``notes``) and an older one is tried."""
    notes = notes if notes is not None else []
    modified: dict[str, datetime | None] = {}
    partials: list[str] = []
    prefix = wal_prefix(database) + "/"
    for info in storage.list(prefix):
        modified[info.key] = info.modified
        rest = info.key[len(prefix):].split("/")
        if len(rest) == 2 and rest[0] == "partial" and rest[1].endswith(".json"):
            name = rest[1].removesuffix(".json")
            if SEGMENT_NAME.match(name):
                partials.append(name)
    segments = stored_segments(storage, database)
    timeline = max([*segments, *(int(p[:8], 16) for p in partials)], default=None)
    if timeline is None:
        return None
    completed = segments.get(timeline, [])
    candidates: list[tuple[str, str]] = []
    newest_number = segment_number(completed[-1]) if completed else None
    for name in sorted((p for p in partials if int(p[:8], 16) == timeline), reverse=True):
        if newest_number is None or segment_number(name) == newest_number + 1:
            candidates.append((partial_record_key(database, name), name))
            break
    candidates += [(segment_record_key(database, name), name) for name in reversed(completed[-FALLBACK_RECORDS:])]
    newest_segment = completed[-1] if completed else None
    for key, name in candidates:
        try:
            point = _point(storage, database, key, name, modified.get(key))
        except ObjectNotFound:
            continue  # a partial superseded between the listing and the read
        except IntegrityError as exc:
            notes.append(f"unreadable WAL record skipped: {exc.one_line()}")
            continue
        if point.kind == "segment" and name == newest_segment:
            point = _with_progress(storage, database, point, modified.get(progress_record_key(database)), notes)
        if point.safe_time is not None:
            return point
        notes.append(f"{name}: record carries no commit-time sample")
    return None


def _with_progress(storage: Storage, database: str, point: StoredPoint, modified: datetime | None,
                   notes: list[str]) -> StoredPoint:
    """The newest completed segment with the receiver's newer sample (``progress.json``), when that names
    this very segment and lies within its end; otherwise the point unchanged."""
    key = progress_record_key(database)
    try:
        value = read_json_record(storage, key)
        if value.get("segment") != point.segment or value.get("timeline") != point.timeline:
            return point  # about another segment (a partial followed since): not this one's
        claimed_end = parse_lsn(value.get("end_lsn"))
        safe_time, safe_lsn = parse_record_time(value.get("safe_time")), parse_lsn(value.get("safe_lsn"))
    except ObjectNotFound:
        return point
    except IntegrityError as exc:
        notes.append(f"unreadable WAL progress record ignored: {exc.one_line()}")
        return point
    if claimed_end != point.end_lsn:
        # The receiver writes the segment's own end here, and a completed segment's end never changes:
        # another end for this very segment is forged or corrupt, and judged as the claim it makes
        # (beyond the server's LSN it is "forged"), never quietly set aside.
        return replace(point, end_lsn=claimed_end, safe_time=safe_time or point.safe_time,
                       safe_lsn=safe_lsn, modified=modified, record_key=key,
                       conflict=f"{key} names {point.segment} ending at {format_lsn(claimed_end)}, but the "
                                f"segment's record ends at {format_lsn(point.end_lsn)}: forged or corrupt")
    if safe_time is None or safe_lsn > point.end_lsn:
        notes.append("WAL progress record ignored: its sample lies beyond the segment it names")
        return point
    if point.safe_time is not None and safe_time <= point.safe_time:
        return point
    return replace(point, safe_time=safe_time, safe_lsn=safe_lsn, modified=modified, record_key=key)


def timeline_switch_gaps(segments: dict[int, list[str]], partials: list[str], histories: set[int], *,
                         from_timeline: int) -> list[tuple[str, str]]:
    """Where recovery from a base on ``from_timeline`` cannot follow a later timeline switch (pure).

    At a switch in segment *n*, the old timeline ends with *n* (completed or partial) and the new one
    begins with its own *n*; recovery needs ``<T>.history`` to follow into *T*. So for each stored
    timeline *T* after ``from_timeline``: its history file must be stored, and its first stored file
    (completed or partial) must follow the previous stored timeline's last one without a hole. The
    switch LSN itself is inside the encrypted history file, which this check (holding no key) cannot
    read: the rule is by segment position, which is what the store can show. Gaps inside a timeline
    are :func:`~.wal.wal_gaps`' part.
    """
    by_timeline: dict[int, list[int]] = {}
    for timeline, names in segments.items():
        by_timeline.setdefault(timeline, []).extend(segment_number(name) for name in names)
    for name in partials:
        by_timeline.setdefault(int(name[:8], 16), []).append(segment_number(name))
    timelines = sorted(t for t in by_timeline if t >= from_timeline)
    gaps: list[tuple[str, str]] = []
    for previous, timeline in itertools.pairwise(timelines):
        if timeline not in histories:
            history = f"{timeline:08X}.history"
            gaps.append((history, history))
        last, first = max(by_timeline[previous]), min(by_timeline[timeline])
        if first > last + 1:
            gaps.append((segment_name(timeline, last + 1), segment_name(timeline, first - 1)))
    return gaps


def stored_timeline_switch_gaps(storage: Storage, database: str, *, from_timeline: int) -> list[tuple[str, str]]:
    """:func:`timeline_switch_gaps` over what the store lists (records only: nothing is decrypted)."""
    prefix = wal_prefix(database) + "/"
    partials: list[str] = []
    histories: set[int] = set()
    for info in storage.list(prefix):
        rest = info.key[len(prefix):].split("/")
        if len(rest) != 2 or not rest[1].endswith(".json"):
            continue
        name = rest[1].removesuffix(".json")
        if rest[0] == "partial" and SEGMENT_NAME.match(name):
            partials.append(name)
        elif rest[0] == "history" and HISTORY_NAME.match(name):
            histories.add(int(name[:8], 16))
    return timeline_switch_gaps(stored_segments(storage, database), partials, histories,
                                from_timeline=from_timeline)


def read_server_position(conn: psycopg.Connection, slot: str) -> ServerPosition:
    """The server's clock, current LSN, timeline and the slot's ``wal_status``/``active``, in one query."""
    row = conn.execute(
        "SELECT clock_timestamp(), pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint()),"
        " s.slot_name IS NOT NULL, s.wal_status, s.active"
        " FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = %s", (slot,)).fetchone()
    assert row is not None
    return ServerPosition(now=row[0], current_lsn=parse_lsn(row[1]), timeline=int(row[2] or 1),
                          slot_found=bool(row[3]), slot_wal_status=row[4], slot_active=row[5])


def evaluate_continuous_rpo(database: str, *, target_seconds: float, point: StoredPoint | None,
                            server: ServerPosition, store_now: datetime | None, tolerance: timedelta,
                            newest_base: str | None, gaps: list[tuple[str, str]],
                            notes: tuple[str, ...] = ()) -> ContinuousRpo:
    """Pass only when the WAL can be replayed to a stored point and that point is within ``target_seconds``."""

    def result(ok: bool, reason: str, measured: float | None = None) -> ContinuousRpo:
        return ContinuousRpo(
            database, target_seconds, None if measured is None else round(measured, 3),
            None if point is None else max(0, server.current_lsn - (point.safe_lsn or point.end_lsn)),
            None if point is None else format_lsn(point.end_lsn), None if point is None else point.safe_time,
            server.slot_wal_status, server.slot_active, newest_base, ok, reason, notes)

    if newest_base is None:
        return result(False, "no base backup is stored: WAL alone restores nothing")
    if gaps:
        first, last = gaps[0]
        return result(False, f"WAL gap in the store ({first}..{last}): recovery stops before it")
    if not server.slot_found:
        return result(False, "the replication slot does not exist on the server: the receiver cannot resume")
    if server.slot_wal_status == "lost":
        return result(False, "the replication slot is lost (max_slot_wal_keep_size exceeded): WAL is missing; "
                             "take a new base backup")
    if point is None:
        return result(False, "no stored WAL record carries a commit-time sample yet")
    assert point.safe_time is not None and point.safe_lsn is not None
    current_page_end = -(-server.current_lsn // WAL_PAGE) * WAL_PAGE
    if point.timeline == server.timeline and (point.end_lsn > current_page_end
                                              or point.safe_lsn > server.current_lsn):
        return result(False, f"the newest WAL record claims {format_lsn(point.end_lsn)}, beyond the server's "
                             f"current {format_lsn(server.current_lsn)}: forged, or another server's WAL")
    if point.conflict is not None:
        return result(False, point.conflict)
    if point.safe_lsn > point.end_lsn:
        return result(False, f"{point.segment}: its commit-time sample lies beyond the object's end")
    if point.safe_time > server.now:
        return result(False, f"{point.segment}: its commit-time sample is dated "
                             f"{(point.safe_time - server.now).total_seconds():.0f} s after the server's now")
    measured = (server.now - point.safe_time).total_seconds()
    if point.modified is not None and store_now is not None:
        if point.modified > store_now + tolerance:
            return result(False, f"{point.segment}: its record is stamped "
                                 f"{(point.modified - store_now).total_seconds():.0f} s after the store's now")
        measured = max(measured, (store_now - point.modified).total_seconds())
    state = f"slot {server.slot_wal_status or '?'}, {'active' if server.slot_active else 'inactive'}"
    if measured > target_seconds:
        return result(False, f"measured RPO {measured:.0f} s is over the target of {target_seconds:g} s "
                             f"(newest stored {format_lsn(point.end_lsn)}; {state})", measured)
    return result(True, f"measured RPO {measured:.0f} s within {target_seconds:g} s "
                        f"(newest stored {format_lsn(point.end_lsn)}; {state})", measured)
