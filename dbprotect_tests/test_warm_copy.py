"""The warm copy: the newest verified backup restored into the backup server's database, against real PostgreSQL.

The "backup server" is the test server; the source is a small database with a checksummed
table, a sequence and a view. Assertions are on content: row counts and checksums of the warm
copy against the manifest *and* the source, and the untouched content of databases it refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from dbprotect.core.audit import read
from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.errors import CredentialIsolationError, RefusedError
from dbprotect.core.ops import backup_database, refresh_warm_copy, verify_database_backup, verify_warm_copy
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import read_marker, set_marker
from dbprotect.core.restore.guards import check_direction
from dbprotect.core.restore.warm import HOLDS_SETTING, compare_warm_copy, inspect_warm_copy
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import load_manifest
from dbprotect.defs import load_definitions
from dbprotect.defs.names import WARM_COPY_CHECK
from dbprotect_tests.fixtures.fix_pg import content, psql, table_counts

# Slow, so not in the fast lane: each test backs up and restores into a warm copy (1-4 s).
pytestmark = pytest.mark.slow

SOURCE_SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, balance numeric(12,2));
INSERT INTO customers (name, balance) SELECT 'customer ' || g, g * 1.5 FROM generate_series(1, 500) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers, note text);
INSERT INTO orders (customer_id, note) SELECT 1 + g % 500, md5(g::text) FROM generate_series(1, 2000) g;
CREATE VIEW big_customers AS SELECT * FROM customers WHERE balance > 500;
"""
WARM_VAR = "TEST_SHOP_WARM_DSN"
WARM_PASSWORD = "warm-s3cret"


def _databases(pg) -> set[str]:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        return {row[0] for row in admin.execute("SELECT datname FROM pg_database")}


