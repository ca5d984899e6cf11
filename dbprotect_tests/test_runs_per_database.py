"""Every scheduled or sensor run carries its database, and retention is evaluated when a deployment starts.

``rpo_checks_schedule`` and ``retention_on_load_sensor`` launch one run per database, of that
database's check only, tagged ``dbprotect/database``. The sensor requests them once per load of
the code location (a new load requests again) and the runs evaluate ``retention_compliant`` for
real against the store.
"""

from __future__ import annotations

import dagster as dg
import pytest

from dbprotect.defs import load_definitions
from dbprotect.defs.backups.checks import rpo_check_key
from dbprotect.defs.names import (
    DATABASE_TAG,
    RETENTION_CHECK,
    RETENTION_CHECKS_JOB,
    RETENTION_ON_LOAD_SENSOR,
    RPO_CHECKS_JOB,
    RPO_CHECKS_SCHEDULE,
)
from dbprotect.defs.retention.checks import retention_check_key

TWO_DATABASES = {
    "shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}}},
    "ledger-db": {"environments": {"production": {"dsn_env": "TEST_LEDGER_PROD_DSN"}}},
}


@pytest.fixture
def two_databases(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SHOP_PROD_DSN", "postgresql://u:p@db.internal/shop")
    monkeypatch.setenv("TEST_LEDGER_PROD_DSN", "postgresql://u:p@db.internal/ledger")
    write_config(None, deployment="production", extra={"databases": TWO_DATABASES})


def _requests_by_database(requests: list[dg.RunRequest]) -> dict[str, list[dg.AssetCheckKey]]:
    return {request.tags[DATABASE_TAG]: list(request.asset_check_keys or []) for request in requests}


def test_rpo_schedule_launches_one_tagged_run_per_database(two_databases) -> None:
    defs = load_definitions()
    schedule = defs.get_schedule_def(RPO_CHECKS_SCHEDULE)
    with dg.build_schedule_context() as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert _requests_by_database(requests) == {"shop": [rpo_check_key("shop")],
                                               "ledger-db": [rpo_check_key("ledger-db")]}
    assert len({request.run_key for request in requests}) == 2


def test_one_database_jobs_are_tagged_even_when_launched_by_hand(write_config) -> None:
    write_config("postgresql://u:p@db.internal/shop", deployment="production")
    defs = load_definitions()
    for name in (RPO_CHECKS_JOB, RETENTION_CHECKS_JOB):
        assert defs.resolve_job_def(name).run_tags[DATABASE_TAG] == "shop", name


def test_retention_sensor_requests_once_per_load(two_databases, instance: dg.DagsterInstance) -> None:
    defs = load_definitions()
    sensor = defs.get_sensor_def(RETENTION_ON_LOAD_SENSOR)
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    assert _requests_by_database(first.run_requests) == {"shop": [retention_check_key("shop")],
                                                         "ledger-db": [retention_check_key("ledger-db")]}
    # The next tick of the same load requests nothing.
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor))
    assert not again.run_requests and again.skip_message
    # A new load of the code location (a restart, a reload) evaluates again, with new run keys.
    reloaded = load_definitions()
    after_reload = reloaded.get_sensor_def(RETENTION_ON_LOAD_SENSOR).evaluate_tick(
        dg.build_sensor_context(instance=instance, definitions=reloaded, cursor=first.cursor))
    assert len(after_reload.run_requests) == 2
    assert not {r.run_key for r in after_reload.run_requests} & {r.run_key for r in first.run_requests}


def test_the_requested_retention_run_evaluates_the_check(write_config, instance: dg.DagsterInstance) -> None:
    """The sensor's request runs for real: the check is evaluated (an empty store is not compliant), tagged."""
    write_config("postgresql://u:p@db.internal/shop", deployment="production")
    defs = load_definitions()
    [request] = defs.get_sensor_def(RETENTION_ON_LOAD_SENSOR).evaluate_tick(
        dg.build_sensor_context(instance=instance, definitions=defs)).run_requests
    job = defs.get_repository_def().get_job(RETENTION_CHECKS_JOB)
    result = job.get_subset(asset_check_selection=set(request.asset_check_keys)).execute_in_process(
        instance=instance, tags=request.tags, raise_on_error=False)
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == RETENTION_CHECK and evaluation.passed is False
    assert instance.get_run_by_id(result.run_id).tags[DATABASE_TAG] == "shop"
