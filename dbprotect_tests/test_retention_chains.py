"""Chain-aware retention of continuous objects as a pure function: random histories (hypothesis) of
full and incremental bases, timeline switches, WAL gaps and skewed clocks, and scenarios with exact answers.

The oracle here is written independently of :mod:`dbprotect.core.retention.chains`: a point in time is
restorable when some base that finished before it has its whole chain verified and stored, and stored
WAL reaches from that base's start to the point without a gap. (What the objects allow; today's
:func:`dbprotect.core.continuous.pitr.choose_base` takes the newest base whatever its verdict.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbprotect.core.retention.chains import (
    ChainBase,
    ChainPolicy,
    ChainWal,
    plan_chain_retention,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SEG = 16  # LSN units per segment: small numbers, same arithmetic
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def seg_name(timeline: int, number: int) -> str:
    return f"{timeline:08X}{0:08X}{number:08X}"


@dataclass
class History:
    """A generated past: the stored objects, and every (time, LSN) a restore could aim at."""

    bases: list[ChainBase]
    wal: list[ChainWal]
    histories: list[int]
    points: list[tuple[datetime, int, int]]  # (time, lsn, timeline)
    last_time: datetime
    real_finish: dict[str, datetime]  # each base's true finish (``bases`` may carry a clock running ahead)

    def true_bases(self) -> list[ChainBase]:
        return [replace(b, finished_at=self.real_finish[b.base_id]) for b in self.bases]


@st.composite
def histories(draw: st.DrawFn) -> History:
    """Hours of activity: each hour WAL grows; sometimes a base (full or incremental), a timeline switch,
    a gap (WAL the store never got), a clock running ahead when a base was recorded."""
    steps = draw(st.integers(1, 40))
    lsn, timeline = 3, 1
    bases: list[ChainBase] = []
    missing: set[tuple[int, int]] = set()  # (timeline, segment number) never stored
    segment_timeline: dict[int, int] = {}
    partial_of_switch: list[ChainWal] = []
    histories_: list[int] = []
    points: list[tuple[datetime, int, int]] = []
    real_finish: dict[str, datetime] = {}
    for step in range(steps):
        now = T0 + timedelta(hours=step)
        event = draw(st.sampled_from(["wal", "wal", "full", "incremental", "switch", "gap"]))
        grow = draw(st.integers(1, 3 * SEG))
        first_segment = lsn // SEG
        if event == "switch":
            # the old timeline's segment at the switch ends as a partial; the new timeline takes over
            partial_of_switch.append(ChainWal(seg_name(timeline, first_segment), "partial", timeline,
                                              first_segment * SEG, lsn))
            timeline += 1
            histories_.append(timeline)
        lsn += grow
        for number in range(first_segment, lsn // SEG + 1):
            segment_timeline[number] = timeline
        if event == "gap":
            for number in range(first_segment + 1, lsn // SEG):
                missing.add((timeline, number))
        if event in ("full", "incremental"):
            parent = None
            if event == "incremental" and bases:
                parent = draw(st.sampled_from(bases)).base_id if draw(st.booleans()) else bases[-1].base_id
            start = lsn
            lsn += draw(st.integers(1, SEG))
            for number in range(start // SEG, lsn // SEG + 1):
                segment_timeline[number] = timeline
            skew = timedelta(hours=draw(st.sampled_from([0, 0, 0, 5, 200])))
            state = draw(st.sampled_from(["verified", "verified", "verified", "unverified", "failed"]))
            bases.append(ChainBase(f"b{step:03d}", parent, timeline, start, lsn, now + timedelta(minutes=30) + skew,
                                   state))
            real_finish[bases[-1].base_id] = now + timedelta(minutes=30)
            points.append((now + timedelta(minutes=30), lsn, timeline))  # the base's own end (real time) too
        points.append((now + timedelta(minutes=45), lsn, timeline))
    wal = []
    newest = lsn // SEG
    for number, tl in sorted(segment_timeline.items()):
        if (tl, number) in missing:
            continue
        if number == newest:  # the segment being written: only a partial upload
            wal.append(ChainWal(seg_name(tl, number), "partial", tl, number * SEG, lsn))
        else:
            wal.append(ChainWal(seg_name(tl, number), "segment", tl, number * SEG, (number + 1) * SEG))
    if draw(st.booleans()) and wal:  # a stale partial a crash left beside its completed segment
        done = draw(st.sampled_from(wal))
        if done.kind == "segment":
            wal.append(ChainWal(done.segment, "partial", done.timeline, done.start_lsn, done.end_lsn - 3))
    wal += partial_of_switch
    # commit-time samples as the receiver records them: each record carries the newest (time, LSN) of its
    # timeline that its content reaches (every point is a true one: WAL up to it was written by then and
    # nothing after it was); "none" is a store whose records predate samples, "some" drops a few
    sampled = draw(st.sampled_from(["all", "all", "some", "none"]))
    wal = [_with_sample(w, points) if sampled == "all" or (sampled == "some" and draw(st.booleans())) else w
           for w in wal]
    return History(bases, wal, histories_, points, T0 + timedelta(hours=steps), real_finish)


def _with_sample(record: ChainWal, points: list[tuple[datetime, int, int]]) -> ChainWal:
    reached = [(lsn, when) for when, lsn, timeline in points if timeline == record.timeline and lsn <= record.end_lsn]
    if not reached:
        return record
    lsn, when = max(reached)
    return replace(record, safe_time=when, safe_lsn=lsn)


def restorable(point: tuple[datetime, int, int], bases: list[ChainBase], wal: list[ChainWal]) -> bool:
    """Can a point-in-time restore reach ``point`` from some base with these objects (the oracle)?"""
    return any(reaches(base, point, bases, wal) for base in bases if base.finished_at <= point[0])


def reaches(base: ChainBase, point: tuple[datetime, int, int], bases: list[ChainBase], wal: list[ChainWal]) -> bool:
    _when, lsn, _timeline = point
    by_id = {b.base_id: b for b in bases}
    member: ChainBase | None = base
    while member is not None:
        if member.state != "verified":
            return False
        if member.parent is None:
            break
        member = by_id.get(member.parent)
        if member is None:
            return False
    if lsn < base.end_lsn:
        return False
    reached = base.start_lsn  # WAL of any timeline, by position (the switch's partial included)
    for record in sorted(wal, key=lambda w: w.start_lsn):
        if record.start_lsn <= reached:
            reached = max(reached, record.end_lsn)
    return reached >= lsn


def kept_after(history: History, plan: object) -> tuple[list[ChainBase], list[ChainWal]]:
    deleted = {(d.kind, d.name) for d in plan.deletions}  # type: ignore[attr-defined]
    bases = [b for b in history.bases if ("base", b.base_id) not in deleted]
    wal = [w for w in history.wal if ("wal" if w.kind == "segment" else "partial", w.segment) not in deleted]
    return bases, wal


policies = st.builds(ChainPolicy, window=st.integers(1, 30).map(lambda h: timedelta(hours=h)),
                     min_full_bases=st.integers(0, 3))


@st.composite
def clocks(draw: st.DrawFn, history: History) -> datetime:
    return history.last_time + timedelta(minutes=draw(st.integers(-60 * 40, 60 * 60)))


@pytest.mark.slow
@PROPERTY
@given(histories(), policies, st.data())
def test_every_point_in_the_window_stays_restorable(history: History, policy: ChainPolicy, data: st.DataObject) -> None:
    now = data.draw(clocks(history))
    plan = plan_chain_retention(history.bases, history.wal, history.histories, policy, now)
    _, wal = kept_after(history, plan)
    # restorability is judged by the real times (a base stamped by a clock running ahead truly finished
    # earlier: the points after its real finish are reachable from it); the planner sees the stamps
    truth = history.true_bases()
    bases = [b for b in truth if ("base", b.base_id) not in {(d.kind, d.name) for d in plan.deletions}]
    for point in history.points:
        if now - policy.window <= point[0] <= now and restorable(point, truth, history.wal):
            assert restorable(point, bases, wal), (point, plan.render())
    # never the only restorable chain: what could be restored before still can be, at some point
    if any(restorable(p, truth, history.wal) for p in history.points):
        assert any(restorable(p, bases, wal) for p in history.points), plan.render()


@pytest.mark.slow
@PROPERTY
@given(histories(), policies, st.data())
def test_nothing_kept_beyond_the_rules(history: History, policy: ChainPolicy, data: st.DataObject) -> None:
    now = data.draw(clocks(history))
    plan = plan_chain_retention(history.bases, history.wal, history.histories, policy, now)
    assert len(plan.decisions) == len(history.bases) + len(history.wal) + len(set(history.histories))
    assert all(d.reasons for d in plan.decisions)
    kept = {d.name for d in plan.of_kind("base", "keep")}
    by_id = {b.base_id: b for b in history.bases}
    if plan.anchor is not None:
        anchor = by_id[plan.anchor]
        assert anchor.state == "verified" and anchor.finished_at <= now - policy.window
        newest_fulls = [b.base_id for b in sorted(history.bases, key=lambda b: (b.finished_at, b.base_id))
                        if b.parent is None and b.state == "verified" and b.finished_at <= now]
        newest_fulls = newest_fulls[-policy.min_full_bases:] \
            if policy.min_full_bases else []
        needed = {b.base_id for b in history.bases
                  if b.finished_at > now - policy.window or b.start_lsn >= anchor.start_lsn}
        needed |= set(newest_fulls)
        closure = set(needed)
        for base_id in needed:
            member = by_id[base_id]
            while member.parent in by_id:
                member = by_id[member.parent]  # type: ignore[index]
                closure.add(member.base_id)
        assert kept == closure
    else:  # no verified anchor: no base is deleted
        assert kept == set(by_id)
    if plan.anchor is not None:  # WAL older than the oldest kept base goes, the rest stays (but superseded partials)
        cutoff = min(by_id[k].start_lsn for k in kept)
        assert plan.wal_cutoff == cutoff
        deleted = {(d.kind, d.name) for d in plan.deletions}
        for record in history.wal:
            gone = ("wal" if record.kind == "segment" else "partial", record.segment) in deleted
            if record.end_lsn <= cutoff:
                assert gone
            elif record.kind == "segment":
                assert not gone
    else:  # no verified anchor: nothing is deleted but superseded partials
        assert plan.wal_cutoff is None
        assert {d.kind for d in plan.deletions} <= {"partial"}


@pytest.mark.slow
@PROPERTY
@given(histories(), policies, st.data())
def test_deletion_is_monotone_in_time(history: History, policy: ChainPolicy, data: st.DataObject) -> None:
    """What a cleanup deletes now, any later cleanup deletes too: a later clock never wants it back."""
    first = data.draw(clocks(history))
    later = first + timedelta(minutes=data.draw(st.integers(0, 60 * 48)))
    early = plan_chain_retention(history.bases, history.wal, history.histories, policy, first)
    late = plan_chain_retention(history.bases, history.wal, history.histories, policy, later)
    assert {(d.kind, d.name) for d in early.deletions} <= {(d.kind, d.name) for d in late.deletions}


@PROPERTY
@given(histories(), policies, st.data())
def test_plan_is_idempotent(history: History, policy: ChainPolicy, data: st.DataObject) -> None:
    now = data.draw(clocks(history))
    plan = plan_chain_retention(history.bases, history.wal, history.histories, policy, now)
    bases, wal = kept_after(history, plan)
    histories_left = [h for h in history.histories if ("history", f"{h:08X}.history") not in
                      {(d.kind, d.name) for d in plan.deletions}]
    again = plan_chain_retention(bases, wal, histories_left, policy, now)
    assert again.deletions == []


@PROPERTY
@given(histories(), policies, st.data(), st.integers(1, 24 * 365))
def test_records_from_the_future_cause_no_deletion(history: History, policy: ChainPolicy, data: st.DataObject,
                                                   ahead: int) -> None:
    """Adding a base dated in the future (a skewed clock, or a forged record) deletes nothing more."""
    now = data.draw(clocks(history))
    plan = plan_chain_retention(history.bases, history.wal, history.histories, policy, now)
    top = max((w.end_lsn for w in history.wal), default=0)
    forged = ChainBase("zz-future", None, 1, top, top + 1, now + timedelta(hours=ahead), "verified")
    with_forged = plan_chain_retention([*history.bases, forged], history.wal, history.histories, policy, now)
    assert {(d.kind, d.name) for d in with_forged.deletions} <= {(d.kind, d.name) for d in plan.deletions}


@PROPERTY
@given(histories(), policies, st.data(), st.sampled_from([1, 5, 30, 200]))
def test_a_base_recorded_with_a_clock_ahead_keeps_every_point_of_the_window(
        history: History, policy: ChainPolicy, data: st.DataObject, skew_hours: int) -> None:
    """One base's ``finished_at`` was stamped by a clock running ahead: judged by the true times, every
    point of the window a restore could reach before the cleanup it still can."""
    _assert_skewed_base_keeps_the_window(history, policy, data, skew_hours)


@PROPERTY
@given(histories(), policies, st.data(), st.sampled_from([-200, -30, -5, -1]))
def test_a_base_recorded_with_a_clock_behind_keeps_every_point_of_the_window(
        history: History, policy: ChainPolicy, data: st.DataObject, skew_hours: int) -> None:
    """The same with a clock running *behind*: the base looks older than it is. Its stamp alone would make
    it the anchor; only a WAL sample proving it consistent before the window's start may (rule 9)."""
    _assert_skewed_base_keeps_the_window(history, policy, data, skew_hours)


