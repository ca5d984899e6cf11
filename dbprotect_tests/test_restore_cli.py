"""``dbprotect restore`` and ``dbprotect drill`` from the backup store alone (no Dagster), against Chinook.

Every test takes a real backup of Chinook into a filesystem store, verifies it (the default
backup to restore is the newest verified one), and runs the CLI's entry point in-process.
"Changes nothing" is asserted on content: every table's row count and checksum, and the absence
of a database that a restore would have created.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.errors import EXIT_OK, RefusedError
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import read_marker, set_marker
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.fixtures.fix_pg import content, table_counts

# Slow, so not in the fast lane: each test backs up Chinook and restores or drills it through the CLI (0.5-1.7 s).
pytestmark = pytest.mark.slow

DAMAGED_SQL = """
CREATE TABLE artist (artist_id int PRIMARY KEY, name text);
INSERT INTO artist VALUES (1, 'only one artist left');
CREATE TABLE scratch_notes (note text);
"""


@pytest.fixture
def backed_up(chinook_dsn, pg, write_config, monkeypatch, capsys, tmp_path):
    """Chinook configured as ``chinook`` (scratch server: the test server), one verified backup."""
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(chinook_dsn, database="chinook", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    code, backup, _ = run_json(capsys, "backup", "chinook")
    assert code == 0
    assert run(["verify", "latest"]) == 0
    capsys.readouterr()
    store = FilesystemStorage(tmp_path / "store")
    return store, load_manifest(store, "chinook", backup["backup_id"])


@pytest.fixture
def damaged_production(pg, make_db, monkeypatch):
    """A marked 'production' database with its own (damaged) content, as the configured production DSN."""
    dsn = make_db(DAMAGED_SQL, prefix="damaged")
    name = str(dbname_of(dsn))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "production")
    monkeypatch.setenv("TEST_CHINOOK_PROD_DSN", dsn)
    return dsn, name


@pytest.mark.parametrize("command", [["restore"], ["drill"]])
def test_restore_and_drill_have_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--json" in out and "--config PATH" in out
    expected = {"restore": ["--target new:NAME", "--confirm NAME", "--dry-run", "Refusals exit 9"],
                "drill": ["RTO", "12 when it verified but took longer"]}
    for text in expected[command[0]]:
        assert text in out


def test_dry_run_prints_the_plan_and_changes_nothing(backed_up, damaged_production, pg, capsys) -> None:
    store, manifest = backed_up
    dsn, name = damaged_production
    before = content(dsn)

    code = run(["restore", "chinook", "--target", "production", "--dry-run"])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert f"restore chinook backup {manifest.backup_id} (production)" in out
    assert f"into EXISTING production database '{name}'" in out
    assert "will DROP 1 object(s) the backup does not contain:" in out and "- table public.scratch_notes" in out
    assert f"confirmation required: type '{name}'" in out
    assert "11 tables, 15607 rows" in out and "last drill: none recorded" in out
    assert "dry run: nothing was changed" in out

    # As JSON, for a new database: planned, named by default after the backup, not created.
    code, doc, _ = run_json(capsys, "restore", "chinook", manifest.backup_id, "--dry-run")
    assert code == EXIT_OK and doc["dry_run"] is True
    new_name = f"chinook_restored_{manifest.backup_id}".lower().replace("-", "_")
    assert doc["plan"]["target"] == {"database": new_name, "environment": "production", "existing": False,
                                     "server": doc["plan"]["target"]["server"], "marker": None}
    assert doc["plan"]["will_drop"] == [] and doc["plan"]["rows"] == manifest.total_rows
    assert not pg.has_database(new_name)
    assert content(dsn) == before
    assert list_backups(store, "chinook-safety") == []


def test_wrong_confirmation_exits_9_and_leaves_the_target_untouched(backed_up, damaged_production, capsys) -> None:
    store, _manifest = backed_up
    dsn, name = damaged_production
    before = content(dsn)
    code = run(["restore", "chinook", "--target", "production", "--confirm", "chinook"])
    err = capsys.readouterr().err
    assert code == RefusedError.exit_code == 9
    assert err.splitlines()[0] == (f"error[DBP906]: refused: overwriting database '{name}' needs its name as "
                                   "confirmation (you typed 'chinook'); nothing was changed")
    assert "hint: repeat with --confirm followed by that database's name, typed by you" in err
    assert name not in err.splitlines()[1]  # described, never the value to paste
    assert content(dsn) == before
    assert list_backups(store, "chinook-safety") == []  # refused before the safety backup

    code, doc, _ = run_json(capsys, "restore", "chinook", "--target", "production")  # no confirmation at all
    assert code == 9 and doc["error"]["code"] == "DBP906" and "you typed nothing" in doc["error"]["message"]
    assert content(dsn) == before


def test_restore_to_new_database_and_over_production_with_confirmation(backed_up, damaged_production, pg,
                                                                       capsys) -> None:
    store, manifest = backed_up
    expected = {name: table.rows for name, table in manifest.tables.items()}
    target = "chinook_restored_by_cli"
    try:
        code, doc, _ = run_json(capsys, "restore", "chinook", "--target", f"new:{target}")
        assert code == EXIT_OK, doc
        assert doc["restored_database"] == target and doc["safety_backup_id"] is None
        assert table_counts(pg.dsn(target)) == expected
        assert {"decrypt_seconds", "restore_seconds", "verify_seconds"} <= set(doc["metrics"])
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            assert read_marker(admin, target) == "production"
    finally:
        pg.drop_database(target)

    dsn, name = damaged_production
    code = run(["restore", "chinook", "--target", "production", "--confirm", name])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert f"into production database '{name}': 11 tables, 15,607 rows verified" in out
    assert table_counts(dsn) == expected  # scratch_notes dropped, as the plan said
    [safety] = list_backups(store, "chinook-safety")
    assert f"safety backup of the replaced database: {safety.backup_id}" in out
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []


def test_drill_passes_on_chinook_and_is_recorded(backed_up, pg, capsys) -> None:
    store, manifest = backed_up
    code, doc, _ = run_json(capsys, "drill", "chinook")
    assert code == EXIT_OK, doc
    assert doc["ok"] is True and doc["backup_id"] == manifest.backup_id and doc["problems"] == []
    metrics = doc["metrics"]
    assert 0 < metrics["rto_seconds"] < metrics["rto_target_seconds"] == 1800
    assert metrics["rows"] == manifest.total_rows and metrics["tables"] == 11
    assert metrics["rpo_seconds"] >= 0
    assert list_backups(store, "chinook")[0].status == "verified:drilled"
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []

    # The next restore plan says how long this drill took.
    run(["restore", "chinook", "--dry-run"])
    assert f"last drill: {metrics['rto_seconds']:.1f} s to a verified database (passed" in capsys.readouterr().out


def test_drill_slower_than_its_rto_exits_12(backed_up, write_config, chinook_dsn, capsys) -> None:
    write_config(chinook_dsn, database="chinook", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    path = Path(os.environ["DBPROTECT_CONFIG"])
    path.write_text(path.read_text().replace("    environments:", "    rto_minutes: 0.0001\n    environments:"))
    code = run(["drill", "chinook"])
    out = capsys.readouterr().out
    assert code == 12
    assert "FAILED: drill failed: RTO" in out and "exceeds the target of 0.0001 min" in out
