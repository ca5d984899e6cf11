"""``<db>_pre_migration_backup_sensor``: a backup when a new migration file or Alembic revision appears.

Thin wiring over :mod:`dbprotect.core.schema.watch`, which observes the files under
``schema.migrations_dir`` and ``alembic_version`` on production and decides from the cursor.
On a change the sensor requests a run of the existing ``<db>_backup_job`` (back up, then the
blocking integrity check), tagged ``dbprotect/reason`` (``new migration 0042_x.sql``), with a
run key derived from the change so one change never starts two backups. The first evaluation
only records the state.

The limit, stated plainly: a sensor polls. A migration applied between two polls runs before
its backup (and Alembic's table changes only after the migration ran, so that trigger gives the
first backup of the new schema, not one before it). For a guaranteed backup-before-change,
run the migration as ``dbprotect guard -d DB -e production -- alembic upgrade head``.

``default_status`` is ``RUNNING``: the sensor only ever requests backups (which the database run
tag queues one at a time), a poll is a directory hash and one ``SELECT`` on production, and a
backup nobody turned on is the backup that is missing when a migration goes wrong.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.ops import observe_migrations
from dbprotect.core.schema.watch import decide
from dbprotect.defs.names import PRE_MIGRATION_REASON_TAG, backup_job_name, pre_migration_sensor_name
from dbprotect.defs.resources import SecretsResource

#: One poll a minute: short enough to catch a deploy's new files before someone runs them by
#: hand, long enough that the production connection is noise.
PRE_MIGRATION_INTERVAL_SECONDS = 60


def build_pre_migration_sensor(config: Config, database: str) -> dg.SensorDefinition:
    """The sensor of one protected database, targeting its backup job by name: the job object is
    the one defs/backups registers (a second equal object would be a duplicate definition)."""
    watched = "migration files and Alembic revision" if config.database(database).schema_settings.migrations_dir \
        else "Alembic revision (no schema.migrations_dir configured)"

    @dg.sensor(
        name=pre_migration_sensor_name(database), job_name=backup_job_name(database),
        minimum_interval_seconds=PRE_MIGRATION_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Back up {database!r} when its {watched} change. Polls: for a guaranteed backup before a "
        "migration, run it under 'dbprotect guard -- alembic upgrade head'.",
    )
    def pre_migration_backup(context: dg.SensorEvaluationContext,
                             dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.SensorResult:
        # The production DSN comes from the secrets resource, as every run's does: never os.environ.
        decision = decide(context.cursor, observe_migrations(config, database, dbprotect_secrets.environ()))
        if not decision.triggered:
            return dg.SensorResult(skip_reason=decision.skip_reason(database), cursor=decision.cursor)
        context.log.info(f"{database}: {decision.reason}: requesting a backup")
        request = dg.RunRequest(run_key=decision.run_key(database),
                                tags={PRE_MIGRATION_REASON_TAG: decision.reason})
        return dg.SensorResult(run_requests=[request], cursor=decision.cursor)

    return pre_migration_backup
