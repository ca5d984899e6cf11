"""The WAL stream against a real embedded PostgreSQL 18 (``wal_server``): ``dbprotect wal receive`` runs as
a real process while rows are written; killed with SIGKILL mid-segment and restarted, the store ends up
with every segment once and no gap; a flipped byte in a stored segment fails verification.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg
import pyrage
import pytest
import yaml

from dbprotect.core.continuous.wal import (
    SegmentRecord,
    fetch_wal,
    segment_number,
    segment_record_key,
    stored_segments,
    verify_wal,
    wal_gaps,
)
from dbprotect.core.errors import NotFoundError
from dbprotect.core.store import Storage
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect_tests.fixtures.cli import run_json

pytestmark = pytest.mark.slow

DBPROTECT = str(Path(sys.executable).parent / "dbprotect")


def continuous_config(write_config: Callable[..., Path], dsn: str, slot: str) -> Path:
    path = write_config(dsn)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["databases"]["shop"]["continuous"] = {"slot": slot, "partial_upload_seconds": 1, "incremental": False}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def start_receiver(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([DBPROTECT, "--config", str(config), "wal", "receive", "shop"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=dict(os.environ))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def current_segment(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    assert row is not None
    return str(row[0])


def write_rows(dsn: str, first: int, count: int, *, switch: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(first, first + count, 50):
            conn.execute("INSERT INTO events SELECT g, 'wal' FROM generate_series(%s::int, %s::int) g "
                         "ON CONFLICT DO NOTHING", (start, min(start + 49, first + count - 1)))
        if switch:
            conn.execute("SELECT pg_switch_wal()")


def wait_streaming(dsn: str, slot: str) -> None:
    """Until pg_receivewal streams from ``slot`` (what is written before that is not the receiver's)."""
    def active() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        return bool(row and row[0])

    wait_for(active, f"pg_receivewal streaming from {slot}")


def drop_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s AND NOT active", (slot,))


def switch_and_wait_shipped(dsn: str, storage: Storage, database: str = "shop", timeout: float = 60.0) -> None:
    """Close the current WAL segment and wait until the receiver has shipped it to ``storage``."""
    last = current_segment(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
    wait_for(lambda: last in stored_segments(storage, database).get(1, []), f"segment {last} shipped", timeout)


def stop_receiver(receiver: subprocess.Popen[bytes], dsn: str, slot: str, timeout: float = 30.0) -> None:
    """SIGTERM the receiver (it ships its spool first), wait for it, and drop the test's slot."""
    receiver.send_signal(signal.SIGTERM)
    receiver.wait(timeout=timeout)
    drop_slot(dsn, slot)


def test_receiver_survives_sigkill_mid_segment_without_gap_or_duplicate(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path,
        identity: pyrage.x25519.Identity) -> None:
    slot = "dbprotect_test_kill"
    config = continuous_config(write_config, wal_server, slot)
    storage = FilesystemStorage(tmp_path / "store")
    log = tmp_path / "receiver.log"
    receiver = start_receiver(config, log)
    try:
        wait_streaming(wal_server, slot)
        write_rows(wal_server, 10_000, 200, switch=True)
        first = current_segment(wal_server)
        write_rows(wal_server, 20_000, 200, switch=True)
        wait_for(lambda: len(stored_segments(storage, "shop").get(1, [])) >= 2, "two shipped segments")
        # mid-segment: rows written, no switch; wait until the partial upload carries them
        write_rows(wal_server, 30_000, 300, switch=False)
        mid = current_segment(wal_server)
        partials = tmp_path / "store/shop/continuous/wal/partial"
        wait_for(lambda: (partials / f"{mid}.json").exists(), "a partial upload")
        children = psutil.Process(receiver.pid).children(recursive=True)
        receiver.send_signal(signal.SIGKILL)
        receiver.wait(timeout=10)
        for child in children:  # pg_receivewal dies with its supervisor (PR_SET_PDEATHSIG)
            with pytest.raises(psutil.NoSuchProcess):
                psutil.Process(child.pid).wait(timeout=10)
                psutil.Process(child.pid).status()
        write_rows(wal_server, 40_000, 300, switch=False)  # written while no receiver runs
        receiver = start_receiver(config, log)
        write_rows(wal_server, 50_000, 100, switch=True)
        last = current_segment(wal_server)
        write_rows(wal_server, 55_000, 10, switch=True)  # ``last`` itself completes too
        wait_for(lambda: last in stored_segments(storage, "shop").get(1, []), f"segment {last} shipped", 60)
    finally:
        stop_receiver(receiver, wal_server, slot)
    names = stored_segments(storage, "shop")[1]
    numbers = [segment_number(n) for n in names]
    assert numbers == list(range(numbers[0], numbers[-1] + 1)), f"gap in {names}"
    assert wal_gaps(storage, "shop") == []
    assert first in names and mid in names and last in names
    # the segment that was partial at the kill is stored complete, once, with the rows after the kill
    record = SegmentRecord.from_store(storage, segment_record_key("shop", mid), database="shop", name=mid)
    assert record.kind == "segment" and record.plain_bytes == 16 << 20
    assert not (tmp_path / "store/shop/continuous/wal/partial" / f"{mid}.json").exists()
    assert verify_wal(storage, "shop", identity).ok
    fetched = tmp_path / "fetched"
    assert fetch_wal(storage, "shop", mid, identity, fetched) == "segment"
    assert fetched.stat().st_size == 16 << 20
    with pytest.raises(NotFoundError):
        fetch_wal(storage, "shop", "00000001FFFFFFFF000000FF", identity, tmp_path / "nothing")
    assert "Traceback" not in log.read_text(encoding="utf-8")


def test_a_flipped_byte_in_a_wal_object_is_caught(wal_server: str, write_config: Callable[..., Path],
                                                  tmp_path: Path, identity: pyrage.x25519.Identity,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    slot = "dbprotect_test_flip"
    config = continuous_config(write_config, wal_server, slot)
    storage = FilesystemStorage(tmp_path / "store")
    receiver = start_receiver(config, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, slot)
        for first in (60_000, 61_000, 62_000):
            write_rows(wal_server, first, 100, switch=True)
        wait_for(lambda: len(stored_segments(storage, "shop").get(1, [])) >= 3, "three shipped segments")
    finally:
        stop_receiver(receiver, wal_server, slot)
    assert verify_wal(storage, "shop", identity).ok
    name = stored_segments(storage, "shop")[1][0]
    # restore_command as PostgreSQL runs it: 'dbprotect wal fetch %f %p --database shop'
    code, document, _ = run_json(capsys, "wal", "fetch", name, str(tmp_path / "fetched"), "--database", "shop")
    assert (code, document["served"]) == (0, "segment") and (tmp_path / "fetched").stat().st_size == 16 << 20
    code, document, _ = run_json(capsys, "wal", "fetch", "00000001FFFFFFFF000000FF", str(tmp_path / "none"),
                                 "--database", "shop")
    assert code == 10 and not (tmp_path / "none").exists()
    record = SegmentRecord.from_store(storage, segment_record_key("shop", name), database="shop", name=name)
    path = tmp_path / "store" / record.object
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify_wal(storage, "shop", identity)
    assert not result.ok and name in result.problems[0]
    with pytest.raises(Exception, match=r"decrypt|differs"):
        fetch_wal(storage, "shop", name, identity, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # a missing segment inside the range is a gap
    stored = stored_segments(storage, "shop")[1]
    assert wal_gaps(storage, "shop") == []
    storage.delete(segment_record_key("shop", stored[1]))
    assert wal_gaps(storage, "shop") == [(stored[1], stored[1])]
    assert not verify_wal(storage, "shop", identity).ok