@pytest.fixture
def shop(pg, make_db, write_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A source database ``shop`` configured with a warm copy ``<random>_warm`` on the same server."""
    source = make_db(SOURCE_SQL, prefix="shop")
    warm_name = f"{dbname_of(source)}_warm"
    monkeypatch.setenv(WARM_VAR, pg.dsn(warm_name, password=WARM_PASSWORD))  # never printed (trust auth here)
    write_config(source, extra={"databases": {"shop": {
        "environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
        "warm_copy": {"dsn_env": WARM_VAR}}}})
    yield {"source": source, "warm_name": warm_name, "warm": pg.dsn(warm_name),
           "store": FilesystemStorage(tmp_path / "store")}
    for name in (warm_name, f"{warm_name}__incoming"):
        pg.drop_database(name)


def _verified_backup(database: str = "shop") -> str:
    config = load_config()
    backup_id = backup_database(config, database).manifest.backup_id
    assert verify_database_backup(config, database, backup_id).ok
    return backup_id


def test_warm_copy_holds_the_newest_verified_backup_and_is_replaced_only_by_a_newer_one(shop, pg) -> None:
    config = load_config()
    first = _verified_backup()
    before = _databases(pg)

    outcome = refresh_warm_copy(config, "shop", actor="test")
    assert outcome.refreshed and outcome.backup_id == first and outcome.previous is None
    manifest = load_manifest(shop["store"], "shop", first)
    counts = table_counts(shop["warm"])
    assert counts == table_counts(shop["source"]) == {"public.customers": 500, "public.orders": 2000}
    assert {name: record.rows for name, record in manifest.tables.items()} == counts
    assert compare_warm_copy(shop["warm"], manifest) == []  # every count and content checksum
    assert content(shop["warm"]) == content(shop["source"])
    assert psql(shop["warm"], "SELECT count(*) FROM big_customers").strip() == "167"
    state = inspect_warm_copy(shop["warm"])
    assert (state.marker, state.holds) == ("backup", first)
    assert outcome.tables == 2 and outcome.rows == 2500 and outcome.objects > 0
    assert {"restore_seconds", "verify_seconds", "warm_swap_seconds", "total_seconds"} <= set(outcome.timings)
    assert 0 <= outcome.backup_age_hours() < 1
    assert _databases(pg) - before == {shop["warm_name"]}  # no staging or incoming database left

    report = verify_warm_copy(config, "shop", actor="test")
    assert report.ok and report.backup_id == first and report.rows == 2500

    again = refresh_warm_copy(config, "shop", actor="test")
    assert not again.refreshed and again.backup_id == first and "already holds" in again.reason

    psql(shop["source"], "INSERT INTO customers (name, balance) VALUES ('late customer', 1); "
                         "UPDATE orders SET note = 'changed' WHERE id <= 10")
    unverified = backup_database(config, "shop").manifest.backup_id
    skipped = refresh_warm_copy(config, "shop", actor="test")  # not verified yet: never the warm copy's source
    assert not skipped.refreshed and skipped.backup_id == first
    assert verify_database_backup(config, "shop", unverified).ok
    with psycopg.connect(shop["warm"], autocommit=True) as reader:  # a session on the old copy does not block
        reader.execute("SELECT 1")
        newer = refresh_warm_copy(config, "shop", actor="test")
    assert newer.refreshed and newer.backup_id == unverified and newer.previous == first
    assert table_counts(shop["warm"])["public.customers"] == 501
    assert content(shop["warm"]) == content(shop["source"])
    assert compare_warm_copy(shop["warm"], load_manifest(shop["store"], "shop", unverified)) == []
    assert inspect_warm_copy(shop["warm"]).holds == unverified
    assert _databases(pg) - before == {shop["warm_name"]}

    records = [r for r in read(shop["store"]) if r.action == "warm_copy"]
    assert [(r.outcome, r.target) for r in records] == [("ok", first), ("ok", unverified)]


def test_the_live_check_names_the_table_that_drifted(shop) -> None:
    config = load_config()
    _verified_backup()
    refresh_warm_copy(config, "shop")
    psql(shop["warm"], "UPDATE customers SET balance = 0 WHERE id = 7")
    report = verify_warm_copy(config, "shop")
    assert not report.ok and "public.customers" in report.detail and "checksum" in report.detail
    forced = refresh_warm_copy(config, "shop", force=True)  # a forced refresh repairs it
    assert forced.refreshed and verify_warm_copy(config, "shop").ok


@pytest.mark.parametrize("marker", ["production", "development", None])
def test_a_database_that_is_not_a_warm_copy_is_never_overwritten(shop, pg, marker: str | None) -> None:
    psql(pg.admin_dsn, f'CREATE DATABASE "{shop["warm_name"]}"')
    psql(shop["warm"], "CREATE TABLE precious (id int); INSERT INTO precious SELECT generate_series(1, 42)")
    if marker:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            set_marker(admin, shop["warm_name"], marker)
    _verified_backup()
    before = content(shop["warm"])
    with pytest.raises(RefusedError, match="nothing was changed") as refused:
        refresh_warm_copy(load_config(), "shop", actor="test")
    assert (repr(marker) if marker else "no environment marker") in str(refused.value)
    assert WARM_PASSWORD not in str(refused.value) + (refused.value.hint or "")
    assert content(shop["warm"]) == before and table_counts(shop["warm"]) == {"public.precious": 42}
    assert not pg.has_database(f"{shop['warm_name']}__incoming")
    [record] = [r for r in read(shop["store"]) if r.action == "warm_copy"]
    assert record.outcome == "refused"


def test_an_empty_unmarked_database_is_adopted_and_its_owner_kept(shop, pg) -> None:
    psql(pg.admin_dsn, f'CREATE DATABASE "{shop["warm_name"]}"')
    backup_id = _verified_backup()
    assert refresh_warm_copy(load_config(), "shop").refreshed
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        assert read_marker(admin, shop["warm_name"]) == "backup"
    assert inspect_warm_copy(shop["warm"]).holds == backup_id
    assert psql(shop["warm"], f"SHOW {HOLDS_SETTING}").strip() == backup_id  # visible to sessions too


def test_direction_policy_and_credential_isolation_for_the_backup_environment(shop, monkeypatch) -> None:
    check_direction("production", "backup")
    with pytest.raises(RefusedError, match="standby of production"):
        check_direction("development", "backup")
    with pytest.raises(RefusedError, match="unknown environment 'backup'"):
        check_direction("backup", "production")  # nothing is ever backed up from a warm copy
    monkeypatch.setenv("DBPROTECT_DEPLOYMENT", "development")
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    with pytest.raises(CredentialIsolationError, match=WARM_VAR) as refused:
        check_credential_isolation(load_config())
    assert "postgresql://" not in str(refused.value)


def test_warm_copy_asset_materializes_with_numeric_metadata_and_its_check_passes(shop, pg) -> None:
    backup_id = _verified_backup()
    job = load_definitions().resolve_job_def("shop_warm_copy_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
    assert result.success
    [materialization] = [e.materialization for e in result.all_events
                         if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
    assert materialization.asset_key == dg.AssetKey(["shop", "warm_copy"])
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["backup_id"] == backup_id and metadata["refreshed"] is True
    assert isinstance(materialization.metadata["backup_age_hours"], dg.FloatMetadataValue)
    assert 0 <= metadata["backup_age_hours"] < 1
    assert metadata["tables_verified"] == 2 and metadata["rows_verified"] == 2500
    assert metadata["restore_seconds"] > 0 and metadata["total_seconds"] >= metadata["restore_seconds"]
    assert metadata["holdings"].splitlines()[0] == "| backup id | local | warm copy |"
    assert f"| {backup_id} | verified | verified |" in metadata["holdings"]
    [check] = [e.asset_check_evaluation_data for e in result.all_events
               if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    assert check.check_name == WARM_COPY_CHECK and check.passed
    assert check.metadata["rows"].value == 2500
    assert table_counts(shop["warm"]) == table_counts(shop["source"])


def test_cli_refreshes_checks_and_exits_7_when_the_warm_copy_drifted(shop, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dbprotect.cli.app import run

    backup_id = _verified_backup()
    assert run(["warm-copy", "shop", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["refreshed"] is True and doc["backup_id"] == backup_id and doc["rows"] == 2500
    assert "****" in doc["server"] and WARM_PASSWORD not in json.dumps(doc)
    assert run(["warm-copy", "shop"]) == 0
    out = capsys.readouterr().out
    assert "already holds" in out and WARM_PASSWORD not in out
    assert run(["warm-copy", "shop", "--check"]) == 0
    assert f"matches backup {backup_id}" in capsys.readouterr().out
    psql(shop["warm"], "DELETE FROM orders WHERE id = 1")
    assert run(["warm-copy", "shop", "--check"]) == 7
    err = capsys.readouterr().err
    assert "public.orders: 1999 rows" in err and WARM_PASSWORD not in err
