"""One secret channel in Dagster: resources hand secrets to core as arguments, never via os.environ.

The restore launchpad shows only the restore's own form (no ``resources:`` block of identity
plumbing), and a run whose identity reaches it only through the resource (``os.environ`` holding
no identity, or a wrong one) backs up, verifies, restores into a scratch database and plans a
restore, leaving ``os.environ`` exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import dagster as dg
import pytest
from dagster._core.snap import JobSnap
from dagster_graphql.schema.run_config import default_values_yaml_from_type_snap

import dbprotect.defs
from dbprotect.defs import load_definitions
from dbprotect.defs.names import INTEGRITY_CHECK, RESTORE_JOB, restore_verification_job_name
from dbprotect.defs.resources import IDENTITY_RESOURCE, AgeIdentityResource, PostgresResource, build_resources

ROWS_SQL = ("CREATE TABLE item (id int PRIMARY KEY, name text); "
            "INSERT INTO item SELECT g, 'n' || g FROM generate_series(1, 50) g;")


def launchpad_default_yaml(job: dg.JobDefinition) -> str:
    """What the launchpad's editor holds as it opens: the same function the webserver's GraphQL uses."""
    snap = JobSnap.from_job_def(job)
    schema = snap.config_schema_snapshot
    root = schema.get_config_snap(snap.mode_def_snaps[0].root_config_key)
    return default_values_yaml_from_type_snap(schema, root)


def test_restore_launchpad_holds_only_the_restore_form(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SHOP_PROD_DSN", "postgresql://u:s3cret@db.internal/shop")
    write_config(None, deployment="production")
    defs = load_definitions()
    text = launchpad_default_yaml(defs.resolve_job_def(RESTORE_JOB))
    assert "resources" not in text and "identity" not in text and "env" not in text.replace("environment", "")
    assert "database: shop" in text and "target: new_database" in text
    # The jobs that decrypt or connect take their secrets the same way: no resource config in their forms.
    for name in (restore_verification_job_name("shop"), "shop_backup_job"):
        assert "resources" not in launchpad_default_yaml(defs.resolve_job_def(name)), name


def test_identity_resource_never_shows_a_value(age_keys: tuple[str, str]) -> None:
    given = AgeIdentityResource(identity=age_keys[0], identity_env="TEST_RAW_IDENTITY")
    assert age_keys[0] not in repr(given) and "TEST_RAW_IDENTITY" in repr(given)
    assert str(given.parsed().to_public()) == age_keys[1]


@pytest.fixture
def identity_only_in_resource(monkeypatch: pytest.MonkeyPatch, age_keys: tuple[str, str]) -> Callable[[], None]:
    """Definitions whose raw-backup identity is the key itself, handed to the resource (as a secret
    store would), so that nothing in ``os.environ`` can decrypt."""

    def resources_with_the_key(config):  # type: ignore[no-untyped-def]
        resources = build_resources(config)
        resources[IDENTITY_RESOURCE] = AgeIdentityResource(identity=age_keys[0], identity_env="TEST_RAW_IDENTITY")
        return resources

    def install() -> None:
        monkeypatch.setattr(dbprotect.defs, "build_resources", resources_with_the_key)

    return install


@pytest.mark.slow
@pytest.mark.parametrize("environ_identity", ["absent", "wrong key"])
def test_a_run_takes_the_identity_from_its_resource_and_leaves_os_environ_alone(
        environ_identity: str, write_config, make_db, identity_only_in_resource, other_age_keys,
        monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> None:
    write_config(make_db(ROWS_SQL), deployment="production")
    if environ_identity == "absent":
        monkeypatch.delenv("TEST_RAW_IDENTITY")
    else:  # a key that opens nothing: a core that read os.environ instead of the argument would fail
        monkeypatch.setenv("TEST_RAW_IDENTITY", other_age_keys[0])
    identity_only_in_resource()
    defs = load_definitions()
    before = dict(os.environ)

    backup = defs.resolve_job_def("shop_backup_job").execute_in_process(instance=instance)
    assert backup.success
    [integrity] = [e for e in backup.get_asset_check_evaluations() if e.check_name == INTEGRITY_CHECK]
    assert integrity.passed, integrity.description
    verified = defs.resolve_job_def(restore_verification_job_name("shop")).execute_in_process(instance=instance)
    assert verified.success
    assert all(e.passed for e in verified.get_asset_check_evaluations()), verified.get_asset_check_evaluations()
    planned = defs.resolve_job_def(RESTORE_JOB).execute_in_process(
        instance=instance, run_config={"ops": {"restore_backup": {"config": {"dry_run": True}}}})
    assert planned.success

    assert dict(os.environ) == before


@pytest.mark.slow
def test_without_the_key_in_the_resource_the_integrity_check_fails(write_config, make_db,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  instance: dg.DagsterInstance) -> None:
    """The counter-test: the default resource reads its ``EnvVar``; with the variable unset, no check passes."""
    write_config(make_db(ROWS_SQL), deployment="production")
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    result = load_definitions().resolve_job_def("shop_backup_job").execute_in_process(instance=instance,
                                                                                       raise_on_error=False)
    passed = [e for e in result.get_asset_check_evaluations() if e.check_name == INTEGRITY_CHECK and e.passed]
    assert not passed and not result.success


@pytest.mark.slow
def test_the_backup_takes_its_dsn_from_the_resource(write_config, make_db, monkeypatch: pytest.MonkeyPatch,
                                                    instance: dg.DagsterInstance) -> None:
    """The production DSN given only to its resource: the backup connects with it, os.environ untouched."""
    dsn = make_db(ROWS_SQL)
    write_config(dsn, deployment="production")
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")

    def resources_with_the_dsn(config):  # type: ignore[no-untyped-def]
        return {**build_resources(config), "shop_production_postgres": PostgresResource(dsn=dsn)}

    monkeypatch.setattr(dbprotect.defs, "build_resources", resources_with_the_dsn)
    before = dict(os.environ)
    result = load_definitions().resolve_job_def("shop_backup_job").execute_in_process(instance=instance)
    assert result.success
    assert dict(os.environ) == before and "TEST_SHOP_PROD_DSN" not in os.environ
