"""The retention domain: per database, the ``retention_compliant`` check, the cleanup job and its schedule.

The schedule starts ``RUNNING`` (weekly by default, ``cleanup_schedule`` in the configuration):
retention that nobody switches on never deletes what ``max_age`` says must go.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.isolation import protected_databases
from dbprotect.core.config.model import Config
from dbprotect.defs.names import cleanup_schedule_name
from dbprotect.defs.retention.checks import build_retention_check
from dbprotect.defs.retention.jobs import build_cleanup_job


def build_retention_definitions(config: Config) -> dg.Definitions:
    checks, jobs, schedules = [], [], []
    for database in protected_databases(config):
        spec = config.database(database)
        job = build_cleanup_job(database)
        checks.append(build_retention_check(database))
        jobs.append(job)
        schedules.append(dg.ScheduleDefinition(
            name=cleanup_schedule_name(database), job=job, cron_schedule=spec.cleanup_schedule,
            execution_timezone=config.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Retention cleanup of {database!r} ({spec.cleanup_schedule}, {config.timezone}).",
        ))
    return dg.Definitions(asset_checks=checks, jobs=jobs, schedules=schedules)


__all__ = ["build_retention_definitions"]
