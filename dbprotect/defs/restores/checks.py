"""Rungs 3 and 4 as asset checks on the production snapshot: ``restore_verified`` and
``restore_drill_within_rto``.

Each is its own check (not part of the backup job's integrity/RPO op) and runs in its own
per-database job, because a restore is the heaviest thing dbprotect does: on a small shared
machine it should not compete with the backup for the cores, and two runs recording results in
the same manifest at once would lose one of them. The jobs carry the database run tag, so
``dagster.yaml``'s one-run-per-database limit queues them behind a running backup.

Every duration is numeric metadata (the UI plots restore time and RTO over history); the
problems of a failed verification are text, one per line. Both checks record their outcome in
the store and the audit log through core, exactly as ``dbprotect drill`` does.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import math
from collections.abc import Mapping

import dagster as dg

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.isolation import holds_raw_identity
from dbprotect.core.config.model import Config
from dbprotect.core.errors import NotFoundError
from dbprotect.core.ops import (
    drill_database,
    list_database_backups,
    newest_recorded_rung,
    primary_store,
    restore_verify_database,
    rung_recorded,
)
from dbprotect.core.restore.drill import DrillResult
from dbprotect.core.restore.staged import RestoreVerification
from dbprotect.defs.helpers import core_errors_as_failures, numeric_metadata, safe_text
from dbprotect.defs.names import DRILL_CHECK, RESTORE_CHECK, database_pool, snapshot_key
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource

#: Counts among the metrics; every other metric is a measured float (seconds).
_INT_METRICS = frozenset({"tables", "rows", "objects", "problems"})


def restore_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), RESTORE_CHECK)


def drill_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), DRILL_CHECK)


def restore_verified_result(config: Config, database: str, identity: AgeIdentityResource,
                            environ: Mapping[str, str] | None = None) -> dg.AssetCheckResult:
    """``environ``: the run's secrets (:class:`SecretsResource`): store credentials, the scratch admin DSN."""
    key = restore_check_key(database)
    with core_errors_as_failures():
        audit = AuditLog(primary_store(config, database, environ), actor="dagster")
        try:
            verification = restore_verify_database(config, database, by="dagster", identity=identity.parsed(),
                                                   audit=audit, environ=environ)
        except NotFoundError as exc:  # nothing to restore: a red check, not a crashed run
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=safe_text(exc.one_line()))
    return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=verification.ok,
                               description=verification.detail, metadata=verification_metadata(verification))


def verification_metadata(verification: RestoreVerification) -> dict[str, dg.MetadataValue]:
    return {
        "backup_id": dg.MetadataValue.text(verification.backup_id),
        **numeric_metadata(verification.metrics(), counts=_INT_METRICS),
        "problems_text": dg.MetadataValue.text("\n".join(verification.problems) or "none"),
    }


def drill_result(config: Config, database: str, identity: AgeIdentityResource,
                 environ: Mapping[str, str] | None = None) -> dg.AssetCheckResult:
    key = drill_check_key(database)
    with core_errors_as_failures():
        audit = AuditLog(primary_store(config, database, environ), actor="dagster:drill")
        try:
            result = drill_database(config, database, by="dagster:drill", identity=identity.parsed(), audit=audit,
                                    environ=environ)
        except NotFoundError as exc:
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=safe_text(exc.one_line()))
    return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=result.ok,
                               description=result.reason, metadata=drill_metadata(result))


def drill_metadata(result: DrillResult) -> dict[str, dg.MetadataValue]:
    return {**drill_metrics_metadata(result.backup_id, result.metrics()),
            "problems_text": dg.MetadataValue.text("\n".join(result.verification.problems) or "none")}


def drill_metrics_metadata(backup_id: str, metrics: Mapping[str, object]) -> dict[str, dg.MetadataValue]:
    """A drill's numbers as the UI plots them, from a live result or from the drill recorded in the store.

    Recorded metrics come from the store, which is untrusted: only finite numbers are kept.
    """
    numbers = {name: float(value) for name, value in metrics.items()
               if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}
    metadata = {"backup_id": dg.MetadataValue.text(backup_id), **numeric_metadata(numbers, counts=_INT_METRICS)}
    if "rto_seconds" in numbers:
        metadata["rto_minutes"] = dg.MetadataValue.float(round(numbers["rto_seconds"] / 60, 3))
    if "rpo_seconds" in numbers:
        metadata["rpo_measured_hours"] = dg.MetadataValue.float(round(numbers["rpo_seconds"] / 3600, 3))
    return metadata


