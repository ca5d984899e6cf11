"""The verification code location of a split deployment (``deployment: verification``).

Why a third location: the production location of a split deployment holds public keys only
(``keys.raw.held_in: verification``), so it can check that a backup is *stored* but never that it
is *readable*. This location holds the raw identity and nothing to connect to a protected
database with (credential isolation refuses any DSN here), and defines only:

- ``<db>_readability_job``: rungs *stored* and *readable* on one backup (default: the newest).
  Core records the result in the store, and the run logs it as an evaluation of the production
  location's ``backup_integrity_verified`` check, so the production asset shows the verdict.
- ``<db>_readability_sensor``: one such run per new backup it sees in the store (run key: the
  backup id, so a backup is verified once), running by default: a backup nobody proved readable
  is the one that fails on the day it is needed.

The production location's check then reads the recorded *readable* result; until one exists it
reports nothing (skipped), never a pass.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.ops import list_database_backups, verify_database_backup
from dbprotect.defs.backups.checks import integrity_check_key, integrity_metadata
from dbprotect.defs.helpers import core_errors_as_failures
from dbprotect.defs.names import DATABASE_TAG, dagster_actor, dagster_name, database_pool
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource

#: How often the sensor lists the store for a new backup: a LIST per database, cheap.
READABILITY_INTERVAL_SECONDS = 300


def verified_databases(config: Config) -> list[str]:
    """Databases whose production backups this verification location reads, sorted."""
    return sorted(name for name, spec in config.databases.items() if "production" in spec.environments)


def readability_job_name(database: str) -> str:
    return f"{dagster_name(database)}_readability_job"


def readability_sensor_name(database: str) -> str:
    return f"{dagster_name(database)}_readability_sensor"


def readability_op_name(database: str) -> str:
    return f"{dagster_name(database)}_verify_readability"


class ReadabilityConfig(dg.Config):
    """Launchpad form: which backup to read (empty: the newest)."""

    backup_id: str = ""


def build_readability_job(database: str) -> dg.JobDefinition:
    @dg.op(name=readability_op_name(database), pool=database_pool(database),
           description=f"Rungs stored and readable on one backup of {database!r}, recorded in the store and "
           "logged as the production location's backup_integrity_verified.")
    def verify_readability(context: dg.OpExecutionContext, config: ReadabilityConfig,
                           dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                           raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                           dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> None:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            report = verify_database_backup(dbprotect_config.load(), database, config.backup_id or None,
                                            identity=raw_backup_identity.parsed(), by=actor, actor=actor,
                                            environ=dbprotect_secrets.environ())
        key = integrity_check_key(database)
        context.log_event(dg.AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=key.name, passed=report.ok,
            description=f"{report.backup_id}: {report.summary()} (verification location)",
            metadata=integrity_metadata(report)))
        context.log.info(f"{database} {report.backup_id}: {report.summary()}")

    @dg.job(name=readability_job_name(database), tags={DATABASE_TAG: database},
            description=f"Prove a backup of {database!r} readable with the raw identity (this location only).")
    def readability_job() -> None:
        verify_readability()

    return readability_job


def build_readability_sensor(database: str) -> dg.SensorDefinition:
    """Targets the job by name: a job object here would be re-bound to its resources by Dagster
    (``with_updated_jobs``), which sets a beta parameter and warns (an error in our tests)."""

    @dg.sensor(name=readability_sensor_name(database), job_name=readability_job_name(database),
               minimum_interval_seconds=READABILITY_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Verify each new backup of {database!r} readable, once (run key: the backup id).")
    def readability_sensor(context: dg.SensorEvaluationContext,
                           dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                           dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.SensorResult:
        with core_errors_as_failures():
            listing = list_database_backups(dbprotect_config.load(), database, environ=dbprotect_secrets.environ())
        if not listing.entries:
            return dg.SensorResult(skip_reason=f"{database}: no backup in {listing.storage_uri} yet",
                                   cursor=context.cursor)
        newest = listing.entries[0].backup_id
        if newest == context.cursor:
            return dg.SensorResult(skip_reason=f"{database}: backup {newest} already requested", cursor=newest)
        request = dg.RunRequest(
            run_key=f"readability-{database}-{newest}", tags={DATABASE_TAG: database},
            run_config={"ops": {readability_op_name(database): {"config": {"backup_id": newest}}}})
        return dg.SensorResult(run_requests=[request], cursor=newest)

    return readability_sensor


def build_verification_definitions(config: Config) -> dg.Definitions:
    """The jobs and sensors of a verification deployment; nothing for any other deployment."""
    if config.deployment != "verification":
        return dg.Definitions()
    jobs, sensors = [], []
    for database in verified_databases(config):
        jobs.append(build_readability_job(database))
        sensors.append(build_readability_sensor(database))
    return dg.Definitions(jobs=jobs, sensors=sensors)


__all__ = ["build_verification_definitions", "readability_job_name", "readability_sensor_name",
           "verified_databases"]
