"""The audit log against real stores (a folder and the moto S3 endpoint): round trip, and tampering named.

Tampering is done the way an intruder would: through the store itself (delete, overwrite, rename
objects), not by calling into the module.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dbprotect.core.audit import (
    AUDIT_PREFIX,
    GENESIS_HASH,
    AuditEvent,
    AuditLog,
    append,
    read,
    record_hash,
    verify_chain,
)
from dbprotect.core.errors import StorageError
from dbprotect.core.store import FilesystemStorage, Storage

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def event(i: int, action: str = "backup", outcome: str = "ok") -> AuditEvent:
    return AuditEvent(at=T0 + timedelta(minutes=i), actor="schedule:shop_backup", action=action, database="shop",
                      outcome=outcome, target=f"20261123T02{i:02d}00Z-abcdef", detail=f"event {i} — ünïcode",
                      data={"bytes": 1000 + i})


def fill(store: Storage, n: int) -> list[str]:
    return [append(store, event(i)).key for i in range(1, n + 1)]


def audit_keys(store: Storage) -> list[str]:
    return [info.key for info in store.list(AUDIT_PREFIX)]


def rewrite(store: Storage, key: str, change: dict[str, Any], *, rehash: bool = False) -> None:
    raw = json.loads(store.get_bytes(key))
    raw.update(change)
    if rehash:
        raw["hash"] = record_hash(raw)
    store.put_bytes(key, json.dumps(raw).encode())


def test_append_and_read_round_trip(store: Storage) -> None:
    keys = fill(store, 3)
    records = list(read(store))
    assert [r.key for r in records] == keys == audit_keys(store)
    assert [r.seq for r in records] == [1, 2, 3]
    assert keys[0] == "_audit/000000000001.json"  # the one key seq 1 may have (write-once)
    first = records[0]
    assert (first.at, first.actor, first.action, first.database, first.target, first.outcome, first.detail,
            first.data) == ("2026-11-23T02:01:00+00:00", "schedule:shop_backup", "backup", "shop",
                            "20261123T020100Z-abcdef", "ok", "event 1 — ünïcode", {"bytes": 1001})
    assert first.prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    report = verify_chain(store)
    assert report.ok and report.records == 3 and report.problems == ()
    assert (report.head_seq, report.head_hash) == (3, records[-1].hash)
    assert "audit chain intact: 3 record(s), head seq 3" in report.render()


def test_audit_log_object_uses_its_clock_and_actor(store: Storage) -> None:
    log = AuditLog(store, actor="alice", clock=lambda: T0)
    record = log.record("restore", database="shop", target="x", outcome="refused", detail="wrong confirmation")
    assert (record.seq, record.actor, record.at, record.action) == (1, "alice", "2026-11-23T02:00:00+00:00", "restore")


def test_a_deleted_record_is_detected_and_named(store: Storage) -> None:
    keys = fill(store, 4)
    store.delete(keys[1])
    report = verify_chain(store)
    assert not report.ok and report.kinds() == {"missing"}
    assert [p.message for p in report.problems] == ["record(s) seq 2 missing before seq 3: deleted"]


def test_deleting_the_first_records_is_detected(store: Storage) -> None:
    keys = fill(store, 3)
    store.delete(keys[0])
    store.delete(keys[1])
    assert [p.message for p in verify_chain(store).problems] == ["record(s) seq 1-2 missing before seq 3: deleted"]


def test_an_edited_record_is_detected_and_named(store: Storage) -> None:
    keys = fill(store, 3)
    rewrite(store, keys[1], {"outcome": "failed"})
    report = verify_chain(store)
    assert report.kinds() == {"edited"}
    assert report.problems[0].seq == 2 and report.problems[0].key == keys[1]
    assert "record seq 2" in report.problems[0].message and "does not match its hash" in report.problems[0].message


def test_an_edited_record_with_a_recomputed_hash_breaks_the_next_link(store: Storage) -> None:
    keys = fill(store, 3)
    rewrite(store, keys[1], {"outcome": "failed"}, rehash=True)
    report = verify_chain(store)
    assert report.kinds() == {"broken-link"}
    assert (report.problems[0].seq, report.problems[0].key) == (3, keys[2])


def test_reordered_records_are_detected(store: Storage) -> None:
    keys = fill(store, 3)
    one, two = store.get_bytes(keys[0]), store.get_bytes(keys[1])
    store.put_bytes(keys[0], two)
    store.put_bytes(keys[1], one)
    report = verify_chain(store)
    assert report.kinds() == {"reordered"}
    assert {p.key for p in report.problems} == {keys[0], keys[1]}


def test_truncation_is_detected_against_a_known_head(store: Storage) -> None:
    fill(store, 3)
    head = verify_chain(store)
    store.delete(audit_keys(store)[-1])
    assert verify_chain(store).ok  # the limit stated in the module: a shorter chain is still a chain
    report = verify_chain(store, known_head=(head.head_seq, head.head_hash))
    assert report.kinds() == {"truncated"}
    assert "the log ends at seq 2, but seq 3 was seen before" in report.problems[0].message


def test_an_unreadable_record_is_named(store: Storage) -> None:
    keys = fill(store, 2)
    store.put_bytes(keys[1], b"not json")
    report = verify_chain(store)
    assert report.kinds() == {"unreadable"} and report.problems[0].key == keys[1]
    assert [r.seq for r in read(store)] == [1]


class RivalOnFirstAppend:
    """A store where another writer appends at the same moment as our first append (same end of log, same seq):
    it creates that sequence number's record an instant before we do.

    Fault injection on our own Storage interface: it plays the race deterministically.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.rival_key = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if key.startswith(AUDIT_PREFIX) and not self.rival_key:
            rival = {**json.loads(data), "actor": "other-writer"}
            rival["hash"] = record_hash(rival)
            self.rival_key = key
            assert self.inner.put_if_absent(key, json.dumps(rival).encode())
        return self.inner.put_if_absent(key, data)


