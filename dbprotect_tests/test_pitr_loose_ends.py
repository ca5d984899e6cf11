"""Loose ends of the point-in-time restore, each against the real shared WAL server and real restores.

- A restore that fails after the recovering server opened for reads (a damaged segment past consistency,
  served slowly so ``pg_ctl -w`` has returned) leaves nothing in the temporary folder: no socket folder,
  no relay folder, no work folder; the same after a restore that succeeds and is stopped.
- ``drill``'s own "does not answer" names the server log's tail and the fetch's ``error[DBPnnn]`` line,
  as the restore does (one shared helper).
- ``runuser`` is found by absolute path when the PATH handed to the server lacks the sbin folders (as
  root; as another user no ``runuser`` runs), and when it is nowhere the restore fails in one line
  naming it, leaving nothing behind.

Rows 1.37M on the shared WAL server, notes ``pitrfix-``.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import pyrage
import pytest

from dbprotect.core.continuous import pitr
from dbprotect.core.continuous.base import take_base_backup
from dbprotect.core.continuous.drill import run_pitr_drill
from dbprotect.core.continuous.heartbeat import write_heartbeat
from dbprotect.core.continuous.pitr import SERVER_LOG, PitrResult, restore_to_point, stop_restored
from dbprotect.core.errors import DbprotectError, IntegrityError, ToolError
from dbprotect.core.ops.continuous import fetch_command
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect_tests.continuous_helpers import (
    continuous_setup,
    receiving,
    segment_of,
    switch_wal,
    wait_heartbeats_after,
)
from dbprotect_tests.test_continuous_pitr import _insert, _notes, _open_for_server
from dbprotect_tests.test_continuous_wal import switch_and_wait_shipped

pytestmark = pytest.mark.slow

PREFIX = "pitrfix-"
#: The server's environment: a PATH without /usr/sbin or /sbin, where runuser lives.
NO_SBIN = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


class SlowSegmentStore(FilesystemStorage):
    """The real filesystem store, serving one WAL object only after a pause: the recovering server is
    open for reads (and ``pg_ctl -w`` has returned) before that segment's fetch fails."""

    def __init__(self, root: Path, slow_name: str, pause: float) -> None:
        super().__init__(root)
        self.slow_name, self.pause = slow_name, pause

    def open_reader(self, key: str) -> BinaryIO:
        if self.slow_name in key and not key.endswith(".json"):
            time.sleep(self.pause)
        return super().open_reader(key)


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary folder of this test's own (short: a socket path has ~100 characters), so counting what
    is left in it is not disturbed by other tests on the machine."""
    folder = Path(tempfile.mkdtemp(prefix="bt-pf-", dir="/tmp"))
    folder.chmod(0o711)  # the restored server (postgres, when the tests are root) reaches its socket folder
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _left_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_failed_restores_and_drills_leave_nothing_and_name_their_cause(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path, identity: pyrage.x25519.Identity,
        private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slot = "dbprotect_test_pitrfix"
    config_path, config, storage = continuous_setup(write_config, wal_server, slot, tmp_path, heartbeats=True)
    write_heartbeat(wal_server)  # creates the table before the receiver's writer starts
    with receiving(config_path, wal_server, slot, tmp_path / "receiver.log"):
        base = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                recipients=config.keys.raw.recipients, incremental=False)
        switch_wal(wal_server)  # the rows go into a segment after the base's end
        time.sleep(1.1)
        _insert(wal_server, PREFIX + "a", range(1_370_000, 1_370_100))
        target, target_lsn = _insert(wal_server, PREFIX + "b", range(1_370_100, 1_370_110))
        target_segment = segment_of(wal_server, target_lsn)
        wait_heartbeats_after(wal_server, datetime.fromisoformat(base.finished_at), 6)
        _insert(wal_server, PREFIX + "c", range(1_370_110, 1_370_111))  # after the target
        switch_and_wait_shipped(wal_server, storage)
    _open_for_server(tmp_path)
    command = fetch_command(config, "shop")
    assert _left_in(private_tmp) == []

    # a PATH without the sbin folders: runuser is still found (as root), the restore promotes; once
    # stopped, nothing of it is left in the temporary folder
    restored = restore_to_point(storage=storage, database="shop", identity=identity, data_dir=tmp_path / "nosbin",
                                restore_command=command, to_time=target, server_environ=NO_SBIN, relay=True)
    try:
        assert _notes(restored.dsn(), PREFIX) == {PREFIX + "a": 100, PREFIX + "b": 10}
        assert restored.socket_dir.parent == private_tmp
    finally:
        stop_restored(restored)
    assert _left_in(private_tmp) == []

    # the drill's own "does not answer" (the server died after the restore returned) names the log's
    # tail and the fetch's error line the way the restore does
    def restore_then_die(to_time: datetime, data_dir: Path) -> PitrResult:
        result = restore_to_point(storage=storage, database="shop", identity=identity, data_dir=data_dir,
                                  restore_command=command, to_time=to_time, server_environ=NO_SBIN, relay=True)
        stop_restored(result)
        with open(data_dir / SERVER_LOG, "a", encoding="utf-8") as log:
            log.write("error[DBP007]: WAL 0000000100000000000000FF of shop does not decrypt\n")
        return result

    with pytest.raises(ToolError) as silent:
        run_pitr_drill(storage=storage, database="shop", source_dsn=wal_server, restore=restore_then_die,
                       heartbeat_seconds=1, rng=random.Random(3))
    line = silent.value.one_line()
    assert line.startswith("the restored server does not answer: ") and "; its log: " in line
    assert "restore_command failed: error[DBP007]: WAL 0000000100000000000000FF of shop does not decrypt" in line
    assert _left_in(private_tmp) == []

    # runuser nowhere (as root): one line naming it, and nothing left behind
    with monkeypatch.context() as patch:
        patch.setattr(pitr, "RUNUSER_DIRS", (str(tmp_path / "no-such-folder"),))
        patch.setenv("PATH", "/usr/bin:/bin")  # tar is there; runuser is in /usr/sbin
        with pytest.raises(ToolError, match=r"^runuser was not found \(looked in .*no-such-folder and PATH\)"):
            pitr._as_user(pwd.getpwuid(os.geteuid()))
        if os.geteuid() == 0:
            with pytest.raises(ToolError) as missing:
                restore_to_point(storage=storage, database="shop", identity=identity,
                                 data_dir=tmp_path / "norunuser", restore_command=command, to_time=target,
                                 server_environ=NO_SBIN)
            assert missing.value.one_line().startswith("runuser was not found") and missing.value.code == "DBP005"
            assert not (tmp_path / "norunuser").exists() and _left_in(private_tmp) == []

    # the target's segment damaged and served slowly: the server opens for reads, then its fetch fails and
    # it exits; the restore names the fetch's error, and removes the data directory and every folder
    [damaged] = (tmp_path / "store").rglob(f"{target_segment}.zst.age")
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))
    slow = SlowSegmentStore(tmp_path / "store", target_segment, pause=4.0)
    (tmp_path / "damaged-in-a-folder").mkdir(mode=0o700)  # one the operator made, empty: empty again after
    with pytest.raises(IntegrityError):
        restore_to_point(storage=slow, database="shop", identity=identity, data_dir=tmp_path / "damaged-in-a-folder",
                         restore_command=command, to_time=target, server_environ=NO_SBIN, relay=True)
    assert list((tmp_path / "damaged-in-a-folder").iterdir()) == [], "a half-recovered cluster was left"
    with pytest.raises(DbprotectError) as failed:
        restore_to_point(storage=slow, database="shop", identity=identity, data_dir=tmp_path / "damaged",
                         restore_command=command, to_time=target, server_environ=NO_SBIN, relay=True)
    # a damaged object, not the environment, although the server had opened for reads (exit 7, not 4)
    assert isinstance(failed.value, IntegrityError), failed.value.one_line()
    line = failed.value.one_line()
    assert line.startswith("the restored server does not answer: ")
    assert f"restore_command failed: error[DBP007]: WAL {target_segment}" in line
    assert not (tmp_path / "damaged").exists()
    assert _left_in(private_tmp) == [], "a failed restore left folders in the temporary folder"
