"""Backup copies between real stores: a folder and two buckets on the moto S3 HTTP endpoint.

Backups are synthetic (test_cleanup's writer: the real key layout, a manifest whose SHA-256
matches the dump object, verified check records): a copy never decrypts, so their content does
not matter, only their bytes. Requests are counted with botocore's own event hooks on the
clients, so "server-side" means the dump's bytes were never fetched by this process.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dbprotect.core.copy import copy_backup, plan_copy, verify_copy
from dbprotect.core.errors import IntegrityError
from dbprotect.core.store import FilesystemStorage, ObjectNotFound, S3Storage, Storage, WriterContext
from dbprotect.core.store.catalog import list_backups, load_manifest, recorded_verifications
from dbprotect.core.store.manifest import dump_key, manifest_key
from dbprotect_tests.fixtures.backups import DB, NOW, write_backup
from dbprotect_tests.fixtures.fix_storage import create_bucket


def s3_store(endpoint: str, bucket: str) -> S3Storage:
    return S3Storage(bucket, "backups", endpoint_url=endpoint, region="us-east-1")


@pytest.fixture
def second_bucket(s3_endpoint: str) -> str:
    return create_bucket(s3_endpoint, prefix="dbp-copy")


class RequestLog:
    """Every S3 API call a client makes, as (operation, bucket, key), from botocore's own event hooks."""

    def __init__(self, *stores: S3Storage) -> None:
        self.calls: list[tuple[str, str, str]] = []
        #: (source bucket, source key) of each CopyObject / UploadPartCopy
        self.copy_sources: list[tuple[str, str]] = []
        for store in stores:
            store.client.meta.events.register("before-parameter-build.s3.*", self._record)

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.calls.append((model.name, str(params.get("Bucket", "")), str(params.get("Key", ""))))
        source = params.get("CopySource")
        if isinstance(source, dict):
            self.copy_sources.append((str(source.get("Bucket", "")), str(source.get("Key", ""))))

    def ops(self, name: str) -> list[tuple[str, str, str]]:
        return [call for call in self.calls if call[0] == name]


def assert_copy_is_valid(dst: Storage, backup_id: str, src: Storage) -> None:
    """Listed on the destination, verified there, byte-identical, its manifest equal but for the new check."""
    entry = {e.backup_id: e for e in list_backups(dst, DB)}[backup_id]
    assert entry.integrity_ok and entry.status == "verified:readable", entry.status
    assert dst.get_bytes(dump_key(DB, backup_id)) == src.get_bytes(dump_key(DB, backup_id))
    manifest = load_manifest(dst, DB, backup_id)
    assert manifest.sha256 == hashlib.sha256(dst.get_bytes(dump_key(DB, backup_id))).hexdigest()
    # format 2: the manifest is write-once (the source's, byte for byte); results are check objects
    assert dst.get_bytes(manifest_key(DB, backup_id)) == src.get_bytes(manifest_key(DB, backup_id))
    recorded = recorded_verifications(dst, DB, backup_id)
    assert recorded[-1].rung == "stored" and recorded[-1].ok
    assert "copy from" in recorded[-1].detail


