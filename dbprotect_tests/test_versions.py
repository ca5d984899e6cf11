"""PostgreSQL 13-18: tools chosen per server, and the version matrix on real servers (issue 11, point 2).

Servers: the embedded 18 (session fixture) and the machine's Debian PostgreSQL 15 started in a
temp folder (skipped with a reason when absent). Cases: 15 -> 18, 15 -> 15 (default tools, i.e. an
archive written by pg_dump 18, and with ``pg_bin_dirs`` pointing at the 15 tools), 18 -> 15
(refused: a target older than the source), and environment failures that must never be recorded
against the backup.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import Refusals, RefusedError, ToolError
from dbprotect.core.pg.embedded import embedded_bin_dir
from dbprotect.core.pg.pg_restore import archive_dump_major, restore_tool
from dbprotect.core.pg.scratch import ScratchServer
from dbprotect.core.pg.tools import ToolDirs, require_tool_for_server, select_tool
from dbprotect.core.restore.drill import run_drill
from dbprotect.core.restore.staged import PhaseClock, staged_restore, verify_restore
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, recorded_verifications
from dbprotect.core.verify.integrity import verify_backup
from dbprotect_tests.fixtures.other_pg import PG15_BIN, OtherServer, needs_pg15

pytestmark = [pytest.mark.slow, needs_pg15]

SCHEMA = """
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
                     amount numeric(10,2) CHECK (amount >= 0), placed timestamptz NOT NULL DEFAULT now());
CREATE INDEX orders_customer ON orders (customer_id);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
INSERT INTO customers (name, email) SELECT 'c' || g, 'c' || g || '@example.com' FROM generate_series(1, 300) g;
INSERT INTO orders (customer_id, amount) SELECT 1 + g % 300, g % 250 FROM generate_series(1, 2000) g;
SELECT lo_from_bytea(0, 'a large object');
"""


@pytest.fixture(scope="module")
def pg15(pg15_server: OtherServer) -> OtherServer:
    return pg15_server


def _database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.replace("/postgres?", f"/{name}?")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return dsn


@pytest.fixture(scope="module")
def shop15(pg15: OtherServer) -> str:
    return _database(pg15.socket_dsn(), "shop15")


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "store")


def _restored_checks(storage: FilesystemStorage, database: str, backup_id: str) -> list[str]:
    return [f"{v.rung}:{v.ok}" for v in recorded_verifications(storage, database, backup_id) if v.rung != "stored"]


# -- tool selection ----------------------------------------------------------------------------

def test_restore_tool_is_of_the_target_major_when_it_can_read_the_archive() -> None:
    same = restore_tool(15, 15)
    assert same.tool.major == 15 and not same.filtered
    newer_target = restore_tool(15, 18)
    assert newer_target.tool.major == 18 and not newer_target.filtered


def test_an_archive_of_pg_dump_18_into_15_uses_pg_restore_18_without_the_settings_15_rejects() -> None:
    choice = restore_tool(18, 15)
    assert choice.tool.major == 18
    assert choice.rejected == (b"SET transaction_timeout = 0;",)


def test_pg_bin_dirs_are_searched_by_major(tmp_path: Path) -> None:
    """The per-major map puts a server's own tools first; ``pg_bin_dir`` alone ends the search."""
    dirs = ToolDirs(by_major={15: str(PG15_BIN)})
    assert require_tool_for_server("pg_dump", 15, dirs).path.parent == PG15_BIN
    assert require_tool_for_server("pg_dump", 18, dirs).major == 18  # 15 is too old: the next one
    with pytest.raises(ToolError) as err:
        require_tool_for_server("pg_dump", 18, ToolDirs(default=str(PG15_BIN)))
    assert "older than the server (PostgreSQL 18)" in str(err.value)
    assert "apt install postgresql-client-18" in (err.value.hint or "")


def test_no_tool_at_all_names_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ToolError) as err:
        select_tool("pg_restore", at_least=18, place=ToolDirs(default=str(empty)))
    assert f"pg_restore not found in {empty}" in str(err.value)
    assert "PostgreSQL 18 client tools" in (err.value.hint or "")


