"""Chain-aware retention of continuous objects: which base backups and WAL a point-in-time window needs.

One pure function, :func:`plan_chain_retention`, no I/O: it is given the base backup records, the WAL
segment and partial records, the timeline history files, the policy and the clock, and returns every
object with a decision and its reasons. :mod:`dbprotect.core.retention.cleanup` lists the store into
these inputs and sweeps the plan under the database's lock.

The rules, and why:

1. **The window.** Every moment in ``[now - window, now]`` must stay restorable. A point-in-time
   restore starts from a base that *finished* before the target and replays WAL from that base's
   start, so the *anchor* is the newest (by start LSN) base finished at or before the window's start
   (by its own stamp *and* by a WAL sample, rule 9) whose
   whole chain (the base and every parent an incremental was taken against) is verified and whose
   own WAL (start to end LSN, without which it is not even consistent) is stored. The anchor, every
   base finished inside the window and every base starting after the anchor in the WAL are kept,
   whatever their state (an unverified base inside the window may be the only one reaching part of
   it). A deleted base finished before the window and started before the anchor, so every point of
   the window it reached, the anchor reaches through the same WAL.
2. **Unverified or failed bases never anchor.** When the newest base before the window is not
   verified, the older verified one anchors (and the newer one stays, being after the anchor).
   When no verified base finished before the window's start, nothing proves that any old base is
   not the only way into the window: no base is deleted.
3. **Chains.** A base is kept while any kept incremental depends on it, transitively.
4. **min_full_bases.** The N newest verified full bases are kept whatever the window (bases dated
   in the future are not counted: they would push real ones out).
5. **WAL.** Every segment (any timeline) ending after the oldest kept base's start LSN is kept;
   older WAL is deleted. Kept bases therefore stay restorable to every point their WAL reaches.
   Without an anchor no WAL is deleted: nothing proves it unneeded, and a lone record (perhaps
   forged, or dated in the future) must not decide where WAL starts.
6. **Partials.** A partial record goes when a completed segment of the same position, on its
   timeline or a later one, covers its whole range (the completed segment supersedes it) — or when
   it ends before the oldest kept base's start, like any WAL.
7. **History files.** ``<T>.history`` is what lets recovery follow a switch into timeline T from an
   earlier one, so it is kept while any kept base or WAL is on timeline T or earlier, and goes only
   once everything kept lives on later timelines (whose own history files name T's switch point).
   With nothing kept, nothing is deleted.
8. **Gaps.** A gap in the WAL means nothing before it reaches anything after it. Bases and WAL from
   before a gap only serve moments before the gap; they are deleted by rules 1 and 5 once those
   moments leave the window and a verified base has finished after them. The newest verified chain
   is never deleted, even when a gap cuts it off from the present: it may be the only restorable
   chain there is, and a gap is reported (:func:`wal_gaps` semantics), not repaired, here.
9. **Clock skew.** Only times at or before ``now - window`` can make a base the anchor, and the
   anchor only moves forward (in the WAL) as ``now`` does, so a record dated in the future is kept
   (rule 1) and never causes a deletion; every decision is monotone in ``now``. A base recorded with
   a clock running *behind* looks older than it is; the start-LSN order above keeps what it shadows.

Keep wins: an object with any keep reason is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

BaseState = Literal["verified", "unverified", "failed"]
ChainAction = Literal["keep", "delete"]


@dataclass(frozen=True)
class ChainBase:
    """One base backup as retention sees it (from ``base.json`` and its verification)."""

    base_id: str
    parent: str | None
    timeline: int
    start_lsn: int
    end_lsn: int
    finished_at: datetime
    state: BaseState

    @property
    def full(self) -> bool:
        return self.parent is None


@dataclass(frozen=True)
class ChainWal:
    """One stored WAL record: a completed segment or the partial upload of one."""

    segment: str
    kind: Literal["segment", "partial"]
    timeline: int
    start_lsn: int
    end_lsn: int
    #: The record's commit-time sample (:class:`~dbprotect.core.continuous.wal.SegmentRecord`): the server's
    #: clock read *before* its flush LSN, so every LSN up to ``safe_lsn`` was written by ``safe_time``.
    #: The server's clock is the one recovery targets are judged by; None where no sample was covered.
    safe_time: datetime | None = None
    safe_lsn: int | None = None

    @property
    def position(self) -> str:
        """The segment's place in the WAL regardless of timeline (log and seg number)."""
        return self.segment[8:]


@dataclass(frozen=True)
class ChainPolicy:
    """How much point-in-time history to keep: the window, and a floor of full bases."""

    window: timedelta
    min_full_bases: int = 1

    def __str__(self) -> str:
        days = self.window / timedelta(days=1)
        return f"window={days:g}d, min_full_bases={self.min_full_bases}"


