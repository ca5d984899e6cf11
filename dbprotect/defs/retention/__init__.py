"""The retention domain: per database, the ``retention_compliant`` check, the cleanup job and its schedule.

The schedule starts ``RUNNING`` (weekly by default, ``cleanup_schedule`` in the configuration):
retention that nobody switches on never deletes what ``max_age`` says must go.

``retention_compliant`` is also evaluated when the code location loads (a deployment starts, or
its code is reloaded): ``retention_on_load_sensor`` requests one run of ``retention_checks_job``
per database, tagged with it, the first time it ticks after a load. Otherwise the check would say
"Not Evaluated" until the first Sunday's cleanup.
"""

from __future__ import annotations

import uuid

import dagster as dg

from dbprotect.core.config.isolation import protected_databases
from dbprotect.core.config.model import Config
from dbprotect.defs.backups.schedules import all_databases_tag
from dbprotect.defs.helpers import per_database_check_requests
from dbprotect.defs.names import DATABASE_TAG, RETENTION_CHECKS_JOB, RETENTION_ON_LOAD_SENSOR, cleanup_schedule_name
from dbprotect.defs.retention.checks import build_retention_check, retention_check_key
from dbprotect.defs.retention.jobs import build_cleanup_job


def build_retention_on_load(databases: list[str]) -> tuple[dg.UnresolvedAssetJobDefinition, dg.SensorDefinition]:
    """``retention_checks_job`` and the sensor that runs it once per load of these definitions.

    The sensor's cursor holds the id of the load that last requested the runs; a new load (a new
    id, drawn when the definitions are built) differs from it, so the sensor requests again. The
    run keys carry the load id, so a tick repeated within one load never launches twice.
    """
    keys = {database: retention_check_key(database) for database in databases}
    job = dg.define_asset_job(
        RETENTION_CHECKS_JOB, selection=dg.AssetSelection.checks(*keys.values()),
        # A run launched by hand carries every database it checks (as rpo_checks_job's does); the
        # sensor's runs, one per database, replace it with their own.
        tags={DATABASE_TAG: all_databases_tag(databases)},
        description="Evaluate retention_compliant from the backup stores (nothing is deleted); run when the "
        "code location loads, one run per database.")
    load_id = uuid.uuid4().hex

    @dg.sensor(name=RETENTION_ON_LOAD_SENSOR, job=job, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Evaluates retention_compliant of every database once each time the code location "
               "loads, so it is never 'Not Evaluated' until the weekly cleanup.")
    def retention_on_load(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        if context.cursor == load_id:
            return dg.SkipReason("retention_compliant was evaluated since the code location loaded")
        return dg.SensorResult(run_requests=per_database_check_requests(keys, f"retention-{load_id}"),
                               cursor=load_id)

    return job, retention_on_load


def build_retention_definitions(config: Config) -> dg.Definitions:
    checks, jobs, schedules = [], [], []
    databases = protected_databases(config)
    for database in databases:
        spec = config.database(database)
        job = build_cleanup_job(database)
        checks.append(build_retention_check(database))
        jobs.append(job)
        schedules.append(dg.ScheduleDefinition(
            name=cleanup_schedule_name(database), job=job, cron_schedule=spec.cleanup_schedule,
            execution_timezone=config.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Retention cleanup of {database!r} ({spec.cleanup_schedule}, {config.timezone}).",
        ))
    sensors = []
    if databases:
        on_load_job, on_load_sensor = build_retention_on_load(databases)
        jobs.append(on_load_job)
        sensors.append(on_load_sensor)
    return dg.Definitions(asset_checks=checks, jobs=jobs, schedules=schedules, sensors=sensors)


__all__ = ["build_retention_definitions"]
