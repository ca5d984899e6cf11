"""Chain cleanup on S3 (issue 15, gap 4), against a real S3 HTTP endpoint (moto server): two verified
full bases and the WAL around them, a cleanup whose window covers only the newest base, then a
point-in-time restore inside the window, read back from the bucket, holds exactly the rows before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.load import load_config
from dbprotect.core.continuous.base import list_base_backups
from dbprotect.core.continuous.pitr import stop_restored
from dbprotect.core.continuous.wal import stored_segments
from dbprotect.core.errors import NotFoundError
from dbprotect.core.ops.context import primary_store
from dbprotect.core.ops.continuous import base_backup_database, restore_database_to_point, verify_base_backups
from dbprotect.core.retention.chain_cleanup import plan_continuous_cleanup, sweep_continuous
from dbprotect.core.retention.chains import ChainPolicy
from dbprotect.core.store import S3Storage
from dbprotect.core.store.lock import StoreClock
from dbprotect_tests.fixtures.fix_storage import create_bucket
from dbprotect_tests.test_continuous_pitr import _insert, _notes, _open_for_server
from dbprotect_tests.test_continuous_wal import (
    current_segment,
    start_receiver,
    stop_receiver,
    switch_and_wait_shipped,
    wait_for,
    wait_streaming,
)

pytestmark = pytest.mark.slow



def test_chain_cleanup_on_s3_keeps_the_window_restorable(
        wal_server: str, s3_endpoint: str, write_config: Callable[..., Path], tmp_path: Path) -> None:
    slot = "dbprotect_test_s3_cleanup"
    bucket = create_bucket(s3_endpoint, "chains")
    path = write_config(wal_server, storage={"offsite": {"type": "s3", "bucket": bucket, "prefix": "dbp",
                                                         "endpoint_url": s3_endpoint, "region": "us-east-1"}})
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["databases"]["shop"]["continuous"] = {"slot": slot, "partial_upload_seconds": 1, "incremental": False}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    config = load_config(path)
    storage = primary_store(config, "shop")
    assert isinstance(storage, S3Storage)
    _open_for_server(tmp_path)
    receiver = start_receiver(path, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, slot)
        older = base_backup_database(config, "shop")
        before_window, _ = _insert(wal_server, "s3c-a", range(900_000, 900_200))
        time.sleep(1.1)
        newer = base_backup_database(config, "shop")
        time.sleep(1.1)  # the newer base's finished_at stays before the window's start and the target
        with psycopg.connect(wal_server, autocommit=True) as conn:  # WAL to switch (the base ended one)
            conn.execute("SELECT pg_logical_emit_message(false, 'dbprotect-test', 'date the base')")
        switch_and_wait_shipped(wal_server, storage)  # a stored sample dates the newer base (chains.py rule 9)
        window_start = datetime.now(UTC)
        _insert(wal_server, "s3c-b", range(900_200, 900_300))
        target_time, _ = _insert(wal_server, "s3c-c", range(900_300, 900_330))
        time.sleep(1.1)
        _insert(wal_server, "s3c-d", range(900_330, 900_360))
        last = current_segment(wal_server)
        with psycopg.connect(wal_server, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        wait_for(lambda: last in stored_segments(storage, "shop").get(1, []), f"segment {last} shipped to S3", 90)
    finally:
        stop_receiver(receiver, wal_server, slot)
    assert all(result.ok for result in verify_base_backups(config, "shop"))  # the verdicts anchoring needs
    segments_before = stored_segments(storage, "shop")[1]

    # a window that starts just after the newer base finished: only it (and the WAL from its start) is needed
    store_now = StoreClock(storage, "shop").now()
    assert store_now is not None
    policy = ChainPolicy(store_now - window_start, 0)
    cleanup = plan_continuous_cleanup(storage, "shop", policy, datetime.now(UTC))
    assert cleanup is not None and cleanup.plan.anchor == newer.base_id, cleanup.render()
    assert {d.name for d in cleanup.plan.deletions if d.kind == "base"} == {older.base_id}
    sweep_continuous(storage, cleanup, dry_run=False, audit=AuditLog(storage, actor="test"))

    assert [b.base_id for b in list_base_backups(storage, "shop")] == [newer.base_id]
    segments_after = stored_segments(storage, "shop")[1]
    assert segments_after[-1] == segments_before[-1] and len(segments_after) < len(segments_before)
    assert not any(key.startswith(f"shop/continuous/base/{older.base_id}/")
                   for key in (info.key for info in storage.list("shop/continuous/base/")))

    restored = restore_database_to_point(config, "shop", data_dir=tmp_path / "restored", to_time=target_time)
    try:
        assert restored.chain == [newer.base_id] and restored.skipped == ()
        assert _notes(restored.dsn(), "s3c-") == {"s3c-a": 200, "s3c-b": 100, "s3c-c": 30}
    finally:
        stop_restored(restored)
    # before the window: the older base is gone, and nothing pretends to reach that moment
    with pytest.raises(NotFoundError):
        restore_database_to_point(config, "shop", data_dir=tmp_path / "too-early", to_time=before_window)
