"""Cleanup of continuous objects: mark ``<database>/continuous/`` by the chain plan, then sweep it.

:func:`plan_continuous_cleanup` lists base backup records, their verification verdicts and WAL
records into :func:`~dbprotect.core.retention.chains.plan_chain_retention` (the mark);
:func:`sweep_continuous` deletes exactly that under the database's lock (the sweep), as
:mod:`dbprotect.core.retention.cleanup` does for logical backups; the config-level call is
:func:`dbprotect.core.ops.retention.cleanup_database`.

Crash safety: every record is deleted before its objects (a base without ``base.json`` and a
segment without its ``.json`` do not exist for restores); bases go newest first (children before
parents), WAL oldest first, so what remains is contiguous. Whatever a SIGKILL leaves — a headless
base, an object without its record — the next plan lists as a leftover and sweeps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime

from dbprotect.core.audit import AuditLog
from dbprotect.core.continuous.base import BaseBackupRecord, list_base_backups, parse_lsn
from dbprotect.core.continuous.objects import BASE_ID_PATTERN, BASE_RECORD, base_folder
from dbprotect.core.continuous.verdicts import base_state
from dbprotect.core.continuous.wal import (
    DEFAULT_SEGMENT_SIZE,
    HISTORY_NAME,
    SEGMENT_NAME,
    SegmentRecord,
    history_object_key,
    history_record_key,
    partial_record_key,
    segment_name,
    segment_number,
    segment_object_key,
    segment_record_key,
    wal_prefix,
)
from dbprotect.core.errors import DbprotectError, IntegrityError, Refusals, RefusedError, StorageError
from dbprotect.core.retention.chains import (
    ChainBase,
    ChainDecision,
    ChainPlan,
    ChainPolicy,
    ChainWal,
    plan_chain_retention,
)
from dbprotect.core.store import ObjectInfo, Storage
from dbprotect.core.store.lock import StoreClock, ensure_lock_held


@dataclass
class ContinuousCleanup:
    """The continuous part of a cleanup: the chain plan, and what its sweep removed."""

    plan: ChainPlan
    #: Leftovers no record names (a killed sweep's headless base, a killed ship's object): label → keys.
    garbage: dict[str, list[ObjectInfo]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    bytes_freed: int = 0

    def render(self) -> str:
        lines = [self.plan.render(), *(f"delete leftover {label}" for label in sorted(self.garbage))]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {"plan": self.plan.to_dict(), "garbage": sorted(self.garbage), "deleted": len(self.deleted),
                "deleted_objects": self.deleted_objects,
                "bytes_freed": self.bytes_freed}


def plan_continuous_cleanup(storage: Storage, database: str, policy: ChainPolicy, now: datetime, *,
                            store_clock: StoreClock | None = None) -> ContinuousCleanup | None:
    """The mark for ``<database>/continuous/``: list records, ask :func:`plan_chain_retention`. Deletes nothing.

    With ``store_clock`` (:func:`dbprotect.core.ops.retention.cleanup_database` always passes one), ``now``
    is the earlier of the caller's (the host's) clock and the store's (:class:`StoreClock`, as locks
    judge leases): every decision is monotone in ``now``, so the earlier clock deletes no more, and a
    host clock running fast never causes a deletion. A store that keeps no times, or whose clock cannot
    be probed (no write permission: then the sweep cannot take or re-check its lock, and deletes
    nothing), leaves the host's clock.

    None when the database has no continuous objects. A record that cannot be read (everything read is
    untrusted) refuses the continuous sweep (DBP970): a base whose parent or LSNs are unknown could
    be the one a kept incremental needs.
    """
    objects = list(storage.list(f"{database}/continuous/"))
    if not objects:
        return None
    try:
        records = list_base_backups(storage, database)
        bases = [ChainBase(r.base_id, r.parent, r.timeline, r.start, r.end, datetime.fromisoformat(r.finished_at),
                           base_state(storage, r)) for r in records]
        wal, histories, segment_size = _continuous_wal(storage, database, objects)
        wal = _with_samples(storage, database, wal, bases, segment_size)
        partial_objects = {p.segment: SegmentRecord.from_store(storage, partial_record_key(database, p.segment),
                                                               database=database, name=p.segment).object
                           for p in wal if p.kind == "partial"}
    except (IntegrityError, ValueError, TypeError) as exc:
        one_line = exc.one_line() if isinstance(exc, DbprotectError) else str(exc)
        raise RefusedError(f"continuous retention of {database}: a record cannot be read ({one_line}); "
                           "no base backup or WAL was deleted", refusal=Refusals.CONTINUOUS_RECORD_UNREADABLE,
                           hint="look at the record named; 'dbprotect wal verify' checks the stream") from None
    plan = plan_chain_retention(bases, wal, histories, policy, _earlier_clock(storage, database, now, store_clock),
                                database=database)
    return ContinuousCleanup(plan, _leftovers(database, objects, records, plan, segment_size, partial_objects))


def _earlier_clock(storage: Storage, database: str, now: datetime, store_clock: StoreClock | None) -> datetime:
    if store_clock is None:
        return now
    try:
        store_now = store_clock.now()
    except DbprotectError:
        return now
    return now if store_now is None else min(now, store_now)


def _leftovers(database: str, objects: list[ObjectInfo], records: list[BaseBackupRecord], plan: ChainPlan,
               segment_size: int, partial_objects: dict[str, str]) -> dict[str, list[ObjectInfo]]:
    """Objects no record names, safe to remove: a base folder without ``base.json`` older than a complete
    base (base backups are taken one at a time under the lock, so a newer complete one means this one
    is not in progress), and WAL objects without their record that the plan's cutoff or a completed
    segment makes unneeded (a ship in progress is always above the cutoff and not yet completed)."""
    garbage: dict[str, list[ObjectInfo]] = {}
    newest = max((r.base_id for r in records), default=None)
    complete = {r.base_id for r in records}
    prefix = f"{wal_prefix(database)}/"
    completed = {info.key.rsplit("/", 1)[-1].removesuffix(".json") for info in objects
                 if info.key.startswith(prefix) and not info.key.startswith(prefix + "partial/")
                 and info.key.endswith(".json")}
    keys = {info.key for info in objects}
    for info in objects:
        parts = info.key.split("/")
        if len(parts) == 5 and parts[2] == "base" and BASE_ID_PATTERN.match(parts[3]):
            if parts[3] not in complete and newest is not None and parts[3] < newest:
                garbage.setdefault(f"headless base {parts[3]}", []).append(info)
            continue
        rest = info.key.removeprefix(prefix)
        if rest == info.key or not rest.endswith(".zst.age"):
            continue
        folder, _, name = rest.partition("/")
        segment = name[:24]
        if not SEGMENT_NAME.match(segment):
            continue
        end = (segment_number(segment, segment_size) + 1) * segment_size
        below = plan.wal_cutoff is not None and end <= plan.wal_cutoff
        if folder == "partial":
            if partial_objects.get(segment) != info.key and (below or segment in completed):
                garbage.setdefault(f"WAL object {name}", []).append(info)
        elif f"{prefix}{folder}/{segment}.json" not in keys and below:
            garbage.setdefault(f"WAL object {name}", []).append(info)
    return garbage


def _continuous_wal(storage: Storage, database: str,
                    objects: list[ObjectInfo]) -> tuple[list[ChainWal], list[int], int]:
    """WAL records from a listing: completed segments by name (their size from one record), partials and
    history files by their records."""
    prefix = f"{wal_prefix(database)}/"
    completed: list[str] = []
    partials: list[str] = []
    histories: list[int] = []
    for info in objects:
        rest = info.key.removeprefix(prefix)
        if rest == info.key or not rest.endswith(".json"):
            continue
        folder, _, name = rest.removesuffix(".json").partition("/")
        if folder == "partial" and SEGMENT_NAME.match(name):
            partials.append(name)
        elif folder == "history" and HISTORY_NAME.match(name):
            histories.append(int(name[:8], 16))
        elif SEGMENT_NAME.match(name) and name[:8] == folder:
            completed.append(name)
    segment_size = DEFAULT_SEGMENT_SIZE
    if completed:
        sample = SegmentRecord.from_store(storage, segment_record_key(database, completed[0]), database=database,
                                          name=completed[0])
        segment_size = sample.plain_bytes
        if segment_size < (1 << 20) or segment_size > (1 << 30) or segment_size & (segment_size - 1):
            raise IntegrityError(f"WAL {completed[0]}: {segment_size} bytes is no WAL segment size")
    wal = []
    for name in completed:
        start = segment_number(name, segment_size) * segment_size
        wal.append(ChainWal(name, "segment", int(name[:8], 16), start, start + segment_size))
    for name in partials:
        record = SegmentRecord.from_store(storage, partial_record_key(database, name), database=database, name=name)
        wal.append(ChainWal(name, "partial", record.timeline, parse_lsn(record.start_lsn), parse_lsn(record.end_lsn),
                            *(record.sample() or ())))
    return wal, histories, segment_size


#: Completed segments read for their commit-time sample from each base's end onward: the first that holds
#: a sample reaching the base's end proves when it became consistent (rule 9 of chains.py).
SAMPLED_SEGMENTS_PER_BASE = 3


def _with_samples(storage: Storage, database: str, wal: list[ChainWal], bases: list[ChainBase],
                  segment_size: int) -> list[ChainWal]:
    """Completed segments listed by name carry no sample; read the records of the few segments from each
    base's end LSN onward (on its timeline), which date the base by the server's clock. A handful of
    reads per base, not one per segment (there are thousands)."""
    wanted: set[str] = set()
    for base in bases:
        first = base.end_lsn // segment_size
        wanted |= {segment_name(base.timeline, n, segment_size)
                   for n in range(first, first + SAMPLED_SEGMENTS_PER_BASE)}
    dated = []
    for record in wal:
        if record.kind == "segment" and record.segment in wanted:
            stored = SegmentRecord.from_store(storage, segment_record_key(database, record.segment),
                                              database=database, name=record.segment)
            record = ChainWal(record.segment, record.kind, record.timeline, record.start_lsn, record.end_lsn,
                              *(stored.sample() or ()))
        dated.append(record)
    return dated


def _continuous_keys(storage: Storage, database: str, decision: ChainDecision) -> list[ObjectInfo]:
    """The objects of one decided record, the record (what makes it exist) first."""
    if decision.kind == "base":
        objects = list(storage.list(f"{base_folder(database, decision.name)}/"))
        return sorted(objects, key=lambda info: (not info.key.endswith(f"/{BASE_RECORD}"), info.key))
    if decision.kind == "wal":
        record, data = segment_record_key(database, decision.name), segment_object_key(database, decision.name)
    elif decision.kind == "partial":
        record, data = partial_record_key(database, decision.name), f"{wal_prefix(database)}/partial/{decision.name}."
    else:
        record, data = history_record_key(database, decision.name), history_object_key(database, decision.name)
    found = {info.key: info for info in storage.list(record.rsplit("/", 1)[0] + "/")
             if info.key == record or info.key.startswith(data)}
    return sorted(found.values(), key=lambda info: (info.key != record, info.key))


def sweep_continuous(storage: Storage, done: ContinuousCleanup, *, dry_run: bool, audit: AuditLog) -> None:
    """Delete what the chain plan marked: bases newest first (children before parents), then WAL oldest
    first (what remains stays contiguous), then history files; each record before its objects, the
    lock re-checked before each. A kill leaves only records not yet deleted, all of them whole or
    headless (invisible); the next cleanup plans the same and finishes."""
    plan = done.plan
    order = {"base": 0, "partial": 1, "wal": 2, "history": 3}
    work = sorted(plan.deletions, key=lambda d: (order[d.kind], d.name))
    bases = [d for d in work if d.kind == "base"][::-1]
    work = bases + [d for d in work if d.kind != "base"]
    for label, leftovers in sorted(done.garbage.items()):
        for info in sorted(leftovers, key=lambda info: (not info.key.endswith(f"/{BASE_RECORD}"), info.key)):
            if not dry_run:
                ensure_lock_held(storage, plan.database, f"the deletion of leftover {label}")
                storage.delete(info.key)
            done.deleted_objects += 1
            done.bytes_freed += info.size
        done.deleted.append(f"leftover:{label}")
    if done.garbage and not dry_run:
        audit.record("delete", database=plan.database, target="continuous leftovers", outcome="deleted",
                     detail=", ".join(sorted(done.garbage)), data={"kind": "continuous-leftovers"})
    wal_done: list[str] = []
    for decision in work:
        try:
            if not dry_run:
                ensure_lock_held(storage, plan.database, f"the deletion of continuous {decision.kind} {decision.name}")
            for info in _continuous_keys(storage, plan.database, decision):
                if not dry_run:  # checked at each deletion
                    storage.delete(info.key)
                done.deleted_objects += 1
                done.bytes_freed += info.size
        except DbprotectError as exc:
            if not dry_run:
                with contextlib.suppress(DbprotectError):
                    audit.record("delete", database=plan.database, target=f"continuous {decision.name}",
                                 outcome="failed", detail=exc.one_line())
            raise StorageError(f"continuous cleanup of {plan.database} stopped at {decision.kind} {decision.name}: "
                               f"{exc.one_line()}", hint="every record still listed is whole; run the cleanup "
                                                         "again to finish") from exc
        done.deleted.append(f"{decision.kind}:{decision.name}")
        if dry_run:
            continue
        if decision.kind == "base":
            audit.record("delete", database=plan.database, target=f"base {decision.name}", outcome="deleted",
                         detail="; ".join(decision.reasons),
                         data={"kind": "continuous-base", "policy": str(plan.policy)})
        else:
            wal_done.append(decision.name)
    if wal_done and not dry_run:
        audit.record("delete", database=plan.database, target=f"continuous WAL {wal_done[0]}..{wal_done[-1]}",
                     outcome="deleted", detail=f"{len(wal_done)} WAL/partial/history record(s) outside the window",
                     data={"kind": "continuous-wal", "count": len(wal_done), "policy": str(plan.policy)})


__all__ = ["ContinuousCleanup", "plan_continuous_cleanup", "sweep_continuous"]
