"""The restores domain in Dagster: the ``restore`` job, ``restore_verified``, the drill check, the sensor.

Runs execute in process against a test instance (Dagster's local storage in a temporary folder),
the embedded PostgreSQL (also the scratch server, through ``scratch.admin_dsn_env``) and a
filesystem store in tmp_path. Chinook is backed up by the real backup job first.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import read_marker, set_marker
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.defs import load_definitions
from dbprotect.defs.names import (
    DRILL_CHECK,
    RESTORE_CHECK,
    RESTORE_JOB,
    drill_job_name,
    restore_verification_job_name,
    restore_verification_sensor_name,
)
from dbprotect_tests.fixtures.fix_pg import content, table_counts

# Slow, so not in the fast lane: Dagster runs that back up and restore Chinook (1-2.5 s).
pytestmark = pytest.mark.slow

PHASES = ("decrypt_seconds", "restore_seconds", "verify_seconds", "total_seconds")


@pytest.fixture
def chinook(write_config, chinook_dsn: str, pg, monkeypatch, tmp_path: Path, instance: dg.DagsterInstance):
    """A production deployment protecting Chinook, with one backup taken by the backup job."""
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(chinook_dsn, database="chinook", deployment="production",
                 extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    defs = load_definitions()
    assert defs.resolve_job_def("chinook_backup_job").execute_in_process(instance=instance).success
    store = FilesystemStorage(tmp_path / "store")
    [entry] = list_backups(store, "chinook")
    return defs, store, load_manifest(store, "chinook", entry.backup_id)


def _restore_config(**fields: object) -> dict:
    return {"ops": {"restore_backup": {"config": {"database": "chinook", **fields}}}}


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def test_restore_job_restores_chinook_into_a_new_database(chinook, pg, instance) -> None:
    defs, _store, manifest = chinook
    target = "chinook_restored_by_dagster"
    try:
        result = defs.resolve_job_def(RESTORE_JOB).execute_in_process(
            instance=instance, run_config=_restore_config(target_database=target))
        assert result.success
        assert table_counts(pg.dsn(target)) == {name: table.rows for name, table in manifest.tables.items()}
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            assert read_marker(admin, target) == "production"
        output = result.output_for_node("chinook_restore")
        assert output["restored_database"] == target and output["backup_id"] == manifest.backup_id
        [materialized] = [e for e in result.all_events
                          if e.event_type_value == "STEP_OUTPUT" and e.step_key == "chinook_restore"]
        # The run carries its database, chosen in the form: the router op tagged it.
        assert instance.get_run_by_id(result.run_id).tags["dbprotect/database"] == "chinook"
        metadata = materialized.event_specific_data.metadata
        assert isinstance(metadata["restore_seconds"], dg.FloatMetadataValue)
        assert metadata["rows"].value == manifest.total_rows
    finally:
        pg.drop_database(target)
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []


def test_restore_job_refuses_exactly_as_core_and_leaves_the_target_untouched(chinook, pg, make_db, monkeypatch,
                                                                             instance) -> None:
    defs, store, _manifest = chinook
    dsn = make_db("CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1), (2);", prefix="prod")
    name = str(dbname_of(dsn))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "production")
    monkeypatch.setenv("TEST_CHINOOK_PROD_DSN", dsn)  # "production" is now this marked database
    before = content(dsn)

    result = defs.resolve_job_def(RESTORE_JOB).execute_in_process(
        instance=instance, raise_on_error=False,
        run_config=_restore_config(target="existing_database", confirmation="chinook"))
    assert not result.success
    [failure] = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert description == (f"error[DBP906]: refused: overwriting database '{name}' needs its name as "
                           "confirmation (you typed 'chinook'); nothing was changed")
    assert content(dsn) == before
    assert list_backups(store, "chinook-safety") == []

    # A dry run plans the same target and succeeds, showing what would be dropped.
    planned = defs.resolve_job_def(RESTORE_JOB).execute_in_process(
        instance=instance, run_config=_restore_config(target="existing_database", dry_run=True))
    assert planned.success
    plan = planned.output_for_node("chinook_restore")
    assert plan["will_drop"] == ["table public.keep_me"] and plan["confirmation_required"] == name
    assert content(dsn) == before


def test_restore_verified_and_drill_checks_carry_numeric_metadata(chinook, pg, instance) -> None:
    defs, store, manifest = chinook
    result = defs.resolve_job_def(restore_verification_job_name("chinook")).execute_in_process(instance=instance)
    assert result.success
    check = _check(result, RESTORE_CHECK)
    assert check.passed, check.description
    metadata = check.metadata
    assert metadata["backup_id"].value == manifest.backup_id
    for name in PHASES:
        assert isinstance(metadata[name], dg.FloatMetadataValue) and metadata[name].value >= 0
    assert metadata["total_seconds"].value > 0
    assert (metadata["tables"].value, metadata["rows"].value, metadata["problems"].value) == (11, 15607, 0)
    assert isinstance(metadata["objects"], dg.IntMetadataValue) and metadata["objects"].value > 11
    assert metadata["problems_text"].value == "none"

    result = defs.resolve_job_def(drill_job_name("chinook")).execute_in_process(instance=instance)
    assert result.success
    drill = _check(result, DRILL_CHECK)
    assert drill.passed, drill.description
    for name in ("rto_seconds", "rpo_seconds", "rto_target_seconds", "rto_minutes", "rpo_measured_hours", *PHASES):
        assert isinstance(drill.metadata[name], dg.FloatMetadataValue), name
    assert 0 < drill.metadata["rto_seconds"].value < drill.metadata["rto_target_seconds"].value == 1800.0
    assert 0 <= drill.metadata["rpo_measured_hours"].value < 1
    assert list_backups(store, "chinook")[0].status == "verified:drilled"  # recorded in the store too
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []


def test_restore_verified_fails_naming_the_table_when_content_differs(chinook, tmp_path: Path, instance) -> None:
    defs, store, manifest = chinook
    path = tmp_path / "store" / "chinook" / manifest.backup_id / "manifest.json"
    path.write_text(path.read_text().replace('"rows": 3503', '"rows": 3504'))  # public.track
    result = defs.resolve_job_def(restore_verification_job_name("chinook")).execute_in_process(instance=instance)
    check = _check(result, RESTORE_CHECK)
    assert not check.passed
    assert "public.track" in check.metadata["problems_text"].value
    assert check.metadata["problems"].value >= 1
    assert list_backups(store, "chinook")[0].status.startswith("failed:")


def test_sensor_requests_one_restore_verification_per_new_backup(chinook, instance) -> None:
    defs, _store, manifest = chinook
    sensor = defs.get_sensor_def(restore_verification_sensor_name("chinook"))
    context = dg.build_sensor_context(instance=instance, definitions=defs)
    [request] = sensor.evaluate_tick(context).run_requests
    assert request.run_key == f"restore-verify-{manifest.backup_id}"
    assert sensor.job_name == restore_verification_job_name("chinook")  # its only job
