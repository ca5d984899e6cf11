"""The continuous-protection domain in Dagster: point-in-time drills (``drills.py``).

The WAL receiver is not here on purpose: it is a long-running process (``dbprotect wal receive``),
not a run.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.isolation import protected_databases
from dbprotect.core.config.model import Config
from dbprotect.defs.continuous.drills import build_pitr_drill_definitions


def build_continuous_definitions(config: Config) -> dg.Definitions:
    """Definitions for every database this deployment protects continuously."""
    return build_pitr_drill_definitions(config, list(protected_databases(config)))


__all__ = ["build_continuous_definitions"]
