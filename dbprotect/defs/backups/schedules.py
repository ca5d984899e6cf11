"""Jobs and schedules that protect data, so they start ``RUNNING`` as soon as the code loads.

- ``<database>_backup_job`` materializes the snapshot asset and its checks, on the database's
  ``backup_schedule`` (default daily 02:00) in ``config.timezone``.
- ``rpo_checks_job`` runs only the ``rpo_met`` checks, hourly: a backup schedule that was
  stopped, a daemon that was down or a run that never started all turn the check red within an
  hour, which a check that only ran after a backup could never do.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.defs.backups.checks import integrity_check_key, rpo_check_key
from dbprotect.defs.helpers import per_database_check_requests
from dbprotect.defs.names import (
    DATABASE_TAG,
    RPO_CHECKS_CRON,
    RPO_CHECKS_JOB,
    RPO_CHECKS_SCHEDULE,
    backup_job_name,
    backup_schedule_name,
    snapshot_key,
)


def build_backup_job(database: str) -> dg.UnresolvedAssetJobDefinition:
    """One backup of ``database`` and its integrity check (which then logs the RPO's evaluation)."""
    return dg.define_asset_job(
        backup_job_name(database),
        # Only the integrity check: it evaluates rpo_met after recording (see checks.py); restore
        # verification and drills have their own jobs (defs/restores).
        selection=dg.AssetSelection.assets(snapshot_key(database)).without_checks()
        | dg.AssetSelection.checks(integrity_check_key(database)),
        # Run tag: dagster.yaml's run coordinator allows one run per database at a time.
        tags={DATABASE_TAG: database},
        description=f"Back up {database!r}, verify the new backup's integrity, and evaluate the RPO.",
    )


def build_backup_schedule(config: Config, database: str, job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    spec = config.database(database)
    return dg.ScheduleDefinition(
        name=backup_schedule_name(database),
        job=job,
        cron_schedule=spec.backup_schedule,
        execution_timezone=config.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Scheduled backup of {database!r} ({spec.backup_schedule}, {config.timezone}).",
    )


def all_databases_tag(databases: list[str]) -> str:
    """The ``dbprotect/database`` value of a run about several databases: their names, sorted, comma-separated
    (no database name holds a comma: the configuration allows letters, digits, - and _)."""
    return ",".join(sorted(databases))


def build_rpo_checks_job(databases: list[str]) -> dg.UnresolvedAssetJobDefinition:
    """Only the ``rpo_met`` checks: it reads the store's listing, never takes a backup.

    One job for every database keeps the UI's job list short; the schedule launches one run per
    database (:func:`per_database_check_requests`), each tagged with it (a request's tag replaces
    the job's). The job itself carries a tag naming every database it checks (``ledger,shop``;
    with one database, just it), so a run launched by hand from the launchpad is tagged too and
    the run list's filter by database finds it.
    """
    return dg.define_asset_job(
        RPO_CHECKS_JOB,
        selection=dg.AssetSelection.checks(*(rpo_check_key(database) for database in databases)),
        tags={DATABASE_TAG: all_databases_tag(databases)},
        description="Evaluate every database's RPO from the backup store (no backup is taken); scheduled "
        "runs are one per database, tagged dbprotect/database.",
    )


def build_rpo_checks_schedule(config: Config, job: dg.UnresolvedAssetJobDefinition,
                              databases: list[str]) -> dg.ScheduleDefinition:
    keys = {database: rpo_check_key(database) for database in databases}

    @dg.schedule(
        name=RPO_CHECKS_SCHEDULE, job=job, cron_schedule=RPO_CHECKS_CRON, execution_timezone=config.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Hourly RPO checks, so a backup that never happened is noticed (one run per database).",
    )
    def rpo_checks_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        return per_database_check_requests(keys, RPO_CHECKS_JOB)

    return rpo_checks_schedule
