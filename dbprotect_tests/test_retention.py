"""Retention as a pure function: invariants over random catalogs (hypothesis), and scenarios with exact answers.

The scenarios use the seeds' policies (003: "Retention: 30 days"; 004: "keep last 10") on a year
of daily backups, and a grandfather-father-son policy checked against dates worked out by hand
and against a golden file of the full plan (ids, decisions and reasons).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dbprotect.core.errors import StorageError
from dbprotect.core.retention.compliance import compliance_by_target, retention_compliance
from dbprotect.core.retention.plan import INCOMPLETE_GRACE, RetentionPlan, plan_retention
from dbprotect.core.retention.policy import RetentionPolicy, format_duration, parse_duration
from dbprotect.core.store.catalog import BackupEntry, CheckRecord, is_clock_skewed

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BASE = datetime(2024, 1, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STATES = ("verified", "unverified", "failed", "missing-object", "incomplete")


def entry(started: datetime, state: str = "verified", n: int = 0) -> BackupEntry:
    """A catalog entry in one of the states the store can show (as catalog.list_backups builds them)."""
    backup_id = f"{started:%Y%m%dT%H%M%SZ}-{n:06x}"
    checked = started + timedelta(hours=1)
    checks = {
        "verified": [CheckRecord(checked, "stored", True), CheckRecord(checked, "readable", True)],
        "failed": [CheckRecord(checked, "stored", True), CheckRecord(checked, "readable", False)],
    }.get(state, [])
    return BackupEntry("shop", backup_id, started, has_manifest=state != "incomplete",
                       dump_bytes=None if state == "missing-object" else 1000, checks=checks)


def daily_year(state: str = "verified", end: date = date(2026, 11, 23), days: int = 365) -> list[BackupEntry]:
    """One backup a day at 02:00 UTC for ``days`` days ending on ``end`` (newest first, as listed)."""
    first = datetime(end.year, end.month, end.day, 2, 0, tzinfo=UTC)
    return [entry(first - timedelta(days=i), state, i) for i in range(days)]


def kept_ids(plan: RetentionPlan) -> set[str]:
    return {d.backup_id for d in plan.kept}


def deleted_ids(plan: RetentionPlan) -> set[str]:
    return {d.backup_id for d in plan.deletions} | {d.backup_id for d in plan.garbage}


def remaining(entries: Iterable[BackupEntry], plan: RetentionPlan) -> list[BackupEntry]:
    gone = deleted_ids(plan)
    return [e for e in entries if e.backup_id not in gone]


def ids_on(entries: list[BackupEntry], days: Iterable[date]) -> set[str]:
    wanted = set(days)
    return {e.backup_id for e in entries if e.started_at.date() in wanted}


# --- the policy model and its text form ---------------------------------------------------------

def test_policy_prints_and_parses_back() -> None:
    policy = RetentionPolicy(keep_last=10, keep_daily=7, max_age=timedelta(days=30))
    assert str(policy) == "keep_last=10, keep_daily=7, max_age=30d, min_verified=1"
    assert RetentionPolicy.parse(str(policy)) == policy
    assert RetentionPolicy.parse("keep_last=10") == RetentionPolicy(keep_last=10)
    assert RetentionPolicy.parse("max_age=36h min_verified=2").max_age == timedelta(hours=36)
    assert str(RetentionPolicy.parse("max_age=2w")) == "max_age=14d, min_verified=1"
    assert RetentionPolicy.model_validate({"max_age": "30d"}).max_age == timedelta(days=30)


@pytest.mark.parametrize("text, fragment", [
    ("keep_lats=3", "keep_lats"),
    ("max_age=30", "not a duration"),
    ("keep_last=-1", "greater than or equal to 0"),
    ("min_verified=0", "greater than or equal to 1"),
    ("keep_last", "not name=value"),
    ("keep_last=1, keep_last=2", "appears twice"),
])
def test_bad_policy_text_is_refused_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises((ValueError, ValidationError), match=fragment):
        RetentionPolicy.parse(text)


def test_max_age_without_a_unit_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs a unit"):
        RetentionPolicy.model_validate({"max_age": 30})


policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(0, 6), keep_daily=st.integers(0, 6), keep_weekly=st.integers(0, 4),
    keep_monthly=st.integers(0, 4), keep_yearly=st.integers(0, 3),
    max_age=st.one_of(st.none(), st.integers(1, 900).map(lambda d: timedelta(days=d)),
                      st.integers(1, 72).map(lambda h: timedelta(hours=h))),
    min_verified=st.integers(1, 4),
)


@PROPERTY
@given(policies)
def test_policy_text_round_trips(policy: RetentionPolicy) -> None:
    assert RetentionPolicy.parse(str(policy)) == policy


@PROPERTY
@given(st.integers(1, 10**7))
def test_duration_text_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


# --- properties over random catalogs, clocks and policies ---------------------------------------

@st.composite
def catalogs(draw: st.DrawFn) -> tuple[list[BackupEntry], datetime, frozenset[str]]:
    """Backups scattered over three years (several a day sometimes), a clock, and some locked ids."""
    hours = draw(st.lists(st.integers(0, 3 * 365 * 24), max_size=40))
    minutes = draw(st.lists(st.integers(0, 59), min_size=len(hours), max_size=len(hours)))
    states = draw(st.lists(st.sampled_from(STATES), min_size=len(hours), max_size=len(hours)))
    entries = [entry(BASE + timedelta(hours=h, minutes=m), s, i)
               for i, (h, m, s) in enumerate(zip(hours, minutes, states, strict=True))]
    now = BASE + timedelta(hours=draw(st.integers(0, int(3.2 * 365 * 24))), minutes=draw(st.integers(0, 59)))
    locked = draw(st.frozensets(st.sampled_from([e.backup_id for e in entries]), max_size=3)) if entries \
        else frozenset()
    return entries, now, locked


def verified_newest_first(entries: list[BackupEntry]) -> list[BackupEntry]:
    return sorted((e for e in entries if e.integrity_ok), key=lambda e: (e.started_at, e.backup_id), reverse=True)


def too_old(e: BackupEntry, policy: RetentionPolicy, now: datetime) -> bool:
    return policy.max_age is not None and now - e.started_at > policy.max_age


def trusted(entries: list[BackupEntry], now: datetime) -> list[BackupEntry]:
    """The entries not dated in the future beyond the tolerance (issue 10: clock-skewed ones take no part)."""
    return [e for e in entries if not is_clock_skewed(e.started_at, now)]


@pytest.mark.slow
@PROPERTY
@given(catalogs(), policies)
def test_unbreakable_rules_hold(catalog: tuple[list[BackupEntry], datetime, frozenset[str]],
                                policy: RetentionPolicy) -> None:
    entries, now, locked = catalog
    plan = plan_retention(entries, policy, now, locked=locked)
    assert sorted(d.backup_id for d in plan.decisions) == sorted(e.backup_id for e in entries)
    assert all(d.reasons for d in plan.decisions)
    for e in entries:  # dated in the future: kept, and counted by no rule (issue 10)
        if is_clock_skewed(e.started_at, now):
            assert plan.decision(e.backup_id).action == "keep"
            assert plan.decision(e.backup_id).reasons[0].startswith("clock-skew")
    entries = trusted(entries, now)
    verified = verified_newest_first(entries)
    if verified:  # the newest verified backup is never deleted
        assert plan.decision(verified[0].backup_id).action == "keep"
        assert "newest verified backup (never deleted)" in plan.decision(verified[0].backup_id).reasons
    for e in entries:  # in progress and in use are never deleted
        if e.backup_id in locked or (not e.has_manifest and now - e.started_at < INCOMPLETE_GRACE):
            assert plan.decision(e.backup_id).action == "keep"
        elif not e.has_manifest:
            assert plan.decision(e.backup_id).garbage
    for v in verified[:policy.min_verified]:  # min_verified is respected
        assert plan.decision(v.backup_id).action == "keep"
    # refusal exactly when max_age would take a verified backup that rules 1-2 need
    must_refuse = any(too_old(v, policy, now) for v in verified[:policy.min_verified])
    assert plan.refused == must_refuse
    if verified and all(too_old(v, policy, now) for v in verified):
        assert plan.refusal and "would delete every verified backup" in plan.refusal
    if plan.refused:
        assert plan.deletions == [] and plan.garbage == []
    else:  # max_age is obeyed: only protected backups outlive it
        for d in plan.kept:
            kept = next((e for e in entries if e.backup_id == d.backup_id), None)
            if kept is not None and too_old(kept, policy, now):
                assert any(r.startswith(("locked", "in progress", "no verified backup exists")) for r in d.reasons), d


@PROPERTY
@given(catalogs(), policies)
def test_plan_is_idempotent(catalog: tuple[list[BackupEntry], datetime, frozenset[str]],
                            policy: RetentionPolicy) -> None:
    entries, now, locked = catalog
    first = plan_retention(entries, policy, now, locked=locked)
    left = remaining(entries, first)
    second = plan_retention(left, policy, now, locked=locked)
    assert deleted_ids(second) == set()
    assert kept_ids(second) == kept_ids(first) & {e.backup_id for e in left}
    assert second.refused == first.refused


@PROPERTY
@given(catalogs(), policies)
def test_a_backup_kept_by_one_rule_is_never_deleted(catalog: tuple[list[BackupEntry], datetime, frozenset[str]],
                                                     policy: RetentionPolicy) -> None:
    """Adding rules only ever keeps more: each rule alone keeps a subset of what the full policy keeps."""
    entries, now, locked = catalog
    full = plan_retention(entries, policy, now, locked=locked)
    for rule in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
        if not getattr(policy, rule):
            continue
        alone = policy.model_copy(update={r: 0 for r in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly",
                                                         "keep_yearly") if r != rule})
        assert kept_ids(plan_retention(entries, alone, now, locked=locked)) <= kept_ids(full), rule
    for d in full.decisions:
        if d.action == "delete":
            assert not any(r.startswith(("keep_", "min_verified", "locked", "in progress", "newest verified"))
                           for r in d.reasons)


@PROPERTY
@given(catalogs(), st.integers(1, 5), st.integers(1, 5))
def test_period_rules_keep_the_newest_of_each_recent_period(
        catalog: tuple[list[BackupEntry], datetime, frozenset[str]], last: int, days: int) -> None:
    """An independent oracle for keep_last and keep_daily: group by hand, compare ids."""
    entries, now, _locked = catalog
    plan = plan_retention(entries, RetentionPolicy(keep_last=last, keep_daily=days), now)
    counted = sorted((e for e in trusted(entries, now) if e.complete and not e.failed_rungs),
                     key=lambda e: (e.started_at, e.backup_id), reverse=True)
    expected_last = {e.backup_id for e in counted[:last]}
    newest_per_day: dict[date, BackupEntry] = {}
    for e in counted:
        newest_per_day.setdefault(e.started_at.date(), e)
    expected_daily = {newest_per_day[day].backup_id for day in sorted(newest_per_day, reverse=True)[:days]}
    by_rule = {rule: {d.backup_id for d in plan.decisions if any(r.startswith(rule) for r in d.reasons)}
               for rule in ("keep_last", "keep_daily")}
    assert by_rule == {"keep_last": expected_last, "keep_daily": expected_daily}


@pytest.mark.slow
@PROPERTY
@given(catalogs(), policies)
def test_compliance_matches_the_catalog(catalog: tuple[list[BackupEntry], datetime, frozenset[str]],
                                        policy: RetentionPolicy) -> None:
    entries, now, _locked = catalog
    report = retention_compliance(entries, policy, now)
    verified = sum(1 for e in trusted(entries, now) if e.integrity_ok)
    old = {e.backup_id for e in entries if too_old(e, policy, now)}
    assert report.verified == verified
    assert set(report.too_old) == old
    assert report.ok == (verified >= policy.min_verified and not old)


# --- scenarios with the seeds' policies on a year of daily backups -------------------------------

def test_seed_003_thirty_days_on_a_year_of_daily_backups() -> None:
    year = daily_year()
    plan = plan_retention(year, RetentionPolicy.parse("max_age=30d"), NOW)
    assert not plan.refused
    # now is 2026-11-23 12:00; 30 days back is 2026-10-24 12:00, so Oct 25 .. Nov 23 stay.
    assert kept_ids(plan) == ids_on(year, (date(2026, 10, 25) + timedelta(days=i) for i in range(30)))
    assert len(plan.kept) == 30 and len(plan.deletions) == 335
    oldest = plan.decision(year[-1].backup_id)
    assert oldest.action == "delete" and oldest.reasons[0].startswith("older than max_age=30d (364.4 d)")
    after = remaining(year, plan)
    assert retention_compliance(after, plan.policy, NOW).ok
    assert not retention_compliance(year, plan.policy, NOW).ok


def test_seed_004_keep_last_ten_on_a_year_of_daily_backups() -> None:
    year = daily_year()
    plan = plan_retention(year, RetentionPolicy.parse("keep_last=10"), NOW)
    assert kept_ids(plan) == {e.backup_id for e in year[:10]}
    assert len(plan.deletions) == 355
    assert plan.decision(year[0].backup_id).reasons == ("newest verified backup (never deleted)",
                                                        "min_verified (1 of 1)", "keep_last (1 of 10)")
    assert plan.decision(year[10].backup_id).reasons == (
        "not kept by any rule of keep_last=10, min_verified=1",)
    assert plan.deletions[0].backup_id == year[-1].backup_id  # oldest first


GFS_DAYS = (
    [date(2026, 11, d) for d in range(17, 24)]                       # keep_daily=7: Nov 17 .. 23
    + [date(2026, 11, 15), date(2026, 11, 8)]                        # keep_weekly=4: W48 Mon 23, W47 Sun 22, W46, W45
    + [date(2026, 10, 31), date(2026, 9, 30), date(2026, 8, 31), date(2026, 7, 31), date(2026, 6, 30),
       date(2026, 5, 31), date(2026, 4, 30), date(2026, 3, 31), date(2026, 2, 28), date(2026, 1, 31),
       date(2025, 12, 31)]                                           # keep_monthly=12: Nov 23 and the month ends
)


def test_grandfather_father_son_keeps_exactly_the_expected_days() -> None:
    year = daily_year()
    plan = plan_retention(year, RetentionPolicy.parse("keep_daily=7, keep_weekly=4, keep_monthly=12"), NOW)
    assert kept_ids(plan) == ids_on(year, GFS_DAYS)
    assert len(plan.kept) == 20 and len(plan.deletions) == 345
    sunday = plan.decision(next(iter(ids_on(year, [date(2026, 11, 22)]))))
    assert sunday.reasons == ("keep_daily 2026-11-22 (2 of 7)", "keep_weekly 2026-W47 (2 of 4)")


def test_grandfather_father_son_matches_the_golden_plan() -> None:
    """The plan (every kept id with its reasons, and two months of deletions) for GFS 7/4/12/3 + max_age=700d.

    Regenerate after a deliberate change with ``DBPROTECT_REGOLD=1`` and review the diff.
    """
    year = daily_year(days=800)
    policy = RetentionPolicy.parse("keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3, max_age=700d")
    plan = plan_retention(year, policy, NOW)
    got = {"policy": str(plan.policy), "refusal": plan.refusal,
           "decisions": [f"{d.action} {d.backup_id} {' | '.join(d.reasons)}" for d in plan.decisions
                         if d.action == "keep" or d.backup_id.startswith(("202412", "202409"))]}
    path = GOLDEN / "retention_gfs.json"
    if os.environ.get("DBPROTECT_REGOLD"):
        path.write_text(json.dumps(got, indent=2) + "\n", encoding="utf-8")
    assert got == json.loads(path.read_text(encoding="utf-8"))


def test_refuses_when_max_age_would_delete_every_verified_backup() -> None:
    """Verification has failed for 40 days: the last verified backup is older than max_age."""
    year = [entry(e.started_at, "failed" if i < 40 else "verified", i) for i, e in enumerate(daily_year())]
    plan = plan_retention(year, RetentionPolicy.parse("max_age=30d"), NOW)
    assert plan.refused and plan.deletions == [] and plan.garbage == []
    assert plan.refusal is not None and plan.refusal.startswith(
        f"max_age=30d would delete every verified backup: the newest one, {year[40].backup_id}, is 40.4 d old.")
    assert "REFUSED: max_age=30d would delete every verified backup" in plan.render()


def test_refuses_when_max_age_and_min_verified_conflict() -> None:
    year = [entry(e.started_at, "verified" if i in (0, 35) else "unverified", i) for i, e in enumerate(daily_year())]
    plan = plan_retention(year, RetentionPolicy.parse("max_age=30d, min_verified=2"), NOW)
    assert plan.refusal is not None
    assert plan.refusal.startswith("max_age=30d conflicts with min_verified=2: only 1 verified backup(s) are "
                                   f"younger than 30d, and max_age would delete {year[35].backup_id}.")
    relaxed = plan_retention(year, RetentionPolicy.parse("max_age=30d, min_verified=1"), NOW)
    assert not relaxed.refused and plan_retention(year, relaxed.policy, NOW).decision(year[35].backup_id).action \
        == "delete"


def test_newest_verified_survives_keep_last_one_when_newer_backups_are_unverified() -> None:
    backups = [entry(NOW - timedelta(hours=h), s, h) for h, s in ((2, "unverified"), (26, "failed"), (50, "verified"),
                                                                 (74, "verified"))]
    plan = plan_retention(backups, RetentionPolicy.parse("keep_last=1"), NOW)
    assert [d.action for d in plan.decisions] == ["keep", "keep", "keep", "delete"]
    assert plan.decisions[1].reasons == ("failed verification (readable); kept until a newer verified backup exists",)
    assert plan.decisions[2].reasons == ("newest verified backup (never deleted)", "min_verified (1 of 1)")


def test_incomplete_uploads_in_progress_and_stale() -> None:
    backups = [entry(NOW - timedelta(hours=3), "incomplete", 1), entry(NOW - timedelta(hours=30), "incomplete", 2),
               entry(NOW - timedelta(hours=40), "verified", 3)]
    plan = plan_retention(backups, RetentionPolicy.parse("keep_last=1"), NOW, locked={backups[2].backup_id})
    assert plan.decisions[0].action == "keep"
    assert plan.decisions[0].reasons == ("in progress: no manifest yet, started 3.0 h ago",)
    assert [d.backup_id for d in plan.garbage] == [backups[1].backup_id]
    assert plan.garbage[0].reasons == ("incomplete upload older than a day (30.0 h)",)
    assert plan.decisions[2].reasons[0] == "locked: in use"


def test_a_locked_backup_older_than_max_age_is_kept_with_a_warning() -> None:
    year = daily_year(days=40)
    plan = plan_retention(year, RetentionPolicy.parse("max_age=30d"), NOW, locked={year[-1].backup_id})
    assert plan.decision(year[-1].backup_id).action == "keep"
    assert plan.warnings == (f"{year[-1].backup_id} is older than max_age=30d (39.4 d) but protected: locked: in use",)
    assert len(plan.deletions) == 9


def test_an_empty_policy_keeps_everything() -> None:
    year = daily_year(days=20)
    plan = plan_retention(year, RetentionPolicy(), NOW)
    assert len(plan.kept) == 20 and plan.deletions == []
    assert "policy sets no rule: kept" in plan.decision(year[-1].backup_id).reasons


def test_periods_count_in_the_configured_timezone() -> None:
    """23:30 UTC on Nov 21 is already Nov 22 in Tokyo: the two backups share a Tokyo day."""
    from zoneinfo import ZoneInfo

    backups = [entry(datetime(2026, 11, 22, 1, 0, tzinfo=UTC), "verified", 1),
               entry(datetime(2026, 11, 21, 23, 30, tzinfo=UTC), "verified", 2),
               entry(datetime(2026, 11, 21, 1, 0, tzinfo=UTC), "verified", 3)]
    utc = plan_retention(backups, RetentionPolicy.parse("keep_daily=2"), NOW)
    tokyo = plan_retention(backups, RetentionPolicy.parse("keep_daily=2"), NOW, tz=ZoneInfo("Asia/Tokyo"))
    assert [d.action for d in utc.decisions] == ["keep", "keep", "delete"]
    assert [d.action for d in tokyo.decisions] == ["keep", "delete", "keep"]


def test_the_clock_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_retention([], RetentionPolicy(), datetime(2026, 1, 1))


def test_compliance_by_target_judges_each_target_with_its_policy_and_names_an_unreadable_store() -> None:
    """One broken store is a problem naming it; the other targets are still judged, each with its own policy."""
    listings = {"local": daily_year(days=40), "offsite": daily_year(days=3)}

    def list_target(target: str) -> list[BackupEntry]:
        if target == "tape":
            raise StorageError("tape: the drive is offline")
        return listings[target]

    policies = [("local", RetentionPolicy.parse("max_age=30d")), ("offsite", RetentionPolicy.parse("min_verified=3")),
                ("tape", RetentionPolicy())]
    result = compliance_by_target("shop", policies, list_target, NOW)
    local, offsite, tape = result.targets
    assert not result.ok and [t.target for t in result.targets] == ["local", "offsite", "tape"]
    assert local.report is not None and len(local.report.too_old) == 10 and local.problems[0].startswith("local: ")
    assert offsite.ok and offsite.report is not None and offsite.report.verified == 3 and not offsite.problems
    assert tape.report is None and tape.problems == ("tape: store cannot be read: tape: the drive is offline",)
    assert result.summary() == "; ".join(local.problems + tape.problems)
    assert compliance_by_target("shop", policies[1:2], list_target, NOW).summary() == \
        "every target holds what its retention policy asks"

