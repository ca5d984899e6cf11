"""Sanitize domain: sanitized development copies, their blocking checks, promotion (issue 5).

Which side gets what (credential isolation, ARCHITECTURE.md):

- a deployment that holds production credentials (``production``, ``demo``) gets, per database
  with a ``sanitize:`` section, the ``[<db>, sanitized_copy]`` asset with its three blocking checks
  and the ``<db>_sanitize_job`` (``assets.py``);
- a deployment that may hold development credentials (``development``, ``demo``) gets the
  ``promote_dev_copy`` job and a ``<db>_promote_dev_copy_sensor`` per database, running only when
  ``sanitize.promote: true`` (``promotion.py``).

Thin wiring: the work and every rule are in :mod:`dbprotect.core.sanitize`.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from dbprotect.core.config.isolation import sanitized_databases
from dbprotect.core.config.model import Config
from dbprotect.defs.sanitize.assets import build_sanitize_job, build_sanitized_copy_asset, masking_key_resources
from dbprotect.defs.sanitize.promotion import build_promote_job, build_promote_sensor


def build_sanitize_definitions(config: Config) -> dg.Definitions:
    """The sanitize domain's definitions for a configuration (see the module docstring)."""
    producing = sanitized_databases(config, "production")
    promoting = sanitized_databases(config, "development") if config.keys.development else []
    assets = [build_sanitized_copy_asset(config, database) for database in producing]
    jobs: list[Any] = [build_sanitize_job(db) for db in producing]
    sensors = []
    resources: dict[str, object] = {}
    if producing:
        resources.update(masking_key_resources(config, producing))
    if promoting:
        promote_job = build_promote_job(config, promoting)
        jobs.append(promote_job)
        sensors = [build_promote_sensor(config, database, promote_job) for database in promoting]
    return dg.Definitions(assets=assets, jobs=jobs, sensors=sensors, resources=resources)


__all__ = ["build_sanitize_definitions"]
