"""Schema snapshots, drift, sync and guard against real PostgreSQL (Chinook and Northwind)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.config.load import load_config
from dbprotect.core.errors import RefusedError
from dbprotect.core.ops import push_schema
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import read_marker
from dbprotect.core.schema.drift import compare_schemas
from dbprotect.core.schema.snapshot import take_snapshot
from dbprotect_tests.fixtures.fix_pg import fixture_sql, load_sql_file, mark_environment, psql, table_counts

# Slow, so not in the fast lane: each test loads Chinook twice and diffs or syncs whole schemas (2-6 s).
pytestmark = pytest.mark.slow

CHANGES = """
ALTER TABLE album ADD COLUMN release_year integer DEFAULT 1970;
ALTER TABLE artist ALTER COLUMN name TYPE varchar(200);
CREATE INDEX ix_track_name ON track (name);
CREATE FUNCTION track_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM track';
DROP INDEX IF EXISTS ix_invoice_line_track_id;
CREATE TABLE review (id serial PRIMARY KEY, body text NOT NULL);
ALTER TABLE review ENABLE ROW LEVEL SECURITY;
CREATE POLICY review_visible ON review USING (id > 0);
"""


def _chinook(make_db: Callable[..., str], prefix: str) -> str:
    dsn = make_db(prefix=prefix)
    load_sql_file(dsn, fixture_sql("chinook"))
    return dsn


@pytest.fixture
def chinook_pair(make_db: Callable[..., str], write_config: Callable[..., Path],
                 monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(development DSN, production DSN): two Chinook databases, marked and configured."""
    prod, dev = _chinook(make_db, "prod"), _chinook(make_db, "dev")
    mark_environment(prod, "production")
    mark_environment(dev, "development")
    write_config(prod, database="shop")
    monkeypatch.setenv("TEST_SHOP_DEV_DSN", dev)
    return dev, prod


def test_drift_is_reported_exactly(chinook_pair: tuple[str, str]) -> None:
    dev, prod = chinook_pair
    indexes = psql(dev, "SELECT indexname FROM pg_indexes WHERE tablename='invoice_line' ORDER BY 1")
    psql(dev, CHANGES)
    report = compare_schemas(dev, prod, left="development", right="production")
    expected = {
        "table public.review: only in development",
        "column public.album.release_year: only in development",
        "column public.artist.name: changed: type character varying(200) in development, "
        "character varying(120) in production",
        "index public.ix_track_name: only in development",
        "index public.review_pkey: only in development",
        "constraint public.review.review_pkey: only in development",
        "function public.track_count(): only in development",
        "policy public.review.review_visible: only in development",
        "sequence public.review_id_seq: only in development",
    }
    if "ix_invoice_line_track_id" in indexes:
        expected.add("index public.ix_invoice_line_track_id: only in production")
    assert set(report.lines()) == expected
    assert not report.ok
    allowed = compare_schemas(dev, prod, allowed=["* public.review*", "column public.album.*",
                                                  "sequence public.review_id_seq"])
    assert {str(item) for item in allowed.allowed} >= {"table public.review: only in development",
                                                       "column public.album.release_year: only in development"}
    assert "column public.artist.name" in " ".join(allowed.lines())


def test_northwind_drift_column_default_and_nullability(northwind_dsn: str, make_db: Callable[..., str]) -> None:
    other = make_db(prefix="nw")
    load_sql_file(other, fixture_sql("northwind"))
    psql(other, "ALTER TABLE products ALTER COLUMN discontinued DROP NOT NULL; "
                "ALTER TABLE products ALTER COLUMN unit_price SET DEFAULT 1")
    report = compare_schemas(other, northwind_dsn, left="development", right="production")
    lines = report.lines()
    assert len(lines) == 2, lines
    assert any(line.startswith("column public.products.discontinued: changed: nullable in development, NOT NULL")
               for line in lines)
    assert any(line.startswith("column public.products.unit_price: changed: default 1 in development")
               for line in lines)


def test_creation_order_is_not_drift(make_db: Callable[..., str]) -> None:
    one = make_db("CREATE TABLE a (id int PRIMARY KEY, note text DEFAULT 'x'); CREATE TABLE b (id int REFERENCES a);"
                  "CREATE INDEX ix_b ON b (id); CREATE VIEW v AS SELECT a.id FROM a JOIN b USING (id);")
    two = make_db("CREATE TABLE b (id int); CREATE TABLE a (id int PRIMARY KEY, note text DEFAULT 'x');"
                  "CREATE VIEW v AS SELECT a.id FROM a JOIN b USING (id); CREATE INDEX ix_b ON b (id);"
                  "ALTER TABLE b ADD CONSTRAINT b_id_fkey FOREIGN KEY (id) REFERENCES a;")
    assert compare_schemas(one, two).lines() == []
    first, second = take_snapshot(one), take_snapshot(two)
    assert first.sha256 == second.sha256 and first.objects == second.objects
    assert "OWNER TO" not in first.text and "SET " not in first.text and "--" not in first.text
    psql(two, "ALTER TABLE a ADD COLUMN extra int")
    assert take_snapshot(two).sha256 != first.sha256


