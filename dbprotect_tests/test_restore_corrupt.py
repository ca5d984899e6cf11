"""A corrupt archive through ``restore`` and ``drill`` (issue 10, point 9): a failure of the backup, recorded.

A flipped byte or a truncated object exits 7 (IntegrityError) with one line, is recorded against
the backup as a failed rung (so its state and the RPO turn red), is audited, and the default restore
then falls back to the newest backup that passed. A wrong key or an unreachable server is not the
backup's fault and is never recorded against it.
"""

from __future__ import annotations

import pytest

from dbprotect.cli.app import run
from dbprotect.core.audit import read
from dbprotect.core.errors import EXIT_RPO_VIOLATED, CryptoError, DatabaseError, IntegrityError
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups
from dbprotect.core.store.manifest import dump_key
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.fixtures.fix_pg import table_counts

# Slow, so not in the fast lane: each test backs up and restores or drills through the CLI (1-3 s).
pytestmark = pytest.mark.slow

SOURCE_SQL = "CREATE TABLE t (x int); INSERT INTO t SELECT g FROM generate_series(1, 5000) g"


@pytest.fixture
def configured(make_db, pg, write_config, monkeypatch, tmp_path):
    dsn = make_db(SOURCE_SQL, prefix="src")
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(dsn, database="shop", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    return FilesystemStorage(tmp_path / "store"), dsn


def _verified_backup(capsys) -> str:
    code, backup, _ = run_json(capsys, "backup", "shop")
    assert code == 0
    assert run(["verify", backup["backup_id"]]) == 0
    capsys.readouterr()
    return str(backup["backup_id"])


def _damage(store: FilesystemStorage, backup_id: str, how: str) -> None:
    path = store.root / dump_key("shop", backup_id)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))


def _status(store: FilesystemStorage, backup_id: str) -> str:
    return next(entry.status for entry in list_backups(store, "shop") if entry.backup_id == backup_id)


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("command", ["restore", "drill"])
def test_a_corrupt_archive_exits_7_is_recorded_and_audited(configured, pg, capsys, command, how):
    store, _dsn = configured
    backup_id = _verified_backup(capsys)
    _damage(store, backup_id, how)
    code = run([command, "shop", *(["--target", "new:corrupt_target"] if command == "restore" else [])])
    err = capsys.readouterr().err
    assert code == IntegrityError.exit_code, err
    assert err.startswith("error[DBP007]: ") and "Traceback" not in err and "internal error" not in err
    assert _status(store, backup_id).startswith("failed:")
    assert any(r.outcome == "failed" and r.target == backup_id for r in read(store))
    assert not pg.has_database("corrupt_target")
    assert run(["status"]) == EXIT_RPO_VIOLATED  # the only backup failed: the RPO is red


def test_the_default_restore_falls_back_to_the_newest_backup_that_passed(configured, pg, capsys):
    store, dsn = configured
    good = _verified_backup(capsys)
    bad = _verified_backup(capsys)
    _damage(store, bad, "flip")
    target = "fallback_target"
    try:
        assert run(["restore", "shop", "--target", f"new:{target}"]) == IntegrityError.exit_code
        assert "now recorded as failed" in capsys.readouterr().err
        assert not pg.has_database(target)
        code, result, _ = run_json(capsys, "restore", "shop", "--target", f"new:{target}")
        assert code == 0 and result["plan"]["backup_id"] == good
        assert table_counts(pg.dsn(target)) == table_counts(dsn)
    finally:
        pg.drop_database(target)


def test_a_wrong_key_or_an_unreachable_server_is_not_recorded_against_the_backup(configured, pg, capsys, monkeypatch,
                                                                                   other_age_keys):
    store, _dsn = configured
    backup_id = _verified_backup(capsys)
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", "postgresql://nobody@127.0.0.1:1/postgres")
    assert run(["drill", "shop"]) == DatabaseError.exit_code
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    monkeypatch.setenv("TEST_RAW_IDENTITY", other_age_keys[0])
    assert run(["restore", "shop", "--target", "new:never_created"]) == CryptoError.exit_code
    assert run(["drill", "shop"]) == CryptoError.exit_code
    capsys.readouterr()
    assert _status(store, backup_id) == "verified:readable"
    assert not pg.has_database("never_created")
