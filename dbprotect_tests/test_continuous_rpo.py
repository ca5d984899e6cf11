"""The measured RPO against a real embedded PostgreSQL 18 with ``dbprotect wal receive`` running: it passes
while the receiver ships (and stays green on an idle server), fails when the receiver has been stopped
past ``rpo_seconds``, fails on a forged record (from the future, beyond the server's LSN); the Dagster
sensor reports it as a runless check evaluation (no run); ``status`` names each database's kind.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from dbprotect.cli.app import run
from dbprotect.cli.commands.backups import protection_line
from dbprotect.core.config.load import load_config
from dbprotect.core.config.model import Config
from dbprotect.core.continuous.rpo import newest_stored_point
from dbprotect.core.continuous.wal import stored_segments
from dbprotect.core.ops.continuous import base_backup_database, continuous_rpo
from dbprotect.core.ops.status import database_status
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect.defs import build_definitions
from dbprotect.defs.names import CONTINUOUS_RPO_CHECK, continuous_rpo_sensor_name, snapshot_key
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.test_continuous_wal import drop_slot, start_receiver, wait_for, wait_streaming, write_rows

pytestmark = pytest.mark.slow

SLOT = "dbprotect_test_rpo"
TARGET = 8
#: The target of the "stopped" case: past it the check must fail, and a small one is reached in about
#: 2 s of real time instead of ``TARGET`` (the comparison is the same code whatever the number).
STRICT_TARGET = 2
#: How far into an idle period the receiver's newest stored sample must reach: a sample taken that long
#: after the last write means the sampler kept refreshing while nothing was written (about once a second,
#: so several refreshes), which is what keeps the measured RPO from ageing on an idle server.
IDLE_REFRESH_SECONDS = 3.0


def rpo_config(write_config: Callable[..., Path], dsn: str, target: int = TARGET) -> Path:
    path = write_config(dsn)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["databases"]["shop"]["continuous"] = {"slot": SLOT, "partial_upload_seconds": 1, "incremental": False,
                                              "rpo_seconds": target}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def with_target(path: Path, target: int) -> Path:
    """A copy of the config at ``path`` whose only difference is ``rpo_seconds``."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["databases"]["shop"]["continuous"]["rpo_seconds"] = target
    strict = path.with_name(f"rpo-{target}.yaml")
    strict.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return strict


def server_now(dsn: str) -> datetime:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def wait_refreshed_while_idle(config: Config, storage: FilesystemStorage, dsn: str, what: str) -> None:
    """Wait (instead of sleeping a fixed time) until the newest stored record carries a commit-time
    sample taken ``IDLE_REFRESH_SECONDS`` after the idle period began, with the measured RPO passing at
    every look on the way: a receiver that stops refreshing its sample on an idle server lets the RPO age
    past the target before anything else refreshes it (a standby snapshot's WAL, every 15 s), and fails."""
    idle_since = server_now(dsn)

    def refreshed() -> bool:
        rpo = continuous_rpo(config, "shop")
        assert rpo.ok and rpo.measured_seconds is not None and rpo.measured_seconds <= TARGET, \
            f"{what}: {rpo.reason}"
        point = newest_stored_point(storage, "shop")
        return (point is not None and point.safe_time is not None
                and point.safe_time >= idle_since + timedelta(seconds=IDLE_REFRESH_SECONDS))

    wait_for(refreshed, f"a commit-time sample {IDLE_REFRESH_SECONDS:.0f} s into the idle period ({what})",
             TARGET + 20)