def _assert_skewed_base_keeps_the_window(history: History, policy: ChainPolicy, data: st.DataObject,
                                         skew_hours: int) -> None:
    if not history.bases:
        return
    index = data.draw(st.integers(0, len(history.bases) - 1))
    truth = history.true_bases()  # every base at its real finish: the oracle's world
    true = truth[index]
    recorded = replace(true, finished_at=true.finished_at + timedelta(hours=skew_hours))
    skewed = [*history.bases[:index], recorded, *history.bases[index + 1:]]  # the others as generated
    now = data.draw(clocks(history))
    plan = plan_chain_retention(skewed, history.wal, history.histories, policy, now)
    deleted = {(d.kind, d.name) for d in plan.deletions}
    kept_bases = [b for b in truth if ("base", b.base_id) not in deleted]  # with their true times
    kept_wal = [w for w in history.wal if ("wal" if w.kind == "segment" else "partial", w.segment) not in deleted]
    for point in history.points:
        if now - policy.window <= point[0] <= now and restorable(point, truth, history.wal):
            assert restorable(point, kept_bases, kept_wal), (skew_hours, true.base_id, point, plan.render())


# --- scenarios with exact answers ---------------------------------------------------------------

def base(base_id: str, hour: float, start: int, end: int, *, parent: str | None = None, timeline: int = 1,
         state: str = "verified") -> ChainBase:
    return ChainBase(base_id, parent, timeline, start, end, T0 + timedelta(hours=hour), state)  # type: ignore[arg-type]


