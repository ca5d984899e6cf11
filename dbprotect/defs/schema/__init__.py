"""Schema domain: schema snapshots, drift checks, the schema_sync job (issue 6)."""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config import Config


def build_schema_definitions(config: Config) -> dg.Definitions:
    """The schema domain's definitions for a configuration (none yet)."""
    del config
    return dg.Definitions()
