"""The pre-migration backup sensor (issue 6, item 5) against a real PostgreSQL.

A new migration file or a changed ``alembic_version`` revision requests exactly one run of the
database's backup job, tagged with the reason; the next evaluation, with the new cursor, skips
with a sentence; the first evaluation only records. The backup job itself is exercised in
test_dagster_materialize.py, so no run executes here (fast).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData

from dbprotect.core.config.load import load_config
from dbprotect.core.errors import ConfigError
from dbprotect.core.ops import observe_migrations
from dbprotect.core.schema.watch import WatchState, decide, migration_files
from dbprotect.defs import load_definitions
from dbprotect.defs.names import PRE_MIGRATION_REASON_TAG, backup_job_name, pre_migration_sensor_name
from dbprotect_tests.fixtures.fix_pg import psql

# Slow, so not in the fast lane: a Dagster instance per module and sensor evaluations that back up (~2.5 s).
pytestmark = pytest.mark.slow

ALEMBIC_DDL = "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)"


@pytest.fixture
def shop(write_config, make_db, tmp_path: Path) -> tuple[str, Path]:
    """A production deployment protecting an empty ``shop`` whose migrations live in ./migrations
    (relative to the configuration file, as a deployment would write it)."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_init.sql").write_text("CREATE TABLE invoice (id bigint PRIMARY KEY);\n")
    dsn = make_db()
    databases = {"shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                          "schema": {"migrations_dir": "migrations"}}}
    write_config(dsn, deployment="production", extra={"databases": databases})
    return dsn, migrations


Evaluate = Callable[[str | None], SensorExecutionData]


@pytest.fixture
def evaluate(shop, instance: dg.DagsterInstance) -> Evaluate:
    defs = load_definitions()
    sensor = defs.get_sensor_def(pre_migration_sensor_name("shop"))
    assert sensor.job_name == backup_job_name("shop")

    def tick(cursor: str | None) -> SensorExecutionData:
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                                            resources=defs.resources))

    return tick


def _skip(result: SensorExecutionData) -> str:
    assert result.run_requests == []
    assert result.skip_message
    return result.skip_message


def test_first_evaluation_records_then_a_new_migration_file_requests_one_backup(shop, evaluate: Evaluate) -> None:
    _dsn, migrations = shop
    first = evaluate(None)
    assert "recorded the current state of 'shop' (1 migration file, Alembic revision none)" in _skip(first)
    assert first.cursor is not None and "0001_init.sql" in first.cursor

    (migrations / "0042_add_due.sql").write_text("ALTER TABLE invoice ADD COLUMN due date;\n")
    second = evaluate(first.cursor)
    [request] = second.run_requests
    assert request.tags[PRE_MIGRATION_REASON_TAG] == "new migration 0042_add_due.sql"
    assert request.run_key and request.run_key.startswith("pre-migration-shop-")
    assert second.cursor != first.cursor and "0042_add_due.sql" in second.cursor

    # The same change evaluated again (no cursor update lost) gives the same run key: one backup.
    assert evaluate(first.cursor).run_requests[0].run_key == request.run_key
    third = evaluate(second.cursor)
    assert _skip(third) == "no new migration or Alembic revision for 'shop' (2 migration files, Alembic revision none)"
    assert third.cursor == second.cursor

    (migrations / "0001_init.sql").write_text("CREATE TABLE invoice (id bigint PRIMARY KEY, total numeric);\n")
    [edited] = evaluate(third.cursor).run_requests
    assert edited.tags[PRE_MIGRATION_REASON_TAG] == "changed migration 0001_init.sql"


def test_alembic_revision_created_and_changed_triggers_and_unchanged_skips(shop, evaluate: Evaluate) -> None:
    dsn, _migrations = shop
    cursor = evaluate(None).cursor

    psql(dsn, f"{ALEMBIC_DDL}; INSERT INTO alembic_version VALUES ('1a2b3c')")
    created = evaluate(cursor)
    [request] = created.run_requests
    assert request.tags[PRE_MIGRATION_REASON_TAG] == "alembic revision none -> 1a2b3c"

    psql(dsn, "UPDATE alembic_version SET version_num = '4d5e6f'")
    changed = evaluate(created.cursor)
    [upgrade] = changed.run_requests
    assert upgrade.tags[PRE_MIGRATION_REASON_TAG] == "alembic revision 1a2b3c -> 4d5e6f"
    assert upgrade.run_key != request.run_key

    assert "Alembic revision 4d5e6f" in _skip(evaluate(changed.cursor))


def test_observe_hashes_files_relative_to_the_config_folder_and_ignores_caches(shop) -> None:
    dsn, migrations = shop
    (migrations / "versions").mkdir()
    (migrations / "versions" / "3c4d_add_due.py").write_text("revision = '3c4d'\n")
    (migrations / "versions" / "__pycache__").mkdir()
    (migrations / "versions" / "__pycache__" / "3c4d_add_due.cpython-311.pyc").write_bytes(b"\0")
    (migrations / ".DS_Store").write_bytes(b"\0")
    psql(dsn, f"{ALEMBIC_DDL}; INSERT INTO alembic_version VALUES ('b2'), ('a1')")  # two heads

    state = observe_migrations(load_config(), "shop")
    assert sorted(state.migrations) == ["0001_init.sql", "versions/3c4d_add_due.py"]
    assert state.migrations["versions/3c4d_add_due.py"] == hashlib.sha256(b"revision = '3c4d'\n").hexdigest()
    assert state.alembic == "a1,b2"


def test_decide_without_readable_cursor_records_and_removed_files_do_not_trigger(tmp_path: Path) -> None:
    state = WatchState(migrations={"0001.sql": "aa"}, alembic=None)
    assert not decide(None, state).triggered
    assert not decide("not json", state).triggered
    fewer = decide(state.to_cursor(), WatchState(migrations={}, alembic=None))
    assert not fewer.triggered and fewer.cursor != state.to_cursor()
    with pytest.raises(ConfigError, match="does not exist"):
        migration_files(tmp_path / "missing")
