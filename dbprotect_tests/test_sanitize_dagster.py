"""The sanitize domain in Dagster: the sanitized-copy asset with its blocking checks, the promotion
sensor (off unless configured) and the ``promote_dev_copy`` job, in one demo code location.

Runs execute in process against a test instance, the embedded PostgreSQL and a filesystem store.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from dbprotect.core.ops import verify_database_backup
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.defs import load_definitions
from dbprotect_tests.fixtures.crm import KEY_ENV, SHARED_EMAIL_RULES, SHARED_EMAIL_SQL

# Slow, so not in the fast lane: Dagster runs that back up, sanitize and promote (5-8 s).
pytestmark = pytest.mark.slow


@pytest.fixture
def crm(write_config, make_db, pg, monkeypatch, tmp_path: Path, other_age_keys):  # type: ignore[no-untyped-def]
    """Factory: a demo deployment (both sides) for a small CRM with e-mails, rules, dev database."""

    def factory(rules_text: str = SHARED_EMAIL_RULES, *, promote: bool = False, sql: str = SHARED_EMAIL_SQL):
        source = make_db(sql)
        dev = make_db(prefix="crm_dev")
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            set_marker(admin, dbname_of(dev), "development")
        rules = tmp_path / "rules.yaml"
        rules.write_text(rules_text)
        monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
        monkeypatch.setenv(KEY_ENV, "masking-key-for-tests-0123456789")
        monkeypatch.setenv("TEST_CRM_DEV_DSN", dev)
        monkeypatch.setenv("TEST_DEV_IDENTITY", other_age_keys[0])
        path = write_config(source, database="crm", deployment="demo",
                            extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
        doc = yaml.safe_load(path.read_text())
        doc["databases"]["crm"]["sanitize"] = {"rules": str(rules), "hmac_key_env": KEY_ENV, "promote": promote}
        doc["keys"]["development"] = {"recipients": [other_age_keys[1]], "identity_env": "TEST_DEV_IDENTITY"}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        defs = load_definitions()
        return defs, dev

    return factory


def _backup(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    from dbprotect.core.config.load import load_config

    assert defs.resolve_job_def("crm_backup_job").execute_in_process(instance=instance).success
    verify_database_backup(load_config(), "crm")


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_sanitized_copy_asset_then_sensor_promotes_it(crm, instance: dg.DagsterInstance) -> None:
    defs, dev = crm(promote=True)
    _backup(defs, instance)
    result = defs.resolve_job_def("crm_sanitize_job").execute_in_process(instance=instance)
    assert result.success
    checks = _checks(result)
    assert set(checks) == {"no_pii_leaked", "constraints_hold", "row_counts_match"}
    assert all(c.passed for c in checks.values())
    [materialization] = result.asset_materializations_for_node("crm__sanitized_copy") or \
        [e.materialization for e in result.get_asset_materialization_events()]
    assert materialization.metadata["rows"].value == 1300

    sensor = defs.resolve_sensor_def("crm_promote_dev_copy_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    tick = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    [request] = tick.run_requests
    artifact = request.run_config["ops"]["promote_sanitized_copy"]["config"]["artifact_id"]
    assert tick.cursor == artifact
    skip = sensor(dg.build_sensor_context(instance=instance, cursor=artifact, resources=defs.resources))
    assert "already promoted" in skip.skip_message

    run = defs.resolve_job_def("promote_dev_copy").execute_in_process(run_config=request.run_config,
                                                                      instance=instance)
    assert run.success
    with psycopg.connect(dev) as conn:
        assert conn.execute("SELECT count(*), count(*) FILTER (WHERE email LIKE '%@example.com') "
                            "FROM newsletter").fetchone() == (800, 800)


def test_promotion_is_off_by_default_and_a_leak_blocks_it(crm, instance: dg.DagsterInstance) -> None:
    leaky = SHARED_EMAIL_RULES.replace("newsletter: {id: keep, email: email", "newsletter: {id: keep, email: keep")
    defs, dev = crm(leaky, sql=SHARED_EMAIL_SQL.replace("REFERENCES customers (email)", ""))
    sensor = defs.resolve_sensor_def("crm_promote_dev_copy_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    off = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert "promotion of 'crm' is off" in off.skip_message
    _backup(defs, instance)
    result = defs.resolve_job_def("crm_sanitize_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    leak = _checks(result)["no_pii_leaked"]
    assert not leak.passed and "e-mail address" in (leak.description or "")
    run = defs.resolve_job_def("promote_dev_copy").execute_in_process(
        run_config={"ops": {"promote_sanitized_copy": {"config": {"database": "crm", "confirm": True}}}},
        instance=instance, raise_on_error=False)
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    assert "nothing to promote" in str(failure.event_specific_data.error)
    with psycopg.connect(dev) as conn:
        assert conn.execute("SELECT to_regclass('newsletter')").fetchone() == (None,)


def test_in_a_dagster_run_the_forked_workers_check_the_same(crm, instance: dg.DagsterInstance, monkeypatch) -> None:
    """Workers forced on every table and every read-back column (as for tables of 200 k rows and more),
    inside an in-process Dagster run (a process with threads): the clean copy passes and the leaky one is
    still refused for the kept e-mails."""
    from dbprotect.core.sanitize import checks, parallel

    monkeypatch.setattr(parallel, "PARALLEL_ROWS", -1)  # reltuples is -1 before the first ANALYZE
    monkeypatch.setattr(checks, "PARALLEL_VALUES", 0)
    monkeypatch.setattr(checks, "FETCH_ROWS", 100)
    defs, _ = crm()
    _backup(defs, instance)
    clean = defs.resolve_job_def("crm_sanitize_job").execute_in_process(instance=instance)
    assert clean.success and _checks(clean)["no_pii_leaked"].passed
    leaky = SHARED_EMAIL_RULES.replace("newsletter: {id: keep, email: email", "newsletter: {id: keep, email: keep")
    defs, _ = crm(leaky, sql=SHARED_EMAIL_SQL.replace("REFERENCES customers (email)", ""))
    _backup(defs, instance)
    result = defs.resolve_job_def("crm_sanitize_job").execute_in_process(instance=instance, raise_on_error=False)
    leak = _checks(result)["no_pii_leaked"]
    assert not result.success and not leak.passed
    assert "newsletter.email (keep): 800 value(s) equal personal values of production" in (leak.description or "")
