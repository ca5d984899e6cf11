"""``retention_compliant`` on the production snapshot: every target holds what its policy promises.

Fails when a target holds fewer verified backups than ``min_verified``, or anything older than
``max_age`` (:func:`dbprotect.core.retention.policy.retention_compliance`, per target with its policy).
It runs with each backup (the backup job selects every check of the snapshot asset) and after each
cleanup (the cleanup job reports it). In a backup run it may be evaluated before that run's
integrity check has recorded the new backup as verified: it then judges the store as it was
before the backup, which for the very first backup of a store is red until the next evaluation.
"""

# No "from __future__ import annotations": Dagster inspects the context annotation at runtime.
from datetime import UTC, datetime

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.errors import DbprotectError
from dbprotect.core.ops import target_store
from dbprotect.core.retention.policy import retention_compliance
from dbprotect.core.store.catalog import list_backups
from dbprotect.defs.failures import core_errors_as_failures
from dbprotect.defs.names import RETENTION_CHECK, dagster_name, snapshot_key
from dbprotect.defs.resources import CONFIG_RESOURCE, DbprotectConfigResource


def retention_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), RETENTION_CHECK)


def compliance_evaluation(config: Config, database: str, now: datetime | None = None) -> dg.AssetCheckEvaluation:
    """The check's verdict over every target; a store that cannot be listed fails it, naming the store."""
    now = now or datetime.now(UTC)
    spec = config.database(database)
    problems: list[str] = []
    metadata: dict[str, dg.MetadataValue] = {}
    for target in config.storage_names(database):
        policy = spec.policy_for(target)
        label = dagster_name(target)
        try:
            entries = list_backups(target_store(config, database, target), database, include_incomplete=True)
        except DbprotectError as exc:
            problems.append(f"{target}: store cannot be read: {exc.one_line()}")
            continue
        report = retention_compliance(entries, policy, now, database=database)
        problems += [f"{target}: {problem}" for problem in report.problems]
        metadata[f"{label}_verified"] = dg.MetadataValue.int(report.verified)
        metadata[f"{label}_required"] = dg.MetadataValue.int(report.required)
        metadata[f"{label}_older_than_max_age"] = dg.MetadataValue.int(len(report.too_old))
        metadata[f"{label}_policy"] = dg.MetadataValue.text(str(policy))
    key = retention_check_key(database)
    description = "; ".join(problems) if problems else "every target holds what its retention policy asks"
    return dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=not problems,
                                   metadata=metadata, description=description)


def build_retention_check(database: str) -> dg.AssetChecksDefinition:
    key = retention_check_key(database)

    @dg.asset_check(
        asset=key.asset_key,
        name=RETENTION_CHECK,
        description="Every storage target holds at least min_verified verified backups and nothing older than "
        "max_age (per target, with its retention policy).",
        required_resource_keys={CONFIG_RESOURCE},
    )
    def retention_compliant(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        settings: DbprotectConfigResource = getattr(context.resources, CONFIG_RESOURCE)
        with core_errors_as_failures():
            evaluation = compliance_evaluation(settings.load(), database)
        return dg.AssetCheckResult(passed=evaluation.passed, description=evaluation.description,
                                   metadata=evaluation.metadata)

    return retention_compliant
