"""A hand-launched multi-database ``retention_checks_job`` carries ``dbprotect/database`` (issue 13
point 4.5), as ``rpo_checks_job`` does: the run list's filter by database finds it. The on-load
sensor's runs, one per database, still carry their own database.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.defs import load_definitions
from dbprotect.defs.names import DATABASE_TAG, RETENTION_CHECKS_JOB, RETENTION_ON_LOAD_SENSOR
from dbprotect.defs.retention.checks import retention_check_key

TWO_DATABASES = {
    "shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}}},
    "ledger-db": {"environments": {"production": {"dsn_env": "TEST_LEDGER_PROD_DSN"}}},
}


def test_a_hand_launched_multi_database_retention_run_is_tagged_with_every_database(
        write_config, instance: dg.DagsterInstance) -> None:
    write_config(None, deployment="production", extra={"databases": TWO_DATABASES})
    defs = load_definitions()
    job = defs.resolve_job_def(RETENTION_CHECKS_JOB)
    assert job.run_tags[DATABASE_TAG] == "ledger-db,shop"

    by_hand = job.execute_in_process(instance=instance)
    assert by_hand.dagster_run.tags[DATABASE_TAG] == "ledger-db,shop"
    assert {e.asset_check_key for e in by_hand.get_asset_check_evaluations()} == {
        retention_check_key("shop"), retention_check_key("ledger-db")}

    # The sensor's request for one database replaces the job's tag with its own.
    sensor = defs.resolve_sensor_def(RETENTION_ON_LOAD_SENSOR)
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    shop = next(request for request in tick.run_requests if request.tags[DATABASE_TAG] == "shop")
    assert shop.asset_check_keys == [retention_check_key("shop")]
    scheduled = job.execute_in_process(instance=instance, tags=shop.tags)
    assert scheduled.dagster_run.tags[DATABASE_TAG] == "shop"


def test_a_single_database_retention_run_is_tagged_with_it(write_config) -> None:
    write_config(None, deployment="production")
    assert load_definitions().resolve_job_def(RETENTION_CHECKS_JOB).run_tags[DATABASE_TAG] == "shop"