def segments(first: int, last: int, timeline: int = 1, skip: tuple[int, ...] = (), *,
             sampled: bool = True) -> list[ChainWal]:
    """Completed segments; each carries the commit-time sample the receiver records (the server wrote 4 LSN
    units an hour from T0: the segment's last LSN at its time), unless ``sampled`` is False."""
    return [ChainWal(seg_name(timeline, n), "segment", timeline, n * SEG, (n + 1) * SEG,
                     *((T0 + timedelta(hours=((n + 1) * SEG - 1) / 4), (n + 1) * SEG - 1) if sampled else ()))
            for n in range(first, last + 1) if n not in skip]


def decision(plan: object, name: str) -> str:
    return next(d.action for d in plan.decisions if d.name == name)  # type: ignore[attr-defined]


def test_window_covering_only_the_newest_full_deletes_the_old_chain_and_its_wal() -> None:
    bases = [base("a", 0, 0, 10), base("a1", 10, 40, 50, parent="a"), base("b", 20, 80, 90)]
    plan = plan_chain_retention(bases, segments(0, 6), [], ChainPolicy(timedelta(hours=5)), T0 + timedelta(hours=30))
    assert plan.anchor == "b"
    assert [decision(plan, x) for x in ("a", "a1", "b")] == ["delete", "delete", "keep"]
    assert [decision(plan, seg_name(1, n)) for n in range(7)] == ["delete"] * 5 + ["keep"] * 2


