"""The continuous cleanup's reading of a store (a real folder, records written as the code writes them):
verdicts bound to the objects they verified, an unreadable record refuses (DBP970), leftovers of a
killed sweep or ship are swept, and a dry run deletes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbprotect.core.audit import AuditLog
from dbprotect.core.continuous.base import BaseBackupRecord, BaseVerification, format_lsn
from dbprotect.core.continuous.objects import base_folder
from dbprotect.core.continuous.verdicts import base_state, record_base_verdict, verdict_key
from dbprotect.core.continuous.wal import SegmentRecord, segment_name, segment_object_key, segment_record_key
from dbprotect.core.errors import RefusedError
from dbprotect.core.retention.chain_cleanup import plan_continuous_cleanup, sweep_continuous
from dbprotect.core.retention.chains import ChainPolicy
from dbprotect.core.store.filesystem import FilesystemStorage

SEG = 16 << 20
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def put_base(storage: FilesystemStorage, base_id: str, hour: int, start_segment: int, *, verified: bool = True,
             parent: str | None = None) -> BaseBackupRecord:
    start = start_segment * SEG + 40
    record = BaseBackupRecord(
        database="shop", base_id=base_id, kind="incremental" if parent else "full", parent=parent,
        system_identifier="1", timeline=1, start_lsn=format_lsn(start), end_lsn=format_lsn(start + 100),
        started_at=(T0 + timedelta(hours=hour)).isoformat(), finished_at=(T0 + timedelta(hours=hour)).isoformat(),
        server="h:5432/shop", server_version="18.0", tool_version="t",
        base={"key": "base.tar.zst.age", "size": 3, "sha256": f"{hour:064x}"},
        backup_manifest={"key": "backup_manifest.age", "size": 3, "sha256": f"{hour + 1:064x}"}, encryption={})
    folder = base_folder("shop", base_id)
    storage.put_bytes(f"{folder}/base.tar.zst.age", b"tar")
    storage.put_bytes(f"{folder}/backup_manifest.age", b"man")
    storage.put_bytes(f"{folder}/base.json", record.to_json())
    if verified:
        record_base_verdict(storage, record, BaseVerification(base_id, True, "pg_verifybackup passed", 0.1))
    return record


def put_segments(storage: FilesystemStorage, first: int, last: int) -> None:
    for number in range(first, last + 1):
        name = segment_name(1, number)
        storage.put_bytes(segment_object_key("shop", name), b"wal")
        storage.put_bytes(segment_record_key("shop", name), SegmentRecord(
            segment=name, kind="segment", timeline=1, start_lsn=format_lsn(number * SEG),
            end_lsn=format_lsn((number + 1) * SEG), plain_bytes=SEG, plain_sha256="0" * 64,
            object=segment_object_key("shop", name), size=3, sha256="0" * 64, shipped_at=T0.isoformat(),
            # the receiver's commit-time sample: the server reached this segment's end 1 + (n-1)*10/3 hours
            # after T0 (after the bases put on it here), which dates each base by the WAL (chains.py rule 9)
            safe_time=(T0 + timedelta(hours=1 + (number - 1) * 10 / 3)).isoformat(),
            safe_lsn=format_lsn((number + 1) * SEG - 1)).to_json())


def store(tmp_path: Path) -> FilesystemStorage:
    storage = FilesystemStorage(tmp_path / "store")
    put_base(storage, "20260301T000000Z-aaaa", 0, 1)
    put_base(storage, "20260301T100000Z-bbbb", 10, 4)
    put_segments(storage, 1, 6)
    return storage


POLICY = ChainPolicy(timedelta(hours=5), 1)
NOW = T0 + timedelta(hours=20)


def test_the_old_base_and_its_wal_go_and_a_dry_run_deletes_nothing(tmp_path: Path) -> None:
    storage = store(tmp_path)
    keys = sorted(i.key for i in storage.list("shop/"))
    done = plan_continuous_cleanup(storage, "shop", POLICY, NOW)
    assert done is not None and done.plan.anchor == "20260301T100000Z-bbbb"
    sweep_continuous(storage, done, dry_run=True, audit=AuditLog(storage, actor="t"))
    assert sorted(i.key for i in storage.list("shop/")) == keys
    done = plan_continuous_cleanup(storage, "shop", POLICY, NOW)
    assert done is not None
    sweep_continuous(storage, done, dry_run=False, audit=AuditLog(storage, actor="t"))
    left = sorted(i.key for i in storage.list("shop/continuous/"))
    assert not [k for k in left if "aaaa" in k]
    assert [k for k in left if k.endswith(".json") and "/wal/" in k] == \
        [segment_record_key("shop", segment_name(1, n)) for n in range(4, 7)]


def test_a_verdict_about_other_objects_does_not_verify(tmp_path: Path) -> None:
    storage = store(tmp_path)
    newest = BaseBackupRecord.from_store(storage, "shop", "20260301T100000Z-bbbb")
    assert base_state(storage, newest) == "verified"
    forged = storage.get_bytes(verdict_key(newest)).replace(newest.base["sha256"].encode(), b"f" * 64)
    storage.put_bytes(verdict_key(newest), forged)
    assert base_state(storage, newest) == "unverified"
    done = plan_continuous_cleanup(storage, "shop", POLICY, NOW)
    assert done is not None and done.plan.anchor == "20260301T000000Z-aaaa" and not done.plan.of_kind("base", "delete")
    record_base_verdict(storage, newest, BaseVerification(newest.base_id, False, "checksum mismatch", 0.1))
    assert base_state(storage, newest) == "failed"


def test_an_unreadable_record_refuses_and_deletes_nothing(tmp_path: Path) -> None:
    storage = store(tmp_path)
    storage.put_bytes(f"{base_folder('shop', '20260301T050000Z-cccc')}/base.json", b"{not json")
    with pytest.raises(RefusedError) as refused:
        plan_continuous_cleanup(storage, "shop", POLICY, NOW)
    assert refused.value.code == "DBP970"


@pytest.mark.parametrize("safe_time", ["2026-03-01T05:00:00", "yesterday", 7], ids=["no-zone", "not-a-time", "number"])
def test_a_commit_time_sample_that_does_not_parse_refuses_and_deletes_nothing(tmp_path: Path,
                                                                             safe_time: object) -> None:
    """The sample dates a base for the anchor (rule 9): one read from the store that is not an aware time
    (whose clock would a naive one be?) refuses the sweep, as any unreadable record does."""
    storage = store(tmp_path)
    keys = sorted(i.key for i in storage.list("shop/"))
    key = segment_record_key("shop", segment_name(1, 4))  # read for the newer base's sample
    record = json.loads(storage.get_bytes(key))
    storage.put_bytes(key, json.dumps({**record, "safe_time": safe_time}).encode())
    with pytest.raises(RefusedError) as refused:
        plan_continuous_cleanup(storage, "shop", POLICY, NOW)
    assert refused.value.code == "DBP970"
    expected = {"2026-03-01T05:00:00": "has no time zone", "yesterday": "is not a time"}
    assert expected.get(safe_time, "commit-time sample incomplete") in str(refused.value)  # type: ignore[call-overload]
    assert sorted(i.key for i in storage.list("shop/")) == keys


def test_leftovers_of_a_killed_sweep_or_ship_are_swept(tmp_path: Path) -> None:
    storage = store(tmp_path)
    headless = base_folder("shop", "20260301T050000Z-dddd")
    storage.put_bytes(f"{headless}/base.tar.zst.age", b"tar")
    storage.put_bytes(segment_object_key("shop", segment_name(1, 0)), b"orphan below the cutoff")
    storage.put_bytes(segment_object_key("shop", segment_name(1, 9)), b"a ship in progress")
    done = plan_continuous_cleanup(storage, "shop", POLICY, NOW)
    assert done is not None
    assert sorted(done.garbage) == [f"WAL object {segment_name(1, 0)}.zst.age", "headless base 20260301T050000Z-dddd"]
    sweep_continuous(storage, done, dry_run=False, audit=AuditLog(storage, actor="t"))
    keys = {i.key for i in storage.list("shop/continuous/")}
    assert f"{headless}/base.tar.zst.age" not in keys
    assert segment_object_key("shop", segment_name(1, 9)) in keys
