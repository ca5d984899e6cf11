"""The restores domain: rung 3 (``restore_verified``), rung 4 (drills) and the on-call ``restore`` job.

Thin wiring over :mod:`dbprotect.core.restore.drill` and :mod:`dbprotect.core.restore.oncall`; see
``checks.py`` (the two checks on each snapshot asset), ``schedules.py`` (when they run) and
``jobs.py`` (the launchpad form of the restore job).

In a split deployment (``keys.raw.held_in: verification``) the production location holds no
identity: it defines the two checks as recorded verdicts only, and neither the restore
verification and drill jobs (they run in the verification location, :mod:`dbprotect.defs.verification`)
nor the on-call ``restore`` job (it needs the production DSN *and* the identity, which no
location of that deployment holds together: restore there with ``dbprotect restore`` where both
are, see the README).
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.isolation import holds_raw_identity, protected_databases
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
    if not holds_raw_identity(config):
        # A split deployment's production location: the checks show what the verification location
        # recorded; nothing here restores (no job, sensor or schedule that could only fail with DBP008).
        return dg.Definitions(asset_checks=[check for database in databases
                                            for check in build_restore_checks(config, database)])
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
