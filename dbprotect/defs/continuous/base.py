"""``<database>_base_backup_job`` and its schedule (``continuous.base_backup_schedule``, weekly by default).

A base backup is a run (minutes, one at a time per database, in the database's pool); the WAL stream
is not: it is the long-running ``dbprotect wal receive`` service of the deployment.
"""

# No "from __future__ import annotations": Dagster reads the context annotation at runtime.
import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.ops.continuous import base_backup_database
from dbprotect.defs.helpers import core_errors_as_failures
from dbprotect.defs.names import (
    DATABASE_TAG,
    base_backup_job_name,
    base_backup_schedule_name,
    dagster_actor,
    dagster_name,
    database_pool,
)
from dbprotect.defs.resources import SecretsResource


def build_base_backup_job(config: Config, database: str) -> dg.JobDefinition:
    @dg.op(name=f"{dagster_name(database)}_base_backup", pool=database_pool(database))
    def base_backup(context: dg.OpExecutionContext,
                    dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.Output[None]:
        with core_errors_as_failures():
            record = base_backup_database(config, database, environ=dbprotect_secrets.environ(),
                                          actor=dagster_actor(base_backup_job_name(database), context.run.tags))
        return dg.Output(None, metadata={"base_id": record.base_id, "kind": record.kind,
                                         "start_lsn": record.start_lsn, "end_lsn": record.end_lsn,
                                         "stored_bytes": dg.MetadataValue.int(int(record.base["size"]))})

    @dg.job(name=base_backup_job_name(database), tags={DATABASE_TAG: database},
            description=f"A base backup of {database!r} (pg_basebackup → zstd → age → store; incremental when "
                        "configured), the start of every point-in-time restore after it.")
    def base_backup_job() -> None:
        base_backup()

    return base_backup_job


def build_base_backup_schedule(config: Config, database: str, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    spec = config.database(database).continuous
    assert spec is not None
    return dg.ScheduleDefinition(
        name=base_backup_schedule_name(database), job=job, cron_schedule=spec.base_backup_schedule,
        execution_timezone=config.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Base backups of {database!r} ({spec.base_backup_schedule}, {config.timezone}).")


def build_base_backup_definitions(config: Config, databases: list[str]) -> dg.Definitions:
    """The base-backup job and schedule, for each of ``databases`` that has ``continuous:``."""
    jobs, schedules = [], []
    for database in databases:
        if config.database(database).continuous is not None:
            jobs.append(build_base_backup_job(config, database))
            schedules.append(build_base_backup_schedule(config, database, jobs[-1]))
    return dg.Definitions(jobs=jobs, schedules=schedules)
