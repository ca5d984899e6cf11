"""The copies domain: per database and extra storage target, a copy asset with its integrity check,
and per database with a ``warm_copy`` configured, the warm copy asset and ``warm_copy_verified``, where
the raw identity is held (:func:`~dbprotect.core.config.isolation.warm_copy_databases`: in a split
deployment, the verification location).

A copy runs by itself after each new snapshot whose blocking integrity check passed: the copy
assets carry ``AutomationCondition.eager()`` and :data:`~dbprotect.defs.names.COPIES_SENSOR`
evaluates them, ``RUNNING`` by default (a copy that silently never happens protects nothing).
``<db>_copy_job`` runs them by hand (launchpad) or catches a target up; ``<db>_warm_copy_job``
refreshes the warm copy by hand.
"""

from __future__ import annotations

import dagster as dg

from dbprotect.core.config.isolation import protected_databases, warm_copy_databases
from dbprotect.core.config.model import Config
from dbprotect.core.ops import copy_targets
from dbprotect.defs.copies.assets import build_copy_asset
from dbprotect.defs.copies.checks import build_copy_check
from dbprotect.defs.copies.warm import build_warm_copy_asset, build_warm_copy_check
from dbprotect.defs.names import (
    COPIES_SENSOR,
    DATABASE_TAG,
    copy_job_name,
    copy_key,
    warm_copy_job_name,
    warm_copy_key,
)


def build_copy_definitions(config: Config) -> dg.Definitions:
    assets, checks, jobs, keys = [], [], [], []
    # The warm copy decrypts a backup: defined where the raw identity is (a split deployment's
    # verification location, which then holds the warm copy's DSN and still no production DSN).
    for database in warm_copy_databases(config):
        assets.append(build_warm_copy_asset(database))
        checks.append(build_warm_copy_check(database))
        keys.append(warm_copy_key(database))
        jobs.append(dg.define_asset_job(
            warm_copy_job_name(database), selection=dg.AssetSelection.assets(warm_copy_key(database)),
            tags={DATABASE_TAG: database},
            description=f"Refresh {database!r}'s warm copy from its newest verified backup and verify it.",
        ))
    for database in protected_databases(config):
        targets = copy_targets(config, database)
        if not targets:
            continue
        for target in targets:
            assets.append(build_copy_asset(config, database, target))
            checks.append(build_copy_check(database, target))
            keys.append(copy_key(database, target))
        jobs.append(dg.define_asset_job(
            copy_job_name(database),
            selection=dg.AssetSelection.assets(*(copy_key(database, target) for target in targets)),
            tags={DATABASE_TAG: database},
            description=f"Copy {database!r}'s newest verified backup to {', '.join(targets)} and verify the copies.",
        ))
    sensors = []
    if keys:
        sensors.append(dg.AutomationConditionSensorDefinition(
            COPIES_SENSOR, target=dg.AssetSelection.assets(*keys), default_status=dg.DefaultSensorStatus.RUNNING,
            description="Copies each new verified snapshot to every extra storage target and the warm copy.",
        ))
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, sensors=sensors)


__all__ = ["build_copy_definitions"]
