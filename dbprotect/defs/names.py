"""Every name the Dagster definitions expose, in one place.

Asset keys, check names, job and schedule names are what people bookmark, alert on and search
for in the UI; keeping them here (and pinned by ``test_definitions.py``) makes a rename a
deliberate, visible change.
"""

from __future__ import annotations

import re

import dagster as dg

SNAPSHOT_ASSET = "production_snapshot"
INTEGRITY_CHECK = "backup_integrity_verified"
RPO_CHECK = "rpo_met"
#: Run tag naming the database a run touches (dagster.yaml limits runs per value to one).
DATABASE_TAG = "dbprotect/database"
RPO_CHECKS_JOB = "rpo_checks_job"
RPO_CHECKS_SCHEDULE = "rpo_checks_schedule"
#: Hourly at minute 17: off the top of the hour, where backup schedules usually sit.
RPO_CHECKS_CRON = "17 * * * *"
#: ``retention_compliant`` of every database, evaluated once each time the code location loads.
RETENTION_CHECKS_JOB = "retention_checks_job"
RETENTION_ON_LOAD_SENSOR = "retention_on_load_sensor"


def dagster_name(database: str) -> str:
    """A database name as a Dagster name (groups, jobs and keys allow only ``[A-Za-z0-9_]``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", database)


def database_pool(database: str) -> str:
    """The Dagster concurrency pool of every asset, check and op that works on ``database``.

    With a pool limit of 1 (``concurrency: pools: default_limit`` in dagster.yaml), Dagster runs one
    of them at a time per database across all runs; the store's own lock
    (:mod:`dbprotect.core.store.lock`) also covers writers outside Dagster (the CLI).
    """
    return f"dbprotect/{database}"


def snapshot_key(database: str) -> dg.AssetKey:
    return dg.AssetKey([dagster_name(database), SNAPSHOT_ASSET])


def backup_job_name(database: str) -> str:
    return f"{dagster_name(database)}_backup_job"


def backup_schedule_name(database: str) -> str:
    return f"{dagster_name(database)}_backup_schedule"


#: Restores (issue 3): rung 3 and rung 4 as checks on the snapshot asset, and the on-call job.
RESTORE_CHECK = "restore_verified"
DRILL_CHECK = "restore_drill_within_rto"
RESTORE_JOB = "restore"


def restore_verification_job_name(database: str) -> str:
    return f"{dagster_name(database)}_restore_verification_job"


def restore_verification_sensor_name(database: str) -> str:
    return f"{dagster_name(database)}_restore_after_backup_sensor"


def drill_job_name(database: str) -> str:
    return f"{dagster_name(database)}_restore_drill_job"


def drill_schedule_name(database: str) -> str:
    return f"{dagster_name(database)}_restore_drill_schedule"


#: Schema (issue 6): a backup when a new migration file or Alembic revision appears.
PRE_MIGRATION_REASON_TAG = "dbprotect/reason"


def pre_migration_sensor_name(database: str) -> str:
    return f"{dagster_name(database)}_pre_migration_backup_sensor"


def postgres_resource_key(database: str, environment: str = "production") -> str:
    """The resource key of one database environment, e.g. ``shop_production_postgres``."""
    return f"{dagster_name(database)}_{environment}_postgres"


#: Copies and retention (issue 4): a copy asset per extra storage target, retention on the snapshot.
COPY_ASSET_PREFIX = "backup_copy_"
COPY_INTEGRITY_CHECK = "copy_integrity_verified"
RETENTION_CHECK = "retention_compliant"
#: Runs a copy asset after each new snapshot whose blocking checks passed (declarative automation).
COPIES_SENSOR = "backup_copies_sensor"


def copy_key(database: str, target: str) -> dg.AssetKey:
    """``[<database>, backup_copy_<target>]``: the copies of a database's backups on one target."""
    return dg.AssetKey([dagster_name(database), f"{COPY_ASSET_PREFIX}{dagster_name(target)}"])


def copy_job_name(database: str) -> str:
    return f"{dagster_name(database)}_copy_job"


#: The warm copy (issue 4): the newest verified backup restored into the backup server's database.
WARM_COPY_ASSET = "warm_copy"
WARM_COPY_CHECK = "warm_copy_verified"


def warm_copy_key(database: str) -> dg.AssetKey:
    """``[<database>, warm_copy]``: the standby database on the backup server."""
    return dg.AssetKey([dagster_name(database), WARM_COPY_ASSET])


def warm_copy_job_name(database: str) -> str:
    return f"{dagster_name(database)}_warm_copy_job"


def cleanup_job_name(database: str) -> str:
    return f"{dagster_name(database)}_cleanup_job"


def cleanup_schedule_name(database: str) -> str:
    return f"{dagster_name(database)}_cleanup_schedule"


def dagster_actor(job_name: str, tags: dict[str, str] | None = None) -> str:
    """Who acted, for the audit log: ``dagster:<schedule>`` for a scheduled run, else ``dagster:<job>``."""
    tags = tags or {}
    return f"dagster:{tags.get('dagster/schedule_name') or tags.get('dagster/sensor_name') or job_name}"


#: Continuous protection (issue 15): the measured RPO, reported by a sensor without runs; base backups.
CONTINUOUS_RPO_CHECK = "continuous_rpo"


def continuous_rpo_sensor_name(database: str) -> str:
    return f"{dagster_name(database)}_continuous_rpo_sensor"


def base_backup_job_name(database: str) -> str:
    return f"{dagster_name(database)}_base_backup_job"


def base_backup_schedule_name(database: str) -> str:
    return f"{dagster_name(database)}_base_backup_schedule"