def recorded_restore_result(config: Config, database: str,
                            environ: Mapping[str, str] | None = None) -> dg.AssetCheckResult | None:
    """``restore_verified`` where it does not run (a split deployment's production location, no
    identity): the rung-*restored* result the verification location recorded for the newest backup.
    None (Dagster: skipped) until one is recorded: nothing here restored it, so never a pass.
    """
    key = restore_check_key(database)
    with core_errors_as_failures():
        newest = next((entry for entry in list_database_backups(config, database, environ=environ).entries
                       if entry.complete), None)
        if newest is None:
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=f"no complete backup of {database!r} to restore")
        recorded = rung_recorded(config, database, newest.backup_id, "restored", environ=environ)
    if recorded is None:
        return None
    return dg.AssetCheckResult(
        asset_key=key.asset_key, check_name=key.name, passed=recorded.ok, metadata=recorded_metadata(
            newest.backup_id, recorded.metrics or {}, recorded.by),
        description=f"{newest.backup_id}: restore verification {'passed' if recorded.ok else 'FAILED'} in the "
        f"verification location ({recorded.by}, {recorded.at:%Y-%m-%d %H:%M} UTC): {safe_text(recorded.detail)}")


def recorded_drill_result(config: Config, database: str,
                          environ: Mapping[str, str] | None = None) -> dg.AssetCheckResult | None:
    """``restore_drill_within_rto`` where it does not run: the newest drill the verification
    location recorded (of whichever backup it drilled); None (skipped) until one is recorded."""
    key = drill_check_key(database)
    with core_errors_as_failures():
        found = newest_recorded_rung(config, database, "drilled", environ=environ)
    if found is None:
        return None
    backup_id, recorded = found
    return dg.AssetCheckResult(
        asset_key=key.asset_key, check_name=key.name, passed=recorded.ok,
        metadata=recorded_metadata(backup_id, recorded.metrics or {}, recorded.by),
        description=f"{backup_id}: drill {'passed' if recorded.ok else 'FAILED'} in the verification location "
        f"({recorded.by}, {recorded.at:%Y-%m-%d %H:%M} UTC): {safe_text(recorded.detail)}")


def recorded_metadata(backup_id: str, metrics: Mapping[str, object], by: str) -> dict[str, dg.MetadataValue]:
    return {**drill_metrics_metadata(backup_id, metrics), "recorded_by": dg.MetadataValue.text(safe_text(by))}


def build_restore_checks(config: Config, database: str) -> list[dg.AssetChecksDefinition]:
    """``restore_verified`` and ``restore_drill_within_rto`` on ``[<database>, production_snapshot]``.

    Where the raw identity is not held (a split deployment's production location), each shows the
    result the verification location recorded in the store, or nothing (skipped) until it has.
    """
    if not holds_raw_identity(config):
        return build_recorded_restore_checks(config, database)
    spec = config.database(database)

    @dg.asset_check(
        pool=database_pool(database),
        asset=snapshot_key(database), name=RESTORE_CHECK,
        description="The newest backup restores into a scratch database (same PostgreSQL major version) "
        "and every table's row count and checksum, the schema objects, sequences and large objects "
        "equal the manifest. The scratch database is always dropped; the result is recorded in the store.",
    )
    def restore_verified(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                         raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                         dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
        return restore_verified_result(loaded, database, raw_backup_identity, dbprotect_secrets.environ())

    @dg.asset_check(
        pool=database_pool(database),
        asset=snapshot_key(database), name=DRILL_CHECK,
        description=f"A restore drill: the newest backup restored and verified as in restore_verified, "
        f"within the RTO target of {spec.rto_minutes:g} min. RTO and RPO at drill time are plotted.",
    )
    def restore_drill_within_rto(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                                 raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                                 dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
        return drill_result(loaded, database, raw_backup_identity, dbprotect_secrets.environ())

    return [restore_verified, restore_drill_within_rto]


def build_recorded_restore_checks(config: Config, database: str) -> list[dg.AssetChecksDefinition]:
    """The two checks as a location without the identity shows them: recorded verdicts, no key taken."""
    spec = config.database(database)

    @dg.asset_check(
        pool=database_pool(database), asset=snapshot_key(database), name=RESTORE_CHECK,
        description="The newest backup restored into a scratch database and verified by content, as the "
        "verification code location recorded it in the store (it holds the key and the scratch server). "
        "Skipped, never passed, until it has.",
    )
    def restore_verified(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                         dbprotect_secrets: dg.ResourceParam[SecretsResource]):  # None: skipped
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
        return recorded_restore_result(loaded, database, dbprotect_secrets.environ())

    @dg.asset_check(
        pool=database_pool(database), asset=snapshot_key(database), name=DRILL_CHECK,
        description=f"The newest restore drill (RTO target {spec.rto_minutes:g} min), as the verification code "
        "location recorded it in the store. Skipped, never passed, until one is recorded.",
    )
    def restore_drill_within_rto(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                                 dbprotect_secrets: dg.ResourceParam[SecretsResource]):  # None: skipped
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
        return recorded_drill_result(loaded, database, dbprotect_secrets.environ())

    return [restore_verified, restore_drill_within_rto]
