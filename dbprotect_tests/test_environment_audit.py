"""Environment failures during a restore, a verification or a drill are audited as such (issue 11, point 5).

An unreachable scratch or target server (DBP004) or unfit tools (DBP005) say nothing about the
backup: the audit log gets an ``environment_failure`` record naming the backup and the error
code, and the backup's check records stay exactly as they were (no failed rung).
"""

from __future__ import annotations

import pytest

from dbprotect.cli.app import run
from dbprotect.core.audit import read
from dbprotect.core.config.load import load_config
from dbprotect.core.errors import DatabaseError
from dbprotect.core.ops import restore_verify_database
from dbprotect.core.restore.staged import ENVIRONMENT_FAILURE_OUTCOME
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, recorded_verifications
from dbprotect_tests.fixtures.cli import run_json

pytestmark = pytest.mark.slow

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/postgres"


@pytest.fixture
def configured(make_db, pg, write_config, monkeypatch, tmp_path):
    dsn = make_db("CREATE TABLE t (x int); INSERT INTO t SELECT g FROM generate_series(1, 100) g", prefix="src")
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(dsn, database="shop", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    return FilesystemStorage(tmp_path / "store")


def _verified_backup(capsys) -> str:
    code, backup, _ = run_json(capsys, "backup", "shop")
    assert code == 0
    assert run(["verify", backup["backup_id"]]) == 0
    capsys.readouterr()
    return str(backup["backup_id"])


def _checks(store: FilesystemStorage, backup_id: str) -> list[tuple[str, bool, str]]:
    return [(v.rung, v.ok, v.detail) for v in recorded_verifications(store, "shop", backup_id)]


def _environment_records(store: FilesystemStorage, action: str, backup_id: str):
    return [r for r in read(store) if r.action == action and r.target == backup_id
            and r.outcome == ENVIRONMENT_FAILURE_OUTCOME]


def test_a_drill_with_an_unreachable_scratch_server_is_audited_as_an_environment_failure(
        configured, capsys, monkeypatch):
    store = configured
    backup_id = _verified_backup(capsys)
    before = _checks(store, backup_id)
    status = next(e.status for e in list_backups(store, "shop") if e.backup_id == backup_id)
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", UNREACHABLE)
    assert run(["drill", "shop"]) == DatabaseError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error[DBP004]: ") and "Traceback" not in err
    records = _environment_records(store, "drill", backup_id)
    assert len(records) == 1, [(r.action, r.outcome, r.target) for r in read(store)]
    assert records[0].data == {"failure": "environment", "error": "DBP004"}
    assert not any(r.outcome == "failed" for r in read(store))
    assert _checks(store, backup_id) == before
    assert next(e.status for e in list_backups(store, "shop") if e.backup_id == backup_id) == status


def test_a_restore_into_an_unreachable_server_is_audited_as_an_environment_failure(configured, capsys, monkeypatch):
    store = configured
    backup_id = _verified_backup(capsys)
    before = _checks(store, backup_id)
    monkeypatch.setenv("TEST_SHOP_PROD_DSN", UNREACHABLE)
    assert run(["restore", "shop", backup_id, "--target", "new:never_created"]) == DatabaseError.exit_code
    capsys.readouterr()
    records = _environment_records(store, "restore", backup_id)
    assert len(records) == 1, [(r.action, r.outcome, r.target) for r in read(store)]
    assert not any(r.outcome == "failed" for r in read(store))
    assert _checks(store, backup_id) == before


def test_a_verification_with_an_unreachable_scratch_server_is_audited(configured, capsys, monkeypatch):
    store = configured
    backup_id = _verified_backup(capsys)
    before = _checks(store, backup_id)
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", UNREACHABLE)
    with pytest.raises(DatabaseError):
        restore_verify_database(load_config(), "shop", backup_id)
    assert len(_environment_records(store, "verify", backup_id)) == 1
    assert _checks(store, backup_id) == before