@dataclass(frozen=True)
class ChainDecision:
    """One object (``base``, ``wal``, ``partial`` or ``history``) with its decision and every reason."""

    kind: Literal["base", "wal", "partial", "history"]
    name: str
    action: ChainAction
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class ChainPlan:
    """What the continuous part of a cleanup keeps and deletes; see the module docstring for the rules."""

    database: str
    policy: ChainPolicy
    now: datetime
    anchor: str | None
    wal_cutoff: int | None
    decisions: tuple[ChainDecision, ...]

    def of_kind(self, kind: str, action: ChainAction) -> list[ChainDecision]:
        return [d for d in self.decisions if d.kind == kind and d.action == action]

    @property
    def deletions(self) -> list[ChainDecision]:
        return [d for d in self.decisions if d.action == "delete"]

    def render(self) -> str:
        """One line per base and history file; WAL summarized per kind (there are thousands)."""
        cutoff = _lsn_text(self.wal_cutoff) if self.wal_cutoff is not None else "none"
        lines = [f"continuous retention for {self.database} at {self.now.isoformat()}: {self.policy}; "
                 f"anchor {self.anchor or 'none'}, WAL kept from {cutoff}"]
        for d in self.decisions:
            if d.kind in ("base", "history"):
                lines.append(f"{d.action:<6} {d.kind} {d.name}  {'; '.join(d.reasons)}")
        for kind in ("wal", "partial"):
            for action in ("keep", "delete"):
                chosen = self.of_kind(kind, action)
                if chosen:
                    lines.append(f"{action:<6} {len(chosen)} {kind} record(s) {chosen[0].name}..{chosen[-1].name}: "
                                 f"{chosen[0].reasons[0]}")
        lines.append(f"{len(self.of_kind('base', 'keep'))} base(s) kept, {len(self.of_kind('base', 'delete'))} "
                     f"deleted; {len(self.of_kind('wal', 'delete'))} WAL segment(s), "
                     f"{len(self.of_kind('partial', 'delete'))} partial(s) and "
                     f"{len(self.of_kind('history', 'delete'))} history file(s) deleted")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "policy": str(self.policy), "now": self.now.isoformat(),
                "anchor": self.anchor,
                "wal_cutoff": _lsn_text(self.wal_cutoff) if self.wal_cutoff is not None else None,
                "kept": len(self.decisions) - len(self.deletions), "deleted": len(self.deletions),
                "decisions": [d.to_dict() for d in self.decisions if d.kind in ("base", "history")]}


def _lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def chain_of(base: ChainBase, by_id: dict[str, ChainBase]) -> list[ChainBase] | None:
    """The base and its parents back to a full one, newest first; None when a parent is missing or loops."""
    chain = [base]
    seen = {base.base_id}
    while chain[-1].parent is not None:
        parent = by_id.get(chain[-1].parent)
        if parent is None or parent.base_id in seen:
            return None
        seen.add(parent.base_id)
        chain.append(parent)
    return chain


def wal_covers(wal: Iterable[ChainWal], timeline: int, start: int, end: int) -> bool:
    """Whether stored WAL of ``timeline`` covers ``[start, end]`` without a gap (a base needs at least
    the WAL from its start to its end to be consistent)."""
    reached = start
    for record in sorted((w for w in wal if w.timeline == timeline), key=lambda w: w.start_lsn):
        if record.start_lsn > reached:
            break
        reached = max(reached, record.end_lsn)
        if reached >= end:
            return True
    return end <= start


def wal_proves_consistent_by(wal: Iterable[ChainWal], base: ChainBase, moment: datetime) -> bool:
    """Whether a stored WAL sample proves, by the server's clock, that ``base``'s end LSN (where a restore
    from it becomes consistent) was written at or before ``moment``: a sample on the base's timeline
    whose flush LSN reaches the base's end and whose clock reading is not later than ``moment``. The
    base's own ``finished_at`` (another host's clock, perhaps running behind) is never enough alone."""
    return any(w.timeline == base.timeline and w.safe_lsn is not None and w.safe_time is not None
               and w.safe_lsn >= base.end_lsn and w.safe_time <= moment for w in wal)


