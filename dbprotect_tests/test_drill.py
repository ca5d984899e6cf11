"""Restore drills: RTO measured to a verified database, compared with the target; RPO at drill time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import NotFoundError
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.restore.drill import last_drill, run_drill
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups

# Slow, so not in the fast lane: each drill restores a backup into a scratch database (0.4-0.7 s).
pytestmark = pytest.mark.slow


@pytest.fixture
def drilled(chinook_dsn, tmp_path, age_keys, pg):
    storage = FilesystemStorage(tmp_path / "store")
    manifest = run_backup(database="chinook", dsn=chinook_dsn, storage=storage, recipients=[age_keys[1]]).manifest
    return storage, manifest, parse_identity(age_keys[0], source="test"), ScratchServer(pg.admin_dsn)


def test_drill_with_default_target_passes_and_records_rto_and_rpo(drilled):
    storage, manifest, identity, scratch = drilled
    later = manifest.snapshot_at + timedelta(hours=3)
    result = run_drill(storage, "chinook", identity, scratch, rto_minutes=30, now=lambda: later)
    assert result.ok, result.reason
    assert result.backup_id == manifest.backup_id
    assert 0 < result.rto_seconds < 30 * 60 and result.rto_target_seconds == 1800
    assert result.rpo_seconds == pytest.approx(3 * 3600)
    assert result.verification.ok and result.verification.rows == manifest.total_rows
    entry = list_backups(storage, "chinook")[0]
    assert entry.passed("restored") and entry.passed("drilled")
    drill = last_drill(storage, "chinook")
    assert drill is not None and drill.ok and drill.rto_seconds == result.rto_seconds
    assert leftover_scratch_databases(scratch) == []


def test_drill_over_its_rto_target_fails(drilled):
    storage, _manifest, identity, scratch = drilled
    result = run_drill(storage, "chinook", identity, scratch, rto_minutes=0.0001)
    assert not result.ok
    assert "exceeds the target of 0.0001 min" in result.reason
    assert result.verification.ok  # the data was fine; it was too slow
    assert list_backups(storage, "chinook")[0].status == "failed:drilled"
    assert last_drill(storage, "chinook").ok is False  # type: ignore[union-attr]


def test_drill_without_backups_says_so(tmp_path, age_keys, pg):
    with pytest.raises(NotFoundError, match="no complete backup"):
        run_drill(FilesystemStorage(tmp_path / "empty"), "shop", parse_identity(age_keys[0], source="t"),
                  ScratchServer(pg.admin_dsn), rto_minutes=30, now=lambda: datetime.now(UTC))


def test_drill_from_configuration_uses_the_configured_scratch_server(chinook_dsn, pg, write_config, monkeypatch):
    from dbprotect.core.config.load import load_config, parse_config
    from dbprotect.core.errors import ConfigError
    from dbprotect.core.ops import backup_database, drill_database, restore_verify_database

    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    path = write_config(chinook_dsn, extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    config = load_config()
    assert config.databases["shop"].drill_schedule == "0 3 1 * *"
    backup_database(config, "shop")
    assert restore_verify_database(config, "shop").ok
    result = drill_database(config, "shop")
    assert result.ok and result.rto_target_seconds == 1800
    with pytest.raises(ConfigError, match="drill_schedule"):
        parse_config(path.read_text().replace("    environments:", "    drill_schedule: 0 3 32 * *\n    environments:"))


def test_scratch_databases_left_by_a_killed_run_are_swept_by_the_next(pg, write_config, monkeypatch, chinook_dsn):
    """A scratch database older than 12 h (its run was SIGKILLed) is dropped; a young one is kept."""
    import psycopg

    from dbprotect.core.config.load import load_config
    from dbprotect.core.ops.context import scratch_server_from_config
    from dbprotect.core.pg.markers import set_marker
    from dbprotect.core.pg.scratch import new_scratch_name

    old = new_scratch_name(datetime.now(UTC) - timedelta(hours=13))
    young = new_scratch_name()
    # Named like scratch, old, but not marked scratch: a sweep never drops by name alone (issue 10).
    unmarked = new_scratch_name(datetime.now(UTC) - timedelta(hours=14))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        for name in (old, young, unmarked):
            conn.execute(f'CREATE DATABASE "{name}"')
        for name in (old, young):
            set_marker(conn, name, "scratch")
        set_marker(conn, unmarked, "production")
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(chinook_dsn, extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    try:
        with scratch_server_from_config(load_config()) as server:
            left = leftover_scratch_databases(server)
        assert old not in left and young in left and unmarked in left
    finally:
        for name in (young, old, unmarked):
            pg.drop_database(name)
