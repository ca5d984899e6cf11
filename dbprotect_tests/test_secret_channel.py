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
from dbprotect.core.errors import ConfigError
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.store import S3Storage
from dbprotect.core.store.s3 import s3_credentials_from_env
from dbprotect.defs import load_definitions
from dbprotect.defs.names import (
    INTEGRITY_CHECK,
    RESTORE_JOB,
    WARM_COPY_CHECK,
    pre_migration_sensor_name,
    restore_verification_job_name,
    warm_copy_job_name,
)
from dbprotect.defs.resources import (
    IDENTITY_RESOURCE,
    SECRETS_RESOURCE,
    AgeIdentityResource,
    PostgresResource,
    SecretsResource,
    build_resources,
)
from dbprotect_tests.fixtures.fix_pg import table_counts
from dbprotect_tests.fixtures.fix_storage import create_bucket

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


WARM_VAR = "TEST_SHOP_WARM_DSN"
SCRATCH_VAR = "TEST_SCRATCH_ADMIN_DSN"


def test_the_secrets_resource_names_every_connection_variable_and_shows_no_value(
        write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DSN variable the configuration names for this deployment, read only when asked, values never shown."""
    monkeypatch.setenv(WARM_VAR, "postgresql://u:warm-s3cret@backup/shop_warm")
    monkeypatch.delenv(SCRATCH_VAR, raising=False)
    write_config("postgresql://u:prod-s3cret@db/shop", deployment="production",
                 extra={"scratch": {"admin_dsn_env": SCRATCH_VAR}, "databases": {"shop": {"environments": {
                     "production": {"dsn_env": "TEST_SHOP_PROD_DSN"}, "development": {"dsn_env": "TEST_SHOP_DEV_DSN"}},
                     "warm_copy": {"dsn_env": WARM_VAR}}}})
    secrets = load_definitions().resources[SECRETS_RESOURCE]
    assert isinstance(secrets, SecretsResource)
    # A production deployment may not reach development: that variable is not even named.
    assert set(secrets.values) == {"TEST_SHOP_PROD_DSN", WARM_VAR, SCRATCH_VAR}
    assert "s3cret" not in repr(secrets)
    # Unset variables are left out (core then names the one a run lacks); the rest read now.
    assert secrets.environ() == {"TEST_SHOP_PROD_DSN": "postgresql://u:prod-s3cret@db/shop",
                                 WARM_VAR: "postgresql://u:warm-s3cret@backup/shop_warm"}
    monkeypatch.setenv(WARM_VAR, "postgresql://u:rotated@backup/shop_warm")
    assert secrets.environ()[WARM_VAR].endswith("rotated@backup/shop_warm")  # never cached at load


S3_KEY_VAR, S3_SECRET_VAR = "TEST_S3_ACCESS_KEY", "TEST_S3_SECRET_KEY"


def _no_aws_variables() -> list[str]:
    return sorted(name for name in os.environ if name.startswith("AWS_"))


@pytest.mark.slow
def test_backup_verification_warm_copy_and_restore_take_every_secret_from_resources(
        write_config, make_db, pg, age_keys: tuple[str, str], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
        instance: dg.DagsterInstance) -> None:
    """The production DSN, the scratch server's admin DSN, the warm copy's DSN, the identity and the S3
    store's access keys reach the runs only through their resources; ``os.environ`` holds none of
    them (and no ``AWS_*`` variable boto3 could fall back on), before or after."""
    source = make_db(ROWS_SQL, prefix="shop")
    warm_name, restored = f"{dbname_of(source)}_warm", f"{dbname_of(source)}_restored"
    bucket = create_bucket(s3_endpoint)  # with the fixture's own credentials, before they are taken away
    given = {"TEST_SHOP_PROD_DSN": source, WARM_VAR: pg.dsn(warm_name), SCRATCH_VAR: pg.admin_dsn,
             S3_KEY_VAR: "testing", S3_SECRET_VAR: "testing-s3cret"}
    write_config(source, deployment="production", storage={"remote": {
        "type": "s3", "bucket": bucket, "prefix": "raw", "region": "us-east-1", "endpoint_url": s3_endpoint,
        "access_key_env": S3_KEY_VAR, "secret_key_env": S3_SECRET_VAR}}, extra={
        "scratch": {"admin_dsn_env": SCRATCH_VAR},
        "databases": {"shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                               "warm_copy": {"dsn_env": WARM_VAR}, "storage": ["remote"]}}})
    for name in (*given, "TEST_RAW_IDENTITY", *_no_aws_variables()):
        monkeypatch.delenv(name, raising=False)
    assert _no_aws_variables() == []

    def resources_holding_the_values(config):  # type: ignore[no-untyped-def]
        return {**build_resources(config), SECRETS_RESOURCE: SecretsResource(dict(given)),
                IDENTITY_RESOURCE: AgeIdentityResource(identity=age_keys[0], identity_env="TEST_RAW_IDENTITY"),
                "shop_production_postgres": PostgresResource(dsn=source)}

    monkeypatch.setattr(dbprotect.defs, "build_resources", resources_holding_the_values)
    defs = load_definitions()
    before = dict(os.environ)
    try:
        assert defs.resolve_job_def("shop_backup_job").execute_in_process(instance=instance).success
        verified = defs.resolve_job_def(restore_verification_job_name("shop")).execute_in_process(instance=instance)
        assert verified.success
        evaluations = verified.get_asset_check_evaluations()
        assert evaluations and all(e.passed for e in evaluations), evaluations
        warm = defs.resolve_job_def(warm_copy_job_name("shop")).execute_in_process(instance=instance)
        assert warm.success
        [warm_check] = [e for e in warm.get_asset_check_evaluations() if e.check_name == WARM_COPY_CHECK]
        assert warm_check.passed, warm_check.description
        assert table_counts(pg.dsn(warm_name)) == table_counts(source)
        restore = defs.resolve_job_def(RESTORE_JOB).execute_in_process(
            instance=instance, run_config={"ops": {"restore_backup": {"config": {
                "database": "shop", "target_database": restored}}}})
        assert restore.success
        assert table_counts(pg.dsn(restored)) == table_counts(source) and sum(table_counts(source).values()) == 50
        assert dict(os.environ) == before and _no_aws_variables() == []
        # The backups really are on S3: the store, opened with the keys given here, lists them.
        store = S3Storage(bucket, "raw", endpoint_url=s3_endpoint, region="us-east-1",
                          access_key="testing", secret_key="testing-s3cret")
        assert any(info.key.startswith("shop/") for info in store.list("shop/"))

        # The counter-tests: the code location's own secrets resource reads os.environ's variables
        # (EnvVar); without them a run names the missing one and fails: nothing else supplied it.
        def failure(without: str) -> str:
            lacking = SecretsResource({name: value for name, value in given.items() if name != without})
            monkeypatch.setattr(dbprotect.defs, "build_resources", lambda config: {
                **resources_holding_the_values(config), SECRETS_RESOURCE: lacking})
            failed = load_definitions().resolve_job_def(warm_copy_job_name("shop")).execute_in_process(
                instance=instance, raise_on_error=False)
            assert not failed.success
            return str(failed.get_step_failure_events()[0].event_specific_data.error)

        assert f"${WARM_VAR} is not set" in failure(WARM_VAR)
        # No S3 key in the resource: a one-line error naming it, not boto3's chain reading os.environ.
        assert f"${S3_KEY_VAR} is not set" in failure(S3_KEY_VAR)
        assert f"${S3_SECRET_VAR} is not set" in failure(S3_SECRET_VAR)
        monkeypatch.setattr(dbprotect.defs, "build_resources", lambda config: {
            **resources_holding_the_values(config), SECRETS_RESOURCE: build_resources(config)[SECRETS_RESOURCE]})
        failed = load_definitions().resolve_job_def("shop_backup_job").execute_in_process(
            instance=instance, raise_on_error=False)
        assert not failed.success and f"${S3_KEY_VAR} is not set" in str(
            failed.get_step_failure_events()[0].event_specific_data.error)
        assert dict(os.environ) == before
    finally:
        for name in (warm_name, f"{warm_name}__incoming", restored):
            pg.drop_database(name)


def test_s3_credentials_are_read_from_the_mapping_given_never_from_os_environ(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(S3_KEY_VAR, "from-os-environ")
    monkeypatch.setenv(S3_SECRET_VAR, "from-os-environ")
    given = {S3_KEY_VAR: "given-key", S3_SECRET_VAR: "given-secret"}
    assert s3_credentials_from_env(S3_KEY_VAR, S3_SECRET_VAR, given) == ("given-key", "given-secret")
    with pytest.raises(ConfigError, match=rf"\${S3_SECRET_VAR} is not set"):
        s3_credentials_from_env(S3_KEY_VAR, S3_SECRET_VAR, {S3_KEY_VAR: "given-key"})
    # The CLI's channel, unchanged: no mapping given reads the process environment.
    assert s3_credentials_from_env(S3_KEY_VAR, S3_SECRET_VAR) == ("from-os-environ", "from-os-environ")
    assert s3_credentials_from_env(None, None, {}) == (None, None)  # none named: boto3's own chain


def test_the_secrets_resource_names_the_s3_credentials_and_a_development_location_its_identity(
        write_config, monkeypatch: pytest.MonkeyPatch, age_keys: tuple[str, str],
        other_age_keys: tuple[str, str]) -> None:
    s3 = {"type": "s3", "bucket": "bucket", "endpoint_url": "http://127.0.0.1:9", "access_key_env": S3_KEY_VAR,
          "secret_key_env": S3_SECRET_VAR}
    write_config("postgresql://u:p@db/shop", deployment="production", storage={"remote": s3})
    assert {S3_KEY_VAR, S3_SECRET_VAR} <= set(load_definitions().resources[SECRETS_RESOURCE].values)
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    monkeypatch.setenv("TEST_SHOP_DEV_DSN", "postgresql://u:p@devdb/shop")
    write_config(None, deployment="development", storage={"remote": s3},
                 extra={"keys": {"raw": {"recipients": [age_keys[1]], "identity_env": "TEST_RAW_IDENTITY"},
                                 "development": {"recipients": [other_age_keys[1]],
                                                 "identity_env": "TEST_DEV_IDENTITY"}}})
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    names = set(load_definitions().resources[SECRETS_RESOURCE].values)
    assert names == {"TEST_SHOP_DEV_DSN", "TEST_DEV_IDENTITY", S3_KEY_VAR, S3_SECRET_VAR}


@pytest.mark.slow
def test_the_pre_migration_sensor_takes_the_production_dsn_from_the_secrets_resource(
        write_config, make_db, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> None:
    """The sensor reads production's Alembic revision with the DSN its resource holds; os.environ has none."""
    dsn = make_db("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY); "
                  "INSERT INTO alembic_version VALUES ('rev_in_production')")
    write_config(dsn, deployment="production")
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")
    monkeypatch.setattr(dbprotect.defs, "build_resources", lambda config: {
        **build_resources(config), SECRETS_RESOURCE: SecretsResource({"TEST_SHOP_PROD_DSN": dsn})})
    defs = load_definitions()
    sensor = defs.get_sensor_def(pre_migration_sensor_name("shop"))
    before = dict(os.environ)
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs,
                                                         resources=defs.resources))
    assert first.run_requests == [] and "rev_in_production" in (first.cursor or "")
    assert dict(os.environ) == before

    # The counter-test: the location's own resource reads the (unset) variable; the sensor names it.
    monkeypatch.setattr(dbprotect.defs, "build_resources", build_resources)
    defs = load_definitions()
    with pytest.raises(Exception, match=r"\$TEST_SHOP_PROD_DSN is not set"):
        defs.get_sensor_def(pre_migration_sensor_name("shop")).evaluate_tick(
            dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources))
