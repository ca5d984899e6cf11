"""The backups domain: per protected database, a group with its snapshot asset, checks, job and schedule."""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.isolation import protected_databases
from dbprotect.core.config.model import Config
from dbprotect.defs.backups.assets import build_snapshot_asset
from dbprotect.defs.backups.checks import build_snapshot_checks
from dbprotect.defs.backups.schedules import (
    build_backup_job,
    build_backup_schedule,
    build_rpo_checks_job,
    build_rpo_checks_schedule,
)


def build_backup_definitions(config: Config) -> dg.Definitions:
    """Assets, checks, jobs and schedules for every database this deployment backs up."""
    databases = protected_databases(config)
    assets, checks, jobs, schedules = [], [], [], []
    for database in databases:
        job = build_backup_job(database)
        assets.append(build_snapshot_asset(config, database))
        checks += build_snapshot_checks(config, database)
        jobs.append(job)
        schedules.append(build_backup_schedule(config, database, job))
    if databases:
        rpo_job = build_rpo_checks_job(databases)
        jobs.append(rpo_job)
        schedules.append(build_rpo_checks_schedule(config, rpo_job, databases))
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules)


__all__ = ["build_backup_definitions"]
