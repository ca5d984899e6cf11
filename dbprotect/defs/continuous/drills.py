"""Point-in-time drills in Dagster: the check ``point_in_time_drill_proved`` on each continuous database's
snapshot asset, its job ``<database>_pitr_drill_job`` and a monthly schedule (04:00 on the 1st, an hour
after the logical drill so the two restores do not share the cores).

Thin wiring over :func:`dbprotect.core.ops.continuous.pitr_drill_database`, which restores, proves the
landing against the heartbeat rows and records the result in the store and the audit log exactly as
``dbprotect drill DATABASE --pitr`` does. RTO and the achieved RPO are float metadata, so the UI plots
them over the drills' history.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.continuous.drill import PitrDrillResult
from dbprotect.core.errors import NotFoundError, RefusedError
from dbprotect.core.ops.continuous import pitr_drill_database
from dbprotect.defs.helpers import core_errors_as_failures, safe_text
from dbprotect.defs.names import DATABASE_TAG, database_pool, snapshot_key
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource

PITR_DRILL_CHECK = "point_in_time_drill_proved"
#: Monthly, an hour after the logical drill's default (03:00 on the 1st).
PITR_DRILL_SCHEDULE = "0 4 1 * *"


def pitr_drill_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), PITR_DRILL_CHECK)


def pitr_drill_job_name(database: str) -> str:
    return f"{database}_pitr_drill_job"


def pitr_drill_metadata(result: PitrDrillResult) -> dict[str, dg.MetadataValue]:
    return {"rto_seconds": dg.MetadataValue.float(float(result.rto_seconds)),
            "rpo_seconds": dg.MetadataValue.float(float(result.rpo_seconds)),
            "target_time": dg.MetadataValue.text(result.target_time),
            "base_backups": dg.MetadataValue.text(", ".join(result.chain) or "none")}


def pitr_drill_result(config: Config, database: str, identity: AgeIdentityResource,
                      environ: dict[str, str] | None) -> dg.AssetCheckResult:
    key = pitr_drill_check_key(database)
    with core_errors_as_failures():
        try:
            result = pitr_drill_database(config, database, environ=environ, actor="dagster:pitr-drill",
                                         identity=identity.parsed())
        except (NotFoundError, RefusedError) as exc:  # nothing to drill, or too few heartbeats: red, not passed
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=safe_text(exc.one_line()))
    return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=result.ok,
                               description=safe_text(result.detail), metadata=pitr_drill_metadata(result))


def build_pitr_drill_check(database: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        pool=database_pool(database), asset=snapshot_key(database), name=PITR_DRILL_CHECK,
        description="Restore the server to a random moment between two heartbeats (base backup + WAL) in a "
        "private scratch data directory; passes only when the heartbeat before the moment is there and the "
        "one after is not. RTO and achieved RPO are recorded; the scratch server is always removed.",
    )
    def point_in_time_drill_proved(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                                   raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                                   dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
        return pitr_drill_result(loaded, database, raw_backup_identity, dbprotect_secrets.environ())

    return point_in_time_drill_proved


def build_pitr_drill_definitions(config: Config, databases: list[str]) -> dg.Definitions:
    """For each database with ``continuous:``: the check, its job and the monthly schedule."""
    checks, jobs, schedules = [], [], []
    for database in databases:
        if config.database(database).continuous is None:
            continue

        job = dg.define_asset_job(pitr_drill_job_name(database),
                                  selection=dg.AssetSelection.checks(pitr_drill_check_key(database)),
                                  tags={DATABASE_TAG: database},
                                  description=f"Point-in-time drill of {database!r}: restore to a random moment "
                                  "and prove it by the heartbeat rows.")
        checks.append(build_pitr_drill_check(database))
        jobs.append(job)
        schedules.append(dg.ScheduleDefinition(
            name=f"{database}_pitr_drill_schedule", job=job, cron_schedule=PITR_DRILL_SCHEDULE,
            execution_timezone=config.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Point-in-time drill of {database!r} ({PITR_DRILL_SCHEDULE}, {config.timezone})."))
    return dg.Definitions(asset_checks=checks, jobs=jobs, schedules=schedules)
