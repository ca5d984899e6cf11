"""Time cannot be trusted, and retention never empties a store (issue 10, points 4 and 5).

Every clock is injected (``now``): a backup host whose clock ran a year ahead, a checking host
whose clock runs ahead or behind, a check recorded by a clock 30 days ahead. Retention is checked
by hypothesis over random stores that include future-dated backups and stores with no verified
backup, and by the issue's own examples on a real folder store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbprotect.core.config.load import load_config
from dbprotect.core.errors import RefusedError
from dbprotect.core.ops import database_status
from dbprotect.core.retention.cleanup import execute_cleanup, plan_cleanup
from dbprotect.core.retention.compliance import retention_compliance
from dbprotect.core.retention.plan import plan_retention
from dbprotect.core.retention.policy import RetentionPolicy
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import (
    CLOCK_SKEW_TOLERANCE,
    BackupEntry,
    CheckRecord,
    is_clock_skewed,
    list_backups,
    newest_backup,
    newest_verified_backup,
    next_check_sequence,
)
from dbprotect.core.store.manifest import check_key, parse_check_key
from dbprotect.core.verify.rpo import evaluate_rpo
from dbprotect_tests.fixtures.backups import DB, write_backup

REAL_NOW = datetime.now(UTC).replace(microsecond=0)
YEAR = timedelta(days=365)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "store")


def _ids(entries: list[BackupEntry]) -> list[str]:
    return [e.backup_id for e in entries]


# --- a backup taken with the clock a year ahead -------------------------------------------------

@pytest.fixture
def year_ahead(storage: FilesystemStorage) -> tuple[list[str], list[str]]:
    """Three real verified daily backups, and two verified ones named by a clock a year ahead."""
    real = [write_backup(storage, REAL_NOW - timedelta(days=d, hours=1), n=d) for d in range(3)]
    future = [write_backup(storage, REAL_NOW + YEAR - timedelta(days=d), n=10 + d) for d in range(2)]
    return real, future


def test_a_future_backup_is_flagged_and_never_latest(storage, year_ahead) -> None:
    real, future = year_ahead
    listed = list_backups(storage, DB, now=REAL_NOW)
    assert _ids(listed[:2]) == future and all(e.clock_skew and e.status == "clock-skew" for e in listed[:2])
    assert not any(e.clock_skew for e in listed[2:])
    assert listed[0].to_dict()["clock_skew"] is True
    assert newest_backup(storage, DB, now=REAL_NOW).backup_id == real[0]
    assert newest_verified_backup(storage, DB) == real[0]


def test_rpo_ignores_a_future_backup_and_fails_on_a_negative_age(storage, year_ahead) -> None:
    real, future = year_ahead
    rpo = evaluate_rpo(DB, list_backups(storage, DB, now=REAL_NOW), timedelta(hours=24), REAL_NOW)
    assert rpo.ok and rpo.newest_backup_id == real[0] and rpo.age_hours == pytest.approx(1.0)
    assert "2 backup(s) dated in the future ignored (clock-skew" in rpo.reason
    only_future = [e for e in list_backups(storage, DB, now=REAL_NOW) if e.backup_id in future]
    rpo = evaluate_rpo(DB, only_future, timedelta(hours=24), REAL_NOW)
    assert not rpo.ok and rpo.newest_backup_id is None  # was "ok, -8760 h"
    # Within the tolerance the backup counts, but a negative age is never a pass.
    [near] = [BackupEntry(DB, "x", REAL_NOW + timedelta(minutes=2), has_manifest=True, dump_bytes=1,
                          checks=[CheckRecord(REAL_NOW, "stored", True), CheckRecord(REAL_NOW, "readable", True)])]
    rpo = evaluate_rpo(DB, [near], timedelta(hours=24), REAL_NOW)
    assert not rpo.ok and "in the future" in rpo.reason


def test_cleanup_never_deletes_real_verified_backups_because_of_future_ones(storage, year_ahead) -> None:
    """The issue's case: keep_last=2 deleted two real verified backups; now the future ones count for nothing."""
    real, future = year_ahead
    plan = plan_cleanup(storage, DB, RetentionPolicy.parse("keep_last=2"), REAL_NOW)
    assert {d.backup_id for d in plan.deletions} == {real[2]}
    for backup_id in future:
        decision = plan.decision(backup_id)
        assert decision.action == "keep" and decision.status == "clock-skew"
        assert decision.reasons[0].startswith("clock-skew: dated")
    assert plan.decision(real[0]).reasons[0] == "newest verified backup (never deleted)"
    execute_cleanup(storage, plan)
    assert _ids(list_backups(storage, DB)) == [*future, *real[:2]]


