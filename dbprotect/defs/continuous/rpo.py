"""``continuous_rpo``: the measured RPO of continuous protection, evaluated every 45 s without a run.

A run per evaluation would put ~2,000 runs a day per database in the run list and make the check
wait for the run queue; so a sensor computes the evaluation and returns it in
``SensorResult(asset_events=…)``, which the daemon records as a runless check evaluation. The check is
also an ordinary asset check (the same function), so it can be run by hand from the UI. Neither holds a
private key: the rule reads WAL and base records and asks the source server
(:func:`dbprotect.core.ops.continuous.continuous_rpo`).
"""

# No "from __future__ import annotations": Dagster reads the context annotation at runtime.
import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.continuous.rpo import ContinuousRpo
from dbprotect.core.ops.continuous import continuous_rpo
from dbprotect.defs.helpers import safe_text
from dbprotect.defs.names import CONTINUOUS_RPO_CHECK, continuous_rpo_sensor_name, snapshot_key
from dbprotect.defs.resources import SecretsResource

#: Between 30 and 60 s (issue 15): the daemon ticks sensors about every 30 s.
RPO_SENSOR_INTERVAL_SECONDS = 45


def continuous_rpo_check_key(database: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(snapshot_key(database), CONTINUOUS_RPO_CHECK)


def rpo_metadata(rpo: ContinuousRpo) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "rpo_seconds_target": dg.MetadataValue.float(float(rpo.target_seconds)),
        "slot_wal_status": dg.MetadataValue.text(rpo.slot_wal_status or "unknown"),
        "reason": dg.MetadataValue.text(safe_text(rpo.reason)),
    }
    if rpo.measured_seconds is not None:
        metadata["rpo_seconds_measured"] = dg.MetadataValue.float(rpo.measured_seconds)
    if rpo.lag_bytes is not None:
        metadata["receiver_lag_bytes"] = dg.MetadataValue.int(rpo.lag_bytes)
    if rpo.slot_active is not None:
        metadata["slot_active"] = dg.MetadataValue.bool(rpo.slot_active)
    if rpo.newest_lsn:
        metadata["newest_stored_lsn"] = dg.MetadataValue.text(rpo.newest_lsn)
    return metadata


def continuous_rpo_evaluation(config: Config, database: str,
                              environ: dict[str, str] | None) -> dg.AssetCheckEvaluation:
    """The measured RPO as a check evaluation (a failure to measure is a failed evaluation, never a pass).

    The production DSN and the store's credentials come from the secrets resource (``environ``), as
    every run's do: never from the process environment."""
    key = continuous_rpo_check_key(database)
    rpo = continuous_rpo(config, database, environ=environ)
    return dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=rpo.ok,
                                   description=safe_text(rpo.reason), metadata=rpo_metadata(rpo))


def build_continuous_rpo_check(config: Config, database: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=snapshot_key(database), name=CONTINUOUS_RPO_CHECK,
                    description=f"Measured RPO of {database!r}'s continuous protection against its rpo_seconds "
                                "(evaluated every 45 s by a sensor, without a run).")
    def continuous_rpo_check(dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        evaluation = continuous_rpo_evaluation(config, database, dbprotect_secrets.environ())
        return dg.AssetCheckResult(passed=evaluation.passed, description=evaluation.description,
                                   metadata=evaluation.metadata)

    return continuous_rpo_check


def build_continuous_rpo_sensor(config: Config, database: str) -> dg.SensorDefinition:
    @dg.sensor(name=continuous_rpo_sensor_name(database), minimum_interval_seconds=RPO_SENSOR_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Reports {database!r}'s continuous_rpo as a runless check evaluation every "
                           f"{RPO_SENSOR_INTERVAL_SECONDS} s (no run is launched).")
    def continuous_rpo_sensor(context: dg.SensorEvaluationContext,
                              dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.SensorResult:
        return dg.SensorResult(asset_events=[continuous_rpo_evaluation(config, database, dbprotect_secrets.environ())])

    return continuous_rpo_sensor


def build_continuous_rpo_definitions(config: Config, databases: list[str]) -> dg.Definitions:
    """The check and its sensor, for each of ``databases`` that has ``continuous:``."""
    continuous = [database for database in databases if config.database(database).continuous is not None]
    return dg.Definitions(asset_checks=[build_continuous_rpo_check(config, database) for database in continuous],
                          sensors=[build_continuous_rpo_sensor(config, database) for database in continuous])