def test_an_incremental_keeps_its_parents() -> None:
    bases = [base("a", 0, 0, 10), base("a1", 10, 40, 50, parent="a"), base("a2", 20, 80, 90, parent="a1")]
    plan = plan_chain_retention(bases, segments(0, 6), [], ChainPolicy(timedelta(hours=5)), T0 + timedelta(hours=30))
    assert plan.anchor == "a2"
    assert all(decision(plan, x) == "keep" for x in ("a", "a1", "a2"))
    assert all(decision(plan, seg_name(1, n)) == "keep" for n in range(7))  # from a's start


@pytest.mark.parametrize("state", ["unverified", "failed"])
def test_an_unverified_or_failed_base_is_no_anchor(state: str) -> None:
    bases = [base("a", 0, 0, 10), base("b", 20, 80, 90, state=state)]
    plan = plan_chain_retention(bases, segments(0, 6), [], ChainPolicy(timedelta(hours=5)), T0 + timedelta(hours=30))
    assert plan.anchor == "a" and decision(plan, "a") == "keep" and decision(plan, seg_name(1, 0)) == "keep"


def test_a_base_whose_own_wal_is_missing_is_no_anchor() -> None:
    bases = [base("a", 0, 0, 10), base("b", 20, 80, 90)]
    plan = plan_chain_retention(bases, segments(0, 6, skip=(5,)), [], ChainPolicy(timedelta(hours=5)),
                                T0 + timedelta(hours=30))
    assert plan.anchor == "a" and decision(plan, "a") == "keep"


