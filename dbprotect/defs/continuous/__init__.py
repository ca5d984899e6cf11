"""The continuous-protection domain in Dagster: point-in-time drills (``drills.py``), the measured RPO
(``rpo.py``: the ``continuous_rpo`` check, reported by a sensor without a run per evaluation) and base
backups (``base.py``: job and schedule).

The WAL receiver is not here on purpose: it is a long-running process (``dbprotect wal receive``),
not a run.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.isolation import holds_raw_identity, protected_databases
from dbprotect.core.config.model import Config
from dbprotect.defs.continuous.base import build_base_backup_definitions
from dbprotect.defs.continuous.drills import build_pitr_drill_definitions
from dbprotect.defs.continuous.rpo import build_continuous_rpo_definitions


def build_continuous_definitions(config: Config) -> dg.Definitions:
    """Definitions for every database this deployment protects continuously."""
    databases = list(protected_databases(config))
    # Point-in-time drills decrypt: not where the raw identity is not held (a split production location).
    drilled = databases if holds_raw_identity(config) else []
    return dg.Definitions.merge(build_pitr_drill_definitions(config, drilled),
                                build_continuous_rpo_definitions(config, databases),
                                build_base_backup_definitions(config, databases))


__all__ = ["build_continuous_definitions"]
