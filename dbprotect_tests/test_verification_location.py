"""A split deployment's verification location (issue 13, point 4/5): production holds public keys
only (``keys.raw.held_in: verification``), so its integrity check checks rung *stored* and reports
*readable* only as the verification location recorded it: skipped until then, never a pass. The
verification location (same file, ``DBPROTECT_DEPLOYMENT=verification``) holds the raw identity
and no DSN; its sensor requests one readability run per new backup, whose verdict reaches the
production check.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import dagster as dg
import pytest

from dbprotect.core.config.load import load_config
from dbprotect.core.errors import CredentialIsolationError
from dbprotect.core.ops import list_database_backups, primary_store
from dbprotect.core.store.catalog import record_check
from dbprotect.core.store.manifest import Verification
from dbprotect.defs import load_definitions
from dbprotect.defs.backups.checks import integrity_check_key, stored_here_readable_elsewhere_result
from dbprotect.defs.names import INTEGRITY_CHECK
from dbprotect.defs.resources import IDENTITY_RESOURCE, SECRETS_RESOURCE
from dbprotect.defs.verification import readability_job_name, readability_sensor_name

ROWS_SQL = "CREATE TABLE item (id int PRIMARY KEY); INSERT INTO item SELECT generate_series(1, 20);"


def _split_config(write_config, dsn: str | None, age_keys: tuple[str, str]):  # type: ignore[no-untyped-def]
    return write_config(dsn, deployment="production", extra={"keys": {"raw": {
        "recipients": [age_keys[1]], "identity_env": "TEST_RAW_IDENTITY", "held_in": "verification"}}})


@pytest.mark.slow
def test_production_checks_stored_and_leaves_readable_to_the_verification_location(
        write_config, make_db, age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        instance: dg.DagsterInstance) -> None:
    dsn = make_db(ROWS_SQL)
    path = _split_config(write_config, dsn, age_keys)
    monkeypatch.delenv("TEST_RAW_IDENTITY")  # production holds the public key only

    production = load_definitions()
    backup = production.resolve_job_def("shop_backup_job").execute_in_process(instance=instance)
    assert backup.success
    # Neither a pass nor a failure: no evaluation of the integrity check at all (Dagster: skipped).
    assert [e for e in backup.get_asset_check_evaluations() if e.check_name == INTEGRITY_CHECK] == []
    config = load_config(path)
    assert stored_here_readable_elsewhere_result(config, "shop", "test", None) is None

    # The verification location: the same file, the identity, no DSN.
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")
    monkeypatch.setenv("TEST_RAW_IDENTITY", age_keys[0])
    monkeypatch.setenv("DBPROTECT_DEPLOYMENT", "verification")
    verification = load_definitions()
    assert {job.name for job in verification.resolve_all_job_defs()} >= {readability_job_name("shop")}
    assert not any("snapshot" in key.to_user_string() for key in verification.resolve_asset_graph().get_all_asset_keys()
                   if verification.resolve_asset_graph().get(key).is_materializable)
    sensor = verification.resolve_sensor_def(readability_sensor_name("shop"))
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=verification,
                                                        resources=verification.resources))
    [request] = tick.run_requests
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=verification,
                                                         cursor=tick.cursor, resources=verification.resources))
    assert again.run_requests == []  # one run per backup
    run = verification.resolve_job_def(readability_job_name("shop")).execute_in_process(
        instance=instance, run_config=request.run_config, tags=request.tags)
    assert run.success
    [evaluation] = run.get_asset_check_evaluations()
    assert evaluation.asset_check_key == integrity_check_key("shop") and evaluation.passed
    assert evaluation.metadata["readable_ok"].value is True

    # Back in production (no identity): the check now reports the recorded verdict.
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    result = stored_here_readable_elsewhere_result(config, "shop", "test", None)
    assert result is not None and result.passed
    assert "verification location" in (result.description or "")
    assert "TEST_RAW_IDENTITY" not in os.environ


@pytest.mark.slow
def test_a_wrong_key_fails_the_run_and_a_recorded_unreadable_backup_turns_production_red(
        write_config, make_db, age_keys: tuple[str, str], other_age_keys: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> None:
    """The counter-tests: a verification location holding the wrong key fails its run (DBP008, the
    key's fault, not the backup's) and records nothing, so production stays skipped, not green; a
    *readable* failure recorded in the store turns production's check red."""
    dsn = make_db(ROWS_SQL)
    path = _split_config(write_config, dsn, age_keys)
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    assert load_definitions().resolve_job_def("shop_backup_job").execute_in_process(instance=instance).success
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")
    monkeypatch.setenv("TEST_RAW_IDENTITY", other_age_keys[0])
    monkeypatch.setenv("DBPROTECT_DEPLOYMENT", "verification")
    run = load_definitions().resolve_job_def(readability_job_name("shop")).execute_in_process(
        instance=instance, raise_on_error=False)
    assert not run.success and "DBP008" in str(run.get_step_failure_events()[0].event_specific_data.error)
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    monkeypatch.delenv("DBPROTECT_DEPLOYMENT")
    config = load_config(path)
    assert stored_here_readable_elsewhere_result(config, "shop", "test", None) is None

    [entry] = list_database_backups(config, "shop").entries
    record_check(primary_store(config, "shop"), "shop", entry.backup_id, Verification(
        rung="readable", ok=False, at=datetime.now(UTC), detail="pg_restore --list failed", by="dagster:verify"))
    result = stored_here_readable_elsewhere_result(config, "shop", "test", None)
    assert result is not None and not result.passed and "FAILED" in (result.description or "")


def test_each_side_refuses_the_others_secret(write_config, age_keys: tuple[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _split_config(write_config, "postgresql://u:p@db/shop", age_keys)  # sets TEST_RAW_IDENTITY too
    with pytest.raises(CredentialIsolationError, match="held_in"):
        load_definitions()  # production with the identity it says it does not hold
    monkeypatch.setenv("DBPROTECT_DEPLOYMENT", "verification")
    with pytest.raises(CredentialIsolationError, match="TEST_SHOP_PROD_DSN"):
        load_definitions()  # verification with a production DSN
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")
    defs = load_definitions()
    assert IDENTITY_RESOURCE in defs.resources and set(defs.resources[SECRETS_RESOURCE].values) == set()
    assert not any(key.endswith("_postgres") for key in defs.resources)
