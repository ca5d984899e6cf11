"""What dbprotect did outside a Dagster run, recorded in a Dagster instance as runless events.

``dbprotect demo`` backs up and verifies through :mod:`dbprotect.core.ops`, as the CLI does, not
through a Dagster run (a run's process start-up would double the demo's minute). Without this,
the UI it points to would say "Never materialized" over a store that holds a verified backup:
the UI would not show the truth. So the demo reports, with ``report_runless_asset_event``, the
same events the jobs would have logged, built by the same functions the assets and checks use
(one metadata rule, not two): the snapshot's materialization, ``backup_integrity_verified``,
``rpo_met`` and ``retention_compliant`` on it, each reachable schema snapshot with
``schema_matches_development``, and (``dbprotect demo --all``) the drill of that backup as
``restore_drill_within_rto``.

Every RPO, retention, drill and drift verdict is computed here from the store and the databases
as they are now, never copied from the caller's summary.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.backup.stream import BackupResult
from dbprotect.core.config.isolation import reachable_environments, resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.ops import drift_between, primary_store
from dbprotect.core.pg.dsn import register_dsn, server_label
from dbprotect.core.schema.snapshot import take_snapshot
from dbprotect.core.store.catalog import recorded_verifications
from dbprotect.core.verify.integrity import IntegrityReport
from dbprotect.defs.backups.assets import snapshot_metadata
from dbprotect.defs.backups.checks import integrity_check_key, integrity_metadata, rpo_evaluation
from dbprotect.defs.names import snapshot_key
from dbprotect.defs.restores.checks import drill_check_key, drill_metrics_metadata
from dbprotect.defs.retention.checks import compliance_evaluation
from dbprotect.defs.schema import drift_evaluation, schema_key, schema_metadata


def backup_events(config: Config, database: str, backup: BackupResult, integrity: IntegrityReport,
                  dsn: str) -> list[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """The snapshot's materialization and its integrity, RPO and retention verdicts."""
    source = server_label(register_dsn(dsn))
    key = integrity_check_key(database)
    return [
        dg.AssetMaterialization(asset_key=snapshot_key(database), metadata=snapshot_metadata(backup, source),
                                description=f"backup {backup.manifest.backup_id} (reported by dbprotect demo)"),
        dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=integrity.ok,
                                description=integrity.summary(), metadata=integrity_metadata(integrity)),
        rpo_evaluation(config, database),
        compliance_evaluation(config, database),
    ]


def schema_events(config: Config, database: str,
                  environ: dict[str, str] | None = None) -> list[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Each reachable environment's schema snapshot, and the drift check where both are reachable."""
    events: list[dg.AssetMaterialization | dg.AssetCheckEvaluation] = []
    environments = reachable_environments(config, database)
    for environment in environments:
        snapshot = take_snapshot(resolve_dsn(config, database, environment, environ), pg_bin_dir=config.tool_dirs)
        events.append(dg.AssetMaterialization(asset_key=schema_key(database, environment),
                                              metadata=schema_metadata(snapshot),
                                              tags={"dagster/data_version": snapshot.sha256}))
    if {"production", "development"} <= set(environments):
        events.append(drift_evaluation(drift_between(config, database, environ=environ), database))
    return events


def drill_events(config: Config, database: str, backup_id: str) -> list[dg.AssetCheckEvaluation]:
    """The newest drill the store records for ``backup_id``, as ``restore_drill_within_rto``; none if none ran.

    Read from the store's verification records of that backup (what the drill wrote), so the
    UI shows the drill that happened, with its RTO, not what the caller says happened. Only a drill
    of this backup counts: an older backup's drill is not reported again as a new evaluation.
    """
    drills = [check for check in recorded_verifications(primary_store(config, database), database, backup_id)
              if check.rung == "drilled"]
    if not drills:
        return []
    drill = drills[-1]  # recorded in write order
    key = drill_check_key(database)
    return [dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=drill.ok,
                                    description=drill.detail,
                                    metadata=drill_metrics_metadata(backup_id, drill.metrics))]


Event = dg.AssetMaterialization | dg.AssetCheckEvaluation


def report_events(instance: dg.DagsterInstance, events: list[Event]) -> None:
    for event in events:
        instance.report_runless_asset_event(event)


__all__ = ["backup_events", "drill_events", "report_events", "schema_events"]