def test_without_a_verified_anchor_no_base_is_deleted() -> None:
    bases = [base("a", 0, 0, 10, state="unverified"), base("b", 20, 80, 90, state="failed")]
    plan = plan_chain_retention(bases, segments(0, 6), [], ChainPolicy(timedelta(hours=5)), T0 + timedelta(hours=30))
    assert plan.anchor is None and not plan.of_kind("base", "delete")
    assert all(decision(plan, seg_name(1, n)) == "keep" for n in range(7))


def test_a_gap_before_the_window_keeps_the_anchor_but_nothing_older() -> None:
    """A gap after the anchor: nothing older reaches past it; the anchor stays (it may be the only chain)."""
    bases = [base("a", 0, 0, 10), base("b", 10, 40, 50)]
    wal = segments(0, 10, skip=(6, 7))
    plan = plan_chain_retention(bases, wal, [], ChainPolicy(timedelta(hours=5)), T0 + timedelta(hours=30))
    assert (plan.anchor, decision(plan, "a"), decision(plan, "b")) == ("b", "delete", "keep")
    assert decision(plan, seg_name(1, 1)) == "delete" and decision(plan, seg_name(1, 8)) == "keep"


def test_a_superseded_partial_goes_and_the_newest_stays() -> None:
    wal = [*segments(0, 3), ChainWal(seg_name(1, 3), "partial", 1, 3 * SEG, 3 * SEG + 5),
           ChainWal(seg_name(1, 4), "partial", 1, 4 * SEG, 4 * SEG + 5)]
    plan = plan_chain_retention([base("a", 0, 0, 10)], wal, [], ChainPolicy(timedelta(hours=5)),
                                T0 + timedelta(hours=30))
    partials = {d.name: d.action for d in plan.decisions if d.kind == "partial"}
    assert partials == {seg_name(1, 3): "delete", seg_name(1, 4): "keep"}


