"""Audit truncation is detectable, and a damaged record stops nothing (issue 10, points 10 and 9).

Every manifest records the audit log's head when it was written (``audit_head``); ``audit --verify``
requires the newest manifests' anchored records to still be in the log, and ``--expect-head``
checks a head kept outside the store. Tampering goes through the store, as an intruder's would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from dbprotect.core.audit import (
    AUDIT_PREFIX,
    AuditEvent,
    append,
    audit_head,
    collect_anchors,
    parse_expected_head,
    read,
    verify_chain,
)
from dbprotect.core.ops import backup_database
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store.catalog import load_manifest
from dbprotect.core.store.manifest import manifest_key
from dbprotect_tests.fixtures.backups import DB, NOW, write_backup
from dbprotect_tests.fixtures.cli import run_json

T0 = NOW - timedelta(days=1)


def event(i: int, outcome: str = "ok") -> AuditEvent:
    return AuditEvent(at=T0 + timedelta(minutes=i), actor="schedule:shop_backup", action="backup", database=DB,
                      outcome=outcome, target=f"backup-{i}", detail=f"event {i}")


def _audit_keys(store: Storage) -> list[str]:
    return [info.key for info in store.list(AUDIT_PREFIX)]


def _anchored_backup(store: Storage, n: int) -> str:
    """A synthetic backup whose manifest records the log's head, as run_backup's does."""
    backup_id = write_backup(store, NOW - timedelta(hours=10 - n), n=n)
    raw = json.loads(store.get_bytes(manifest_key(DB, backup_id)))
    raw["audit_head"] = audit_head(store)
    store.put_bytes(manifest_key(DB, backup_id), json.dumps(raw).encode())
    return backup_id


@pytest.fixture
def history(store: Storage) -> list[str]:
    """Records 1-3, backup A anchored at 3, records 4-5, backup B anchored at 5, records 6-7."""
    for i in (1, 2, 3):
        append(store, event(i))
    _anchored_backup(store, 1)
    for i in (4, 5):
        append(store, event(i))
    _anchored_backup(store, 2)
    for i in (6, 7):
        append(store, event(i))
    return _audit_keys(store)


def test_manifests_anchor_the_head_and_an_intact_log_passes(store: Storage, history: list[str]) -> None:
    anchors = sorted(a.seq for a in collect_anchors(store))
    assert anchors == [3, 5]
    report = verify_chain(store, anchors=collect_anchors(store))
    assert report.ok and report.head_seq == 7


def test_deleting_the_newest_records_past_an_anchor_is_detected(store: Storage, history: list[str]) -> None:
    for key in history[4:]:  # records 5, 6, 7
        store.delete(key)
    assert verify_chain(store).ok  # what the chain alone cannot see
    report = verify_chain(store, anchors=collect_anchors(store))
    assert report.kinds() == {"truncated"}
    assert "the log ends at seq 4, but" in report.problems[0].message
    assert "recorded its head at seq 5" in report.problems[0].message


def test_rewriting_the_tail_with_recomputed_hashes_is_detected(store: Storage, history: list[str]) -> None:
    for key in history[3:]:  # records 4-7 removed ...
        store.delete(key)
    for i in (4, 5, 6, 7):  # ... and replaced by a valid-looking history with fresh hashes
        append(store, event(i, outcome="ok (forged)"))
    assert verify_chain(store).ok
    report = verify_chain(store, anchors=collect_anchors(store))
    assert report.kinds() == {"rewritten"}
    assert "recorded record seq 5" in report.problems[0].message and "tail was rewritten" in report.problems[0].message


def test_records_after_the_newest_anchor_need_an_expected_head(store: Storage, history: list[str]) -> None:
    head = verify_chain(store)
    store.delete(history[-1])
    assert verify_chain(store, anchors=collect_anchors(store)).ok  # the stated limit
    report = verify_chain(store, known_head=(head.head_seq, head.head_hash), anchors=collect_anchors(store))
    assert report.kinds() == {"truncated"}


def test_a_malformed_anchor_from_the_store_is_ignored_not_obeyed(store: Storage, history: list[str]) -> None:
    backup_id = _anchored_backup(store, 3)
    raw = json.loads(store.get_bytes(manifest_key(DB, backup_id)))
    for hostile in ("garbage", {"seq": "7", "hash": "x"}, {"seq": True, "hash": "0" * 64}, [1, 2]):
        raw["audit_head"] = hostile
        store.put_bytes(manifest_key(DB, backup_id), json.dumps(raw).encode())
        assert sorted(a.seq for a in collect_anchors(store)) == [3, 5]


def test_parse_expected_head() -> None:
    assert parse_expected_head(f"12:{'AB' * 32}") == (12, "ab" * 32)
    for bad in ("12", "x:" + "a" * 64, "0:" + "a" * 64, "3:abc", ""):
        with pytest.raises(ValueError, match="is not SEQ:HASH"):
            parse_expected_head(bad)


@pytest.mark.parametrize("damage", [b"", b"not json", b"[1, 2]", b'{"seq": "x"}', b"\xff\xfe"])
def test_a_damaged_newest_record_never_stops_an_append_and_is_reported(store: Storage, damage: bytes) -> None:
    for i in (1, 2, 3):
        append(store, event(i))
    newest = _audit_keys(store)[-1]
    store.put_bytes(newest, damage)
    record = append(store, event(4))  # raised (exit 70 for every audited command) before
    # after the damaged record's seq (its key is taken for ever), linked to the newest readable record
    assert record.key in _audit_keys(store) and record.seq == 4 and record.prev_hash != "0" * 64
    assert record.key in {r.key for r in read(store)}
    report = verify_chain(store)
    assert "unreadable" in report.kinds() and newest in {p.key for p in report.problems}
    assert audit_head(store) == {"seq": record.seq, "hash": record.hash}


def test_every_recent_record_damaged_still_appends(store: Storage) -> None:
    for i in range(1, 7):
        append(store, event(i))
    for key in _audit_keys(store)[2:]:
        store.put_bytes(key, b"")
    record = append(store, event(7))
    assert record.seq == 7  # after the damaged ones (their keys are taken), linked to the newest readable (seq 2)
    assert record.key in _audit_keys(store)
    assert record.prev_hash == next(r.hash for r in read(store) if r.seq == 2)
    assert verify_chain(store).kinds() == {"unreadable"}  # the link over damaged records is not a problem


def _copy_config(tmp_path: Path, write_config: Callable[..., Path]) -> tuple[FilesystemStorage, str]:
    write_config(None, storage={"local": {"type": "filesystem", "path": str(tmp_path / "primary")},
                                "offsite": {"type": "filesystem", "path": str(tmp_path / "offsite")}})
    primary = FilesystemStorage(tmp_path / "primary")
    return primary, write_backup(primary, NOW - timedelta(hours=3), n=9)


def test_the_cli_keeps_working_and_audit_verify_reports_a_damaged_record(
        tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    primary, backup_id = _copy_config(tmp_path, write_config)
    assert run_json(capsys, "copy", DB, "--target", "offsite", "--backup", backup_id)[0] == 0
    primary.put_bytes(_audit_keys(primary)[-1], b"")  # an empty record (a full disk, a bad sync)
    code, out, err = run_json(capsys, "copy", DB, "--target", "offsite", "--backup", backup_id)
    assert code == 0, (out, err)  # exit 70 before
    assert [r.action for r in read(primary)][-1] == "copy"  # the new record was not lost
    code, doc, err = run_json(capsys, "audit", "--verify")
    assert code == 7 and "is not a readable audit record" in err, (doc, err)


def test_audit_verify_from_the_cli_uses_the_anchors_and_the_expected_head(
        tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    primary, _backup_id = _copy_config(tmp_path, write_config)
    for i in (1, 2, 3):
        append(primary, event(i))
    _anchored_backup(primary, 1)
    append(primary, event(4))
    code, doc, _err = run_json(capsys, "audit", "--verify")
    assert code == 0 and doc["chain"]["ok"]
    head = f"{doc['chain']['head_seq']}:{doc['chain']['head_hash']}"
    newest = _audit_keys(primary)[-1]
    primary.delete(newest)
    assert run_json(capsys, "audit", "--verify")[0] == 0  # seq 4 was after every anchor
    code, _doc, err = run_json(capsys, "audit", "--expect-head", head)
    assert code == 7 and "the newest records were deleted" in err
    for key in _audit_keys(primary)[2:]:  # now remove the anchored record (seq 3) too
        primary.delete(key)
    code, _doc, err = run_json(capsys, "audit", "--verify")
    assert code == 7 and "recorded its head at seq 3" in err
    code, _doc, err = run_json(capsys, "audit", "--expect-head", "not-a-head")
    assert code == 64 and "SEQ:HASH" in err  # a usage error


@pytest.mark.slow
def test_a_real_backups_manifest_records_the_head_before_it(
        write_config: Callable[..., Path], make_db: Callable[..., str], tmp_path: Path) -> None:
    from dbprotect.core.config.load import load_config

    config = load_config(write_config(make_db("create table t (id int primary key); insert into t values (1);")))
    first = backup_database(config, DB).manifest
    assert first.audit_head is None  # an empty log has no head yet
    second = backup_database(config, DB).manifest
    store = FilesystemStorage(tmp_path / "store")
    first_record = next(r for r in read(store) if r.target == first.backup_id)
    assert second.audit_head == {"seq": first_record.seq, "hash": first_record.hash}
    assert load_manifest(store, DB, second.backup_id).format_version == 2
    assert verify_chain(store, anchors=collect_anchors(store)).ok
