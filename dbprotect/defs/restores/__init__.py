"""The restores domain: rung 3 (``restore_verified``), rung 4 (drills) and the on-call ``restore`` job.

Thin wiring over :mod:`dbprotect.core.restore.drill` and :mod:`dbprotect.core.restore.oncall`; see
``checks.py`` (the two checks on each snapshot asset), ``schedules.py`` (when they run) and
``jobs.py`` (the launchpad form of the restore job).
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.isolation import protected_databases
from dbprotect.core.config.model import Config
from dbprotect.defs.restores.checks import build_restore_checks
from dbprotect.defs.restores.jobs import build_restore_job
from dbprotect.defs.restores.schedules import (
    build_drill_job,
    build_drill_schedule,
    build_restore_verification_job,
    build_restore_verification_sensor,
)


def build_restore_definitions(config: Config) -> dg.Definitions:
    """Checks, jobs, the sensor and the drill schedule for every database this deployment backs up."""
    databases = protected_databases(config)
    checks: list[dg.AssetChecksDefinition] = []
    jobs: list[dg.UnresolvedAssetJobDefinition | dg.JobDefinition] = []
    schedules, sensors = [], []
    for database in databases:
        checks += build_restore_checks(config, database)
        verification_job, drill_job = build_restore_verification_job(database), build_drill_job(database)
        jobs += [verification_job, drill_job]
        sensors.append(build_restore_verification_sensor(database, verification_job))
        schedules.append(build_drill_schedule(config, database, drill_job))
    if databases:
        jobs.append(build_restore_job(config))
    return dg.Definitions(asset_checks=checks, jobs=jobs, schedules=schedules, sensors=sensors)


__all__ = ["build_restore_definitions"]
