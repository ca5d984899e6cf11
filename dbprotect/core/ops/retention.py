"""Retention compliance of a configured database: every storage target against its own policy.

The config-level side of :mod:`dbprotect.core.retention.compliance`: it opens each target's store,
lists its backups (incomplete uploads included: they hold data too) and lets
:func:`~dbprotect.core.retention.compliance.compliance_by_target` judge them. The Dagster check
``retention_compliant`` and the cleanup job report exactly this.
"""

from __future__ import annotations

from datetime import UTC, datetime

from dbprotect.core.config.model import Config
from dbprotect.core.ops.context import target_store
from dbprotect.core.retention.compliance import TargetsCompliance, compliance_by_target
from dbprotect.core.store.catalog import BackupEntry, list_backups


def retention_compliance_by_target(config: Config, database: str, now: datetime | None = None) -> TargetsCompliance:
    """Whether each storage target of ``database`` holds what its retention policy asks, primary first.

    A store that cannot be opened or listed is reported as a problem of that target, not raised.
    """
    spec = config.database(database)

    def listing(target: str) -> list[BackupEntry]:
        return list_backups(target_store(config, database, target), database, include_incomplete=True)

    policies = [(target, spec.policy_for(target)) for target in config.storage_names(database)]
    return compliance_by_target(database, policies, listing, now or datetime.now(UTC))


__all__ = ["retention_compliance_by_target"]
