"""The ``restore`` job launched through Dagster's GraphQL API, as the UI's launchpad launches it.

The code location is loaded from the repository's ``workspace.yaml`` the way ``dagster dev``
loads it: in a gRPC code server subprocess. The ``launchRun`` mutation (what the launchpad's
"Launch run" button sends) goes through Dagster's GraphQL schema to a test instance, whose
default run launcher starts the run in its own process; the test polls ``runOrError`` until the
run ends, then checks the restored database's content against the backup's manifest.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql, infer_job_selector

from dbprotect.core.config.load import load_config
from dbprotect.core.ops import backup_database, verify_database_backup
from dbprotect.core.pg.markers import read_marker, set_marker
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.core.store.manifest import Manifest
from dbprotect.defs.names import RESTORE_JOB
from dbprotect_tests.fixtures.fix_pg import table_counts

# Slow, so not in the fast lane: a Dagster webserver launches a restore run through GraphQL (~25 s).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 120

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""

RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

FAILURE_MESSAGES = """
query RunFailures($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { __typename ... on ExecutionStepFailureEvent { error { message } } } }
  }
}
"""


def _launch(context, run_config: dict) -> str:
    result = execute_dagster_graphql(context, LAUNCH_RUN, {"executionParams": {
        "selector": infer_job_selector(context, RESTORE_JOB), "runConfigData": run_config, "mode": "default"}})
    launched = result.data["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _wait(context, run_id: str) -> str:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    run: dict = {}
    while time.monotonic() < deadline:
        run = execute_dagster_graphql(context, RUN_STATUS, {"runId": run_id}).data["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run["status"]
        time.sleep(0.5)
    pytest.fail(f"run {run_id} did not finish within {TIMEOUT_SECONDS} s (last status {run.get('status')})")


def test_restore_job_launched_through_graphql_restores_chinook(write_config, chinook_dsn, pg, tmp_path) -> None:
    write_config(chinook_dsn, database="chinook", deployment="production")
    config = load_config()

    def backed_up_and_verified() -> Manifest:
        backup_id = backup_database(config, "chinook").manifest.backup_id
        assert verify_database_backup(config, "chinook", backup_id).ok  # the default: newest verified
        return load_manifest(FilesystemStorage(tmp_path / "store"), "chinook", backup_id)

    target = "chinook_restored_via_graphql"
    # The refused form's target: an existing production database (marked as the restored one will be),
    # ready before either run starts, so both runs go at once (two run processes side by side, not in turn).
    guarded = pg.create_database("chinook_guarded")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, guarded, "production")
    (tmp_path / "dagster_home").mkdir()

    # The default coordinator launches at once; a deployment's queued coordinator needs the daemon.
    overrides = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}
    # The backup and its verification run while the code server starts (a separate process loading the
    # definitions): neither needs the other, and both are done before the first launch.
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            backup = pool.submit(backed_up_and_verified)
            with dg.instance_for_test(overrides, temp_dir=str(tmp_path / "dagster_home")) as instance, \
                    define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
                manifest = backup.result()
                _launch_both_and_check(context, instance, pg, tmp_path, manifest, target, guarded)
    finally:
        pg.drop_database(guarded)


def _launch_both_and_check(context, instance, pg, tmp_path: Path, manifest: Manifest, target: str,
                           guarded: str) -> None:
    """The restore into a new database succeeds with the backup's content; the wrong confirmation for an
    existing one is refused by core's guard, before any change (no safety backup, the database untouched)."""
    try:
        run_id = _launch(context, {"ops": {"restore_backup": {"config": {
            "database": "chinook", "target": "new_database", "target_database": target}}}})
        # The same form with a wrong confirmation for an existing database is refused by core's guard.
        refused_id = _launch(context, {"ops": {"restore_backup": {"config": {
            "database": "chinook", "target": "existing_database", "target_database": guarded,
            "confirmation": "not-the-name"}}}})
        status = _wait(context, run_id)
        if status != "SUCCESS":
            events = execute_dagster_graphql(context, FAILURE_MESSAGES, {"runId": run_id}).data
            pytest.fail(f"run ended {status}: {events}")
        assert table_counts(pg.dsn(target)) == {name: table.rows for name, table in manifest.tables.items()}
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            assert read_marker(admin, target) == "production"
        assert instance.get_run_by_id(run_id).job_name == RESTORE_JOB

        assert _wait(context, refused_id) == "FAILURE"
        events = execute_dagster_graphql(context, FAILURE_MESSAGES, {"runId": refused_id}).data
        messages = [e["error"]["message"] for e in events["logsForRun"]["events"]
                    if e["__typename"] == "ExecutionStepFailureEvent"]
        assert any(f"error[DBP906]: refused: overwriting database '{guarded}' needs its name" in m
                   for m in messages), messages
        assert list_backups(FilesystemStorage(tmp_path / "store"), "chinook-safety") == []
        with psycopg.connect(pg.dsn(guarded), autocommit=True) as conn:  # untouched: still empty
            row = conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")
            assert row.fetchone() == (0,)
    finally:
        pg.drop_database(target)
