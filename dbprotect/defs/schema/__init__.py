"""Schema domain: schema snapshots, the drift check and the ``schema_sync`` job (issue 6).

Thin wiring over :mod:`dbprotect.core.schema`:

- ``[<db>, schema_<env>]`` per database environment this deployment may reach: materializing it
  takes a normalized schema snapshot; its SHA-256 is the data version, so every schema change is
  a new version in the UI, with the snapshot text as metadata.
- ``schema_matches_development`` on ``[<db>, schema_production]`` (only where one deployment holds
  both DSNs, i.e. ``demo``): the drift list from ``results``, minus ``schema.pending``.
- ``schema_matches_production_snapshot`` on ``[<db>, schema_development]`` in a *development*
  deployment (no production DSN; ``keys.development`` set): development against the newest
  production schema snapshot in the store (issue 14). A snapshot older than the RPO is a
  warning even without drift: production may have changed since it was taken.
- ``schema_sync``: a launchpad-typed job calling :func:`~dbprotect.core.schema.sync.push_schema`,
  whose guards (lint, fresh verified backup, typed confirmation, markers) apply unchanged.
- ``<db>_pre_migration_backup_sensor`` (``watch.py``): runs ``<db>_backup_job`` when a new
  migration file or Alembic revision appears (polling; ``dbprotect guard`` is the guarantee).
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from datetime import UTC, datetime, timedelta

import dagster as dg

from dbprotect.core.config.isolation import protected_databases, reachable_environments, resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.ops import drift_between, drift_from_production_snapshot, push_schema
from dbprotect.core.schema.drift import DriftReport
from dbprotect.core.schema.snapshot import SchemaSnapshot, take_snapshot
from dbprotect.core.schema.stored import StoredSnapshot
from dbprotect.defs.helpers import core_errors_as_failures
from dbprotect.defs.names import DATABASE_TAG, dagster_actor, dagster_name, database_pool
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource
from dbprotect.defs.schema.watch import build_pre_migration_sensor

SCHEMA_ASSET_PREFIX = "schema_"
DRIFT_CHECK = "schema_matches_development"
SNAPSHOT_DRIFT_CHECK = "schema_matches_production_snapshot"
SCHEMA_SYNC_JOB = "schema_sync"


def schema_key(database: str, environment: str) -> dg.AssetKey:
    return dg.AssetKey([dagster_name(database), f"{SCHEMA_ASSET_PREFIX}{environment}"])


def schema_metadata(snapshot: SchemaSnapshot) -> dict[str, dg.MetadataValue]:
    return {"sha256": dg.MetadataValue.text(snapshot.sha256), "objects": dg.MetadataValue.int(snapshot.objects),
            "schema": dg.MetadataValue.md(f"```sql\n{snapshot.text}```")}


def drift_evaluation(report: DriftReport, database: str) -> dg.AssetCheckEvaluation:
    """``schema_matches_development``'s verdict (the check's result, or an event the demo reports)."""
    return dg.AssetCheckEvaluation(
        asset_key=schema_key(database, "production"), check_name=DRIFT_CHECK,
        passed=report.ok, description=report.summary()[:1000],
        metadata={"differences": dg.MetadataValue.int(len(report.items)),
                  "allowed_pending": dg.MetadataValue.int(len(report.allowed)),
                  "drift": dg.MetadataValue.text("\n".join(report.lines()) or "none")})


def build_schema_asset(database: str, environment: str) -> dg.AssetsDefinition:
    @dg.asset(
        pool=database_pool(database),
        key=schema_key(database, environment), group_name=dagster_name(database), kinds={"postgres"},
        description=f"The normalized schema (pg_dump --schema-only, noise removed, objects sorted) of the "
        f"{environment} database of {database!r}; its SHA-256 is the data version.",
    )
    def schema_snapshot(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                        dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.MaterializeResult:
        with core_errors_as_failures():
            config = dbprotect_config.load()
            snapshot = take_snapshot(resolve_dsn(config, database, environment, dbprotect_secrets.environ()),
                                     pg_bin_dir=config.tool_dirs)
        return dg.MaterializeResult(data_version=dg.DataVersion(snapshot.sha256), metadata=schema_metadata(snapshot))

    return schema_snapshot


def build_drift_check(database: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        pool=database_pool(database),
        asset=schema_key(database, "production"), name=DRIFT_CHECK,
        description="Development and production schemas are equal (results compares the live databases); "
        "object order is not drift; patterns under schema.pending are allowed.",
    )
    def schema_matches_development(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                                   dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            report = drift_between(dbprotect_config.load(), database, environ=dbprotect_secrets.environ())
        evaluation = drift_evaluation(report, database)
        return dg.AssetCheckResult(passed=evaluation.passed, description=evaluation.description,
                                   metadata=evaluation.metadata)

    return schema_matches_development


def snapshot_drift_evaluation(report: DriftReport, snapshot: StoredSnapshot, *, rpo_hours: float,
                              now: datetime | None = None) -> dg.AssetCheckResult:
    """The development-side verdict: drift fails; no drift against a snapshot older than the RPO warns."""
    age = (now or datetime.now(UTC)) - snapshot.started_at if snapshot.started_at else None
    stale = age is None or age > timedelta(hours=rpo_hours)
    age_text = f"{age.total_seconds() / 3600:.1f} h old" if age is not None else "of unknown age"
    description = f"{report.summary()} (production snapshot {snapshot.backup_id}, {age_text})"
    if report.ok and stale:
        description += f"; older than the RPO ({rpo_hours:g} h): production may have changed since"
    return dg.AssetCheckResult(
        passed=report.ok and not stale, description=description[:1000],
        severity=dg.AssetCheckSeverity.WARN if report.ok else dg.AssetCheckSeverity.ERROR,
        metadata={"differences": dg.MetadataValue.int(len(report.items)),
                  "allowed_pending": dg.MetadataValue.int(len(report.allowed)),
                  "snapshot_backup_id": dg.MetadataValue.text(snapshot.backup_id),
                  "snapshot_sha256": dg.MetadataValue.text(snapshot.sha256),
                  "snapshot_age_hours": dg.MetadataValue.float(age.total_seconds() / 3600 if age else -1.0),
                  "drift": dg.MetadataValue.text("\n".join(report.lines()) or "none")})


def build_snapshot_drift_check(database: str, rpo_hours: float) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        pool=database_pool(database),
        asset=schema_key(database, "development"), name=SNAPSHOT_DRIFT_CHECK,
        description="Development's schema equals production's newest schema snapshot in the store (read with "
        "the development key, checked as hostile, loaded only into a scratch database); no production DSN. "
        "A snapshot older than the RPO warns.",
    )
    def schema_matches_production_snapshot(
            dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
            dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            report, snapshot = drift_from_production_snapshot(dbprotect_config.load(), database,
                                                              environ=dbprotect_secrets.environ())
        return snapshot_drift_evaluation(report, snapshot, rpo_hours=rpo_hours)

    return schema_matches_production_snapshot


class SchemaSyncConfig(dg.Config):
    """The launchpad form of ``schema_sync``: only schema moves (there is no data option)."""

    database: str
    source: str = "production"
    target: str = "development"
    #: development -> production needs the database's name typed here.
    confirmation: str = ""
    dry_run: bool = True


def build_schema_sync_job() -> dg.JobDefinition:
    @dg.op
    def push_schema_op(context: dg.OpExecutionContext, config: SchemaSyncConfig,
                       dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                       dbprotect_secrets: dg.ResourceParam[SecretsResource],
                       raw_backup_identity: dg.ResourceParam[AgeIdentityResource]) -> None:
        # The database is chosen in the form, so the run is tagged with it here (every run names its database).
        context.instance.add_run_tags(context.run_id, {DATABASE_TAG: config.database})
        with core_errors_as_failures():
            # Only a push that changes production takes (and verifies) a backup: nothing else decrypts.
            decrypts = config.target == "production" and not config.dry_run
            result = push_schema(dbprotect_config.load(), config.database, config.source, config.target,
                                 confirmation=config.confirmation or None, dry_run=config.dry_run,
                                 actor=dagster_actor(context.run.job_name, context.run.tags),
                                 environ=dbprotect_secrets.environ(),
                                 identity=raw_backup_identity.parsed() if decrypts else None)
        context.log.info("plan:\n" + (result.plan.script() or "(no changes)"))
        context.log_event(dg.AssetObservation(
            asset_key=schema_key(config.database, config.target),
            metadata={"applied": dg.MetadataValue.bool(result.applied),
                      "plan": dg.MetadataValue.md(f"```sql\n{result.plan.script()}```"),
                      "backup_id": dg.MetadataValue.text(result.backup.backup_id if result.backup else "")}))

    @dg.job(name=SCHEMA_SYNC_JOB, description="Make one environment's schema equal to another's (DDL from "
            "results). development -> production only after lint, a fresh verified backup and a typed "
            "confirmation; dry_run (default) shows the plan and changes nothing.")
    def schema_sync() -> None:
        push_schema_op()

    return schema_sync


def build_schema_definitions(config: Config) -> dg.Definitions:
    """Snapshot assets per reachable environment, the drift check and schema_sync where both are reachable,
    the snapshot drift check in a development deployment."""
    assets: list[dg.AssetsDefinition] = []
    checks: list[dg.AssetChecksDefinition] = []
    both = False
    for database in sorted(config.databases):
        environments = reachable_environments(config, database)
        assets += [build_schema_asset(database, env) for env in environments]
        if {"production", "development"} <= set(environments):
            checks.append(build_drift_check(database))
            both = True
        elif environments == ["development"] and config.keys.development is not None:
            checks.append(build_snapshot_drift_check(database, config.database(database).rpo_hours))
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=[build_schema_sync_job()] if both else [])


def build_pre_migration_definitions(config: Config) -> dg.Definitions:
    """A pre-migration backup sensor per database this deployment backs up.

    Apart from :func:`build_schema_definitions` because each sensor targets ``<db>_backup_job``
    by name: it loads only merged with the backups domain, while the schema domain loads alone.
    """
    return dg.Definitions(sensors=[build_pre_migration_sensor(config, database)
                                   for database in protected_databases(config)])
