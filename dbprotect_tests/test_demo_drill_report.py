"""``dbprotect demo --all`` reports its drill to Dagster: ``restore_drill_within_rto`` with its RTO.

The demo records its results as runless events (``dbprotect.demo.record``); the drill's verdict
is read from what the drill recorded in the store for the reported backup, never from the
caller. A real backup and drill on the test server, reported into a real Dagster instance.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance import InstanceRef

from dbprotect.core.config.load import load_config
from dbprotect.core.ops import backup_database, drill_database, verify_database_backup
from dbprotect.defs.names import DRILL_CHECK
from dbprotect.defs.report import drill_events
from dbprotect.defs.restores.checks import drill_check_key
from dbprotect.demo.record import record_in_dagster

pytestmark = pytest.mark.slow

ROWS_SQL = ("CREATE TABLE item (id int PRIMARY KEY, name text); "
            "INSERT INTO item SELECT g, 'n' || g FROM generate_series(1, 50) g;")


@pytest.fixture
def backed_up(write_config, make_db, pg, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Factory: a configured database with one verified backup; ``rto_minutes`` as given."""

    def factory(rto_minutes: float = 30.0):  # type: ignore[no-untyped-def]
        monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
        dsn = make_db(ROWS_SQL)
        databases = {"shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                              "rto_minutes": rto_minutes}}
        config = load_config(write_config(dsn, extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"},
                                                      "databases": databases}))
        backup = backup_database(config, "shop")
        integrity = verify_database_backup(config, "shop", backup.manifest.backup_id, by="test")
        return config, dsn, backup, integrity

    return factory




def test_the_demo_reports_the_drill_of_its_backup(backed_up, tmp_path: Path) -> None:
    config, dsn, backup, integrity = backed_up()
    key = drill_check_key("shop")
    assert drill_events(config, "shop", backup.manifest.backup_id) == []  # no drill yet: nothing reported
    drill = drill_database(config, "shop", by="test")
    assert drill.ok, drill.reason
    home = tmp_path / "dagster_home"
    home.mkdir()
    record_in_dagster(home, config, "shop", backup, integrity, dsn, dict(os.environ))
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        execution = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        evaluation = execution.event.dagster_event.event_specific_data
    assert evaluation.check_name == DRILL_CHECK and evaluation.passed is True
    metadata = evaluation.metadata
    assert metadata["backup_id"].value == backup.manifest.backup_id
    assert metadata["rto_seconds"].value == pytest.approx(drill.rto_seconds)
    assert isinstance(metadata["rto_minutes"], dg.FloatMetadataValue)


def test_a_failed_drill_is_reported_red(backed_up) -> None:
    """The counter-test: the verdict is the recorded one; a drill over its RTO target is reported failed."""
    config, _dsn, backup, _integrity = backed_up(rto_minutes=0.000001)  # any real drill exceeds it
    drill = drill_database(config, "shop", by="test")
    assert not drill.ok
    [event] = drill_events(config, "shop", backup.manifest.backup_id)
    assert event.passed is False and "RTO" in (event.description or "")
