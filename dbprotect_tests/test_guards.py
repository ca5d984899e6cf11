"""On-call restores: plan, execute, and every guard refusing with the target left untouched."""

from __future__ import annotations

import psycopg
import pytest

from dbprotect.core.audit import AuditLog, read
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.errors import RefusedError
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import read_marker, set_marker
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.restore.oncall import RestorePlan, RestoreResult, RestoreTarget, restore
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups
from dbprotect_tests.fixtures.fix_pg import content, table_counts

# Slow, so not in the fast lane: each test backs up and restores a database through the on-call guards (0.5-1.5 s).
pytestmark = pytest.mark.slow

SOURCE_SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, amount numeric(10,2));
INSERT INTO customers (name) SELECT 'customer ' || g FROM generate_series(1, 50) g;
INSERT INTO orders (customer_id, amount) SELECT 1 + g % 50, g * 1.25 FROM generate_series(1, 300) g;
"""

TARGET_SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO customers (name) VALUES ('damaged row');
CREATE TABLE only_in_target (x int);
"""


@pytest.fixture
def store(tmp_path):
    return FilesystemStorage(tmp_path / "store")


@pytest.fixture
def backup(make_db, store, age_keys):
    def take(environment: str = "production"):
        dsn = make_db(SOURCE_SQL, prefix="src")
        return run_backup(database="shop", dsn=dsn, storage=store, recipients=[age_keys[1]],
                          environment=environment).manifest
    return take


@pytest.fixture
def target(pg, make_db):
    """An existing database marked ``marker`` (or unmarked), with content of its own."""
    def create(marker: str | None = "production") -> str:
        dsn = make_db(TARGET_SQL, prefix="tgt")
        if marker:
            with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
                set_marker(admin, _name(dsn), marker)
        return dsn
    return create


def _name(dsn: str) -> str:
    return str(dbname_of(dsn))


def _marker(pg, name: str) -> str | None:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        return read_marker(admin, name)


def test_restore_to_a_new_database_creates_it_verified_and_marked(pg, store, backup, identity, age_keys):
    manifest = backup()
    name = "restored_new_db"
    dsn = pg.dsn(name)
    try:
        result = restore(store, manifest, identity, RestoreTarget(dsn, "production"), recipients=[age_keys[1]])
        assert isinstance(result, RestoreResult) and result.safety_backup_id is None
        assert table_counts(dsn) == {"public.customers": 50, "public.orders": 300}
        assert _marker(pg, name) == "production"
        assert {"decrypt_seconds", "restore_seconds", "verify_seconds", "swap_seconds"} <= set(result.timings)
        assert "analyze_seconds" not in result.timings  # a new database is left to autovacuum
    finally:
        pg.drop_database(name)
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []


def test_analyze_on_request_gives_the_new_database_statistics(pg, store, backup, identity, age_keys):
    manifest = backup()
    name = "restored_analyzed"
    dsn = pg.dsn(name)
    try:
        result = restore(store, manifest, identity, RestoreTarget(dsn, "production"), recipients=[age_keys[1]],
                         analyze=True)
        assert isinstance(result, RestoreResult) and result.timings["analyze_seconds"] >= 0
        with psycopg.connect(dsn) as conn:
            analyzed = conn.execute("SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL "
                                    "ORDER BY relname").fetchall()
        assert [row[0] for row in analyzed] == ["customers", "orders"]
    finally:
        pg.drop_database(name)


def test_dry_run_plans_drops_and_changes_nothing(pg, store, backup, target, identity, age_keys):
    manifest = backup()
    dsn = target()
    before = content(dsn)
    plan = restore(store, manifest, identity, RestoreTarget(dsn, "production", existing=True),
                   recipients=[age_keys[1]], dry_run=True)
    assert isinstance(plan, RestorePlan)
    assert plan.will_drop == ["table public.only_in_target"]
    assert "table public.orders" in plan.will_create and "table public.customers" in plan.will_replace
    assert plan.confirmation_required == _name(dsn) and plan.rows == 350 and plan.last_drill is None
    assert "will DROP 1 object(s)" in plan.summary() and "- table public.only_in_target" in plan.summary()
    assert content(dsn) == before
    assert list_backups(store, "shop-safety") == []


def test_restore_over_existing_database_with_confirmation(pg, store, backup, target, identity, age_keys):
    manifest = backup()
    dsn = target()
    audit = AuditLog(store, actor="on-call:test")
    result = restore(store, manifest, identity, RestoreTarget(dsn, "production", existing=True),
                     confirmation=_name(dsn), recipients=[age_keys[1]], audit=audit)
    assert isinstance(result, RestoreResult)
    assert "analyze_seconds" in result.timings  # an overwrite is analyzed before its traffic lands on it
    assert table_counts(dsn) == {"public.customers": 50, "public.orders": 300}  # only_in_target is gone
    assert _marker(pg, _name(dsn)) == "production"
    safety = list_backups(store, "shop-safety")
    assert [entry.backup_id for entry in safety] == [result.safety_backup_id] and safety[0].integrity_ok
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []
    records = list(read(store))
    assert records[-1].action == "restore" and records[-1].outcome == "ok"


