"""Issue 13 point 4 in a split deployment (``keys.raw.held_in: verification``): everything that
decrypts a backup runs in the verification location, which holds the identity, the scratch
server's admin DSN and the warm copy's DSN, never a production DSN; production's checks show the
verdicts recorded in the store: skipped until one exists, red for a recorded failure, never a pass
without a record.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from dbprotect.core.config.load import load_config
from dbprotect.core.ops import list_database_backups, primary_store
from dbprotect.core.store.catalog import record_check
from dbprotect.core.store.manifest import Verification
from dbprotect.defs import load_definitions
from dbprotect.defs.names import RESTORE_JOB, drill_job_name, restore_verification_job_name, warm_copy_key
from dbprotect.defs.restores.checks import (
    drill_check_key,
    recorded_drill_result,
    recorded_restore_result,
    restore_check_key,
)
from dbprotect.defs.verification import restore_verification_sensor_name

ROWS_SQL = "CREATE TABLE item (id int PRIMARY KEY); INSERT INTO item SELECT generate_series(1, 20);"


def _split(write_config, dsn, age_keys, monkeypatch, pg, warm_dsn: str | None = None):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    database: dict = {}
    if warm_dsn is not None:
        monkeypatch.setenv("TEST_WARM_DSN", warm_dsn)
        database = {"warm_copy": {"dsn_env": "TEST_WARM_DSN"}}
    path = write_config(dsn, deployment="production", extra={
        "keys": {"raw": {"recipients": [age_keys[1]], "identity_env": "TEST_RAW_IDENTITY", "held_in": "verification"}},
        "scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    if database:
        text = path.read_text(encoding="utf-8").replace(
            "    environments:", "    warm_copy: {dsn_env: TEST_WARM_DSN}\n    environments:", 1)
        path.write_text(text, encoding="utf-8")
    return path


def _as_verification(monkeypatch: pytest.MonkeyPatch, identity: str) -> dg.Definitions:
    monkeypatch.delenv("TEST_SHOP_PROD_DSN", raising=False)
    monkeypatch.setenv("TEST_RAW_IDENTITY", identity)
    monkeypatch.setenv("DBPROTECT_DEPLOYMENT", "verification")
    return load_definitions()


def _job_names(defs: dg.Definitions) -> set[str]:
    return {job.name for job in defs.resolve_all_job_defs()}


def test_production_without_the_identity_defines_nothing_that_decrypts(
        write_config, age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch, pg) -> None:  # type: ignore[no-untyped-def]
    _split(write_config, "postgresql://u:p@db/shop?sslmode=require", age_keys, monkeypatch, pg,
           warm_dsn="postgresql://b:p@backup/shop_warm")
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    monkeypatch.delenv("TEST_WARM_DSN")
    production = load_definitions()
    jobs = _job_names(production)
    assert "shop_backup_job" in jobs
    assert not jobs & {RESTORE_JOB, drill_job_name("shop"), restore_verification_job_name("shop"), "shop_warm_copy_job"}
    assert warm_copy_key("shop") not in production.resolve_asset_graph().get_all_asset_keys()
    assert not production.schedules or all("drill" not in s.name for s in production.schedules)
    checks = production.resolve_asset_graph().asset_check_keys
    assert {restore_check_key("shop"), drill_check_key("shop")} <= set(checks)  # shown, as recorded

    verification = _as_verification(monkeypatch, age_keys[0])
    monkeypatch.setenv("TEST_WARM_DSN", "postgresql://b:p@backup/shop_warm")
    verification = load_definitions()  # holds the warm copy's DSN: allowed here, still no production DSN
    jobs = _job_names(verification)
    assert {drill_job_name("shop"), restore_verification_job_name("shop"), "shop_warm_copy_job"} <= jobs
    assert RESTORE_JOB not in jobs and "shop_backup_job" not in jobs
    assert warm_copy_key("shop") in verification.resolve_asset_graph().get_all_asset_keys()
    assert "TEST_WARM_DSN" in verification.resources["dbprotect_secrets"].values


@pytest.mark.slow
def test_restore_verification_and_drills_run_in_verification_and_show_in_production(
        write_config, make_db, pg, age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        instance: dg.DagsterInstance) -> None:  # type: ignore[no-untyped-def]
    dsn = make_db(ROWS_SQL)
    path = _split(write_config, dsn, age_keys, monkeypatch, pg)
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    production = load_definitions()
    assert production.resolve_job_def("shop_backup_job").execute_in_process(instance=instance).success
    config = load_config(path)
    # Nothing recorded yet: no result at all (skipped), never a pass.
    assert recorded_restore_result(config, "shop") is None
    assert recorded_drill_result(config, "shop") is None

    verification = _as_verification(monkeypatch, age_keys[0])
    sensor = verification.resolve_sensor_def(restore_verification_sensor_name("shop"))
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=verification,
                                                        resources=verification.resources))
    [request] = tick.run_requests
    assert request.tags["dbprotect/database"] == "shop"
    run = verification.resolve_job_def(restore_verification_job_name("shop")).execute_in_process(
        instance=instance, run_config=request.run_config, tags=request.tags)
    assert run.success
    [evaluation] = run.get_asset_check_evaluations()
    assert evaluation.asset_check_key == restore_check_key("shop") and evaluation.passed
    drill = verification.resolve_job_def(drill_job_name("shop")).execute_in_process(instance=instance)
    assert drill.success
    [evaluation] = drill.get_asset_check_evaluations()
    assert evaluation.asset_check_key == drill_check_key("shop") and evaluation.passed

    # Production (no identity, no scratch needed) shows what was recorded.
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    monkeypatch.delenv("DBPROTECT_DEPLOYMENT")
    restored = recorded_restore_result(config, "shop")
    drilled = recorded_drill_result(config, "shop")
    assert restored is not None and restored.passed and "verification location" in (restored.description or "")
    assert drilled is not None and drilled.passed and drilled.metadata["rto_minutes"].value >= 0

    # The counter-tests: a failure recorded after the pass turns each red.
    [entry] = list_database_backups(config, "shop").entries
    later = datetime.now(UTC) + timedelta(seconds=1)
    for rung in ("restored", "drilled"):
        record_check(primary_store(config, "shop"), "shop", entry.backup_id, Verification(
            rung=rung, ok=False, at=later, detail="row counts differ", by="dagster:verification"))
    restored = recorded_restore_result(config, "shop")
    drilled = recorded_drill_result(config, "shop")
    assert restored is not None and not restored.passed and "FAILED" in (restored.description or "")
    assert drilled is not None and not drilled.passed and "FAILED" in (drilled.description or "")


@pytest.mark.slow
def test_a_wrong_key_in_verification_records_nothing_and_production_stays_skipped(
        write_config, make_db, pg, age_keys: tuple[str, str], other_age_keys: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> None:  # type: ignore[no-untyped-def]
    dsn = make_db(ROWS_SQL)
    path = _split(write_config, dsn, age_keys, monkeypatch, pg)
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    assert load_definitions().resolve_job_def("shop_backup_job").execute_in_process(instance=instance).success
    verification = _as_verification(monkeypatch, other_age_keys[0])
    for job in (restore_verification_job_name("shop"), drill_job_name("shop")):
        run = verification.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False)
        assert not run.success and "DBP008" in str(run.get_step_failure_events()[0].event_specific_data.error)
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    monkeypatch.delenv("DBPROTECT_DEPLOYMENT")
    config = load_config(path)
    assert recorded_restore_result(config, "shop") is None and recorded_drill_result(config, "shop") is None
