"""Point-in-time restore against a real embedded PostgreSQL 18 (``wal_server``): with the receiver
running, a full and an incremental base backup, then rows written before and after a moment T; the
restore to T (base chain combined by pg_combinebackup, WAL through ``dbprotect wal fetch``) holds
exactly the rows committed before T, and the restore to an LSN exactly those before that LSN.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import pyrage
import pytest

from dbprotect.core.config.load import load_config
from dbprotect.core.continuous.base import take_base_backup
from dbprotect.core.continuous.pitr import PitrResult, stop_restored
from dbprotect.core.continuous.wal import stored_segments
from dbprotect.core.errors import NotFoundError, RefusedError
from dbprotect.core.ops.continuous import restore_database_to_point
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.test_continuous_wal import (
    continuous_config,
    current_segment,
    start_receiver,
    stop_receiver,
    wait_for,
    wait_streaming,
)

pytestmark = pytest.mark.slow


def _open_for_server(path: Path) -> None:
    """The restored server runs as 'postgres' when the tests run as root: let it read the test folder."""
    for folder in [path, *path.parents]:
        if str(folder) in ("/", "/tmp"):
            break
        folder.chmod(folder.stat().st_mode | 0o055)


def _insert(dsn: str, note: str, ids: range) -> tuple[datetime, str]:
    """Commit rows; (server time just after the commit, insert LSN after it).

    The WAL server's ``events`` table is shared by every continuous test file, each with its own ids:
    wal 10k to 60k, pitr 100k, retention 200k, by-hand 300k, S3 400k, faults 500k, fallback 600k, rpo 700k
    and 800k, S3 cleanup 900k,
    by-hand incremental and non-root ``wal fetch`` 1.1M (test_pitr_by_hand_incremental, test_wal_fetch_nonroot),
    PITR loose ends 1.37M (test_pitr_loose_ends), drill on damaged WAL 1.30M (test_pitr_drill_damaged_wal)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO events SELECT g, %s FROM generate_series(%s::int, %s::int) g",
                     (note, ids.start, ids.stop - 1))
        row = conn.execute("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return row[0], row[1]


def _notes(dsn: str, prefix: str = "pitr-") -> dict[str, int]:
    """Rows per note among this test's own notes (``prefix`` + one letter): the WAL server is shared by
    the continuous tests, and a point-in-time restore brings back every earlier test's rows too."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT note, count(*) FROM events WHERE starts_with(note, %s) AND length(note) = %s "
                            "GROUP BY note", (prefix, len(prefix) + 1)).fetchall()
    return {note: int(count) for note, count in rows}


def test_restore_to_a_time_and_to_an_lsn_holds_exactly_the_rows_before_it(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path,
        identity: pyrage.x25519.Identity, capsys: pytest.CaptureFixture[str]) -> None:
    slot = "dbprotect_test_pitr"
    config_path = continuous_config(write_config, wal_server, slot)
    _open_for_server(tmp_path)
    storage = FilesystemStorage(tmp_path / "store")
    config = load_config(config_path)
    receiver = start_receiver(config_path, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, slot)
        take_base_backup(database="shop", dsn=wal_server, storage=storage, recipients=config.keys.raw.recipients,
                         incremental=False)
        _insert(wal_server, "pitr-a", range(100_000, 100_500))
        with psycopg.connect(wal_server, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        time.sleep(1.5)  # WAL summaries catch up before the incremental
        incremental = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                       recipients=config.keys.raw.recipients, incremental=True, identity=identity)
        assert incremental.kind == "incremental"
        time.sleep(1.1)  # the base's finished_at stays before the targets
        _, lsn_after_b = _insert(wal_server, "pitr-b", range(100_500, 100_600))
        target_time, _ = _insert(wal_server, "pitr-c", range(100_600, 100_650))
        time.sleep(1.1)
        _insert(wal_server, "pitr-d", range(100_650, 100_700))
        last = current_segment(wal_server)
        _insert(wal_server, "pitr-e", range(100_700, 100_710))
        with psycopg.connect(wal_server, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        wait_for(lambda: last in stored_segments(storage, "shop").get(1, []), f"segment {last} shipped", 60)
    finally:
        stop_receiver(receiver, wal_server, slot)
    _open_for_server(tmp_path / "store")
    for path in (tmp_path / "store").rglob("*"):
        path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))

    code, document, err = run_json(capsys, "restore", "shop", "--to-time", target_time.isoformat(),
                                   "--data-dir", str(tmp_path / "by-time"))
    assert code == 0, err
    by_time = PitrResult(Path(document["data_dir"]), document["port"], Path(document["socket_dir"]),
                         document["base_backups"], document["target"], document["seconds"], False)
    try:
        assert len(by_time.chain) == 2
        assert _notes(by_time.dsn()) == {"pitr-a": 500, "pitr-b": 100, "pitr-c": 50}
    finally:
        stop_restored(by_time)
    by_lsn = restore_database_to_point(config, "shop", data_dir=tmp_path / "by-lsn", to_lsn=lsn_after_b)
    try:
        assert _notes(by_lsn.dsn()) == {"pitr-a": 500, "pitr-b": 100}
    finally:
        stop_restored(by_lsn)
    with pytest.raises(RefusedError):  # never into a data directory that holds something
        restore_database_to_point(config, "shop", data_dir=tmp_path / "by-lsn", to_lsn=lsn_after_b)
    with pytest.raises(NotFoundError):  # before the first base backup: unreachable
        restore_database_to_point(config, "shop", data_dir=tmp_path / "too-early", to_lsn="0/1")