def test_prod_to_dev_plan_applied_makes_schemas_identical(chinook_pair: tuple[str, str]) -> None:
    dev, prod = chinook_pair
    psql(dev, CHANGES)
    rows = table_counts(dev)
    config = load_config()
    assert run(["schema", "diff", "production", "development", "shop"]) == 0
    result = push_schema(config, "shop", "production", "development")
    assert result.applied and result.drift_after is not None and result.drift_after.ok
    assert compare_schemas(dev, prod).lines() == []
    assert take_snapshot(dev).sha256 == take_snapshot(prod).sha256
    assert {k: v for k, v in table_counts(dev).items() if k != "public.review"} == \
        {k: v for k, v in rows.items() if k != "public.review"}
    assert run(["schema", "drift", "shop"]) == 0


def test_dev_to_prod_refusals_leave_production_untouched(chinook_pair: tuple[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dev, prod = chinook_pair
    before = take_snapshot(prod).sha256
    config = load_config()
    psql(dev, "ALTER TABLE album ADD COLUMN release_year integer")
    # no confirmation
    with pytest.raises(RefusedError, match="needs its name as confirmation"):
        push_schema(config, "shop", "development", "production")
    # no fresh verified backup and none can be taken (the raw identity is missing: verification fails)
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    with pytest.raises(RefusedError, match="the backup before the schema push to shop failed"):
        push_schema(config, "shop", "development", "production", confirmation="shop")
    assert take_snapshot(prod).sha256 == before
    # a plan that fails lint (it drops a column production has)
    psql(dev, "ALTER TABLE album DROP COLUMN release_year; ALTER TABLE track DROP COLUMN composer")
    assert run(["schema", "push", "development", "production", "shop", "--confirm", "shop"]) == 9
    with pytest.raises(RefusedError, match=r"fails migration lint .*drop-column"):
        push_schema(config, "shop", "development", "production", confirmation="shop")
    assert take_snapshot(prod).sha256 == before


def test_dev_to_prod_push_with_everything_in_place(chinook_pair: tuple[str, str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dev, prod = chinook_pair
    psql(dev, "ALTER TABLE album ADD COLUMN release_year integer")
    assert run(["schema", "push", "development", "production", "shop", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert 'add column "release_year" integer' in out and "lint: passed" in out
    assert "release_year" not in psql(prod, "SELECT column_name FROM information_schema.columns "
                                            "WHERE table_name='album'")
    assert run(["--json", "schema", "push", "development", "production", "shop", "--confirm", "shop"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["applied"] and doc["backup_id"] and doc["drift_after"]["ok"]
    assert "release_year" in psql(prod, "SELECT column_name FROM information_schema.columns WHERE table_name='album'")


def test_data_never_flows_and_wrong_marker_refused(chinook_pair: tuple[str, str]) -> None:
    dev, prod = chinook_pair
    mark_environment(prod, "development")  # a production DSN that points at something not marked production
    psql(dev, "ALTER TABLE album ADD COLUMN release_year integer")
    with pytest.raises(RefusedError, match="marked 'development', not 'production'"):
        push_schema(load_config(), "shop", "development", "production", confirmation="shop")
    assert run(["schema", "push", "development", "production", "shop", "--data"]) == 64


def test_guard_backup_failure_never_runs_the_command(chinook_pair: tuple[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dev, _prod = chinook_pair
    marker_file = tmp_path / "ran"
    monkeypatch.delenv("TEST_RAW_IDENTITY")  # the backup cannot be verified
    code = run(["guard", "-d", "shop", "-e", "development", "--", "touch", str(marker_file)])
    assert code == 9 and not marker_file.exists()
    monkeypatch.setenv("TEST_SHOP_DEV_DSN", dev.replace(dbname_of(dev) or "", "no_such_db"))
    assert run(["guard", "-d", "shop", "-e", "development", "--", "touch", str(marker_file)]) != 0
    assert not marker_file.exists()


def test_guard_runs_after_verified_backup_and_production_needs_confirmation(
        chinook_pair: tuple[str, str], tmp_path: Path) -> None:
    marker_file = tmp_path / "ran"
    assert run(["guard", "-d", "shop", "-e", "production", "--", "touch", str(marker_file)]) == 9
    assert not marker_file.exists()
    script = f"echo $DBPROTECT_GUARD_BACKUP_ID > {marker_file}"
    assert run(["guard", "-d", "shop", "-e", "development", "--", "sh", "-c", script]) == 0
    backup_id = marker_file.read_text().strip()
    assert backup_id
    assert run(["guard", "-d", "shop", "-e", "development", "--", "sh", "-c", "exit 3"]) == 3
    store = Path(os.environ["DBPROTECT_CONFIG"]).parent / "store"
    assert (store / "shop.development" / backup_id / "manifest.json").is_file()


def test_mark_and_check_target(make_db: Callable[..., str], chinook_pair: tuple[str, str]) -> None:
    dev, _prod = chinook_pair
    scratch = make_db(prefix="testdb")
    assert run(["check-target", scratch, "--expect", "test"]) == 9  # unmarked
    assert run(["mark", "shop", "test", "--dsn", scratch]) == 0
    assert run(["check-target", scratch, "--expect", "test"]) == 0
    assert run(["check-target", dev, "--expect", "test"]) == 9
    with psycopg.connect(dev) as conn:
        assert read_marker(conn, dbname_of(dev) or "") == "development"
    assert run(["mark", "shop", "development"]) == 0