def test_history_files_go_only_when_everything_kept_is_on_a_later_timeline() -> None:
    bases = [base("a", 0, 0, 10), base("c", 20, 80, 90, timeline=3)]
    wal = [*segments(0, 1), *segments(2, 4, timeline=2), *segments(5, 6, timeline=3)]
    plan = plan_chain_retention(bases, wal, [2, 3, 4], ChainPolicy(timedelta(hours=5)), T0 + timedelta(hours=30))
    assert [decision(plan, f"0000000{t}.history") for t in (2, 3, 4)] == ["delete", "keep", "keep"]
    earlier = plan_chain_retention(bases, wal, [2, 3, 4], ChainPolicy(timedelta(hours=15)), T0 + timedelta(hours=30))
    assert [decision(earlier, f"0000000{t}.history") for t in (2, 3, 4)] == ["keep", "keep", "keep"]


def test_min_full_bases_keeps_older_fulls() -> None:
    bases = [base("a", 0, 0, 10), base("b", 10, 40, 50), base("c", 20, 80, 90)]
    plan = plan_chain_retention(bases, segments(0, 6), [], ChainPolicy(timedelta(hours=5), min_full_bases=2),
                                T0 + timedelta(hours=30))
    assert [decision(plan, x) for x in ("a", "b", "c")] == ["delete", "keep", "keep"]


def test_a_base_stamped_by_a_clock_behind_does_not_anchor_past_the_chain_the_window_needs() -> None:
    """The counter-example the skew property found, exactly: ``b`` truly finished at hour 28 (LSN 110) but
    its host's clock ran 33 hours behind; with the window starting at hour 25, a restore to hour 26 (LSN
    104) can only start from ``a``. The WAL's samples say LSN 110 was written at hour 27.75: ``b`` does
    not anchor, ``a`` and its WAL stay."""
    bases = [base("a", 0, 0, 10), base("b", -5, 100, 110)]
    policy, now = ChainPolicy(timedelta(hours=5), min_full_bases=0), T0 + timedelta(hours=30)
    plan = plan_chain_retention(bases, segments(0, 7), [], policy, now)
    assert (plan.anchor, decision(plan, "a"), decision(plan, "b")) == ("a", "keep", "keep")
    assert all(decision(plan, seg_name(1, n)) == "keep" for n in range(8))
    point = (T0 + timedelta(hours=26), 104, 1)
    kept = [b for b in bases if decision(plan, b.base_id) == "keep"]
    assert restorable(point, [base("a", 0, 0, 10), base("b", 28, 100, 110)], segments(0, 7))
    assert restorable(point, kept, segments(0, 7))
    # later, once the WAL proves b consistent before the window's start, b anchors and a goes
    later = plan_chain_retention(bases, segments(0, 7), [], policy, now + timedelta(hours=3))
    assert (later.anchor, decision(later, "a"), decision(later, "b")) == ("b", "delete", "keep")


def test_without_a_wal_sample_a_base_stamp_alone_never_anchors() -> None:
    """Records without commit-time samples (shipped before any sample was covered) prove no base's time:
    nothing anchors, nothing is deleted."""
    bases = [base("a", 0, 0, 10), base("b", 20, 80, 90)]
    plan = plan_chain_retention(bases, segments(0, 6, sampled=False), [], ChainPolicy(timedelta(hours=5)),
                                T0 + timedelta(hours=30))
    assert plan.anchor is None and not plan.deletions


def test_a_sample_on_another_timeline_proves_nothing() -> None:
    """Timeline 2 branched off earlier reuses LSNs at other times: its sample past ``b``'s end does not
    date ``b``, which is on timeline 1."""
    bases = [base("a", 0, 0, 10), base("b", 20, 80, 90)]
    wal = [*segments(0, 4), *segments(5, 6, sampled=False), *segments(5, 6, timeline=2)]
    plan = plan_chain_retention(bases, wal, [2], ChainPolicy(timedelta(hours=5)), T0 + timedelta(hours=30))
    assert (plan.anchor, decision(plan, "a"), decision(plan, "b")) == ("a", "keep", "keep")
