"""Retention by kind (issue 11.4): safety, guard and sanitized backups each follow their own rule.

Properties over random catalogs (hypothesis, in the style of ``test_retention``): the safety backup
of the newest restore over a target is never deleted, whatever the clock says; no kind counts toward
another's quota (a mixed folder plans exactly as each kind alone). Then scenarios with exact answers,
and the sweep itself on a real store: it visits the folders safety backups live in, and after a
restore and its undo, deletes the older safety backup and keeps the one of the newest restore.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dbprotect.cli.app import run
from dbprotect.core.config.load import load_config
from dbprotect.core.errors import EXIT_OK
from dbprotect.core.ops import cleanup_database
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.retention.kinds import kind_folders, plan_folder_cleanup, plan_kind_cleanups, protected_target
from dbprotect.core.retention.plan import RetentionPlan, plan_retention
from dbprotect.core.retention.policy import KindRetention, RetentionPolicy
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import BackupEntry, CheckRecord, list_backups, load_manifest
from dbprotect_tests.test_undo_path import PRODUCTION_SQL, backed_up_store  # noqa: F401 (a fixture)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BASE = datetime(2025, 1, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATES = ("verified", "unverified", "failed", "missing-object", "incomplete")
KINDS = (None, "safety", "guard", "sanitized")


def entry(started: datetime, state: str = "verified", n: int = 0) -> BackupEntry:
    backup_id = f"{started:%Y%m%dT%H%M%SZ}-{n:06x}"
    checked = started + timedelta(hours=1)
    checks = {
        "verified": [CheckRecord(checked, "stored", True), CheckRecord(checked, "readable", True)],
        "failed": [CheckRecord(checked, "stored", True), CheckRecord(checked, "readable", False)],
    }.get(state, [])
    return BackupEntry("shop", backup_id, started, has_manifest=state != "incomplete",
                       dump_bytes=None if state == "missing-object" else 1000, checks=checks)


def failed(e: BackupEntry) -> bool:
    return e.dump_bytes is None or bool(e.failed_rungs)


@st.composite
def kind_catalogs(draw: st.DrawFn) -> tuple[list[BackupEntry], dict[str, str], dict[str, str], datetime]:
    """Backups of every kind, safety backups of two targets (or none recorded), and a clock that may be
    anywhere: before every backup (they all look dated in the future), among them, or years later."""
    size = draw(st.integers(0, 30))
    hours = draw(st.lists(st.integers(0, 2 * 365 * 24), min_size=size, max_size=size))
    states = draw(st.lists(st.sampled_from(STATES), min_size=size, max_size=size))
    kinds_drawn = draw(st.lists(st.sampled_from(KINDS), min_size=size, max_size=size))
    targets = draw(st.lists(st.sampled_from(["production: a", "production: b", None]), min_size=size, max_size=size))
    entries = [entry(BASE + timedelta(hours=h), s, i) for i, (h, s) in enumerate(zip(hours, states, strict=True))]
    kinds = {e.backup_id: k for e, k in zip(entries, kinds_drawn, strict=True) if k and e.has_manifest}
    protects = {e.backup_id: t for e, t in zip(entries, targets, strict=True)
                if t and kinds.get(e.backup_id) == "safety"}
    now = BASE + timedelta(hours=draw(st.integers(-24 * 30, 4 * 365 * 24)))
    return entries, kinds, protects, now


kind_policies = st.builds(KindRetention, safety_min_age=st.integers(0, 30).map(lambda d: timedelta(days=d)),
                          guard_min_age=st.integers(0, 30).map(lambda d: timedelta(days=d)),
                          sanitized_keep_last=st.integers(1, 4))
policies = st.builds(RetentionPolicy, keep_last=st.integers(0, 4), keep_daily=st.integers(0, 4),
                     max_age=st.one_of(st.none(), st.integers(1, 400).map(lambda d: timedelta(days=d))),
                     min_verified=st.integers(1, 3))


def actions(plan: RetentionPlan) -> dict[str, str]:
    return {d.backup_id: d.action for d in plan.decisions}


def newest(entries: list[BackupEntry]) -> BackupEntry | None:
    return max(entries, key=lambda e: (e.started_at, e.backup_id), default=None)


@PROPERTY
@given(kind_catalogs(), policies, kind_policies)
def test_the_safety_backup_of_the_newest_restore_is_never_deleted(catalog, policy, kind_policy) -> None:
    entries, kinds, protects, now = catalog
    plan = plan_retention(entries, policy, now, kinds=kinds, protects=protects, kind_policy=kind_policy)
    kept = {d.backup_id for d in plan.kept}
    safety = [e for e in entries if kinds.get(e.backup_id) == "safety"]
    for target in {protects.get(e.backup_id, e.backup_id) for e in safety}:
        of_target = [e for e in safety if protects.get(e.backup_id, e.backup_id) == target]
        usable = newest([e for e in of_target if not failed(e)])
        verified = newest([e for e in of_target if e.integrity_ok])
        for protecting in (usable, verified):
            if protecting is not None:
                assert protecting.backup_id in kept, (target, protecting.backup_id, plan.render())
    # the plan never deletes what it keeps, and re-planning what it keeps deletes nothing more
    again = plan_retention([e for e in entries if e.backup_id in kept], policy, now, kinds=kinds, protects=protects,
                           kind_policy=kind_policy)
    assert not [d for d in again.decisions if d.action == "delete" and not d.garbage]


@PROPERTY
@given(kind_catalogs(), policies, kind_policies)
def test_kinds_never_count_toward_each_others_quotas(catalog, policy, kind_policy) -> None:
    """A folder holding every kind decides each backup as a folder holding only its kind would."""
    entries, kinds, protects, now = catalog
    mixed = actions(plan_retention(entries, policy, now, kinds=kinds, protects=protects, kind_policy=kind_policy))
    for kind in KINDS:
        alone = [e for e in entries if kinds.get(e.backup_id) == kind]
        separate = actions(plan_retention(alone, policy, now, kinds=kinds, protects=protects,
                                          kind_policy=kind_policy))
        assert separate == {backup_id: mixed[backup_id] for backup_id in separate}, kind


def test_scheduled_backups_plan_as_before_when_no_kind_is_known() -> None:
    entries = [entry(NOW - timedelta(days=d), n=d) for d in range(20)]
    policy = RetentionPolicy.parse("keep_last=3")
    before = plan_retention(entries, policy, NOW)
    assert actions(plan_retention(entries, policy, NOW, kinds={})) == actions(before)
    assert before.kind_policy is None


def test_each_kind_by_its_own_rule_with_reasons() -> None:
    safety_a = [entry(NOW - timedelta(days=d), n=100 + d) for d in (2, 10, 40)]
    safety_b = [entry(NOW - timedelta(days=d), n=200 + d) for d in (50, 60)]
    guards = [entry(NOW - timedelta(days=d), n=300 + d) for d in (1, 8, 30)]
    sanitized = [entry(NOW - timedelta(days=d), n=400 + d) for d in range(5)]
    scheduled = [entry(NOW - timedelta(days=d), n=500 + d) for d in range(5)]
    kinds = {e.backup_id: "safety" for e in safety_a + safety_b} | {e.backup_id: "guard" for e in guards} \
        | {e.backup_id: "sanitized" for e in sanitized}
    protects = {e.backup_id: "production: a" for e in safety_a} | {e.backup_id: "production: b" for e in safety_b}
    plan = plan_retention(safety_a + safety_b + guards + sanitized + scheduled, RetentionPolicy.parse("keep_last=2"),
                          NOW, kinds=kinds, protects=protects, kind_policy=KindRetention(sanitized_keep_last=2))
    got = actions(plan)
    # safety: 2 d old (young, and the newest restore over a), 10 d and 40 d replaced by a newer restore
    assert [got[e.backup_id] for e in safety_a] == ["keep", "delete", "delete"]
    assert "newest restore over production: a" in " ".join(plan.decision(safety_a[0].backup_id).reasons)
    # b's newest restore is 50 days old: its safety backup stays, however old
    assert [got[e.backup_id] for e in safety_b] == ["keep", "delete"]
    # guards by age (7 d default); the 30-day one is also the newest verified guard? no: the 1-day one is
    assert [got[e.backup_id] for e in guards] == ["keep", "delete", "delete"]
    assert "guard_min_age=7d" in plan.decision(guards[1].backup_id).reasons[0]
    assert [got[e.backup_id] for e in sanitized] == ["keep", "keep", "delete", "delete", "delete"]
    # the scheduled backups' keep_last=2 counts none of the 15 others
    assert [got[e.backup_id] for e in scheduled] == ["keep", "keep", "delete", "delete", "delete"]
    assert "kinds: safety_min_age=7d, guard_min_age=7d, sanitized_keep_last=2" in plan.render()


def test_a_failed_safety_backup_does_not_take_the_protection_from_the_one_before() -> None:
    """A restore whose safety backup failed integrity never started: the one before protects the newest restore."""
    good, bad = entry(NOW - timedelta(days=30), n=1), entry(NOW - timedelta(days=20), "failed", n=2)
    plan = plan_retention([good, bad], RetentionPolicy(), NOW,
                          kinds={good.backup_id: "safety", bad.backup_id: "safety"},
                          protects={good.backup_id: "t", bad.backup_id: "t"})
    assert plan.decision(good.backup_id).action == "keep"


def test_max_age_removes_old_guards_but_only_warns_about_the_newest_restore_safety_backup() -> None:
    safety, guard = entry(NOW - timedelta(days=60), n=1), entry(NOW - timedelta(days=3), "unverified", n=2)
    older_guard = entry(NOW - timedelta(days=45), "unverified", n=3)
    plan = plan_retention([safety, guard, older_guard], RetentionPolicy.parse("max_age=30d"), NOW,
                          kinds={safety.backup_id: "safety", guard.backup_id: "guard", older_guard.backup_id: "guard"},
                          protects={safety.backup_id: "t"})
    assert plan.decision(safety.backup_id).action == "keep"
    assert any(safety.backup_id in w and "protected" in w for w in plan.warnings)
    assert plan.decision(guard.backup_id).action == "keep"
    assert plan.decision(older_guard.backup_id).action == "delete"


def test_kind_retention_text_is_validated() -> None:
    assert KindRetention.model_validate({"safety_min_age": "14d", "guard_min_age": "36h"}).guard_min_age == \
        timedelta(hours=36)
    for bad in ({"safety_min_age": 7}, {"guard_min_age": "-1d"}, {"sanitized_keep_last": 0}, {"keep": 1}):
        with pytest.raises(ValidationError):
            KindRetention.model_validate(bad)


def test_the_sweep_visits_every_folder_a_kind_lives_in() -> None:
    assert [folder for folder, _kind in kind_folders("shop")] == [
        "shop", "shop-safety", "shop-development-safety", "shop.development", "shop-sanitized"]


@pytest.mark.slow
def test_cleanup_keeps_the_safety_backup_of_the_newest_restore_and_sweeps_the_older_one(
        backed_up_store, pg, make_db, monkeypatch, capsys) -> None:  # noqa: F811
    """Restore over production, undo it (a second safety backup), then clean up a month later."""
    store, manifest = backed_up_store
    dsn = make_db(PRODUCTION_SQL, prefix="kinds")
    name = str(dbname_of(dsn))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "production")
    monkeypatch.setenv("TEST_CHINOOK_PROD_DSN", dsn)
    assert run(["restore", "chinook", manifest.backup_id, "--target", "production", "--confirm", name]) == EXIT_OK
    out = capsys.readouterr().out
    [first] = list_backups(store, "chinook-safety")
    recorded = load_manifest(store, "chinook-safety", first.backup_id)
    host = recorded.source["server"].split(" on ")[1]
    assert protected_target(recorded) == f"production: database {name!r} on {host}"
    assert (recorded.model_extra or {})["protects"]["restore_of"] == f"chinook/{manifest.backup_id}"
    undo = out.split("to undo this restore:", 1)[1].splitlines()[0].strip()
    assert run(shlex.split(undo)[1:]) == EXIT_OK
    capsys.readouterr()
    second = next(e for e in list_backups(store, "chinook-safety") if e.backup_id != first.backup_id)

    config = load_config()
    soon = cleanup_database(config, "chinook", now=datetime.now(UTC) + timedelta(days=1))
    assert [c.plan.database for c in soon] == ["chinook", "chinook-safety"]  # the sweep now sees it
    assert {e.backup_id for e in list_backups(store, "chinook-safety")} == {first.backup_id, second.backup_id}

    later = cleanup_database(config, "chinook", now=datetime.now(UTC) + timedelta(days=30))
    [safety_plan] = [c.plan for c in later if c.plan.database == "chinook-safety"]
    assert safety_plan.decision(first.backup_id).action == "delete", safety_plan.render()
    assert [e.backup_id for e in list_backups(store, "chinook-safety")] == [second.backup_id]
    assert list_backups(store, "chinook")  # the scheduled folder's own policy (keep all) untouched


def test_an_unreadable_manifest_is_never_guessed_at(tmp_path) -> None:
    """A safety backup whose manifest does not parse is kept (an unknown target of its own), with a warning;
    in the database's own folder such a backup follows the policy, as every backup did before kinds."""
    store = FilesystemStorage(tmp_path / "store")
    old = "20250101T020000Z-0000aa"
    for folder in ("shop-safety", "shop"):
        store.put_bytes(f"{folder}/{old}/dump.zst.age", b"x" * 10)
        store.put_bytes(f"{folder}/{old}/manifest.json", b"{not json")
    later = datetime(2026, 6, 1, tzinfo=UTC)
    [safety] = [p for p in plan_kind_cleanups(store, "shop", RetentionPolicy.parse("max_age=30d"), KindRetention(),
                                              later) if p.database == "shop-safety"]
    assert safety.decision(old).action == "keep" and safety.lock_database == "shop"
    assert any("manifest unreadable" in warning for warning in safety.warnings)
    own = plan_folder_cleanup(store, "shop", "shop", None, RetentionPolicy.parse("max_age=30d"), KindRetention(),
                              later)
    # planned by the policy, as before kinds existed: past max_age, kept only by the policy's own floor
    assert own.decision(old).reasons[0].startswith("no verified backup exists")