@pytest.mark.slow
def test_filesystem_to_s3_streams_and_verifies(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    src, dst = FilesystemStorage(tmp_path / "store"), s3_store(s3_endpoint, s3_bucket)
    older = write_backup(src, NOW - timedelta(days=2), n=1)
    newest = write_backup(src, NOW - timedelta(days=1), n=2)
    plan = plan_copy(src, dst, DB)
    assert plan.backup_id == newest and "does not hold it yet" in plan.reason
    result = copy_backup(src, dst, DB, newest)
    assert result.server_side is False and result.bytes == len(src.get_bytes(dump_key(DB, newest)))
    assert_copy_is_valid(dst, newest, src)
    assert [e.backup_id for e in list_backups(dst, DB)] == [newest]  # only the newest: no back-fill of `older`
    assert not plan_copy(src, dst, DB).needed
    assert older not in {e.backup_id for e in list_backups(dst, DB)}


def test_s3_to_s3_on_one_endpoint_is_a_server_side_copy(s3_endpoint: str, s3_bucket: str,
                                                         second_bucket: str) -> None:
    src, dst = s3_store(s3_endpoint, s3_bucket), s3_store(s3_endpoint, second_bucket)
    backup_id = write_backup(src, NOW - timedelta(hours=5), n=3)
    log = RequestLog(src, dst)
    result = copy_backup(src, dst, DB, backup_id)
    assert result.server_side is True
    dump = dump_key(DB, backup_id)
    gets = log.ops("GetObject")
    # The dump's bytes are never fetched from the source; the destination's copy is read once, to verify
    # it (under its temporary name, before it is committed to the real one).
    assert not [call for call in gets if call[1] == s3_bucket and dump in call[2]], gets
    assert len([call for call in gets if call[1] == second_bucket and dump in call[2]]) == 1, gets
    assert [source for source in log.copy_sources if source[0] == s3_bucket and source[1].endswith(dump)]
    copies = log.ops("CopyObject") + log.ops("UploadPartCopy")
    assert copies and all(call[1] == second_bucket for call in copies)
    assert not log.ops("PutObject") or all(not call[2].endswith(dump) for call in log.ops("PutObject"))
    assert_copy_is_valid(dst, backup_id, src)
    # the manifest was written last: its PutObject follows every other write of the copy
    writes = [call for call in log.calls if call[0] in ("PutObject", "CopyObject") and call[1] == second_bucket]
    assert writes[-1][2].endswith(manifest_key(DB, backup_id)), writes


@pytest.mark.slow
def test_s3_to_s3_across_endpoints_would_stream(s3_endpoint: str, s3_bucket: str, second_bucket: str) -> None:
    """With server-side copy off (as for two endpoints), the same copy streams and is still verified."""
    src, dst = s3_store(s3_endpoint, s3_bucket), s3_store(s3_endpoint, second_bucket)
    backup_id = write_backup(src, NOW - timedelta(hours=5), n=4)
    log = RequestLog(src, dst)
    result = copy_backup(src, dst, DB, backup_id, allow_server_side=False)
    assert result.server_side is False
    # no copy from the source bucket; the one copy inside the target commits the verified temporary object
    assert not [source for source in log.copy_sources if source[0] == s3_bucket]
    assert [source[1] for source in log.copy_sources] == [
        call[2] for call in log.ops("PutObject") + log.ops("CreateMultipartUpload")
        if call[1] == second_bucket and ".copying-" in call[2]]
    assert [c for c in log.ops("GetObject") if c[1] == s3_bucket and c[2].endswith(dump_key(DB, backup_id))]
    assert_copy_is_valid(dst, backup_id, src)


@pytest.mark.slow
def test_a_copy_corrupted_on_the_target_fails_its_check_and_stops_counting(
        tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    src, dst = FilesystemStorage(tmp_path / "store"), s3_store(s3_endpoint, s3_bucket)
    backup_id = write_backup(src, NOW - timedelta(hours=5), n=5)
    copy_backup(src, dst, DB, backup_id)
    assert verify_copy(dst, DB, backup_id).ok
    data = bytearray(dst.get_bytes(dump_key(DB, backup_id)))
    data[len(data) // 2] ^= 0x01
    dst.put_bytes(dump_key(DB, backup_id), bytes(data))  # bit rot (or tampering) on the target
    report = verify_copy(dst, DB, backup_id)
    assert not report.ok and "SHA-256 mismatch" in report.results[0].detail
    entry = list_backups(dst, DB)[0]
    assert entry.status == "failed:stored" and not entry.integrity_ok  # listed, but counts for nothing
    plan = plan_copy(src, dst, DB)
    assert plan.backup_id == backup_id and "failed verification" in plan.reason  # the next run repairs it
    copy_backup(src, dst, DB, backup_id)
    assert_copy_is_valid(dst, backup_id, src)


class _FlipFirstByte:
    """A writer that corrupts the bytes it is given: what a faulty disk or proxy would do."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.first = inner, True

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        chunk = bytearray(data)
        if self.first and chunk:
            chunk[0] ^= 0xFF
            self.first = False
        return self.inner.write(bytes(chunk)) and len(data)

    def flush(self) -> None:
        self.inner.flush()

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


class CorruptingStore(FilesystemStorage):
    """A real folder store whose streamed writes arrive corrupted (our Storage interface, not a mock)."""

    def open_writer(self, key: str) -> WriterContext:
        inner = super().open_writer(key)
        return WriterContext(_FlipFirstByte(inner.__enter__()))


def test_a_copy_corrupted_in_transit_is_never_committed(tmp_path: Path) -> None:
    src, dst = FilesystemStorage(tmp_path / "store"), CorruptingStore(tmp_path / "offsite")
    backup_id = write_backup(src, NOW - timedelta(hours=5), n=6)
    with pytest.raises(IntegrityError, match="does not match its manifest: SHA-256 mismatch") as caught:
        copy_backup(src, dst, DB, backup_id)
    assert "nothing was committed" in (caught.value.hint or "")
    assert list_backups(dst, DB, include_incomplete=True) == []  # no manifest, no object: it never existed
    with pytest.raises(ObjectNotFound):
        dst.stat(manifest_key(DB, backup_id))


def test_unverified_backups_are_not_copied(tmp_path: Path) -> None:
    src, dst = FilesystemStorage(tmp_path / "store"), FilesystemStorage(tmp_path / "offsite")
    verified = write_backup(src, NOW - timedelta(days=1), n=7)
    write_backup(src, NOW - timedelta(hours=1), verified=False, n=8)
    assert plan_copy(src, dst, DB).backup_id == verified

