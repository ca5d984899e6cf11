"""Continuous retention judges ``now`` by the earlier of the host's clock and the store's (issue 15, gap 3).

A real filesystem store (its clock: the ``modified`` time it stamps). Two verified bases finished one
and three hours ago, a 5-hour window: by the store's clock nothing has left the window. A host clock
running ten hours fast would make the newer base the anchor and delete the older one and its WAL;
the plan must not. A host clock running *behind* is the earlier one and is used as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbprotect.core.continuous.base import BaseBackupRecord, BaseVerification, format_lsn
from dbprotect.core.continuous.objects import base_folder
from dbprotect.core.continuous.verdicts import record_base_verdict
from dbprotect.core.retention.chain_cleanup import plan_continuous_cleanup
from dbprotect.core.retention.chains import ChainPolicy
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect.core.store.lock import StoreClock
from dbprotect_tests.test_continuous_retention_store import SEG, put_segments

POLICY = ChainPolicy(timedelta(hours=5), 0)


def put_base(storage: FilesystemStorage, finished: datetime, start_segment: int, tag: str) -> str:
    base_id = f"{finished:%Y%m%dT%H%M%SZ}-{tag}"
    start = start_segment * SEG + 40
    record = BaseBackupRecord(
        database="shop", base_id=base_id, kind="full", parent=None, system_identifier="1", timeline=1,
        start_lsn=format_lsn(start), end_lsn=format_lsn(start + 100), started_at=finished.isoformat(),
        finished_at=finished.isoformat(), server="h:5432/shop", server_version="18.0", tool_version="t",
        base={"key": "base.tar.zst.age", "size": 3, "sha256": "1" * 64},
        backup_manifest={"key": "backup_manifest.age", "size": 3, "sha256": "2" * 64}, encryption={})
    folder = base_folder("shop", base_id)
    storage.put_bytes(f"{folder}/base.tar.zst.age", b"tar")
    storage.put_bytes(f"{folder}/backup_manifest.age", b"man")
    storage.put_bytes(f"{folder}/base.json", record.to_json())
    record_base_verdict(storage, record, BaseVerification(base_id, True, "pg_verifybackup passed", 0.1))
    return base_id


def test_a_host_clock_running_fast_deletes_nothing_the_store_clock_keeps(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    real_now = datetime.now(UTC).replace(microsecond=0)
    older = put_base(storage, real_now - timedelta(hours=3), 1, "aaaa")
    newer = put_base(storage, real_now - timedelta(hours=1), 4, "bbbb")
    put_segments(storage, 1, 6)

    fast = plan_continuous_cleanup(storage, "shop", POLICY, real_now + timedelta(hours=10),
                                   store_clock=StoreClock(storage, "shop"))
    assert fast is not None and fast.plan.deletions == [], fast.render()
    assert fast.plan.now <= datetime.now(UTC) + timedelta(minutes=1)  # the store's clock, not the host's

    # a host clock running behind is the earlier one: used as given (and deletes nothing here either)
    behind = plan_continuous_cleanup(storage, "shop", POLICY, real_now - timedelta(hours=2),
                                     store_clock=StoreClock(storage, "shop"))
    assert behind is not None and behind.plan.now == real_now - timedelta(hours=2)
    assert behind.plan.deletions == []

    # once the store's own clock has moved past the window, the older chain goes: the rule still
    # deletes, only never on the host's word alone
    aged = FilesystemStorage(tmp_path / "aged")
    gone = put_base(aged, real_now - timedelta(hours=30), 1, "cccc")
    anchor = put_base(aged, real_now - timedelta(hours=20), 4, "dddd")
    put_segments(aged, 1, 6)
    due = plan_continuous_cleanup(aged, "shop", POLICY, real_now + timedelta(hours=10),
                                 store_clock=StoreClock(aged, "shop"))
    assert due is not None and due.plan.anchor == anchor
    assert {d.name for d in due.plan.deletions if d.kind == "base"} == {gone}
    assert older < newer