def test_archive_header_names_the_pg_dump_major(shop15: str, storage: FilesystemStorage,
                                                 age_keys: tuple[str, str], tmp_path: Path) -> None:
    for place, major in ((None, 18), (ToolDirs(by_major={15: str(PG15_BIN)}), 15)):
        dumped = tmp_path / f"dump{major}"
        pg_dump = require_tool_for_server("pg_dump", 15, place)
        subprocess.run([str(pg_dump.path), "-Fc", "-f", str(dumped), shop15], check=True, capture_output=True)
        assert archive_dump_major(dumped) == major
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"PGDMP\x01\x10\x00\x04\x08\x01")
    assert archive_dump_major(garbage) is None


# -- the matrix on real servers ----------------------------------------------------------------

def test_15_to_18_backup_of_15_restores_into_18_and_compares(shop15: str, pg: object, storage: FilesystemStorage,
                                                               age_keys: tuple[str, str]) -> None:
    manifest = run_backup(database="shop", dsn=shop15, storage=storage, recipients=[age_keys[1]]).manifest
    assert manifest.source["server_major"] == 15 and manifest.pg_dump["major"] == 18
    identity = parse_identity(age_keys[0], source="test")
    with staged_restore(storage, manifest, identity, pg.admin_dsn, PhaseClock(None)) as staged:  # type: ignore[attr-defined]
        assert staged.problems == []
        with psycopg.connect(staged.database.dsn) as conn:
            assert conn.info.server_version // 10000 == 18
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2000,)


def test_15_to_15_default_tools_backup_restore_and_drill(shop15: str, pg15: OtherServer, storage: FilesystemStorage,
                                                          age_keys: tuple[str, str]) -> None:
    """The issue's failure: pg_dump 18's archive into a 15 scratch server. Handled (pg_restore 18's
    script without ``SET transaction_timeout``), verified, and the drill passes and is recorded ok."""
    manifest = run_backup(database="shop", dsn=shop15, storage=storage, recipients=[age_keys[1]]).manifest
    assert manifest.pg_dump["major"] == 18
    identity = parse_identity(age_keys[0], source="test")
    result = run_drill(storage, "shop", identity, ScratchServer(pg15.socket_dsn()), rto_minutes=30)
    assert result.ok, result.reason
    assert result.verification.rows == 2300 and result.verification.tables == 2
    assert _restored_checks(storage, "shop", manifest.backup_id) == ["restored:True", "drilled:True"]


def test_15_to_15_with_pg_bin_dirs_dumps_and_restores_with_15_tools(shop15: str, pg15: OtherServer,
                                                                     storage: FilesystemStorage,
                                                                     age_keys: tuple[str, str]) -> None:
    dirs = ToolDirs(by_major={15: str(PG15_BIN)})
    manifest = run_backup(database="shop", dsn=shop15, storage=storage, recipients=[age_keys[1]],
                          pg_bin_dir=dirs).manifest
    assert manifest.pg_dump["major"] == 15
    identity = parse_identity(age_keys[0], source="test")
    result = run_drill(storage, "shop", identity, ScratchServer(pg15.socket_dsn()), rto_minutes=30, pg_bin_dir=dirs,
                       jobs=2)
    assert result.ok, result.reason
    # pg_restore 15 ran in parallel, so tables were verified while the restore ran
    assert result.verification.timings.get("tables_released_during_restore", 0) >= 1


def test_18_to_15_is_refused_and_nothing_is_recorded(make_db: Callable[..., str], pg15: OtherServer,
                                                      storage: FilesystemStorage, age_keys: tuple[str, str]) -> None:
    source = make_db("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);")
    manifest = run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]]).manifest
    assert manifest.source["server_major"] == 18
    identity = parse_identity(age_keys[0], source="test")
    with pytest.raises(RefusedError) as err:
        verify_restore(storage, manifest, identity, ScratchServer(pg15.socket_dsn()))
    assert err.value.refusal == Refusals.SCRATCH_VERSION
    assert _restored_checks(storage, "shop", manifest.backup_id) == []


# -- the environment is never the backup's fault --------------------------------------------------

