"""A hand-launched ``rpo_checks_job`` over several databases carries ``dbprotect/database`` (issue 13).

The schedule already launches one run per database, each tagged with it; a run launched by hand
from the launchpad checks every database in one run, and its tag names them all, so the run list's
filter by database finds it. The schedule's per-database tag still wins over the job's.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.defs import load_definitions
from dbprotect.defs.backups.checks import rpo_check_key
from dbprotect.defs.names import DATABASE_TAG, RPO_CHECKS_JOB, RPO_CHECKS_SCHEDULE

TWO_DATABASES = {
    "shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}}},
    "ledger-db": {"environments": {"production": {"dsn_env": "TEST_LEDGER_PROD_DSN"}}},
}


def test_a_hand_launched_multi_database_rpo_run_is_tagged_with_every_database(
        write_config, instance: dg.DagsterInstance) -> None:
    write_config(None, deployment="production", extra={"databases": TWO_DATABASES})
    defs = load_definitions()
    job = defs.resolve_job_def(RPO_CHECKS_JOB)
    assert job.run_tags[DATABASE_TAG] == "ledger-db,shop"

    # By hand: one run evaluating both checks (no backup yet: both red), tagged with both databases.
    by_hand = job.execute_in_process(instance=instance)
    assert by_hand.success
    assert by_hand.dagster_run.tags[DATABASE_TAG] == "ledger-db,shop"
    evaluations = by_hand.get_asset_check_evaluations()
    assert {e.asset_check_key for e in evaluations} == {rpo_check_key("shop"), rpo_check_key("ledger-db")}
    assert not any(e.passed for e in evaluations)

    # Scheduled: the request's own database tag replaces the job's.
    with dg.build_schedule_context() as context:
        requests = defs.get_schedule_def(RPO_CHECKS_SCHEDULE).evaluate_tick(context).run_requests
    shop = next(request for request in requests if request.tags[DATABASE_TAG] == "shop")
    assert shop.asset_check_keys == [rpo_check_key("shop")]
    scheduled = job.execute_in_process(instance=instance, tags=shop.tags)
    assert scheduled.dagster_run.tags[DATABASE_TAG] == "shop"
