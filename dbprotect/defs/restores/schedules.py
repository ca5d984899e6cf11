"""When rungs 3 and 4 run: restore verification after every backup, drills on the drill schedule.

- ``<database>_restore_verification_job`` runs only ``restore_verified``. The sensor
  ``<database>_restore_after_backup_sensor`` requests it once per new snapshot materialization,
  so every backup is restored and verified after its backup run (the database run tag queues it
  behind that run instead of beside it). Chosen over running the restore inside the backup job
  for the 2-core reality: the backup and its quick checks finish first and the RPO is met on
  time; the restore follows. Where a daily restore is too heavy (a big database on a small
  machine), stop the sensor in the UI: the monthly drill still restores, and the job can be
  launched by hand.
- ``<database>_restore_drill_job`` runs only ``restore_drill_within_rto`` on the database's
  ``drill_schedule`` (default monthly, 03:00 on the 1st). Both start ``RUNNING``: they protect data.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.defs.names import (
    DATABASE_TAG,
    drill_job_name,
    drill_schedule_name,
    restore_verification_job_name,
    restore_verification_sensor_name,
    snapshot_key,
)
from dbprotect.defs.restores.checks import drill_check_key, restore_check_key


def build_restore_verification_job(database: str) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        restore_verification_job_name(database),
        selection=dg.AssetSelection.checks(restore_check_key(database)),
        tags={DATABASE_TAG: database},
        description=f"Restore the newest backup of {database!r} into a scratch database and verify it by content.",
    )


def build_restore_verification_sensor(database: str, job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.asset_sensor(
        asset_key=snapshot_key(database), job=job, name=restore_verification_sensor_name(database),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"After every new backup of {database!r}, restore and verify it (stop this sensor to "
        "restore-verify only in drills).",
    )
    def restore_after_backup(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry) -> dg.RunRequest:
        materialization = asset_event.asset_materialization
        backup_id = materialization.metadata.get("backup_id") if materialization else None
        label = backup_id.value if isinstance(backup_id, dg.TextMetadataValue) else str(asset_event.run_id)
        # One run per backup, however often the sensor ticks.
        return dg.RunRequest(run_key=f"restore-verify-{label}", tags={"dbprotect/backup_id": str(label)})

    return restore_after_backup


def build_drill_job(database: str) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        drill_job_name(database),
        selection=dg.AssetSelection.checks(drill_check_key(database)),
        tags={DATABASE_TAG: database},
        description=f"Restore drill of {database!r}: time to a verified database (RTO) against its target.",
    )


def build_drill_schedule(config: Config, database: str, job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    spec = config.database(database)
    return dg.ScheduleDefinition(
        name=drill_schedule_name(database),
        job=job,
        cron_schedule=spec.drill_schedule,
        execution_timezone=config.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Restore drill of {database!r} ({spec.drill_schedule}, {config.timezone}); "
        f"fails above the RTO target of {spec.rto_minutes:g} min.",
    )
