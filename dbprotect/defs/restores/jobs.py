"""The on-call ``restore`` job: a typed form in the launchpad, one call to core's guarded restore.

The form (:class:`RestoreConfig`) asks what ``dbprotect restore`` asks: the database, the backup
(default: the newest that passed verification), a new database (default) or an existing one of a
named environment, the confirmation, and whether to only print the plan. The op calls
:func:`dbprotect.core.ops.restore_database`, so every guard is core's and refuses here
exactly as on the command line: the run fails with the same one-line ``error[DBP9nn]`` sentence
and the target is untouched. A dry run succeeds and shows the plan (what will be dropped,
created, how big, how long the last drill took) as the output's metadata.

DSNs are read from their environment variables in the run's process, by core, as the CLI does
(a missing variable of one database must not stop the restore of another); the raw-backup
identity comes from its ``EnvVar`` resource.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import enum
from typing import Any

import dagster as dg
from pydantic import Field

from dbprotect.core.config.isolation import protected_databases
from dbprotect.core.config.model import Config
from dbprotect.core.ops import restore_database
from dbprotect.core.pg.dsn import server_label
from dbprotect.core.restore.oncall import RestorePlan, RestoreResult
from dbprotect.defs.helpers import core_errors_as_failures, numeric_metadata, phase_logger, safe_text, safe_value
from dbprotect.defs.names import RESTORE_JOB
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, run_environ

#: Counts among a restore's metrics; the others are its phases' seconds.
_INT_METRICS = frozenset({"objects", "tables", "rows", "tables_released_during_restore"})


class TargetKind(enum.Enum):
    """A new database (nothing is overwritten) or an existing one (confirmation, safety backup)."""

    new_database = "new_database"
    existing_database = "existing_database"


class TargetEnvironment(enum.Enum):
    production = "production"
    development = "development"


class RestoreConfig(dg.Config):
    """The launchpad form of the ``restore`` job."""

    database: str = Field(description="The configured database whose backup is restored.")
    backup_id: str | None = Field(
        default=None, description="The backup to restore; empty: the newest backup that passed verification.")
    target: TargetKind = Field(
        default=TargetKind.new_database,
        description="new_database creates a database (never overwrites one); existing_database replaces the "
        "database after a safety backup, and needs its name typed as the confirmation.")
    environment: TargetEnvironment = Field(
        default=TargetEnvironment.production,
        description="The environment whose server (its configured DSN) receives the restore; an existing "
        "target's environment marker must say the same.")
    target_database: str | None = Field(
        default=None, description="new_database: its name (empty: <database>_restored_<backup id>). "
        "existing_database: empty means the database the environment's DSN names.")
    confirmation: str | None = Field(
        default=None, description="existing_database only: type the target database's name to confirm.")
    dry_run: bool = Field(default=False, description="Only plan: what would be dropped, created, how big.")
    analyze: bool | None = Field(
        default=None, description="ANALYZE before putting the database in place (empty: only when overwriting "
        "an existing database; a new one is analyzed by autovacuum).")


def _blank(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def plan_metadata(plan: RestorePlan) -> dict[str, dg.MetadataValue]:
    drill = plan.last_drill
    metadata: dict[str, dg.MetadataValue] = {
        "plan": dg.MetadataValue.md(f"```\n{safe_text(plan.summary())}\n```"),
        "backup_id": dg.MetadataValue.text(plan.backup_id),
        "target_database": dg.MetadataValue.text(plan.target.name),
        "target_server": dg.MetadataValue.text(server_label(plan.target.admin_dsn)),
        "will_drop": dg.MetadataValue.int(len(plan.will_drop)),
        "will_create": dg.MetadataValue.int(len(plan.will_create)),
        "will_replace": dg.MetadataValue.int(len(plan.will_replace)),
        "dump_bytes": dg.MetadataValue.int(plan.dump_bytes),
        "tables": dg.MetadataValue.int(plan.tables),
        "rows": dg.MetadataValue.int(plan.rows),
    }
    if drill is not None and drill.rto_seconds is not None:
        metadata["last_drill_rto_seconds"] = dg.MetadataValue.float(float(drill.rto_seconds))
    return metadata


def result_metadata(result: RestoreResult) -> dict[str, dg.MetadataValue]:
    metadata = plan_metadata(result.plan)
    metadata["restored_database"] = dg.MetadataValue.text(result.target_database)
    if result.safety_backup_id:
        metadata["safety_backup_id"] = dg.MetadataValue.text(result.safety_backup_id)
    return {**metadata, **numeric_metadata(result.metrics(), counts=_INT_METRICS)}


def build_restore_job(config: Config) -> dg.JobDefinition:
    """The ``restore`` job (one op), for the databases this deployment protects."""
    databases = ", ".join(protected_databases(config))

    @dg.op(
        name="restore_backup",
        out=dg.Out(dict, description="What was restored (or planned), as plain values."),
        description=f"Restore a backup ({databases}) through dbprotect's guarded on-call restore.",
    )
    def restore_backup(context: dg.OpExecutionContext, config: RestoreConfig, dbprotect_config: DbprotectConfigResource,
                       raw_backup_identity: AgeIdentityResource) -> dg.Output:
        by = f"dagster:{RESTORE_JOB}:{context.run_id[:8]}"
        with core_errors_as_failures():
            outcome = restore_database(
                dbprotect_config.load(), config.database, _blank(config.backup_id),
                environment=config.environment.value, existing=config.target is TargetKind.existing_database,
                target_name=_blank(config.target_database), confirmation=_blank(config.confirmation),
                dry_run=config.dry_run, by=by, environ=run_environ(raw_backup_identity),
                progress=phase_logger(context.log, "restore phase"), analyze=config.analyze,
            )
        if isinstance(outcome, RestorePlan):
            context.log.info(f"dry run, nothing changed:\n{outcome.summary()}")
            return dg.Output(safe_value(outcome.to_dict()), metadata=plan_metadata(outcome))
        value: dict[str, Any] = {**outcome.plan.to_dict(), "restored_database": outcome.target_database,
                                 "safety_backup_id": outcome.safety_backup_id, "metrics": outcome.metrics()}
        context.log.info(f"restored {config.database} backup {outcome.plan.backup_id} into "
                         f"{outcome.plan.target.environment} database {outcome.target_database!r}")
        return dg.Output(safe_value(value), metadata=result_metadata(outcome))

    @dg.job(name=RESTORE_JOB, description="On-call restore of a backup into a new database (default) or, with "
            "a typed confirmation and after a safety backup, over an existing one. Guards are core's.")
    def restore() -> None:
        restore_backup()

    return restore
