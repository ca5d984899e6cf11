"""Heartbeats and point-in-time drills against a real embedded PostgreSQL 18 (``wal_server``).

The receiver runs as a real process writing a heartbeat a second; a drill restores to a random moment
between two of them and proves the landing. The proof is tested to fail: a restore that lands later or
earlier than claimed fails the drill (exit 7 in the CLI); heartbeats too sparse refuse (DBP967) rather
than pass; an environment failure is raised as itself and records no failed check.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pyrage
import pytest

from dbprotect.core.continuous.base import take_base_backup
from dbprotect.core.continuous.drill import PitrDrillResult, choose_moment, recorded_pitr_drills, run_pitr_drill
from dbprotect.core.continuous.heartbeat import Heartbeat, read_heartbeats, run_heartbeats
from dbprotect.core.continuous.pitr import PitrResult, restore_to_point
from dbprotect.core.errors import Refusals, RefusedError, ToolError
from dbprotect.core.ops.continuous import fetch_command
from dbprotect.defs import load_definitions
from dbprotect.defs.continuous.drills import PITR_DRILL_CHECK, pitr_drill_job_name
from dbprotect_tests.continuous_helpers import (
    continuous_setup,
    receiving,
    stop_after_lines,
    wait_heartbeats_after,
)
from dbprotect_tests.fixtures.cli import run, run_json
from dbprotect_tests.test_continuous_wal import switch_and_wait_shipped


def test_a_failing_heartbeat_insert_logs_one_line_and_keeps_ticking() -> None:
    """No server there: the writer logs each failure and carries on until stopped (never raises)."""
    stop, lines, log = stop_after_lines(2)
    written = run_heartbeats("postgresql://nobody:secret@127.0.0.1:1/none", interval_seconds=0.05, stop=stop,
                             log=log)
    assert written == 0 and len(lines) == 2
    assert all(line.startswith("heartbeat not written") and "secret" not in line for line in lines)


@pytest.mark.slow
def test_pitr_drill_proves_its_landing_and_fails_when_the_proof_is_wrong(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path,
        identity: pyrage.x25519.Identity, capsys: pytest.CaptureFixture[str], instance: dg.DagsterInstance) -> None:
    slot = "dbprotect_test_drill"
    config_path, config, storage = continuous_setup(write_config, wal_server, slot, tmp_path, heartbeats=True)
    code, beat, err = run_json(capsys, "wal", "heartbeat", "shop")  # one by hand; creates the table
    assert code == 0, err
    with receiving(config_path, wal_server, slot, tmp_path / "receiver.log"):
        base = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                recipients=config.keys.raw.recipients, incremental=False)
        ended = datetime.fromisoformat(base.finished_at)
        wait_heartbeats_after(wal_server, ended, 6)
        switch_and_wait_shipped(wal_server, storage)
    with psycopg.connect(wal_server, autocommit=True) as conn:
        beats = read_heartbeats(conn)
    # the server is shared with other receiver tests: the hand-written row is there, not necessarily first
    assert beat["id"] in [h.id for h in beats]
    assert any(h.at > ended for h in beats), "the receiver wrote heartbeats"

    # the drill through the CLI: passes, records RTO and an achieved RPO below the heartbeat interval
    code, document, err = run_json(capsys, "drill", "shop", "--pitr")
    assert code == 0, err
    assert document["ok"] and document["heartbeat_after"] == document["heartbeat_before"] + 1
    assert document["rto_seconds"] > 0 and 0 <= document["rpo_seconds"] <= 1.5
    records = recorded_pitr_drills(storage, "shop")
    assert len(records) == 1 and records[0]["ok"] and records[0]["metrics"]["rpo_seconds"] == document["rpo_seconds"]
    audit = [json.loads(p.read_text()) for p in sorted((tmp_path / "store/_audit").glob("*.json"))]
    assert any(r["action"] == "pitr-drill" and r["outcome"] == "ok" for r in audit)
    assert not list(Path("/tmp").glob("dbprotect-pitr-drill-*/data/PG_VERSION")), "scratch server left behind"

    # the monthly Dagster job runs the same drill: a passed check with RTO and RPO as float metadata
    job = load_definitions(config_path).resolve_job_def(pitr_drill_job_name("shop"))
    run = job.execute_in_process(instance=instance)
    assert run.success
    [evaluation] = [e for e in run.get_asset_check_evaluations() if e.check_name == PITR_DRILL_CHECK]
    assert evaluation.passed, evaluation.description
    for name in ("rto_seconds", "rpo_seconds"):
        assert isinstance(evaluation.metadata[name], dg.FloatMetadataValue), name
    assert [r["ok"] for r in recorded_pitr_drills(storage, "shop")] == [True, True]

    identity_for_server = identity
    command = fetch_command(config, "shop")

    def restore_shifted(shift: timedelta) -> Callable[[datetime, Path], PitrResult]:
        def restore(to_time: datetime, data_dir: Path) -> PitrResult:
            return restore_to_point(storage=storage, database="shop", identity=identity_for_server,
                                    data_dir=data_dir, restore_command=command, to_time=to_time + shift)
        return restore

    def drill(restore: Callable[[datetime, Path], PitrResult], **kwargs: object):  # type: ignore[no-untyped-def]
        return run_pitr_drill(storage=storage, database="shop", source_dsn=wal_server, restore=restore,
                              heartbeat_seconds=1, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]

    # a restore that lands later than the drill claims: the heartbeat after the target is there ⇒ fail
    later = drill(restore_shifted(timedelta(seconds=1.2)))
    assert not later.ok and "after the target) is present" in later.detail
    # one that lands earlier (at the base backup's end): the heartbeat before the target is missing ⇒ fail
    def restore_to_base_end(to_time: datetime, data_dir: Path) -> PitrResult:
        return restore_to_point(storage=storage, database="shop", identity=identity_for_server,
                                data_dir=data_dir, restore_command=command, to_lsn=base.end_lsn)

    earlier = drill(restore_to_base_end)
    assert not earlier.ok and "missing: the restore stopped early" in earlier.detail
    assert [r["ok"] for r in recorded_pitr_drills(storage, "shop")] == [True, True, False, False]

    # heartbeats too far apart to bound the moment: refused, not passed, nothing recorded
    with pytest.raises(RefusedError) as refused:
        drill(restore_shifted(timedelta()), max_gap_seconds=0.01)
    assert refused.value.refusal == Refusals.PITR_HEARTBEATS_TOO_SPARSE

    # an environment failure is raised as itself and never recorded as a failed drill
    def no_port(to_time: datetime, data_dir: Path) -> PitrResult:
        raise ToolError("no free port for the scratch server")

    with pytest.raises(ToolError):
        drill(no_port)
    assert len(recorded_pitr_drills(storage, "shop")) == 4


def test_the_moment_lies_inside_the_retained_range_between_close_heartbeats() -> None:
    """Each eligibility rule, failing when dropped: not before the oldest base's end, not a pair whose
    ``after`` commit may be missing from the store, not a pair too far apart."""
    t0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    beats = [Heartbeat(i, t0 + timedelta(seconds=s), f"0/{0x1000 * i:X}")
             for i, s in enumerate([0, 1, 2, 3, 10, 11, 12], start=1)]
    # base ended at 0.5 s: beat 1 is too early; stored WAL ends below beat 7's insert: pair (5, 6) lacks proof
    # that 6 committed; pair (4, 5) is 7 s apart. Left: (2, 3) and (3, 4).
    chosen = {choose_moment(beats, earliest=t0 + timedelta(seconds=0.5), stored_end=0x1000 * 7 - 1,
                            max_gap_seconds=3, rng=random.Random(seed)).before.id for seed in range(50)}
    assert chosen == {2, 3}
    moment = choose_moment(beats, earliest=t0, stored_end=0x1000 * 7, max_gap_seconds=1.5, rng=random.Random(1))
    assert moment.before.at < moment.target < moment.after.at and moment.after.id == moment.before.id + 1
    with pytest.raises(RefusedError):
        choose_moment(beats[:3], earliest=t0 + timedelta(seconds=5), stored_end=0x1000 * 7, max_gap_seconds=3,
                      rng=random.Random(1))


def test_cli_pitr_drill_whose_proof_failed_exits_7_in_one_line(
        write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    write_config("postgresql://u@localhost/shop")
    failed = PitrDrillResult("shop", False, "point-in-time drill failed: heartbeat 9 (after the target) is present",
                             "2026-11-29T08:00:00+00:00", 3.0, 0.5)
    monkeypatch.setattr("dbprotect.cli.commands.wal.pitr_drill_database", lambda *a, **k: failed)
    assert run(["drill", "shop", "--pitr"]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "DBP007" in err[0] and "after the target" in err[0], err