def plan_chain_retention(bases: Iterable[ChainBase], wal: Iterable[ChainWal], histories: Iterable[int],
                         policy: ChainPolicy, now: datetime, *, database: str = "?") -> ChainPlan:
    """Decide, for every base, WAL record and history file, keep or delete, with reasons. Pure."""
    bases = sorted(bases, key=lambda b: (b.finished_at, b.base_id))
    by_id = {b.base_id: b for b in bases}
    keep: dict[str, list[str]] = {}
    window_start = now - policy.window

    wal = sorted(wal, key=lambda w: (w.timeline, w.start_lsn, w.kind))

    def restorable(base: ChainBase) -> bool:
        chain = chain_of(base, by_id)
        return (chain is not None and all(member.state == "verified" for member in chain)
                and wal_covers(wal, base.timeline, base.start_lsn, base.end_lsn))

    anchors = sorted((b for b in bases if b.finished_at <= window_start and restorable(b)
                      and wal_proves_consistent_by(wal, b, window_start)),
                     key=lambda b: (b.start_lsn, b.finished_at, b.base_id))
    anchor = anchors[-1] if anchors else None
    for base in bases:
        if anchor is None:
            keep.setdefault(base.base_id, []).append(
                "no verified base finished before the window's start: nothing proves an older one unneeded")
        elif base is anchor:
            keep.setdefault(base.base_id, []).append("anchor: the newest verified chain finished before the window")
        elif base.finished_at > window_start:
            reason = "finished inside the window"
            if base.finished_at > now:
                reason += " (dated in the future: clock skew, kept)"
            keep.setdefault(base.base_id, []).append(reason)
        elif base.start_lsn >= anchor.start_lsn:
            keep.setdefault(base.base_id, []).append("starts after the anchor in the WAL")
    fulls = [b for b in bases if b.full and b.state == "verified" and b.finished_at <= now]  # none from the future
    for i, base in enumerate(reversed(fulls[-policy.min_full_bases:] if policy.min_full_bases else [])):
        keep.setdefault(base.base_id, []).append(f"min_full_bases ({i + 1} of {policy.min_full_bases})")
    for base_id in list(keep):  # parents of kept incrementals (a chain is kept whole)
        child = by_id[base_id]
        while child.parent is not None and child.parent in by_id:
            parent = by_id[child.parent]
            reason = f"parent of kept incremental {child.base_id}"
            if reason not in keep.setdefault(parent.base_id, []):
                keep[parent.base_id].append(reason)
            child = parent

    decisions = [ChainDecision("base", b.base_id, "keep", tuple(keep[b.base_id])) if b.base_id in keep else
                 ChainDecision("base", b.base_id, "delete",
                               (f"{b.state}, finished before the anchor {anchor.base_id if anchor else '?'} and "
                                "needed by no kept incremental",)) for b in reversed(bases)]
    kept_bases = [b for b in bases if b.base_id in keep]
    # without a verified anchor nothing proves which WAL is unneeded (a lone record, perhaps forged or
    # dated in the future, must not pull the cutoff up): no WAL is deleted
    cutoff = min((b.start_lsn for b in kept_bases), default=None) if anchor is not None else None
    completed = [w for w in wal if w.kind == "segment"]
    kept_timelines: list[int] = [b.timeline for b in kept_bases]
    wal_decisions: list[ChainDecision] = []
    for record in wal:
        if cutoff is None:
            action, reason = "keep", "no verified base anchors the window: no WAL is deleted"
        elif record.end_lsn <= cutoff:
            action, reason = "delete", f"ends before the oldest kept base's start {_lsn_text(cutoff)}"
        elif record.kind == "partial" and any(
                c.position == record.position and c.timeline >= record.timeline and c.start_lsn <= record.start_lsn
                and c.end_lsn >= record.end_lsn for c in completed):
            action, reason = "delete", "partial superseded by the completed segment that covers it"
        else:
            action, reason = "keep", f"needed from the oldest kept base's start {_lsn_text(cutoff)} onward"
        if action == "keep":
            kept_timelines.append(record.timeline)
        wal_decisions.append(ChainDecision("wal" if record.kind == "segment" else "partial", record.segment,
                                           action, (reason,)))
    oldest_timeline = min(kept_timelines, default=None)
    history_decisions = []
    for timeline in sorted(set(histories)):
        if anchor is None or oldest_timeline is None or timeline >= oldest_timeline:
            history_decisions.append(ChainDecision("history", f"{timeline:08X}.history", "keep",
                                                   ("a kept base or WAL is on this timeline or an earlier one",)))
        else:
            history_decisions.append(ChainDecision("history", f"{timeline:08X}.history", "delete",
                                                   (f"everything kept is on timeline {oldest_timeline} or later",)))
    return ChainPlan(database, policy, now, anchor.base_id if anchor else None, cutoff,
                     (*decisions, *history_decisions, *wal_decisions))


__all__ = ["BaseState", "ChainBase", "ChainDecision", "ChainPlan", "ChainPolicy", "ChainWal", "chain_of",
           "plan_chain_retention", "wal_covers", "wal_proves_consistent_by"]
