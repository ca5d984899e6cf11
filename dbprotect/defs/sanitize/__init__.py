"""Sanitize domain: sanitized development copies, their blocking checks, promotion (issue 5)."""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config import Config


def build_sanitize_definitions(config: Config) -> dg.Definitions:
    """The sanitize domain's definitions for a configuration (none yet)."""
    del config
    return dg.Definitions()
