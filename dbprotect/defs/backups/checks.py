"""Asset checks on a production snapshot: the backup is intact, and the RPO is met.

Two checks, two privileges. ``backup_integrity_verified`` (blocking, ERROR severity) decrypts the
newest backup, so it is the only one that takes the raw-backup identity. ``rpo_met`` reads
manifests and verification records only: its definition takes no identity at all, so the hourly
``rpo_checks_job`` runs where no private key is held.

In a backup run the RPO must judge the verification the integrity check has just recorded (two
checks of one asset start together under the multiprocess executor, and the RPO of a first
backup would fail for a race). So the backup job selects only the integrity check, and the
integrity op, after recording, logs the ``rpo_met`` evaluation computed by the same
manifest-only function the standalone check uses.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from collections.abc import Mapping

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.errors import NotFoundError
from dbprotect.core.ops import database_status, readability_recorded, verify_database_backup
from dbprotect.core.verify.integrity import IntegrityReport
from dbprotect.defs.helpers import core_errors_as_failures, safe_text
from dbprotect.defs.names import INTEGRITY_CHECK, RPO_CHECK, dagster_actor, database_pool, snapshot_key
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource


def integrity_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), INTEGRITY_CHECK)


def rpo_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), RPO_CHECK)


def integrity_result(config: Config, database: str, identity: AgeIdentityResource,
                     actor: str = "dagster", environ: Mapping[str, str] | None = None) -> dg.AssetCheckResult:
    """Rungs *stored* and *readable* on the newest backup; core records the outcome in the store.

    ``environ``: the run's secrets (:class:`SecretsResource`), holding the store's credentials.
    """
    key = integrity_check_key(database)
    with core_errors_as_failures():
        try:
            report = verify_database_backup(config, database, identity=identity.parsed(), by=actor,
                                            actor=actor, environ=environ)
        except NotFoundError as exc:
            # No backup to verify is a failed check (visible, red), not a crashed run.
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=safe_text(exc.one_line()))
    return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=report.ok,
                               description=report.summary(), metadata=integrity_metadata(report))


def stored_here_readable_elsewhere_result(config: Config, database: str, actor: str,
                                          environ: Mapping[str, str] | None) -> dg.AssetCheckResult | None:
    """The integrity check of a production location that holds no identity (``keys.raw.held_in:
    verification``): rung *stored* here (a failure is a failure), and rung *readable* as the
    verification location recorded it in the store for this backup. Until it has, no result at
    all (Dagster shows the check as skipped): neither a pass nor a failure, since nothing here read it.
    """
    key = integrity_check_key(database)
    with core_errors_as_failures():
        try:
            report = verify_database_backup(config, database, stored_only=True, by=actor, actor=actor,
                                            environ=environ)
        except NotFoundError as exc:
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=safe_text(exc.one_line()))
        if not report.ok:
            return dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=False,
                                       description=report.summary(), metadata=integrity_metadata(report))
        readable = readability_recorded(config, database, report.backup_id, environ=environ)
    if readable is None:
        return None
    metadata = {**integrity_metadata(report), "readable_ok": dg.MetadataValue.bool(readable.ok),
                "readable_detail": dg.MetadataValue.text(readable.detail),
                "readable_by": dg.MetadataValue.text(readable.by)}
    return dg.AssetCheckResult(
        asset_key=key.asset_key, check_name=key.name, passed=readable.ok, metadata=metadata,
        description=f"{report.backup_id}: stored checked here; readable {'passed' if readable.ok else 'FAILED'} "
        f"in the verification location ({readable.by}, {readable.at:%Y-%m-%d %H:%M} UTC)")


def integrity_metadata(report: IntegrityReport) -> dict[str, dg.MetadataValue]:
    """The backup id, per rung ok and detail, and the seconds of the one pass (plotted over history).

    Both rungs are computed in one streaming pass over the object, and each reports that pass's
    time: the verification took it once, so it is reported once (their maximum), never summed.
    """
    metadata: dict[str, dg.MetadataValue] = {"backup_id": dg.MetadataValue.text(report.backup_id)}
    for result in report.results:
        metadata[f"{result.rung}_ok"] = dg.MetadataValue.bool(result.ok)
        metadata[f"{result.rung}_detail"] = dg.MetadataValue.text(result.detail)
    metadata["seconds"] = dg.MetadataValue.float(round(max((result.seconds for result in report.results),
                                                           default=0.0), 3))
    return metadata


def rpo_evaluation(config: Config, database: str,
                   environ: Mapping[str, str] | None = None) -> dg.AssetCheckEvaluation:
    """Whether the newest backup that passed integrity is younger than the database's RPO.

    Reads the store's manifests and verification records only; never a key.
    """
    key = rpo_check_key(database)
    with core_errors_as_failures():
        status = database_status(config, database, environ=environ)
    rpo = status.rpo
    metadata: dict[str, dg.MetadataValue] = {
        "rpo_target_hours": dg.MetadataValue.float(rpo.rpo.total_seconds() / 3600),
        "backups": dg.MetadataValue.int(status.backups),
        "reason": dg.MetadataValue.text(rpo.reason),
    }
    if rpo.age_hours is not None:
        metadata["rpo_measured_hours"] = dg.MetadataValue.float(rpo.age_hours)
    if rpo.newest_backup_id:
        metadata["newest_verified_backup"] = dg.MetadataValue.text(rpo.newest_backup_id)
    return dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=rpo.ok,
                                   description=rpo.reason, metadata=metadata)


def rpo_result(config: Config, database: str, environ: Mapping[str, str] | None = None) -> dg.AssetCheckResult:
    """:func:`rpo_evaluation` as the result of the ``rpo_met`` check itself."""
    evaluation = rpo_evaluation(config, database, environ)
    return dg.AssetCheckResult(asset_key=evaluation.asset_key, check_name=evaluation.check_name,
                               passed=evaluation.passed, description=evaluation.description,
                               metadata=evaluation.metadata)


def build_snapshot_checks(config: Config, database: str) -> list[dg.AssetChecksDefinition]:
    """``backup_integrity_verified`` (blocking; holds the identity) and ``rpo_met`` (no key)."""
    asset = snapshot_key(database)
    rpo_hours = config.database(database).rpo_hours

    integrity_check = dg.asset_check(
        pool=database_pool(database),
        asset=asset, name=INTEGRITY_CHECK, blocking=True,
        description=("The newest backup's SHA-256 matches its manifest; it decrypts, decompresses, "
                     "`pg_restore --list` parses it, and its tables match the manifest. The result is recorded "
                     "in the store; in a backup run, `rpo_met` is evaluated right after it.")
        if config.keys.raw.held_in == "this_deployment" else
        ("The newest backup's SHA-256 matches its manifest (checked here). This location holds no private "
         "key: readability (decrypt, decompress, `pg_restore --list`, tables) runs in the verification code "
         "location, which records it in the store and here; until it has, this check is skipped, not passed."),
    )

    def backup_integrity_verified(context: dg.AssetCheckExecutionContext,
                                  dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                                  raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                                  dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            config = dbprotect_config.load()
        environ = dbprotect_secrets.environ()
        actor = dagster_actor(context.run.job_name, context.run.tags)
        result = integrity_result(config, database, raw_backup_identity, actor, environ)
        # The RPO as it stands now that this verification is recorded (manifests only).
        context.op_execution_context.log_event(rpo_evaluation(config, database, environ))
        return result

    def stored_integrity_verified(context: dg.AssetCheckExecutionContext,
                                  dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                                  dbprotect_secrets: dg.ResourceParam[SecretsResource]):
        # No identity parameter: this location does not hold it (keys.raw.held_in: verification).
        # No return annotation: it may be None (a skipped check), which Dagster's type check of a
        # declared AssetCheckResult would refuse.
        with core_errors_as_failures():
            config = dbprotect_config.load()
        environ = dbprotect_secrets.environ()
        actor = dagster_actor(context.run.job_name, context.run.tags)
        result = stored_here_readable_elsewhere_result(config, database, actor, environ)
        if result is None:
            context.log.info(f"{database}: rung stored passed here; readability of this backup runs in the "
                             "verification code location (keys.raw.held_in), which has not recorded it yet")
            return None
        context.op_execution_context.log_event(rpo_evaluation(config, database, environ))
        return result

    # A location without the identity defines the check without the identity parameter, so nothing
    # it defines asks for a key it does not hold (dbprotect_tests/test_deploy.py checks each location).
    integrity = integrity_check(stored_integrity_verified if config.keys.raw.held_in == "verification"
                                else backup_integrity_verified)

    @dg.asset_check(
        pool=database_pool(database),
        asset=asset, name=RPO_CHECK,
        description=f"The newest backup that passed integrity is at most {rpo_hours:g} h old. Reads "
        "manifests and verification records only: it runs without any private key.",
    )
    def rpo_met(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            config = dbprotect_config.load()
        return rpo_result(config, database, dbprotect_secrets.environ())

    return [integrity, rpo_met]
