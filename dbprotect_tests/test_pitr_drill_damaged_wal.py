"""A damaged WAL object fails a point-in-time drill as an integrity failure; an unreachable store does not.

Real embedded PostgreSQL 18 (the shared WAL server), real restores through the relay. The drill's restore
is the real :func:`restore_to_point`, wrapped only to damage (or make unreachable) the stored segment the
chosen moment needs — the one holding the heartbeat just after the target, which recovery must read to
stop there — and to serve it after a pause, so the scratch server has opened for reads before that
fetch fails (the case that used to surface as an environment failure, exit 4).

- a flipped byte in that segment: the drill fails (``ok`` False, exit 7 in the CLI), recorded as a
  failed point-in-time drill whose detail names the segment and the fetch's DBP007;
- the store unreachable for that segment mid-recovery: raised as an environment failure, nothing
  recorded against the backup;
- the same two before the server opened for reads (the base's first segment, needed for consistency);
- ``stop_restored`` stops a cluster with the ``pg_ctl`` of the cluster's own major.

Rows 1.30M on the shared WAL server, notes ``drillwal-``.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import psycopg
import pyrage
import pytest

from dbprotect.core.continuous.base import take_base_backup
from dbprotect.core.continuous.drill import recorded_pitr_drills, run_pitr_drill
from dbprotect.core.continuous.heartbeat import read_heartbeats, write_heartbeat
from dbprotect.core.continuous.pitr import PitrResult, restore_to_point, stop_restored
from dbprotect.core.errors import DatabaseError, IntegrityError, StorageError, ToolError
from dbprotect.core.ops.continuous import fetch_command
from dbprotect.core.store import Storage
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect_tests.continuous_helpers import (
    continuous_setup,
    receiving,
    segment_of,
    switch_wal,
    wait_heartbeats_after,
)
from dbprotect_tests.test_continuous_pitr import _insert, _open_for_server
from dbprotect_tests.test_continuous_wal import switch_and_wait_shipped

PREFIX = "drillwal-"
#: The server's environment (the WAL is relayed: it needs no secret).
SERVER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


class SlowSegmentStore(FilesystemStorage):
    """The real filesystem store, serving one WAL object only after a pause (the recovering server opens
    for reads first), and failing to reach it at all when ``unreachable``."""

    def __init__(self, root: Path, name: str, *, pause: float, unreachable: bool = False) -> None:
        super().__init__(root)
        self.name, self.pause, self.unreachable = name, pause, unreachable

    def open_reader(self, key: str) -> BinaryIO:
        if self.name in key and not key.endswith(".json"):
            time.sleep(self.pause)
            if self.unreachable:
                raise StorageError(f"cannot reach the store for {key}: connection refused")
        return super().open_reader(key)


def _segment_after(dsn: str, to_time: datetime) -> str:
    """The WAL file holding the first heartbeat written after ``to_time``: recovery to ``to_time`` must read
    it (that heartbeat's commit is what tells it the target is passed)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = next(h for h in read_heartbeats(conn) if h.at > to_time)
    return segment_of(dsn, after.lsn)


@pytest.mark.slow
def test_a_damaged_segment_fails_the_drill_and_an_unreachable_store_does_not(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path, identity: pyrage.x25519.Identity) -> None:
    slot = "dbprotect_test_drillwal"
    config_path, config, storage = continuous_setup(write_config, wal_server, slot, tmp_path, heartbeats=True)
    root = tmp_path / "store"
    write_heartbeat(wal_server)  # creates the table before the receiver's writer starts
    with receiving(config_path, wal_server, slot, tmp_path / "receiver.log"):
        base = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                recipients=config.keys.raw.recipients, incremental=False)
        switch_wal(wal_server)
        _insert(wal_server, PREFIX + "a", range(1_300_000, 1_300_100))
        wait_heartbeats_after(wal_server, datetime.fromisoformat(base.finished_at), 6)
        switch_and_wait_shipped(wal_server, storage)
    _open_for_server(tmp_path)
    command = fetch_command(config, "shop")
    needed: list[str] = []

    def restore_from(store_for: Callable[[str], Storage]) -> Callable[[datetime, Path], PitrResult]:
        def restore(to_time: datetime, data_dir: Path) -> PitrResult:
            needed.append(_segment_after(wal_server, to_time))
            return restore_to_point(storage=store_for(needed[-1]), database="shop", identity=identity,
                                    data_dir=data_dir, restore_command=command, to_time=to_time,
                                    server_environ=SERVER_ENV, relay=True)
        return restore

    def drill(restore: Callable[[datetime, Path], PitrResult], seed: int):  # type: ignore[no-untyped-def]
        return run_pitr_drill(storage=storage, database="shop", source_dsn=wal_server, restore=restore,
                              heartbeat_seconds=1, rng=random.Random(seed))

    # the store unreachable for the segment recovery needs, mid-recovery: the environment, raised as
    # itself (not the backup's fault), and no drill recorded against the backup
    with pytest.raises((ToolError, DatabaseError)) as unreachable:
        drill(restore_from(lambda name: SlowSegmentStore(root, name, pause=3.0, unreachable=True)), seed=11)
    line = unreachable.value.one_line()
    assert not isinstance(unreachable.value, IntegrityError) and "error[DBP006]" in line, line
    assert recorded_pitr_drills(storage, "shop") == []

    # a flipped byte in the segment recovery needs, served after the server opened for reads: the drill
    # fails as a failed backup (exit 7), recorded, naming the segment and the fetch's own error
    def flipped(name: str) -> Storage:
        [damaged] = root.rglob(f"{name}.zst.age")
        content = bytearray(damaged.read_bytes())
        content[len(content) // 2] ^= 0x01
        damaged.write_bytes(bytes(content))
        return SlowSegmentStore(root, name, pause=3.0)

    result = drill(restore_from(flipped), seed=11)
    segment = needed[-1]
    assert not result.ok, result.detail
    assert f"error[DBP007]: WAL {segment}" in result.detail, result.detail
    [record] = recorded_pitr_drills(storage, "shop")
    assert record["ok"] is False and segment in record["detail"] and "DBP007" in record["detail"]
    assert not list(tmp_path.glob("**/pitr-server.log")), "a scratch server's folder was left behind"

    # before the server opened for reads (the base's own first segment, needed to reach consistency): the
    # store unreachable stays the environment; damaged, the drill fails as the backup's fault
    first = segment_of(wal_server, base.start_lsn)
    with pytest.raises(ToolError) as not_started:
        drill(restore_from(lambda _name: SlowSegmentStore(root, first, pause=0, unreachable=True)), seed=11)
    assert "did not start" in not_started.value.one_line() and "error[DBP006]" in not_started.value.one_line()
    assert not isinstance(not_started.value, IntegrityError), not_started.value.one_line()
    assert len(recorded_pitr_drills(storage, "shop")) == 1
    early = drill(restore_from(lambda _name: flipped(first)), seed=11)
    assert not early.ok and f"error[DBP007]: WAL {first}" in early.detail, early.detail
    assert [r["ok"] for r in recorded_pitr_drills(storage, "shop")] == [False, False]

    # PostgreSQL reads any failed fetch as "no such file" and may then say recovery ended before its
    # target: when the fetch failed for the environment, that is still not the backup's fault
    def ended_for_lack_of_store(to_time: datetime, data_dir: Path) -> PitrResult:
        raise ToolError("the restored server did not start: FATAL:  recovery ended before configured recovery "
                        "target was reached; restore_command failed: error[DBP006]: cannot reach the store")

    with pytest.raises(ToolError):
        drill(ended_for_lack_of_store, seed=11)
    assert len(recorded_pitr_drills(storage, "shop")) == 2


def test_stop_restored_uses_the_pg_ctl_of_the_restored_clusters_major(tmp_path: Path) -> None:
    """A cluster of a major no installed ``pg_ctl`` serves is not stopped with major 18's: the stop names
    the missing tool (it used to run 18's ``pg_ctl`` whatever the cluster); the socket folder goes anyway."""
    socket_dir = tmp_path / "sock"
    socket_dir.mkdir()
    result = PitrResult(tmp_path / "data", 1, socket_dir, ["b"], "t", 0.0, False, major=99)
    with pytest.raises(ToolError) as missing:
        stop_restored(result)
    assert "pg_ctl" in missing.value.one_line() and "99" in missing.value.one_line(), missing.value.one_line()
    assert not socket_dir.exists()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
