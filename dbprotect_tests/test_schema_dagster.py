"""Schema snapshot assets, the drift check and the schema_sync job, run in an ephemeral Dagster instance."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from dbprotect.core.config.load import load_config
from dbprotect.defs.resources import CONFIG_RESOURCE, DbprotectConfigResource, build_resources
from dbprotect.defs.schema import build_schema_definitions
from dbprotect_tests.fixtures.fix_pg import fixture_sql, load_sql_file, mark_environment, psql

# Slow, so not in the fast lane: Dagster runs of snapshots, drift checks and the sync job (~4 s).
pytestmark = pytest.mark.slow


def test_snapshots_drift_check_and_sync_job(make_db: Callable[..., str], write_config: Callable[..., Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    prod, dev = make_db(prefix="prod"), make_db(prefix="dev")
    for dsn, env in ((prod, "production"), (dev, "development")):
        load_sql_file(dsn, fixture_sql("chinook"))
        mark_environment(dsn, env)
    path = write_config(prod, database="shop")
    monkeypatch.setenv("TEST_SHOP_DEV_DSN", dev)
    psql(dev, "ALTER TABLE album ADD COLUMN release_year integer")
    defs = build_schema_definitions(load_config())
    # The code location's resources: the config path, the DSNs' and the identity's EnvVars.
    resources = {**build_resources(load_config()), CONFIG_RESOURCE: DbprotectConfigResource(path=str(path))}
    assets = list(defs.assets or [])
    checks = list(defs.asset_checks or [])

    def run_assets() -> dg.ExecuteInProcessResult:
        return dg.materialize([*assets, *checks], resources=resources, instance=dg.DagsterInstance.ephemeral())

    first = run_assets()
    versions = {m.asset_key.to_user_string(): m.metadata["sha256"].value
                for m in (e.event_specific_data.materialization for e in first.get_asset_materialization_events())}
    assert versions["shop/schema_production"] != versions["shop/schema_development"]
    [evaluation] = first.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["drift"].value == "column public.album.release_year: only in development"

    job = dg.Definitions.merge(defs, dg.Definitions(resources=resources)).resolve_job_def("schema_sync")
    refused = job.execute_in_process(run_config={"ops": {"push_schema_op": {"config": {
        "database": "shop", "source": "development", "target": "production", "dry_run": False}}}},
        raise_on_error=False)
    assert not refused.success
    sync_instance = dg.DagsterInstance.ephemeral()
    synced = job.execute_in_process(run_config={"ops": {"push_schema_op": {"config": {
        "database": "shop", "source": "development", "target": "production", "dry_run": False,
        "confirmation": "shop"}}}}, instance=sync_instance)
    assert synced.success
    # The run names the database chosen in the form.
    assert sync_instance.get_run_by_id(synced.run_id).tags["dbprotect/database"] == "shop"
    second = run_assets()
    [evaluation] = second.get_asset_check_evaluations()
    assert evaluation.passed