def test_tools_that_cannot_read_the_archive_are_an_environment_error_not_a_failed_backup(
        shop15: str, pg15: OtherServer, storage: FilesystemStorage, age_keys: tuple[str, str]) -> None:
    """The issue's report: pointing the tools at PostgreSQL 15 recorded a good backup as failed."""
    manifest = run_backup(database="shop", dsn=shop15, storage=storage, recipients=[age_keys[1]]).manifest
    identity = parse_identity(age_keys[0], source="test")
    with pytest.raises(ToolError) as err:
        verify_restore(storage, manifest, identity, ScratchServer(pg15.socket_dsn()),
                       pg_bin_dir=ToolDirs(default=str(PG15_BIN)))
    assert "pg_restore 15." in str(err.value) and "older than" in str(err.value)
    assert _restored_checks(storage, "shop", manifest.backup_id) == []
    # the same backup, with tools that fit, restores fine: it never was the backup's fault
    assert verify_restore(storage, manifest, identity, ScratchServer(pg15.socket_dsn())).ok


def test_a_pg_restore_that_cannot_read_the_archive_version_is_an_environment_error(
        shop15: str, pg15: OtherServer, storage: FilesystemStorage, age_keys: tuple[str, str], tmp_path: Path) -> None:
    """A tool that lies about its version (a renamed pg_restore 15 reporting 18) still fails on the
    archive header; that is the environment too, never a failed check."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("pg_restore", "psql"):
        script = fake / name
        script.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{name} (PostgreSQL) 18.0'; exit 0; fi\n"
                          f"exec {PG15_BIN / name} \"$@\"\n")
        script.chmod(0o755)
    manifest = run_backup(database="shop", dsn=shop15, storage=storage, recipients=[age_keys[1]]).manifest
    identity = parse_identity(age_keys[0], source="test")
    with pytest.raises(ToolError):
        verify_restore(storage, manifest, identity, ScratchServer(pg15.socket_dsn()),
                       pg_bin_dir=ToolDirs(default=str(fake)))
    assert _restored_checks(storage, "shop", manifest.backup_id) == []


def test_system_folders_are_found_without_configuration() -> None:
    if shutil.which("pg_dump") is None and embedded_bin_dir() is None:
        pytest.skip("no tools")
    assert select_tool("pg_dump", at_least=15, prefer=15).path.parent == PG15_BIN


def test_verify_with_a_pg_restore_too_old_for_the_archive_records_nothing(
        shop15: str, storage: FilesystemStorage, age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rung 2 (``verify``) lists the archive with pg_restore: one too old for it is the environment's failure."""
    manifest = run_backup(database="shop", dsn=shop15, storage=storage, recipients=[age_keys[1]]).manifest
    identity = parse_identity(age_keys[0], source="test")
    monkeypatch.setenv("DBPROTECT_PG_BIN", str(PG15_BIN))
    with pytest.raises(ToolError) as err:
        verify_backup(storage, "shop", manifest.backup_id, identity)
    assert "older than the archive's pg_dump (PostgreSQL 18)" in str(err.value)
    assert recorded_verifications(storage, "shop", manifest.backup_id) == []
    monkeypatch.delenv("DBPROTECT_PG_BIN")
    assert verify_backup(storage, "shop", manifest.backup_id, identity).ok


def test_cli_drill_with_unfitting_tools_exits_5_and_records_nothing(
        shop15: str, pg15: OtherServer, write_config: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's path through the CLI: a 15 scratch server and tools pointed at 15 for a backup
    written by pg_dump 18. One line, DBP005 (the tools), exit 5; the backup stays unjudged; with
    the default tools the same drill passes."""
    monkeypatch.setenv("TEST_SCRATCH_DSN", pg15.socket_dsn())
    scratch = {"admin_dsn_env": "TEST_SCRATCH_DSN"}
    write_config(shop15, deployment="production", extra={"scratch": scratch})
    assert run(["backup", "shop"]) == 0
    storage = FilesystemStorage(tmp_path / "store")
    [backup_id] = [entry.backup_id for entry in list_backups(storage, "shop")]
    capsys.readouterr()
    write_config(shop15, deployment="production", extra={"scratch": scratch, "pg_bin_dir": str(PG15_BIN)})
    code = run(["drill", "shop"])
    err = capsys.readouterr().err
    assert code == 5 and err.startswith("error[DBP005]: pg_restore 15."), err
    assert "Traceback" not in err
    assert _restored_checks(storage, "shop", backup_id) == []
    write_config(shop15, deployment="production", extra={"scratch": scratch})
    assert run(["drill", "shop"]) == 0, capsys.readouterr().err
    assert _restored_checks(storage, "shop", backup_id) == ["restored:True", "drilled:True"]
