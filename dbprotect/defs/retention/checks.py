"""``retention_compliant`` on the production snapshot: every target holds what its policy promises.

Fails when a target holds fewer verified backups than ``min_verified``, anything older than
``max_age``, or cannot be listed (:func:`dbprotect.core.ops.retention_compliance_by_target`, per
target with its policy). It runs with each backup (the backup job selects every check of the
snapshot asset) and after each cleanup (the cleanup job reports it). In a backup run it may be
evaluated before that run's integrity check has recorded the new backup as verified: it then
judges the store as it was before the backup, which for the very first backup of a store is red
until the next evaluation.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from collections.abc import Mapping

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.ops import retention_compliance_by_target
from dbprotect.core.retention.compliance import TargetsCompliance
from dbprotect.defs.helpers import core_errors_as_failures
from dbprotect.defs.names import RETENTION_CHECK, dagster_name, database_pool, snapshot_key
from dbprotect.defs.resources import DbprotectConfigResource, SecretsResource


def retention_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), RETENTION_CHECK)


def compliance_metadata(compliance: TargetsCompliance) -> dict[str, dg.MetadataValue]:
    """Per readable target: verified and required backups, how many are too old (plotted), and its policy."""
    metadata: dict[str, dg.MetadataValue] = {}
    for judged in compliance.targets:
        if judged.report is None:
            continue
        label = dagster_name(judged.target)
        metadata[f"{label}_verified"] = dg.MetadataValue.int(judged.report.verified)
        metadata[f"{label}_required"] = dg.MetadataValue.int(judged.report.required)
        metadata[f"{label}_older_than_max_age"] = dg.MetadataValue.int(len(judged.report.too_old))
        metadata[f"{label}_policy"] = dg.MetadataValue.text(str(judged.policy))
    return metadata


def compliance_evaluation(config: Config, database: str,
                          environ: Mapping[str, str] | None = None) -> dg.AssetCheckEvaluation:
    """The check's verdict, as an event a job can log (the cleanup job reports it after sweeping)."""
    compliance = retention_compliance_by_target(config, database, environ=environ)
    key = retention_check_key(database)
    return dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=compliance.ok,
                                   metadata=compliance_metadata(compliance), description=compliance.summary())


def build_retention_check(database: str) -> dg.AssetChecksDefinition:
    key = retention_check_key(database)

    @dg.asset_check(
        pool=database_pool(database),
        asset=key.asset_key,
        name=RETENTION_CHECK,
        description="Every storage target holds at least min_verified verified backups and nothing older than "
        "max_age (per target, with its retention policy).",
    )
    def retention_compliant(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                            dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        with core_errors_as_failures():
            compliance = retention_compliance_by_target(dbprotect_config.load(), database,
                                                        environ=dbprotect_secrets.environ())
        return dg.AssetCheckResult(passed=compliance.ok, description=compliance.summary(),
                                   metadata=compliance_metadata(compliance))

    return retention_compliant