def test_a_checking_clock_far_ahead_deletes_nothing_good(storage, year_ahead) -> None:
    """The other direction: the host that cleans up runs a year ahead, so every backup looks old."""
    real, future = year_ahead
    ahead = REAL_NOW + 2 * YEAR
    assert not any(e.clock_skew for e in list_backups(storage, DB, now=ahead))  # nothing is in its future
    plan = plan_cleanup(storage, DB, RetentionPolicy.parse("keep_last=2, max_age=30d"), ahead)
    assert plan.refused and plan.deletions == []  # max_age would take every verified backup
    assert plan.decision(future[0]).reasons[0] == "newest verified backup (never deleted)"
    with pytest.raises(RefusedError):
        execute_cleanup(storage, plan)
    assert _ids(list_backups(storage, DB, now=ahead)) == [*future, *real]
    rpo = evaluate_rpo(DB, list_backups(storage, DB, now=ahead), timedelta(hours=24), ahead)
    assert not rpo.ok


def test_status_flags_clock_skew_with_the_configured_tolerance(storage, year_ahead, write_config, tmp_path) -> None:
    real, future = year_ahead
    write_config(None, extra={"clock_skew_tolerance_minutes": 1})
    config = load_config()
    status = database_status(config, DB, REAL_NOW)
    assert status.newest.backup_id == real[0] and set(status.clock_skew) == set(future)
    assert status.rpo.ok and status.to_dict()["clock_skew"] == future
    [target] = status.targets
    assert target.newest.backup_id == real[0] and target.verified == 3
    # A backup 3 minutes ahead is skewed with a 1-minute tolerance, not with the default 5.
    near = write_backup(storage, REAL_NOW + timedelta(minutes=3), n=99)
    assert near in database_status(config, DB, REAL_NOW).clock_skew
    assert not any(e.clock_skew for e in list_backups(storage, DB, now=REAL_NOW) if e.backup_id == near)


# --- the order of checks is a sequence, not a clock ---------------------------------------------

def test_a_check_from_a_clock_30_days_ahead_does_not_stay_newest(storage) -> None:
    backup_id = write_backup(storage, REAL_NOW - timedelta(hours=3), verified=False)
    ahead = REAL_NOW + timedelta(days=30)
    for rung in ("stored", "readable"):
        seq = next_check_sequence(storage, DB, backup_id)
        storage.put_bytes(check_key(DB, backup_id, ahead, rung, True, seq=seq), b"{}")
    [entry] = list_backups(storage, DB, now=REAL_NOW)
    assert entry.status == "verified:readable"
    seq = next_check_sequence(storage, DB, backup_id)
    assert seq == 3
    storage.put_bytes(check_key(DB, backup_id, REAL_NOW, "readable", False, seq=seq), b"{}")
    [entry] = list_backups(storage, DB, now=REAL_NOW)
    assert entry.status == "failed:readable" and not entry.integrity_ok
    assert [c["seq"] for c in entry.to_dict()["checks"]] == [1, 2, 3]


def test_unsequenced_checks_keep_their_time_order_and_come_before_sequenced_ones(storage) -> None:
    backup_id = write_backup(storage, REAL_NOW - timedelta(hours=3), verified=False)
    storage.put_bytes(check_key(DB, backup_id, REAL_NOW - timedelta(hours=2), "stored", False), b"{}")
    storage.put_bytes(check_key(DB, backup_id, REAL_NOW - timedelta(hours=1), "stored", True), b"{}")
    storage.put_bytes(check_key(DB, backup_id, REAL_NOW - timedelta(hours=1), "readable", True), b"{}")
    [entry] = list_backups(storage, DB, now=REAL_NOW)
    assert entry.status == "verified:readable"
    assert next_check_sequence(storage, DB, backup_id) == 1
    # A sequenced check is later than every unsequenced one, whatever its timestamp says.
    storage.put_bytes(check_key(DB, backup_id, REAL_NOW - timedelta(days=400), "readable", False, seq=1), b"{}")
    [entry] = list_backups(storage, DB, now=REAL_NOW)
    assert entry.status == "failed:readable"


def test_check_keys_parse_with_and_without_a_sequence() -> None:
    at = datetime(2026, 11, 23, 2, 1, 12, 483920, tzinfo=UTC)
    assert parse_check_key("20261123T020112483920Z-stored-ok.json") == (at, "stored", True, 0)
    key = check_key(DB, "b", at, "readable", False, seq=42)
    assert key == f"{DB}/b/checks/0000000042-20261123T020112483920Z-readable-failed.json"
    assert parse_check_key(key.rsplit("/", 1)[-1]) == (at, "readable", False, 42)
    assert parse_check_key("20261399T020112483920Z-stored-ok.json") is None  # an impossible date is no check
    with pytest.raises(ValueError):
        check_key(DB, "b", at, "stored", True, seq=0)


# --- retention never empties a store ------------------------------------------------------------

def test_the_issues_example_keeps_unverified_backups_older_than_max_age(storage) -> None:
    """keep_last=5, max_age=1d, only unverified backups older than a day: nothing is deleted."""
    made = [write_backup(storage, REAL_NOW - timedelta(days=d, hours=2), verified=False, n=d) for d in range(1, 5)]
    plan = plan_cleanup(storage, DB, RetentionPolicy.parse("keep_last=5, max_age=1d"), REAL_NOW)
    assert plan.deletions == [] and not plan.refused
    assert all(d.reasons[0].startswith("no verified backup exists") for d in plan.kept)
    assert len(plan.warnings) == 4 and all("older than max_age=1d" in w for w in plan.warnings)
    execute_cleanup(storage, plan)
    assert _ids(list_backups(storage, DB)) == made