@pytest.mark.parametrize("confirmation", [None, "", "wrong_name"])
def test_wrong_confirmation_is_refused_and_target_untouched(store, backup, target, identity, age_keys, confirmation):
    manifest = backup()
    dsn = target()
    before = content(dsn)
    audit = AuditLog(store, actor="on-call:test")
    with pytest.raises(RefusedError, match=f"overwriting database '{_name(dsn)}' needs its name as confirmation"):
        restore(store, manifest, identity, RestoreTarget(dsn, "production", existing=True),
                confirmation=confirmation, recipients=[age_keys[1]], audit=audit)
    assert content(dsn) == before
    assert list_backups(store, "shop-safety") == []  # refused before the safety backup
    assert [r.action for r in read(store)] == ["refused"]


@pytest.mark.parametrize(("marker", "message"), [
    ("development", "is marked 'development', not 'production'"),
    (None, "carries no environment marker"),
])
def test_marker_mismatch_is_refused_and_target_untouched(store, backup, target, identity, age_keys, marker, message):
    manifest = backup()
    dsn = target(marker)
    before = content(dsn)
    with pytest.raises(RefusedError, match=message):
        restore(store, manifest, identity, RestoreTarget(dsn, "production", existing=True),
                confirmation=_name(dsn), recipients=[age_keys[1]])
    assert content(dsn) == before


def test_development_data_never_goes_to_production(pg, store, backup, target, identity, age_keys):
    manifest = backup("development")
    dsn = target("production")
    before = content(dsn)
    for existing in (True, False):
        goal = RestoreTarget(dsn if existing else pg.dsn("fresh_prod"), "production", existing=existing)
        for dry_run in (True, False):
            with pytest.raises(RefusedError, match="development data is never restored into production"):
                restore(store, manifest, identity, goal, confirmation=_name(dsn), recipients=[age_keys[1]],
                        dry_run=dry_run)
    assert content(dsn) == before


def test_raw_production_backup_is_refused_for_development(store, backup, target, identity, age_keys):
    dsn = target("development")
    with pytest.raises(RefusedError, match="raw production backup is never restored into development"):
        restore(store, backup(), identity, RestoreTarget(dsn, "development", existing=True),
                confirmation=_name(dsn), recipients=[age_keys[1]])


@pytest.mark.parametrize("failure", ["pg_dump missing", "safety backup unreadable"])
def test_failing_safety_backup_refuses_the_restore(tmp_path, store, backup, target, identity, age_keys,
                                                   other_age_keys, failure):
    manifest = backup()
    dsn = target()
    before = content(dsn)
    options: dict[str, object] = {"recipients": [age_keys[1]]}
    if failure == "pg_dump missing":
        (tmp_path / "empty-bin").mkdir()
        options["pg_bin_dir"] = str(tmp_path / "empty-bin")
    else:  # encrypted to a key whose identity we do not hold: integrity (rung 2) cannot pass
        options["recipients"] = [other_age_keys[1]]
    goal = RestoreTarget(dsn, "production", existing=True)
    plan = restore(store, manifest, identity, goal, recipients=[age_keys[1]], dry_run=True)
    from dbprotect.core.restore.oncall import execute_restore

    with pytest.raises(RefusedError, match=f"the safety backup of '{_name(dsn)}' failed.*restore did not start"):
        execute_restore(store, plan, identity, confirmation=_name(dsn), **options)  # type: ignore[arg-type]
    assert content(dsn) == before


def test_new_database_target_that_exists_is_refused(store, backup, target, identity, age_keys):
    dsn = target()
    before = content(dsn)
    with pytest.raises(RefusedError, match="already exists"):
        restore(store, backup(), identity, RestoreTarget(dsn, "production"), recipients=[age_keys[1]])
    assert content(dsn) == before


def test_interrupted_restore_leaves_target_untouched_and_no_staging_database(pg, store, backup, target,
                                                                            identity, age_keys):
    manifest = backup()
    dsn = target()
    before = content(dsn)

    def interrupt(phase: str) -> None:
        if phase == "restore":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore(store, manifest, identity, RestoreTarget(dsn, "production", existing=True),
                confirmation=_name(dsn), recipients=[age_keys[1]], progress=interrupt)
    assert content(dsn) == before
    assert _marker(pg, _name(dsn)) == "production"
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []
