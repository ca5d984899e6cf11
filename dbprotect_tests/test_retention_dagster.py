"""Copy assets, the cleanup job and the retention check, run in process against a Dagster test instance.

The primary store is a folder, the copy target a bucket on the moto S3 endpoint; backups are
synthetic (test_cleanup's writer) because neither a copy nor a cleanup reads their content.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dbprotect.core.audit import read
from dbprotect.core.copy import copy_backup
from dbprotect.core.store import FilesystemStorage, S3Storage
from dbprotect.core.store.catalog import list_backups
from dbprotect.core.store.manifest import dump_key
from dbprotect.defs import load_definitions
from dbprotect.defs.names import COPY_INTEGRITY_CHECK, RETENTION_CHECK
from dbprotect_tests.fixtures.backups import DB, write_backup

# Slow, so not in the fast lane: Dagster runs of copy assets and the cleanup job (2-7 s).
pytestmark = pytest.mark.slow

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def stores(tmp_path: Path, write_config, s3_endpoint: str, s3_bucket: str) -> tuple[FilesystemStorage, S3Storage]:
    write_config("postgresql://app@/shop?host=/nowhere", storage={
        "local": {"type": "filesystem", "path": str(tmp_path / "local")},
        "offsite": {"type": "s3", "bucket": s3_bucket, "prefix": "dbp", "endpoint_url": s3_endpoint,
                    "region": "us-east-1"},
    }, extra={"databases": {DB: {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                                 "retention": "keep_last=2, max_age=10d"}}})
    return (FilesystemStorage(tmp_path / "local"),
            S3Storage(s3_bucket, "dbp", endpoint_url=s3_endpoint, region="us-east-1"))


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {event.asset_check_evaluation_data.check_name: event.asset_check_evaluation_data
            for event in result.all_events if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION}


def _value(metadata: dict[str, Any], key: str) -> Any:
    return metadata[key].value


def test_copy_asset_copies_the_newest_verified_backup_and_its_check_catches_rot(
        stores: tuple[FilesystemStorage, S3Storage], instance: dg.DagsterInstance) -> None:
    local, offsite = stores
    write_backup(local, NOW - timedelta(days=1), n=1)
    newest = write_backup(local, NOW - timedelta(hours=2), n=2)
    job = load_definitions().resolve_job_def("shop_copy_job")

    result = job.execute_in_process(instance=instance)
    assert result.success
    [materialization] = [event.materialization for event in result.all_events
                         if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
    metadata = materialization.metadata
    assert materialization.asset_key == dg.AssetKey(["shop", "backup_copy_offsite"])
    assert _value(metadata, "backup_id") == newest and _value(metadata, "copied") is True
    assert _value(metadata, "server_side_copy") is False  # folder -> bucket streams
    assert _value(metadata, "bytes") == len(local.get_bytes(dump_key(DB, newest)))
    assert isinstance(metadata["seconds"], dg.FloatMetadataValue)
    holdings = _value(metadata, "holdings")
    assert holdings.splitlines()[0] == "| backup id | local | offsite |"
    assert f"| {newest} | verified | verified |" in holdings
    assert _value(metadata, "verified_on_offsite") == 1 and _value(metadata, "verified_on_local") == 2
    check = _checks(result)[COPY_INTEGRITY_CHECK]
    assert check.passed and _value(check.metadata, "backup_id") == newest
    assert [e.backup_id for e in list_backups(offsite, DB) if e.integrity_ok] == [newest]
    actors = {(r.action, r.actor) for r in read(local)}
    assert ("copy", "dagster:shop_copy_job") in actors and ("verify", "dagster:shop_copy_job") in actors

    data = bytearray(offsite.get_bytes(dump_key(DB, newest)))
    data[7] ^= 0x40
    offsite.put_bytes(dump_key(DB, newest), bytes(data))
    rotten = job.execute_in_process(instance=instance, raise_on_error=False)
    check = _checks(rotten)[COPY_INTEGRITY_CHECK]
    assert not check.passed and "SHA-256 mismatch" in (check.description or "")
    assert f"| {newest} | verified | FAILED: stored |" in _value(check.metadata, "holdings")

    repaired = job.execute_in_process(instance=instance)  # a failed copy counts as missing: copied again
    [event] = [e for e in repaired.all_events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
    assert _value(event.materialization.metadata, "copied") is True
    assert _checks(repaired)[COPY_INTEGRITY_CHECK].passed


def test_cleanup_job_records_plan_and_result_and_evaluates_compliance(
        stores: tuple[FilesystemStorage, S3Storage], instance: dg.DagsterInstance) -> None:
    local, offsite = stores
    ids = [write_backup(local, NOW - timedelta(days=d, hours=1), n=d) for d in (1, 2, 3, 4, 15)]
    copy_backup(local, offsite, DB, ids[0])
    defs = load_definitions()
    job = defs.resolve_job_def("shop_cleanup_job")
    dry = job.execute_in_process(instance=instance, run_config={
        "ops": {"shop_retention_cleanup": {"config": {"dry_run": True}}}})
    assert dry.success and len(list_backups(local, DB)) == 5
    compliance = _checks(dry)[RETENTION_CHECK]
    assert not compliance.passed  # the 15-day-old backup is older than max_age=10d and still there
    assert "local: 1 backup(s) older than max_age=10d" in (compliance.description or "")

    result = job.execute_in_process(instance=instance)
    assert result.success
    observations = {_value(e.asset_observation_data.asset_observation.metadata, "target"):
                    e.asset_observation_data.asset_observation.metadata
                    for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION}
    local_meta = observations["local"]
    assert _value(local_meta, "deleted") == 3 and _value(local_meta, "kept") == 2
    assert _value(local_meta, "deleted_backup_ids") == ", ".join(sorted(ids[2:]))
    assert _value(local_meta, "bytes_freed") > 0 and "retention plan for shop" in _value(local_meta, "plan")
    assert _value(observations["offsite"], "deleted") == 0
    assert [e.backup_id for e in list_backups(local, DB)] == ids[:2]
    compliance = _checks(result)[RETENTION_CHECK]
    assert compliance.passed and _value(compliance.metadata, "local_verified") == 2
    deletions = [r for r in read(local) if r.action == "delete"]
    assert {r.target for r in deletions} == set(ids[2:])
    assert {r.actor for r in deletions} == {"dagster:shop_cleanup_job"}


def test_a_refused_cleanup_fails_the_run_with_the_cli_sentence(
        stores: tuple[FilesystemStorage, S3Storage], instance: dg.DagsterInstance) -> None:
    local, _offsite = stores
    write_backup(local, NOW - timedelta(days=12), n=1)  # the only verified backup, older than max_age=10d
    result = load_definitions().resolve_job_def("shop_cleanup_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "error[DBP917]: cleanup of shop: max_age=10d would delete every verified backup" in \
        failure.step_failure_data.error.message
    assert len(list_backups(local, DB)) == 1