def test_without_keep_last_the_newest_unverified_backup_survives_max_age(storage) -> None:
    made = [write_backup(storage, REAL_NOW - timedelta(days=d), verified=False, n=d) for d in range(2, 6)]
    plan = plan_cleanup(storage, DB, RetentionPolicy.parse("max_age=1d"), REAL_NOW)
    assert {d.backup_id for d in plan.deletions} == set(made[1:])
    assert plan.decision(made[0]).action == "keep"


def _entry(i: int, started: datetime, state: str) -> BackupEntry:
    checked = started + timedelta(minutes=30)
    checks = {"verified": [CheckRecord(checked, "stored", True), CheckRecord(checked, "readable", True)],
              "failed": [CheckRecord(checked, "stored", True), CheckRecord(checked, "readable", False)]}.get(state, [])
    return BackupEntry(DB, f"{started:%Y%m%dT%H%M%SZ}-{i:06x}", started, has_manifest=state != "incomplete",
                       dump_bytes=None if state == "missing-object" else 1000, checks=checks)


NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@st.composite
def stores(draw: st.DrawFn) -> list[BackupEntry]:
    """Up to 30 backups over 90 days, a fifth of them (or all, sometimes) dated up to a year ahead."""
    count = draw(st.integers(0, 30))
    states = ("verified", "unverified", "failed", "missing-object", "incomplete")
    no_verified = draw(st.booleans())
    entries = []
    for i in range(count):
        ahead = draw(st.integers(0, 4)) == 0
        offset = (timedelta(minutes=draw(st.integers(-10, 365 * 24 * 60))) if ahead
                  else -timedelta(minutes=draw(st.integers(0, 90 * 24 * 60))))
        state = draw(st.sampled_from(states[1:] if no_verified else states))
        entries.append(_entry(i, NOW + offset, state))
    return entries


policies = st.builds(
    RetentionPolicy, keep_last=st.integers(0, 6), keep_daily=st.integers(0, 5), keep_weekly=st.integers(0, 3),
    max_age=st.one_of(st.none(), st.integers(1, 60).map(lambda d: timedelta(days=d)),
                      st.integers(1, 48).map(lambda h: timedelta(hours=h))),
    min_verified=st.integers(1, 3))


@PROPERTY
@given(stores(), policies)
def test_retention_never_empties_a_store_and_never_acts_on_skewed_backups(entries: list[BackupEntry],
                                                                         policy: RetentionPolicy) -> None:
    plan = plan_retention(entries, policy, NOW)
    gone = {d.backup_id for d in plan.deletions} | {d.backup_id for d in plan.garbage}
    skewed = {e.backup_id for e in entries if is_clock_skewed(e.started_at, NOW, CLOCK_SKEW_TOLERANCE)}
    assert not gone & skewed  # a future-dated backup is never deleted ...
    for backup_id in skewed:  # ... and is not what any rule counted
        assert all(not r.startswith(("keep_", "min_verified", "newest verified", "no verified"))
                   for r in plan.decision(backup_id).reasons)
    trusted = sorted((e for e in entries if e.backup_id not in skewed), key=lambda e: (e.started_at, e.backup_id),
                     reverse=True)
    verified = [e for e in trusted if e.integrity_ok]
    usable = [e for e in trusted if e.complete and not e.failed_rungs]
    if verified:  # at least the newest verified backup, always
        assert verified[0].backup_id not in gone
    else:  # none verified: at least the newest keep_last (or one) that did not fail
        for e in usable[:max(policy.keep_last, 1)]:
            assert e.backup_id not in gone, plan.render()
    if usable or verified:  # whatever the policy, some complete backup that did not fail stays
        assert any(e.backup_id not in gone for e in usable), plan.render()
    # Idempotent: planning again on what is left deletes nothing more.
    left = [e for e in entries if e.backup_id not in gone]
    again = plan_retention(left, policy, NOW)
    assert again.deletions == [] and again.garbage == []


@PROPERTY
@given(stores(), policies)
def test_compliance_and_rpo_never_count_a_skewed_backup(entries: list[BackupEntry], policy: RetentionPolicy) -> None:
    trusted_verified = [e for e in entries if e.integrity_ok and not is_clock_skewed(e.started_at, NOW)]
    assert retention_compliance(entries, policy, NOW).verified == len(trusted_verified)
    rpo = evaluate_rpo(DB, entries, timedelta(hours=24), NOW)
    if rpo.ok:
        assert rpo.age is not None and timedelta(0) <= rpo.age <= timedelta(hours=24)
        assert rpo.newest_backup_id in {e.backup_id for e in trusted_verified}