def test_measured_rpo_passes_while_shipping_and_fails_stopped_or_forged(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = rpo_config(write_config, wal_server)
    config = load_config(path)
    storage = FilesystemStorage(tmp_path / "store")
    assert "no base backup" in continuous_rpo(config, "shop").reason
    base = base_backup_database(config, "shop")
    receiver = start_receiver(path, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, SLOT)
        write_rows(wal_server, 700_000, 300, switch=False)
        wait_for(lambda: continuous_rpo(config, "shop").ok, "a passing measured RPO", 60)
        rpo = continuous_rpo(config, "shop")
        assert rpo.newest_base == base.base_id and 0 <= rpo.measured_seconds <= TARGET
        assert rpo.lag_bytes is not None and rpo.slot_wal_status in ("reserved", "extended") and rpo.slot_active
        # idle: no WAL is written, the receiver refreshes its sample; the RPO must not age past the target
        wait_refreshed_while_idle(config, storage, wal_server, "idle")
        idle = continuous_rpo(config, "shop")
        assert idle.ok and idle.measured_seconds <= TARGET, idle.reason
        # idle after a WAL switch (every base backup ends with one): no partial follows the newest
        # segment, whose record is write-once; the receiver's progress record keeps the RPO honest
        with psycopg.connect(wal_server, autocommit=True) as conn:
            switched = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
        wait_for(lambda: switched in stored_segments(storage, "shop").get(1, []), "the switched segment shipped")
        wait_refreshed_while_idle(config, storage, wal_server, "idle after a WAL switch")
        idle = continuous_rpo(config, "shop")
        assert idle.ok and idle.measured_seconds <= TARGET, idle.reason

        # the sensor: one runless evaluation, recorded on the instance, and no run launched
        definitions = build_definitions(config)
        sensor = definitions.get_sensor_def(continuous_rpo_sensor_name("shop"))
        with dg.instance_for_test() as instance:
            data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=definitions,
                                                                resources=definitions.resources))
            assert not data.run_requests
            [evaluation] = data.asset_events
            assert isinstance(evaluation, dg.AssetCheckEvaluation) and evaluation.passed
            assert evaluation.check_name == CONTINUOUS_RPO_CHECK and evaluation.asset_key == snapshot_key("shop")
            assert {"rpo_seconds_measured", "rpo_seconds_target", "receiver_lag_bytes",
                    "slot_wal_status"} <= set(evaluation.metadata)
            for event in data.asset_events:
                instance.report_runless_asset_event(event)  # what the daemon does with them
            assert instance.get_runs_count() == 0
            summary = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(snapshot_key("shop"), CONTINUOUS_RPO_CHECK)])
            assert len(summary) == 1

        # status names the kind
        _code, document, _ = run_json(capsys, "status")
        protection = document["databases"][0]["protection"]
        assert protection["kind"] == "logical+continuous" and protection["newest_base"] == base.base_id
        assert protection["measured_rpo"]["ok"] and protection["newest_stored_lsn"]
        assert run(["status"]) in (0, 11)
        assert "logical + continuous: newest base " + base.base_id in capsys.readouterr().out.replace("\n", "")
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=60)

    try:
        # forged: a record whose sample is from the future, then one claiming WAL beyond the server's LSN
        point = newest_stored_point(storage, "shop")
        assert point is not None
        honest = storage.get_bytes(point.record_key)
        record = json.loads(honest)
        storage.put_bytes(point.record_key, json.dumps({**record, "safe_time": "2099-01-01T00:00:00+00:00"}).encode())
        forged = continuous_rpo(config, "shop")
        assert not forged.ok and "after the server's now" in forged.reason
        storage.put_bytes(point.record_key, json.dumps({**record, "end_lsn": "FF/0"}).encode())
        forged = continuous_rpo(config, "shop")
        assert not forged.ok and "beyond the server's current" in forged.reason
        storage.put_bytes(point.record_key, honest)

        # stopped: writes continue, nothing ships; past rpo_seconds the check fails (and says why)
        write_rows(wal_server, 800_000, 100, switch=False)
        strict = load_config(with_target(path, STRICT_TARGET))
        wait_for(lambda: not continuous_rpo(strict, "shop").ok, "a failing measured RPO", STRICT_TARGET + 20)
        stopped = continuous_rpo(strict, "shop")
        assert "over the target" in stopped.reason and stopped.slot_active is False
        assert stopped.lag_bytes > 0
    finally:
        drop_slot(wal_server, SLOT)


def test_status_says_logical_only_for_a_database_without_continuous(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = load_config(write_config("postgresql://nobody@127.0.0.1:1/shop"))
    status = database_status(config, "shop", protection=True)
    assert status.protection is not None and status.protection.kind == "logical"
    assert protection_line(status.to_dict()["protection"]) == "logical backups only"
