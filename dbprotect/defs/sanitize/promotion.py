"""Promotion on the development side: the ``promote_dev_copy`` job and one sensor per database.

The sensor launches the job when a sanitized copy newer than the last one it promoted exists and
its lineage records a pass for every blocking check; it is stopped, and skips with a sentence,
unless ``sanitize.promote: true`` (automatic sync is off by default, seed 000). The job is also
the manual path from the launchpad: it refuses unless ``confirm`` is ticked, and core refuses a
copy whose checks did not all pass, and a development database whose environment marker is not
``development``.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from typing import Any

import dagster as dg
from pydantic import Field

from dbprotect.core.config.model import Config
from dbprotect.core.ops import primary_store, promote_dev_copy
from dbprotect.core.sanitize.promote import newest_promotable
from dbprotect.defs.helpers import core_errors_as_failures, numeric_metadata
from dbprotect.defs.names import dagster_name
from dbprotect.defs.resources import (
    CONFIG_RESOURCE,
    SECRETS_RESOURCE,
    AgeIdentityResource,
    DbprotectConfigResource,
    SecretsResource,
)

PROMOTE_JOB = "promote_dev_copy"
#: The op takes this resource as its ``development_identity`` parameter (Dagster binds by name).
DEV_IDENTITY_RESOURCE = "development_identity"


def promote_sensor_name(database: str) -> str:
    return f"{dagster_name(database)}_promote_dev_copy_sensor"


def development_identity_resources(config: Config) -> dict[str, object]:
    assert config.keys.development is not None
    env = config.keys.development.identity_env
    return {DEV_IDENTITY_RESOURCE: AgeIdentityResource(identity=dg.EnvVar(env), identity_env=env)}


class PromoteConfig(dg.Config):
    """The launchpad form of ``promote_dev_copy``."""

    database: str = Field(description="The configured database whose sanitized copy is promoted.")
    confirm: bool = Field(default=False, description="Replace the development database (after a safety backup).")
    artifact_id: str | None = Field(default=None, description="The sanitized copy; empty: the newest that passed "
                                    "every blocking check.")


def build_promote_job(config: Config, databases: list[str]) -> dg.JobDefinition:
    @dg.op(
        name="promote_sanitized_copy",
        out=dg.Out(dict, description="What was promoted, as plain values."),
        description=f"Restore a sanitized copy ({', '.join(databases)}) into its development database.",
    )
    def promote_sanitized_copy(context: dg.OpExecutionContext, config: PromoteConfig,
                               dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                               development_identity: dg.ResourceParam[AgeIdentityResource],
                               dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.Output:
        with core_errors_as_failures():
            result: Any = promote_dev_copy(dbprotect_config.load(), config.database, confirmed=config.confirm,
                                           artifact_id=(config.artifact_id or "").strip() or None,
                                           identity=development_identity.parsed(),
                                           environ=dbprotect_secrets.environ(),
                                           by=f"dagster:{PROMOTE_JOB}:{context.run_id[:8]}")
        value = {"database": config.database, "artifact_id": result.plan.backup_id,
                 "development_database": result.target_database, "safety_backup_id": result.safety_backup_id}
        return dg.Output(value, metadata={"artifact_id": dg.MetadataValue.text(result.plan.backup_id),
                                          "development_database": dg.MetadataValue.text(result.target_database),
                                          **numeric_metadata(result.metrics())})

    # Resources bound on the job itself: the sensor then targets a complete job, which Dagster need
    # not rebuild when it attaches the code location's resources.
    @dg.job(name=PROMOTE_JOB, resource_defs=_job_resources(config),
            description="Promote a sanitized copy that passed its blocking checks into development.")
    def promote_dev_copy_job() -> None:
        promote_sanitized_copy()

    return promote_dev_copy_job


def _job_resources(config: Config) -> dict[str, Any]:
    return {CONFIG_RESOURCE: DbprotectConfigResource.of(config), SECRETS_RESOURCE: SecretsResource.of(config),
            **development_identity_resources(config)}


def build_promote_sensor(config: Config, database: str, job: dg.JobDefinition) -> dg.SensorDefinition:
    spec = config.databases[database].sanitize
    assert spec is not None
    enabled = spec.promote

    @dg.sensor(
        name=promote_sensor_name(database), job=job, minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Promote each new sanitized copy of {database!r} that passed every blocking check into the "
        "development database (only with sanitize.promote: true).",
    )
    def promote_new_copy(context: dg.SensorEvaluationContext,
                         dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.SensorResult | dg.SkipReason:
        if not enabled:
            return dg.SkipReason(f"promotion of {database!r} is off: set databases.{database}.sanitize.promote: true")
        found = newest_promotable(primary_store(config, database, dbprotect_secrets.environ()), database)
        if found.artifact_id is None:
            return dg.SkipReason(found.reason)
        if found.artifact_id == context.cursor:
            return dg.SkipReason(f"sanitized copy {found.artifact_id} is already promoted")
        request = dg.RunRequest(run_key=f"promote-{database}-{found.artifact_id}", run_config={"ops": {
            "promote_sanitized_copy": {"config": {"database": database, "confirm": True,
                                                  "artifact_id": found.artifact_id}}}})
        return dg.SensorResult(run_requests=[request], cursor=found.artifact_id)

    return promote_new_copy
