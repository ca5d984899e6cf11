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

- ``<db>_restore_verification_job`` / ``<db>_restore_after_backup_sensor``: rung 3 (restore into a
  scratch database, verify by content) once per new backup; ``<db>_restore_drill_job`` on the
  database's ``drill_schedule``: the drill. Both need the identity and a *scratch* server
  (``scratch.admin_dsn_env``, the admin DSN of a server that holds nothing else, never the
  production DSN; without it, an embedded server in the container), so they run here. Core records
  each result in the store (rungs *restored* and *drilled*), and the run logs it as an evaluation
  of the production location's ``restore_verified`` / ``restore_drill_within_rto``.
- The warm copy (:mod:`dbprotect.defs.copies`): it decrypts, so it is defined here, with the warm
  copy's (backup server's) DSN, and still no production DSN.

The production location's checks then read the recorded results; until one exists each reports
nothing (skipped), never a pass.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import dagster as dg

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.model import Config
from dbprotect.core.ops import (
    drill_database,
    list_database_backups,
    primary_store,
    restore_verify_database,
    verify_database_backup,
)
from dbprotect.defs.backups.checks import integrity_check_key, integrity_metadata
from dbprotect.defs.helpers import core_errors_as_failures, phase_logger
from dbprotect.defs.names import (
    DATABASE_TAG,
    dagster_actor,
    dagster_name,
    database_pool,
    drill_job_name,
    drill_schedule_name,
    restore_verification_job_name,
    restore_verification_sensor_name,
)
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource
from dbprotect.defs.restores.checks import drill_check_key, drill_metadata, restore_check_key, verification_metadata

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


def restore_verification_op_name(database: str) -> str:
    return f"{dagster_name(database)}_restore_verify"


def drill_op_name(database: str) -> str:
    return f"{dagster_name(database)}_restore_drill"


def build_restore_verification_job(database: str) -> dg.JobDefinition:
    @dg.op(name=restore_verification_op_name(database), pool=database_pool(database),
           description=f"Rung 3 on one backup of {database!r} (default: the newest): restored into a scratch "
           "database and verified by content; recorded in the store and logged as the production location's "
           "restore_verified.")
    def restore_verify(context: dg.OpExecutionContext, config: ReadabilityConfig,
                       dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                       raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                       dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> None:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            loaded, environ = dbprotect_config.load(), dbprotect_secrets.environ()
            verification = restore_verify_database(
                loaded, database, config.backup_id or None, by=actor, identity=raw_backup_identity.parsed(),
                audit=AuditLog(primary_store(loaded, database, environ), actor=actor), environ=environ,
                progress=phase_logger(context.log, "restore verification"))
        key = restore_check_key(database)
        context.log_event(dg.AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=key.name, passed=verification.ok,
            description=f"{verification.backup_id}: {verification.detail} (verification location)",
            metadata=verification_metadata(verification)))

    @dg.job(name=restore_verification_job_name(database), tags={DATABASE_TAG: database},
            description=f"Restore a backup of {database!r} into a scratch database and verify it by content "
            "(this location holds the key and the scratch server).")
    def restore_verification_job() -> None:
        restore_verify()

    return restore_verification_job


def build_drill_job(database: str) -> dg.JobDefinition:
    @dg.op(name=drill_op_name(database), pool=database_pool(database),
           description=f"A restore drill of {database!r} against its RTO; recorded in the store and logged as the "
           "production location's restore_drill_within_rto.")
    def restore_drill(context: dg.OpExecutionContext,
                      dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                      raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                      dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> None:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            loaded, environ = dbprotect_config.load(), dbprotect_secrets.environ()
            result = drill_database(loaded, database, by=actor, identity=raw_backup_identity.parsed(),
                                    audit=AuditLog(primary_store(loaded, database, environ), actor=actor),
                                    environ=environ, progress=phase_logger(context.log, "drill"))
        key = drill_check_key(database)
        context.log_event(dg.AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=key.name, passed=result.ok,
            description=f"{result.backup_id}: {result.reason} (verification location)",
            metadata=drill_metadata(result)))

    @dg.job(name=drill_job_name(database), tags={DATABASE_TAG: database},
            description=f"Restore drill of {database!r}: time to a verified database (RTO) against its target.")
    def drill_job() -> None:
        restore_drill()

    return drill_job


def build_drill_schedule(config: Config, database: str) -> dg.ScheduleDefinition:
    spec = config.database(database)
    return dg.ScheduleDefinition(
        name=drill_schedule_name(database), job_name=drill_job_name(database), cron_schedule=spec.drill_schedule,
        execution_timezone=config.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Restore drill of {database!r} ({spec.drill_schedule}, {config.timezone}); fails above "
        f"the RTO target of {spec.rto_minutes:g} min.")


def build_readability_sensor(database: str) -> dg.SensorDefinition:
    """One readability run per new backup."""
    return build_new_backup_sensor(
        database, name=readability_sensor_name(database), job_name=readability_job_name(database),
        op_name=readability_op_name(database), run_key_prefix="readability",
        description=f"Verify each new backup of {database!r} readable, once (run key: the backup id).")


def build_restore_verification_sensor(database: str) -> dg.SensorDefinition:
    """One restore verification run per new backup (stop it to restore-verify only in drills)."""
    return build_new_backup_sensor(
        database, name=restore_verification_sensor_name(database),
        job_name=restore_verification_job_name(database), op_name=restore_verification_op_name(database),
        run_key_prefix="restore-verify",
        description=f"Restore and verify each new backup of {database!r}, once (run key: the backup id); stop "
        "this sensor to restore-verify only in drills.")


def build_new_backup_sensor(database: str, *, name: str, job_name: str, op_name: str, run_key_prefix: str,
                            description: str) -> dg.SensorDefinition:
    """A run of ``job_name`` per new backup it sees in the store.

    Targets the job by name: a job object here would be re-bound to its resources by Dagster
    (``with_updated_jobs``), which sets a beta parameter and warns (an error in our tests)."""

    @dg.sensor(name=name, job_name=job_name, minimum_interval_seconds=READABILITY_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING, description=description)
    def new_backup_sensor(context: dg.SensorEvaluationContext,
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
            run_key=f"{run_key_prefix}-{database}-{newest}", tags={DATABASE_TAG: database},
            run_config={"ops": {op_name: {"config": {"backup_id": newest}}}})
        return dg.SensorResult(run_requests=[request], cursor=newest)

    return new_backup_sensor


def build_verification_definitions(config: Config) -> dg.Definitions:
    """The jobs and sensors of a verification deployment; nothing for any other deployment."""
    if config.deployment != "verification":
        return dg.Definitions()
    jobs, sensors, schedules = [], [], []
    for database in verified_databases(config):
        jobs += [build_readability_job(database), build_restore_verification_job(database), build_drill_job(database)]
        sensors += [build_readability_sensor(database), build_restore_verification_sensor(database)]
        schedules.append(build_drill_schedule(config, database))
    return dg.Definitions(jobs=jobs, sensors=sensors, schedules=schedules)


__all__ = ["build_verification_definitions", "drill_op_name", "readability_job_name", "readability_sensor_name",
           "restore_verification_op_name", "verified_databases"]
