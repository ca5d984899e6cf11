"""``<db>_cleanup_job``: retention cleanup of every storage target of one database.

One op: per target, plan (the mark) and sweep, manifest first, every deletion audited in the
primary store (:func:`dbprotect.core.ops.operations.cleanup_database`). What it decided and did is
recorded on the snapshot asset as an observation per target (numbers the UI plots: kept,
deleted, bytes freed), and ``retention_compliant`` is evaluated on what the cleanup left. A plan
that refuses, or a store that fails, fails the run with the same sentence the CLI prints, after
every other target was cleaned.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import dagster as dg

from dbprotect.core.ops import TargetCleanup, cleanup_database, first_cleanup_error
from dbprotect.defs.helpers import core_errors_as_failures, safe_text
from dbprotect.defs.names import (
    DATABASE_TAG,
    cleanup_job_name,
    dagster_actor,
    dagster_name,
    database_pool,
    snapshot_key,
)
from dbprotect.defs.resources import DbprotectConfigResource, SecretsResource
from dbprotect.defs.retention.checks import compliance_evaluation

#: Metadata text is shown in full in the UI; a year of daily backups renders in ~30 kB.
_PLAN_TEXT_LIMIT = 60_000


def cleanup_metadata(done: TargetCleanup, dry_run: bool) -> dict[str, dg.MetadataValue]:
    plan, result = done.plan, done.result
    text = plan.render() + (f"\n{done.continuous.render()}" if done.continuous is not None else "")
    metadata: dict[str, dg.MetadataValue] = {
        "target": dg.MetadataValue.text(done.target),
        "policy": dg.MetadataValue.text(str(plan.policy)),
        "dry_run": dg.MetadataValue.bool(dry_run),
        "kept": dg.MetadataValue.int(len(plan.kept)),
        "planned_deletions": dg.MetadataValue.int(len(plan.deletions)),
        "deleted": dg.MetadataValue.int(len(result.deleted_backups) if result else 0),
        "incomplete_removed": dg.MetadataValue.int(len(result.removed_incomplete) if result else 0),
        "bytes_freed": dg.MetadataValue.int(result.bytes_freed if result else 0),
        "deleted_backup_ids": dg.MetadataValue.text(", ".join(result.deleted_backups) if result else ""),
        "plan": dg.MetadataValue.md("```\n" + text[:_PLAN_TEXT_LIMIT] + "\n```"),
    }
    if plan.refusal:
        metadata["refused"] = dg.MetadataValue.text(plan.refusal)
    if done.error is not None:
        metadata["error"] = dg.MetadataValue.text(safe_text(f"error[{done.error.code}]: {done.error.one_line()}"))
    return metadata


class CleanupConfig(dg.Config):
    """Launchpad form: a dry run records the plan and deletes nothing."""

    dry_run: bool = False


def build_cleanup_job(database: str) -> dg.JobDefinition:
    name = dagster_name(database)

    @dg.op(name=f"{name}_retention_cleanup", pool=database_pool(database),
           description=f"Apply {database!r}'s retention policy on every storage target (mark, then sweep).")
    def retention_cleanup(context: dg.OpExecutionContext, config: CleanupConfig,
                          dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                          dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> None:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
            environ = dbprotect_secrets.environ()
            cleanups = cleanup_database(loaded, database, dry_run=config.dry_run, actor=actor, environ=environ)
        for done in cleanups:
            context.log.info(f"{done.target}: {len(done.plan.deletions)} backup(s) to delete, "
                             f"{len(done.plan.kept)} kept" + (f"; REFUSED: {done.plan.refusal}" if done.plan.refused
                                                                else ""))
            context.log_event(dg.AssetObservation(asset_key=snapshot_key(database),
                                                  metadata=cleanup_metadata(done, config.dry_run)))
        with core_errors_as_failures():
            context.log_event(compliance_evaluation(loaded, database, environ))
            error = first_cleanup_error(cleanups)
            if error is not None:
                raise error

    @dg.job(name=cleanup_job_name(database), tags={DATABASE_TAG: database},
            description=f"Retention cleanup of {database!r} on every storage target; records the plan and the "
            "result on the snapshot asset and evaluates retention_compliant.")
    def cleanup_job() -> None:
        retention_cleanup()

    return cleanup_job
