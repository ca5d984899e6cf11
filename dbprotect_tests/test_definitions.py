"""The Dagster definitions, recorded as a snapshot: a renamed asset, check, job or schedule is a diff.

Also: secrets are EnvVar references only, a deployment holding another deployment's DSN refuses
to load (naming the variable, never its value), and Dagster itself loads the code location from
workspace.yaml. No run executes here (see test_dagster_materialize.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config

import dbprotect.core.config.load
import dbprotect.defs
from dbprotect.core.errors import ConfigError, CredentialIsolationError
from dbprotect.defs import build_definitions, load_definitions
from dbprotect.defs.resources import AgeIdentityResource, PostgresResource
from dbprotect.defs.restores.jobs import restore_config_class

REPO = Path(__file__).resolve().parents[1]
SECRET_DSN = "postgresql://app:s3cret-prod-password@prod.example.internal:5432/shop"

TWO_DATABASES = {
    "shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"},
                              "development": {"dsn_env": "TEST_SHOP_DEV_DSN"}}},
    "ledger-db": {"environments": {"production": {"dsn_env": "TEST_LEDGER_PROD_DSN"}},
                  "backup_schedule": "30 1 * * *", "rpo_hours": 6},
}


def snapshot(defs: dg.Definitions) -> dict[str, Any]:
    """Everything a user names or schedules, as plain data."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        policy = node.freshness_policy
        assets[key.to_user_string()] = {
            "group": node.group_name, "kinds": sorted(node.kinds),
            "freshness": type(policy).__name__ if policy else None,
            "fail_window_hours": policy.fail_window.to_timedelta().total_seconds() / 3600 if policy else None,
        }
    checks = {
        f"{key.asset_key.to_user_string()}:{key.name}": {"blocking": graph.get_check_spec(key).blocking}
        for key in sorted(graph.asset_check_keys, key=str)
    }
    jobs = {}
    for job in sorted(repo.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue  # Dagster's implicit asset job
        jobs[job.name] = {
            "assets": sorted(key.to_user_string() for key in job.asset_layer.selected_asset_keys),
            "checks": sorted(f"{key.asset_key.to_user_string()}:{key.name}"
                             for key in job.asset_layer.asset_graph.asset_check_keys),
            "run_tags": dict(job.run_tags),
        }
    schedules = {
        schedule.name: {"cron": schedule.cron_schedule, "job": schedule.job_name,
                        "status": schedule.default_status.value, "timezone": schedule.execution_timezone}
        for schedule in sorted(repo.schedule_defs, key=lambda s: s.name)
    }
    # Targets by job object or by job name (the pre-migration sensor); automation sensors have no job.
    sensors = {sensor.name: {"jobs": sorted(target.job_name for target in sensor.targets),
                             "status": sensor.default_status.value}
               for sensor in sorted(repo.sensor_defs, key=lambda s: s.name)}
    return {"assets": assets, "checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors,
            "resources": sorted(defs.resources or {})}


def test_two_databases_snapshot(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SHOP_PROD_DSN", SECRET_DSN)
    write_config(None, deployment="production", extra={"databases": TWO_DATABASES, "timezone": "Europe/Berlin"})
    defs = load_definitions()
    dg.Definitions.validate_loadable(defs)
    assert snapshot(defs) == {
        "assets": {
            "ledger_db/production_snapshot": {"group": "ledger_db", "kinds": ["postgres"],
                                              "freshness": "TimeWindowFreshnessPolicy", "fail_window_hours": 6.0},
            "ledger_db/schema_production": {"group": "ledger_db", "kinds": ["postgres"], "freshness": None,
                                            "fail_window_hours": None},
            "shop/production_snapshot": {"group": "shop", "kinds": ["postgres"],
                                         "freshness": "TimeWindowFreshnessPolicy", "fail_window_hours": 24.0},
            "shop/schema_production": {"group": "shop", "kinds": ["postgres"], "freshness": None,
                                       "fail_window_hours": None},
        },
        "checks": {
            "ledger_db/production_snapshot:backup_integrity_verified": {"blocking": True},
            "ledger_db/production_snapshot:restore_drill_within_rto": {"blocking": False},
            "ledger_db/production_snapshot:restore_verified": {"blocking": False},
            "ledger_db/production_snapshot:retention_compliant": {"blocking": False},
            "ledger_db/production_snapshot:rpo_met": {"blocking": False},
            "shop/production_snapshot:backup_integrity_verified": {"blocking": True},
            "shop/production_snapshot:restore_drill_within_rto": {"blocking": False},
            "shop/production_snapshot:restore_verified": {"blocking": False},
            "shop/production_snapshot:retention_compliant": {"blocking": False},
            "shop/production_snapshot:rpo_met": {"blocking": False},
        },
        "jobs": {
            # Retention cleanup: an op job; it reports retention_compliant itself after the sweep.
            "ledger_db_cleanup_job": {"assets": [], "checks": [], "run_tags": {"dbprotect/database": "ledger-db"}},
            "shop_cleanup_job": {"assets": [], "checks": [], "run_tags": {"dbprotect/database": "shop"}},
            "ledger_db_backup_job": {
                "assets": ["ledger_db/production_snapshot"],
                # rpo_met is logged by the integrity op after it records (no race, no key in rpo_met)
                "checks": ["ledger_db/production_snapshot:backup_integrity_verified"],
                "run_tags": {"dbprotect/database": "ledger-db"},
            },
            # Rungs 3 and 4 run apart from the backup job, queued behind it by the database tag.
            "ledger_db_restore_drill_job": {
                "assets": [], "checks": ["ledger_db/production_snapshot:restore_drill_within_rto"],
                "run_tags": {"dbprotect/database": "ledger-db"},
            },
            "ledger_db_restore_verification_job": {
                "assets": [], "checks": ["ledger_db/production_snapshot:restore_verified"],
                "run_tags": {"dbprotect/database": "ledger-db"},
            },
            "restore": {"assets": [], "checks": [], "run_tags": {}},  # op job: the launchpad form
            "rpo_checks_job": {
                "assets": [],  # only checks: the hourly job never takes a backup
                "checks": ["ledger_db/production_snapshot:rpo_met", "shop/production_snapshot:rpo_met"],
                "run_tags": {"dbprotect/database": "ledger-db,shop"},  # a run launched by hand names both
            },
            # retention_compliant once per code-location load (one run per database, by the sensor)
            "retention_checks_job": {
                "assets": [],
                "checks": ["ledger_db/production_snapshot:retention_compliant",
                           "shop/production_snapshot:retention_compliant"],
                "run_tags": {"dbprotect/database": "ledger-db,shop"},  # a run launched by hand names both
            },
            "shop_backup_job": {
                "assets": ["shop/production_snapshot"],
                # rpo_met is logged by the integrity op after it records (no race, no key in rpo_met)
                "checks": ["shop/production_snapshot:backup_integrity_verified"],
                "run_tags": {"dbprotect/database": "shop"},
            },
            "shop_restore_drill_job": {
                "assets": [], "checks": ["shop/production_snapshot:restore_drill_within_rto"],
                "run_tags": {"dbprotect/database": "shop"},
            },
            "shop_restore_verification_job": {
                "assets": [], "checks": ["shop/production_snapshot:restore_verified"],
                "run_tags": {"dbprotect/database": "shop"},
            },
        },
        "schedules": {
            "ledger_db_cleanup_schedule": {"cron": "0 4 * * 0", "job": "ledger_db_cleanup_job",
                                           "status": "RUNNING", "timezone": "Europe/Berlin"},
            "shop_cleanup_schedule": {"cron": "0 4 * * 0", "job": "shop_cleanup_job",
                                      "status": "RUNNING", "timezone": "Europe/Berlin"},
            "ledger_db_backup_schedule": {"cron": "30 1 * * *", "job": "ledger_db_backup_job",
                                          "status": "RUNNING", "timezone": "Europe/Berlin"},
            "ledger_db_restore_drill_schedule": {"cron": "0 3 1 * *", "job": "ledger_db_restore_drill_job",
                                                 "status": "RUNNING", "timezone": "Europe/Berlin"},
            "rpo_checks_schedule": {"cron": "17 * * * *", "job": "rpo_checks_job",
                                    "status": "RUNNING", "timezone": "Europe/Berlin"},
            "shop_backup_schedule": {"cron": "0 2 * * *", "job": "shop_backup_job",
                                     "status": "RUNNING", "timezone": "Europe/Berlin"},
            "shop_restore_drill_schedule": {"cron": "0 3 1 * *", "job": "shop_restore_drill_job",
                                            "status": "RUNNING", "timezone": "Europe/Berlin"},
        },
        "sensors": {
            "ledger_db_restore_after_backup_sensor": {"jobs": ["ledger_db_restore_verification_job"],
                                                      "status": "RUNNING"},
            "shop_restore_after_backup_sensor": {"jobs": ["shop_restore_verification_job"], "status": "RUNNING"},
            # Issue 6: a backup when a new migration file or Alembic revision appears (polling).
            "ledger_db_pre_migration_backup_sensor": {"jobs": ["ledger_db_backup_job"], "status": "RUNNING"},
            "shop_pre_migration_backup_sensor": {"jobs": ["shop_backup_job"], "status": "RUNNING"},
            "retention_on_load_sensor": {"jobs": ["retention_checks_job"], "status": "RUNNING"},
        },
        "resources": ["dbprotect_config", "dbprotect_secrets", "ledger_db_production_postgres",
                      "raw_backup_identity", "shop_production_postgres"],
    }


def test_one_database_defaults(write_config) -> None:
    """Defaults from the configuration: daily 02:00 UTC, RPO 24 h."""
    write_config(SECRET_DSN, deployment="production")
    got = snapshot(load_definitions())
    assert list(got["assets"]) == ["shop/production_snapshot", "shop/schema_production"]
    assert got["assets"]["shop/production_snapshot"]["fail_window_hours"] == 24.0
    assert got["schedules"]["shop_backup_schedule"] == {"cron": "0 2 * * *", "job": "shop_backup_job",
                                                        "status": "RUNNING", "timezone": "UTC"}
    assert sorted(got["jobs"]) == ["restore", "retention_checks_job", "rpo_checks_job", "shop_backup_job",
                                   "shop_cleanup_job", "shop_restore_drill_job", "shop_restore_verification_job"]
    assert got["schedules"]["shop_cleanup_schedule"]["cron"] == "0 4 * * 0"  # weekly, Sunday 04:00


def test_copy_targets_get_a_copy_asset_with_its_check_job_and_sensor(write_config, tmp_path: Path) -> None:
    """Every storage target beyond the primary: [<db>, backup_copy_<target>] downstream of the snapshot."""
    write_config(SECRET_DSN, deployment="production", storage={
        "local": {"type": "filesystem", "path": str(tmp_path / "local")},
        "offsite": {"type": "s3", "bucket": "acme-backups", "prefix": "dbprotect"},
        "cold-disk": {"type": "filesystem", "path": str(tmp_path / "cold")},
    }, extra={"databases": {"shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                                     "storage": ["local", "offsite", "cold-disk"],
                                     "retention": "keep_daily=7, keep_weekly=4",
                                     "cleanup_schedule": "30 5 * * 6"}}})
    defs = load_definitions()
    dg.Definitions.validate_loadable(defs)
    got = snapshot(defs)
    copies = {"shop/backup_copy_cold_disk": ["filesystem"], "shop/backup_copy_offsite": ["s3"]}
    for key, kinds in copies.items():
        assert got["assets"][key] == {"group": "shop", "kinds": kinds, "freshness": None, "fail_window_hours": None}
        assert got["checks"][f"{key}:copy_integrity_verified"] == {"blocking": False}
    assert got["jobs"]["shop_copy_job"] == {
        "assets": sorted(copies), "checks": sorted(f"{key}:copy_integrity_verified" for key in copies),
        "run_tags": {"dbprotect/database": "shop"}}
    assert got["schedules"]["shop_cleanup_schedule"]["cron"] == "30 5 * * 6"
    graph = defs.get_repository_def().asset_graph
    for key in copies:
        node = graph.get(dg.AssetKey.from_user_string(key))
        assert node.parent_keys == {dg.AssetKey(["shop", "production_snapshot"])}
        assert node.automation_condition is not None  # runs after each snapshot whose blocking checks passed
    [sensor] = [s for s in defs.get_repository_def().sensor_defs if s.name == "backup_copies_sensor"]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_a_warm_copy_gets_its_asset_check_job_and_joins_the_copies_sensor(write_config) -> None:
    """``warm_copy`` configured: [<db>, warm_copy] downstream of the snapshot, even with a single store."""
    write_config(SECRET_DSN, deployment="production", extra={"databases": {
        "shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                 "warm_copy": {"dsn_env": "TEST_SHOP_WARM_DSN", "database": "shop_standby"}}}})
    defs = load_definitions()
    dg.Definitions.validate_loadable(defs)
    got = snapshot(defs)
    assert got["assets"]["shop/warm_copy"] == {"group": "shop", "kinds": ["postgres"], "freshness": None,
                                               "fail_window_hours": None}
    assert got["checks"]["shop/warm_copy:warm_copy_verified"] == {"blocking": False}
    assert got["jobs"]["shop_warm_copy_job"] == {"assets": ["shop/warm_copy"],
                                                 "checks": ["shop/warm_copy:warm_copy_verified"],
                                                 "run_tags": {"dbprotect/database": "shop"}}
    assert "shop_copy_job" not in got["jobs"]  # no extra storage target: no copy job
    assert got["sensors"]["backup_copies_sensor"] == {"jobs": [], "status": "RUNNING"}
    graph = defs.get_repository_def().asset_graph
    node = graph.get(dg.AssetKey(["shop", "warm_copy"]))
    assert node.parent_keys == {dg.AssetKey(["shop", "production_snapshot"])}
    assert node.automation_condition is not None


def test_secrets_are_env_var_references_never_values(write_config, age_keys: tuple[str, str]) -> None:
    write_config(SECRET_DSN, deployment="production")
    defs = load_definitions()
    postgres = defs.resources["shop_production_postgres"]
    identity = defs.resources["raw_backup_identity"]
    assert isinstance(postgres, PostgresResource) and isinstance(identity, AgeIdentityResource)
    assert isinstance(postgres.dsn, dg.EnvVar) and postgres.dsn.env_var_name == "TEST_SHOP_PROD_DSN"
    assert isinstance(identity.identity, dg.EnvVar) and identity.identity.env_var_name == "TEST_RAW_IDENTITY"
    everything = repr(defs.resources) + repr(snapshot(defs))
    assert "s3cret-prod-password" not in everything and age_keys[0] not in everything


def test_development_deployment_holding_the_production_dsn_refuses_to_load(
        write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(SECRET_DSN, deployment="development")
    monkeypatch.delenv("TEST_RAW_IDENTITY")  # isolate the DSN rule from the identity rule
    for load in (load_definitions, dbprotect.defs.defs):  # the function, and what Dagster calls
        with pytest.raises(CredentialIsolationError) as caught:
            load()
        message = caught.value.one_line()
        assert "$TEST_SHOP_PROD_DSN" in message
        assert "s3cret-prod-password" not in message and SECRET_DSN not in message
        assert "TEST_SHOP_PROD_DSN" in (caught.value.hint or "")


def test_development_deployment_defines_no_production_snapshot(write_config,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(None, deployment="development")
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    defs = load_definitions()
    dg.Definitions.validate_loadable(defs)
    # the development schema snapshot (issue 6) reads the development DSN only
    assert snapshot(defs) == {"assets": {"shop/schema_development": {"group": "shop", "kinds": ["postgres"],
                                                                     "freshness": None, "fail_window_hours": None}},
                              "checks": {}, "jobs": {}, "schedules": {}, "sensors": {},
                              "resources": ["dbprotect_config", "dbprotect_secrets"]}


def test_missing_configuration_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "dbprotect.yaml"
    monkeypatch.setenv("DBPROTECT_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="configuration file not found") as caught:
        dbprotect.defs.defs()
    assert str(missing) in caught.value.one_line()


def test_build_definitions_is_pure(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building reads no secret: with every variable unset it gives the same definitions."""
    from dbprotect.core.config.load import load_config

    config = load_config(write_config(SECRET_DSN, deployment="production"))
    with_env = snapshot(build_definitions(config))
    for name in ("TEST_SHOP_PROD_DSN", "TEST_RAW_IDENTITY", "DBPROTECT_CONFIG"):
        monkeypatch.delenv(name)
    assert snapshot(build_definitions(config)) == with_env


@pytest.mark.slow
@pytest.mark.parametrize("deployment", ["production", "development"])
def test_dagster_loads_the_code_location_from_workspace_yaml(write_config, tmp_path: Path, deployment: str) -> None:
    """What `dagster dev -w workspace.yaml` does first, through Dagster's own CLI and loader.

    A production deployment loads; a development deployment that sees the production DSN is
    refused by Dagster's loader with the core error, naming the variable, not the value.
    DAGSTER_HOME points at an empty folder (Dagster's default local storage): without it, Dagster's
    CLI reads ./dagster.yaml, the deployment's PostgreSQL storage, which needs DAGSTER_PG_*.
    """
    path = write_config(SECRET_DSN, deployment=deployment)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DBPROTECT_CONFIG": str(path), "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).with_name("dagster")
    out = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    output = out.stdout + out.stderr
    assert "s3cret-prod-password" not in output
    if deployment == "production":
        assert out.returncode == 0, output
    else:
        assert out.returncode != 0
        assert "CredentialIsolationError: development deployment refuses to load: $TEST_SHOP_PROD_DSN" in output


def test_dagster_yaml_keeps_dagster_storage_in_postgres_from_environment() -> None:
    doc = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    assert doc["storage"]["postgres"]["postgres_db"] == {
        "username": {"env": "DAGSTER_PG_USERNAME"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": {"env": "DAGSTER_PG_HOST"}, "db_name": {"env": "DAGSTER_PG_DB"}, "port": 5432,
    }
    limits = doc["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "dbprotect/database", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    # Dagster's own instance schema accepts the file (validation only: nothing connects).
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(REPO), "dagster.yaml")
    assert "run_coordinator" not in config  # its limits beside `concurrency:` are refused by Dagster
    assert config["concurrency"]["pools"] == {"default_limit": 1}


def test_dagster_yaml_gives_each_database_pool_a_limit_of_one_and_queues_runs_per_database(tmp_path: Path) -> None:
    """The deployment's instance, built by Dagster from dagster.yaml (storage swapped for a local one)."""
    from dagster._core.instance import InstanceRef

    doc = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    doc.pop("storage")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert {"key": "dbprotect/database", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} \
            in concurrency.run_queue_config.tag_concurrency_limits
        info = instance.event_log_storage.get_concurrency_info("dbprotect/shop")
        assert info.limit == 1


SANITIZED_SHOP = {"shop": {**TWO_DATABASES["shop"],
                           "sanitize": {"rules": "masking.yaml", "hmac_key_env": "TEST_SHOP_MASKING_KEY"}}}


@pytest.mark.parametrize("deployment", ["production", "development"])
def test_sanitize_domain_splits_between_production_and_development(write_config, other_age_keys: tuple[str, str],
                                                                   age_keys: tuple[str, str], deployment: str) -> None:
    """Production builds and checks the sanitized copy; development promotes it (sensor off by default)."""
    keys = {"raw": {"recipients": [age_keys[1]], "identity_env": "TEST_RAW_IDENTITY"},
            "development": {"recipients": [other_age_keys[1]], "identity_env": "TEST_DEV_IDENTITY"}}
    write_config(None, deployment=deployment, extra={"databases": SANITIZED_SHOP, "keys": keys})
    if deployment == "development":
        os.environ.pop("TEST_RAW_IDENTITY", None)
    shot = snapshot(build_definitions(dbprotect.core.config.load.load_config()))
    sanitize_checks = {name: value for name, value in shot["checks"].items() if name.startswith("shop/sanitized_copy")}
    if deployment == "production":
        assert shot["assets"]["shop/sanitized_copy"]["group"] == "shop"
        assert sanitize_checks == {f"shop/sanitized_copy:{name}": {"blocking": True}
                                   for name in ("constraints_hold", "no_pii_leaked", "row_counts_match")}
        assert shot["jobs"]["shop_sanitize_job"]["assets"] == ["shop/sanitized_copy"]
        assert "shop_masking_key" in shot["resources"] and "promote_dev_copy" not in shot["jobs"]
    else:
        assert not sanitize_checks and "shop_sanitize_job" not in shot["jobs"]
        assert shot["sensors"]["shop_promote_dev_copy_sensor"] == {"jobs": ["promote_dev_copy"], "status": "STOPPED"}
        assert "shop_masking_key" not in shot["resources"]


def test_launchpad_texts_are_plain_markdown_and_the_restore_form_is_valid_as_it_opens(write_config,
                                                                                    monkeypatch) -> None:
    """What the restore launchpad shows: resource and field descriptions without reStructuredText
    markup (the UI renders Markdown), and with one database a form that is valid without edits."""
    monkeypatch.setenv("TEST_SHOP_PROD_DSN", SECRET_DSN)
    write_config(None, deployment="production")
    defs = load_definitions()
    for key, resource in (defs.resources or {}).items():
        assert "``" not in (type(resource).__doc__ or ""), key
    job = defs.resolve_job_def("restore")
    # The form's defaults alone make a valid run config: Launch is enabled as the launchpad opens.
    assert job.run_config_schema.config_type is not None
    assert process_config(job.run_config_schema.config_type, {}).success
    form = restore_config_class(["shop"])
    for name, field in form.model_fields.items():
        assert "``" not in (field.description or ""), name
    # Several databases: an enum of them, no default (the person chooses).
    many = restore_config_class(["shop", "ledger-db"]).model_json_schema()
    assert "default" not in many["properties"]["database"]
    assert set(many["$defs"]["ConfiguredDatabase"]["enum"]) == {"shop", "ledger-db"}
