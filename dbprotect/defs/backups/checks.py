"""Asset checks on a production snapshot: the backup is intact, and the RPO is met.

Both checks live in one ``multi_asset_check`` on purpose. In a backup run, the RPO check must
see the verification the integrity check has just recorded; two separate checks would run
concurrently (the multiprocess executor starts them together), and the RPO check of a first
backup would fail for a race, not for a missing recovery point. One op evaluates integrity
first, then RPO. ``can_subset=True`` lets the hourly RPO job run the RPO check alone, so a
backup that never happened is noticed without taking one. (The op's resources are initialized
as a whole, so that job also resolves the identity variable; the RPO check never uses it.)

A failed integrity check has ERROR severity and is blocking: the backup run fails with it.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from collections.abc import Iterator

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.errors import NotFoundError
from dbprotect.core.ops import database_status, verify_database_backup
from dbprotect.core.verify.integrity import IntegrityReport
from dbprotect.defs.helpers import core_errors_as_failures, safe_text
from dbprotect.defs.names import INTEGRITY_CHECK, RPO_CHECK, dagster_actor, dagster_name, database_pool, snapshot_key
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource


def integrity_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), INTEGRITY_CHECK)


def rpo_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), RPO_CHECK)


def integrity_result(config: Config, database: str, identity: AgeIdentityResource,
                     actor: str = "dagster") -> dg.AssetCheckResult:
    """Rungs *stored* and *readable* on the newest backup; core records the outcome in the store."""
    key = integrity_check_key(database)
    with core_errors_as_failures():
        try:
            report = verify_database_backup(config, database, identity=identity.parsed(), by=actor,
                                            actor=actor)
        except NotFoundError as exc:
            # No backup to verify is a failed check (visible, red), not a crashed run.
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=safe_text(exc.one_line()))
    return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=report.ok,
                               description=report.summary(), metadata=integrity_metadata(report))


def integrity_metadata(report: IntegrityReport) -> dict[str, dg.MetadataValue]:
    """The backup id, then per rung: ok, detail, and seconds as a number (plotted over history)."""
    metadata: dict[str, dg.MetadataValue] = {"backup_id": dg.MetadataValue.text(report.backup_id)}
    for result in report.results:
        metadata[f"{result.rung}_ok"] = dg.MetadataValue.bool(result.ok)
        metadata[f"{result.rung}_detail"] = dg.MetadataValue.text(result.detail)
        metadata[f"{result.rung}_seconds"] = dg.MetadataValue.float(round(result.seconds, 3))
    metadata["seconds"] = dg.MetadataValue.float(round(sum(result.seconds for result in report.results), 3))
    return metadata


def rpo_result(config: Config, database: str) -> dg.AssetCheckResult:
    """Whether the newest backup that passed integrity is younger than the database's RPO."""
    key = rpo_check_key(database)
    with core_errors_as_failures():
        status = database_status(config, database)
    rpo = status.rpo
    metadata: dict[str, dg.MetadataValue] = {
        "rpo_hours": dg.MetadataValue.float(rpo.rpo.total_seconds() / 3600),
        "backups": dg.MetadataValue.int(status.backups),
        "reason": dg.MetadataValue.text(rpo.reason),
    }
    if rpo.age_hours is not None:
        metadata["age_hours"] = dg.MetadataValue.float(rpo.age_hours)
    if rpo.newest_backup_id:
        metadata["newest_verified_backup"] = dg.MetadataValue.text(rpo.newest_backup_id)
    return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=rpo.ok,
                               description=rpo.reason, metadata=metadata)


def build_snapshot_checks(config: Config, database: str) -> dg.AssetChecksDefinition:
    """``backup_integrity_verified`` (blocking) and ``rpo_met`` on ``[<database>, production_snapshot]``."""
    asset = snapshot_key(database)
    rpo_hours = config.database(database).rpo_hours
    integrity_key, rpo_key = integrity_check_key(database), rpo_check_key(database)

    @dg.multi_asset_check(
        pool=database_pool(database),
        name=f"{dagster_name(database)}_backup_checks",
        specs=[
            dg.AssetCheckSpec(
                INTEGRITY_CHECK, asset=asset, blocking=True,
                description="The newest backup's SHA-256 matches its manifest; it decrypts, decompresses, "
                "pg_restore --list parses it, and its tables match the manifest. The result is recorded "
                "in the store.",
            ),
            dg.AssetCheckSpec(
                RPO_CHECK, asset=asset,
                description=f"The newest backup that passed integrity is at most {rpo_hours:g} h old.",
            ),
        ],
        can_subset=True,
    )
    def backup_checks(context: dg.AssetCheckExecutionContext, dbprotect_config: DbprotectConfigResource,
                      raw_backup_identity: AgeIdentityResource) -> Iterator[dg.AssetCheckResult]:
        with core_errors_as_failures():
            config = dbprotect_config.load()
        selected = context.selected_asset_check_keys
        if integrity_key in selected:  # first: the RPO check counts what it records
            yield integrity_result(config, database, raw_backup_identity,
                                   dagster_actor(context.run.job_name, context.run.tags))
        if rpo_key in selected:
            yield rpo_result(config, database)

    return backup_checks
