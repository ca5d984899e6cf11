"""The Dagster definitions do real work: a backup of Chinook, its checks, and the hourly RPO job.

Runs execute in process against a test instance (Dagster's default local storage in a temporary
folder, never dagster.yaml), the embedded PostgreSQL and a filesystem store in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dbprotect.core import audit
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups
from dbprotect.defs import load_definitions
from dbprotect.defs.backups.checks import integrity_check_key
from dbprotect.defs.names import INTEGRITY_CHECK, RPO_CHECK, RPO_CHECKS_JOB, snapshot_key

# Slow, so not in the fast lane: Dagster runs of the backup job and its asset checks (1-1.5 s each).
pytestmark = pytest.mark.slow

#: Rows in the Chinook fixture, summed over its 11 tables.
CHINOOK_ROWS = 15607
CHINOOK_TABLES = 11
NUMERIC_METRICS = {
    "dump_bytes": dg.IntMetadataValue, "compressed_bytes": dg.IntMetadataValue, "stored_bytes": dg.IntMetadataValue,
    "tables": dg.IntMetadataValue, "total_rows": dg.IntMetadataValue,
    "compression_ratio": dg.FloatMetadataValue, "duration_seconds": dg.FloatMetadataValue,
    "throughput_mb_per_s": dg.FloatMetadataValue,
}


@pytest.fixture
def chinook_config(write_config, chinook_dsn: str) -> Path:
    """A production deployment protecting Chinook into tmp_path/store."""
    return write_config(chinook_dsn, database="chinook", deployment="production")


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def _value(metadata: dict[str, dg.MetadataValue], key: str) -> object:
    return metadata[key].value


def test_backup_job_materializes_snapshot_and_both_checks_pass(chinook_config: Path, tmp_path: Path,
                                                               instance: dg.DagsterInstance) -> None:
    defs = load_definitions()
    result = defs.resolve_job_def("chinook_backup_job").execute_in_process(instance=instance)
    assert result.success

    [materialization] = [event.materialization for event in result.get_asset_materialization_events()]
    assert materialization.asset_key == snapshot_key("chinook")
    metadata = dict(materialization.metadata)
    for name, kind in NUMERIC_METRICS.items():
        assert isinstance(metadata[name], kind), f"{name} is {type(metadata[name]).__name__}, not numeric"
    assert _value(metadata, "total_rows") == CHINOOK_ROWS
    assert _value(metadata, "tables") == CHINOOK_TABLES
    dump, stored = _value(metadata, "dump_bytes"), _value(metadata, "stored_bytes")
    assert dump > stored > 0  # a plain custom-format dump of Chinook compresses
    assert _value(metadata, "compression_ratio") == pytest.approx(dump / stored, rel=1e-2)
    assert _value(metadata, "duration_seconds") > 0
    backup_id = _value(metadata, "backup_id")
    assert _value(metadata, "stored_uri").endswith(f"chinook/{backup_id}/dump.zst.age")

    checks = _checks(result)
    assert set(checks) == {INTEGRITY_CHECK, RPO_CHECK}
    integrity = checks[INTEGRITY_CHECK]
    assert integrity.passed, integrity.description
    assert _value(integrity.metadata, "backup_id") == backup_id
    assert _value(integrity.metadata, "stored_ok") is True and _value(integrity.metadata, "readable_ok") is True
    assert isinstance(integrity.metadata["seconds"], dg.FloatMetadataValue)
    assert f"{CHINOOK_TABLES} tables match the manifest" in _value(integrity.metadata, "readable_detail")
    rpo = checks[RPO_CHECK]
    assert rpo.passed, rpo.description  # it saw the verification recorded moments before
    assert _value(rpo.metadata, "newest_verified_backup") == backup_id
    assert 0 <= _value(rpo.metadata, "rpo_measured_hours") < 1
    assert _value(rpo.metadata, "rpo_target_hours") == 24.0
    assert "rpo_hours" not in rpo.metadata and "age_hours" not in rpo.metadata  # one meaning per name
    assert _value(metadata, "dump_mb") == pytest.approx(dump / 1e6, abs=1e-3)

    # The store, not Dagster, holds the truth: the verification was recorded there.
    [entry] = list_backups(FilesystemStorage(tmp_path / "store"), "chinook")
    assert (entry.backup_id, entry.status) == (backup_id, "verified:readable")
    # The audit log names the job as the actor of both the backup and its verification.
    records = [(r.action, r.actor, r.target) for r in audit.read(FilesystemStorage(tmp_path / "store"))]
    assert ("backup", "dagster:chinook_backup_job", backup_id) in records
    assert any(action == "verify" and actor == "dagster:chinook_backup_job" for action, actor, _ in records), records
    # And Dagster's history has the materialization the UI plots.
    latest = instance.get_latest_materialization_event(snapshot_key("chinook"))
    assert latest is not None and latest.asset_materialization.metadata["backup_id"].value == backup_id


def test_rpo_job_on_an_empty_store_fails_the_check_without_taking_a_backup(
        chinook_config: Path, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    result = load_definitions().resolve_job_def(RPO_CHECKS_JOB).execute_in_process(instance=instance)
    assert result.success  # the run worked; the *check* is what turns red
    assert result.get_asset_materialization_events() == []
    checks = _checks(result)
    assert set(checks) == {RPO_CHECK}
    assert not checks[RPO_CHECK].passed
    assert checks[RPO_CHECK].description == "no backup has passed integrity yet"
    assert _value(checks[RPO_CHECK].metadata, "backups") == 0
    assert "rpo_measured_hours" not in checks[RPO_CHECK].metadata
    assert list_backups(FilesystemStorage(tmp_path / "store"), "chinook") == []


def test_integrity_check_fails_on_a_flipped_byte_and_records_it(chinook_config: Path, tmp_path: Path,
                                                              instance: dg.DagsterInstance) -> None:
    defs = load_definitions()
    assert defs.resolve_job_def("chinook_backup_job").execute_in_process(instance=instance).success
    store = tmp_path / "store"
    [entry] = list_backups(FilesystemStorage(store), "chinook")
    dump = store / "chinook" / entry.backup_id / "dump.zst.age"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))

    result = dg.materialize(
        [defs.get_assets_def(snapshot_key("chinook")), *defs.asset_checks],
        selection=dg.AssetSelection.checks(integrity_check_key("chinook")),
        resources=defs.resources, instance=instance, raise_on_error=False,
    )
    assert not result.success  # blocking, ERROR severity: the run fails with the check
    integrity = _checks(result)[INTEGRITY_CHECK]
    assert not integrity.passed
    assert "SHA-256 mismatch" in _value(integrity.metadata, "stored_detail")
    assert list_backups(FilesystemStorage(store), "chinook")[0].status.startswith("failed:stored")


def test_backup_failure_is_a_one_line_dagster_failure_without_the_password(
        write_config, pg, instance: dg.DagsterInstance) -> None:
    password = "hunter2-not-for-logs"
    write_config(pg.dsn("no_such_database", password=password), database="ghost", deployment="production")
    result = load_definitions().resolve_job_def("ghost_backup_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert failure.step_failure_data.user_failure_data is not None
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("error[DBP004]: ") and "\n" not in description
    assert "no_such_database" in description
    logs = " ".join(str(event.message) for event in result.all_events)
    assert password not in description + str(error) + logs
