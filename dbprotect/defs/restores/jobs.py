"""The on-call ``restore`` job: a typed form in the launchpad, one call to core's guarded restore.

The form (:class:`RestoreConfig`) asks what ``dbprotect restore`` asks: the database, the backup
(default: the newest that passed verification), a new database (default) or an existing one of a
named environment, the confirmation, and whether to only print the plan. The op calls
:func:`dbprotect.core.ops.restore_database`, so every guard is core's and refuses here
exactly as on the command line: the run fails with the same one-line ``error[DBP9nn]`` sentence
and the target is untouched. A dry run succeeds and shows the plan (what will be dropped,
created, how big, how long the last drill took) as the output's metadata.

The form's ``database`` is a choice among the configured databases, preset when there is only
one, so the launchpad opens ready to launch. The job is a router op (``restore_backup``, which
holds the form and tags the run ``dbprotect/database``) and one worker op per database
(``<db>_restore``) in that database's pool: Dagster pools are fixed when an op is defined, and
this is how the database chosen at launch still takes its pool (limit 1 in dagster.yaml), so a
restore never runs beside another restore, backup or check of the same database.

The target DSNs come from the ``dbprotect_secrets`` resource (``EnvVar``s read when the run needs
them, handed to core as its ``environ=`` mapping; a missing variable of one database must not
stop the restore of another, so an unset one is core's one-line error only where it is used); the
raw-backup identity comes from its ``EnvVar`` resource as an argument. Which key a backup needs is
core's one rule (:func:`dbprotect.core.ops.backup_keys`, by the backup's folder): a promotion's
safety backup is read with the development identity from the secrets resource in a deployment
that may hold it (demo), and refused in one line (DBP934) in one that may not (production). Neither resource has run
config, so the launchpad form holds only the restore's own fields (no ``resources:`` block).
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import enum
from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from dbprotect.core.config.isolation import protected_databases
from dbprotect.core.config.model import Config
from dbprotect.core.ops import restore_database
from dbprotect.core.pg.dsn import server_label
from dbprotect.core.restore.oncall import RestorePlan, RestoreResult
from dbprotect.defs.helpers import core_errors_as_failures, numeric_metadata, phase_logger, safe_text, safe_value
from dbprotect.defs.names import DATABASE_TAG, RESTORE_JOB, dagster_name, database_pool
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource

#: Counts among a restore's metrics; the others are its phases' seconds.
_INT_METRICS = frozenset({"objects", "tables", "rows", "tables_released_during_restore"})


class TargetKind(enum.Enum):
    """A new database (nothing is overwritten) or an existing one (confirmation, safety backup)."""

    new_database = "new_database"
    existing_database = "existing_database"


class TargetEnvironment(enum.Enum):
    production = "production"
    development = "development"


def restore_config_class(databases: list[str]) -> type[dg.Config]:
    """The launchpad form of the ``restore`` job for these databases.

    ``database`` is an enum of the configured databases (a typo cannot reach core), with a
    default when there is exactly one (the form opens valid, Launch enabled). Descriptions are
    plain text: the launchpad shows them as they are written.
    """
    choice = enum.Enum("ConfiguredDatabase", {dagster_name(database): database for database in databases})
    only = next(iter(choice)) if len(databases) == 1 else None

    class RestoreConfig(dg.Config):
        """The launchpad form of the restore job."""

        database: choice = Field(  # type: ignore[valid-type]
            default=only, description="The configured database whose backup is restored.") \
            if only is not None else Field(description="The configured database whose backup is restored.")
        backup_id: str | None = Field(
            default=None, description="The backup to restore; empty: the newest backup that passed verification.")
        target: TargetKind = Field(
            default=TargetKind.new_database,
            description="new_database creates a database (never overwrites one); existing_database replaces "
            "the database after a safety backup, and needs its name typed as the confirmation.")
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
            default=None, description="ANALYZE before putting the database in place (empty: only when "
            "overwriting an existing database; a new one is analyzed by autovacuum).")

    return RestoreConfig


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


def _restore_worker(database: str) -> dg.OpDefinition:
    """The op that restores ``database``, in its pool; it runs only when the form chose it."""

    @dg.op(
        name=f"{dagster_name(database)}_restore", pool=database_pool(database),
        ins={"request": dg.In(dict)},
        out=dg.Out(dict, description="What was restored (or planned), as plain values."),
        description=f"Restore a backup of {database} through dbprotect's guarded on-call restore.",
    )
    def restore_one(context: dg.OpExecutionContext, request: dict,
                    dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                    raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                    dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.Output:
        by = f"dagster:{RESTORE_JOB}:{context.run_id[:8]}"
        with core_errors_as_failures():
            outcome = restore_database(
                dbprotect_config.load(), database, _blank(request["backup_id"]),
                environment=request["environment"], existing=request["target"] == TargetKind.existing_database.value,
                target_name=_blank(request["target_database"]), confirmation=_blank(request["confirmation"]),
                dry_run=request["dry_run"], by=by, identity=raw_backup_identity.parsed(),
                progress=phase_logger(context.log, "restore phase"), analyze=request["analyze"],
                environ=dbprotect_secrets.environ(),
            )
        if isinstance(outcome, RestorePlan):
            context.log.info(f"dry run, nothing changed:\n{outcome.summary()}")
            return dg.Output(safe_value(outcome.to_dict()), metadata=plan_metadata(outcome))
        value: dict[str, Any] = {**outcome.plan.to_dict(), "restored_database": outcome.target_database,
                                 "safety_backup_id": outcome.safety_backup_id, "metrics": outcome.metrics()}
        context.log.info(f"restored {database} backup {outcome.plan.backup_id} into "
                         f"{outcome.plan.target.environment} database {outcome.target_database!r}")
        return dg.Output(safe_value(value), metadata=result_metadata(outcome))

    return restore_one


def build_restore_job(config: Config) -> dg.JobDefinition:
    """The ``restore`` job: the form's router op, then the chosen database's worker op in its pool."""
    databases = protected_databases(config)
    form = restore_config_class(databases)
    outputs = {dagster_name(database): database for database in databases}

    @dg.op(
        name="restore_backup",
        out={name: dg.Out(dict, is_required=False, description=f"The restore request for {database}.")
             for name, database in outputs.items()},
        description=f"The restore form: which database ({', '.join(databases)}), which backup, where. "
        "Tags the run with the database and hands the request to that database's restore op.",
    )
    def restore_backup(context: dg.OpExecutionContext, config: form) -> Iterator[dg.Output]:  # type: ignore[valid-type]
        database = config.database.value
        context.instance.add_run_tags(context.run_id, {DATABASE_TAG: database})
        request = {"backup_id": config.backup_id, "target": config.target.value,
                   "environment": config.environment.value, "target_database": config.target_database,
                   "confirmation": config.confirmation, "dry_run": config.dry_run, "analyze": config.analyze}
        yield dg.Output(request, output_name=dagster_name(database))

    workers = {name: _restore_worker(database) for name, database in outputs.items()}

    @dg.job(name=RESTORE_JOB, description="On-call restore of a backup into a new database (default) or, with "
            "a typed confirmation and after a safety backup, over an existing one. Guards are core's.")
    def restore() -> None:
        handles = restore_backup()
        requests = dict(zip(outputs, handles if len(outputs) > 1 else (handles,), strict=True))
        for name, worker in workers.items():
            worker(requests[name])

    return restore