def test_a_race_for_a_sequence_number_is_lost_cleanly_and_the_loser_appends_next(store: Storage) -> None:
    fill(store, 1)
    racy = RivalOnFirstAppend(store)
    mine = append(racy, event(2))  # type: ignore[arg-type]
    rival = next(r for r in read(store) if r.key == racy.rival_key)
    assert (rival.seq, rival.actor, mine.seq) == (2, "other-writer", 3)  # the rival's record was not replaced
    assert mine.prev_hash == rival.hash and mine.merged == ()
    assert mine.key == "_audit/000000000003.json"
    assert verify_chain(store).ok
    assert [(r.seq, r.actor) for r in read(store)] == [(1, "schedule:shop_backup"), (2, "other-writer"),
                                                        (3, "schedule:shop_backup")]


def test_siblings_of_a_log_written_before_sequence_keys_are_joined_by_the_next_append(store: Storage) -> None:
    """Format-1 logs: two records with one seq under random keys; the next append links both."""
    fill(store, 1)
    mine = append(store, event(2))
    rival_body = {**json.loads(store.get_bytes(mine.key)), "actor": "other-writer"}
    rival_body["hash"] = record_hash(rival_body)
    sibling_key = "_audit/000000000002-20261123T020200Z-00000000.json"
    store.put_bytes(sibling_key, json.dumps(rival_body).encode())
    sibling = next(r for r in read(store) if r.key == sibling_key)
    assert (mine.seq, sibling.seq, mine.prev_hash) == (2, 2, sibling.prev_hash)
    joined = append(store, event(3))
    assert joined.seq == 3 and {joined.prev_hash, *joined.merged} == {mine.hash, sibling.hash}
    assert verify_chain(store).ok
    store.delete(sibling_key)  # removing either branch is seen: the join links to it
    report = verify_chain(store)
    assert report.kinds() == {"missing"} and report.problems[0].key == joined.key
    assert "links to a record that is gone" in report.problems[0].message


def test_concurrent_writers_on_a_folder_never_lose_a_record_or_break_the_chain(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for i in range(5):
                append(store, AuditEvent(at=T0, actor=name, action="verify", database="shop", outcome=str(i)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = list(read(store))
    expected = sorted((f"w{n}", str(i)) for n in range(3) for i in range(5))
    assert sorted((r.actor, r.outcome) for r in records) == expected
    assert verify_chain(store).ok


def test_a_store_that_fails_reports_a_storage_error(tmp_path: Path) -> None:
    class Broken(FilesystemStorage):
        def put_bytes(self, key: str, data: bytes) -> None:
            raise StorageError("file store: disk on fire")

        def put_if_absent(self, key: str, data: bytes) -> bool:
            raise StorageError("file store: disk on fire")

    with pytest.raises(StorageError, match="disk on fire"):
        append(Broken(tmp_path / "store"), event(1))
