"""Continuous protection on S3 (issue 15, point 3): the receiver (a real ``dbprotect wal receive``
process), a base backup, WAL shipped while rows are written, and a point-in-time restore, all against
a real S3 HTTP endpoint (moto server). The restore to T holds exactly the rows committed before T;
the base passes pg_verifybackup and the WAL verifies, read back from the bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyrage
import pytest
import yaml

from dbprotect.core.config.load import load_config
from dbprotect.core.continuous.pitr import stop_restored
from dbprotect.core.continuous.wal import stored_segments, verify_wal
from dbprotect.core.ops.context import primary_store
from dbprotect.core.ops.continuous import base_backup_database, restore_database_to_point, verify_base_backups
from dbprotect.core.store import S3Storage
from dbprotect_tests.fixtures.fix_storage import create_bucket
from dbprotect_tests.test_continuous_pitr import _insert, _notes, _open_for_server
from dbprotect_tests.test_continuous_wal import (
    current_segment,
    start_receiver,
    stop_receiver,
    wait_for,
    wait_streaming,
)

pytestmark = pytest.mark.slow


def test_base_backup_wal_receive_and_pitr_restore_on_s3(
        wal_server: str, s3_endpoint: str, write_config: Callable[..., Path], tmp_path: Path,
        identity: pyrage.x25519.Identity) -> None:
    slot = "dbprotect_test_s3"
    bucket = create_bucket(s3_endpoint, "pitr")
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
        base = base_backup_database(config, "shop")
        assert base.kind == "full"
        time.sleep(1.1)  # the base's finished_at stays before the target
        _insert(wal_server, "pitr-s3-a", range(400_000, 400_300))
        target_time, _ = _insert(wal_server, "pitr-s3-b", range(400_300, 400_350))
        time.sleep(1.1)
        _insert(wal_server, "pitr-s3-c", range(400_350, 400_400))
        last = current_segment(wal_server)
        with psycopg.connect(wal_server, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        wait_for(lambda: last in stored_segments(storage, "shop").get(1, []), f"segment {last} shipped to S3", 90)
    finally:
        stop_receiver(receiver, wal_server, slot)
    assert all(result.ok for result in verify_base_backups(config, "shop")), "pg_verifybackup failed on S3"
    wal = verify_wal(storage, "shop", identity)
    assert wal.ok and wal.checked >= 1, (wal.problems, wal.gaps)
    restored = restore_database_to_point(config, "shop", data_dir=tmp_path / "restored", to_time=target_time)
    try:
        assert restored.chain == [base.base_id]
        notes = _notes(restored.dsn(), "pitr-s3-")
        assert notes == {"pitr-s3-a": 300, "pitr-s3-b": 50}
    finally:
        stop_restored(restored)
