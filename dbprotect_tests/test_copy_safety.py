"""Copies never destroy what they replace (issue 10, point 3).

A copy writes under a temporary name, verifies it there against the source manifest, and only
then renames it into place; an object on the target that already matches the manifest is never
overwritten or deleted, and a target manifest describing other bytes stops the copy before
anything is touched. Each test makes the old behaviour (copy over the real name, delete it when
it does not verify) fail: that deleted a good target copy when the source was corrupt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from dbprotect.core.copy import TEMP_MARK, copy_backup
from dbprotect.core.errors import IntegrityError
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store.catalog import list_backups, recorded_verifications
from dbprotect.core.store.manifest import dump_key, manifest_key
from dbprotect_tests.fixtures.backups import DB, NOW, write_backup
from dbprotect_tests.fixtures.cli import run_json


def _corrupt(store: Storage, backup_id: str) -> None:
    data = bytearray(store.get_bytes(dump_key(DB, backup_id)))
    data[len(data) // 2] ^= 0x01
    store.put_bytes(dump_key(DB, backup_id), bytes(data))


def _keys(store: Storage) -> list[str]:
    return [info.key for info in store.list("") if not info.key.startswith("_audit/")]


@pytest.fixture
def src(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "primary")


def test_a_corrupt_source_never_replaces_a_good_verified_target_copy(src: FilesystemStorage, store: Storage) -> None:
    backup_id = write_backup(src, NOW - timedelta(hours=3), n=1)
    copy_backup(src, store, DB, backup_id)
    good = store.get_bytes(dump_key(DB, backup_id))
    _corrupt(src, backup_id)  # the source rots after the copy
    result = copy_backup(src, store, DB, backup_id)  # copy --backup ID again
    assert result.already_held
    assert store.get_bytes(dump_key(DB, backup_id)) == good
    entry = {e.backup_id: e for e in list_backups(store, DB)}[backup_id]
    assert entry.integrity_ok and entry.status == "verified:readable"
    assert not [key for key in _keys(store) if TEMP_MARK in key]


def test_a_corrupt_source_leaves_a_rotten_target_object_as_it_was_and_commits_nothing(
        src: FilesystemStorage, store: Storage) -> None:
    backup_id = write_backup(src, NOW - timedelta(hours=3), n=2)
    copy_backup(src, store, DB, backup_id)
    _corrupt(store, backup_id)
    rotten = store.get_bytes(dump_key(DB, backup_id))
    before = sorted(_keys(store))
    _corrupt(src, backup_id)
    with pytest.raises(IntegrityError, match="does not match its manifest: SHA-256 mismatch") as err:
        copy_backup(src, store, DB, backup_id)
    assert "left as it was" in (err.value.hint or "")
    assert store.get_bytes(dump_key(DB, backup_id)) == rotten  # not deleted, not replaced by other bad bytes
    assert sorted(_keys(store)) == before  # no temporary object, no new check record, the manifest kept


def test_a_corrupt_source_leaves_nothing_on_an_empty_target(src: FilesystemStorage, store: Storage) -> None:
    backup_id = write_backup(src, NOW - timedelta(hours=3), n=3)
    _corrupt(src, backup_id)
    with pytest.raises(IntegrityError):
        copy_backup(src, store, DB, backup_id)
    assert _keys(store) == [] and list_backups(store, DB, include_incomplete=True) == []


def test_a_rotten_target_object_is_replaced_only_by_verified_bytes(src: FilesystemStorage, store: Storage) -> None:
    backup_id = write_backup(src, NOW - timedelta(hours=3), n=4)
    copy_backup(src, store, DB, backup_id)
    _corrupt(store, backup_id)
    result = copy_backup(src, store, DB, backup_id)
    assert not result.already_held
    assert store.get_bytes(dump_key(DB, backup_id)) == src.get_bytes(dump_key(DB, backup_id))
    assert recorded_verifications(store, DB, backup_id)[-1].ok


def test_a_target_manifest_describing_other_bytes_stops_the_copy_before_anything_is_touched(
        src: FilesystemStorage, store: Storage) -> None:
    backup_id = write_backup(src, NOW - timedelta(hours=3), n=5)
    copy_backup(src, store, DB, backup_id)
    theirs = store.get_bytes(dump_key(DB, backup_id))
    # the source's manifest for this id now describes other bytes (a hostile or confused store)
    other = src.get_bytes(manifest_key(DB, backup_id)).replace(
        hashlib.sha256(theirs).hexdigest().encode(), b"0" * 64)
    src.put_bytes(manifest_key(DB, backup_id), other)
    before = {key: store.get_bytes(key) for key in _keys(store)}
    with pytest.raises(IntegrityError, match="describes other bytes"):
        copy_backup(src, store, DB, backup_id)
    assert {key: store.get_bytes(key) for key in _keys(store)} == before


def test_a_killed_copy_leaves_a_temporary_object_that_the_next_copy_removes(
        src: FilesystemStorage, store: Storage) -> None:
    backup_id = write_backup(src, NOW - timedelta(hours=3), n=6)
    dead = f"{dump_key(DB, backup_id)}{TEMP_MARK}0123456789ab"
    store.put_bytes(dead, b"half a copy")  # what a SIGKILL between write and rename leaves
    assert [e.status for e in list_backups(store, DB, include_incomplete=True)] == ["incomplete"]
    copy_backup(src, store, DB, backup_id)
    assert dead not in _keys(store)
    assert [e.status for e in list_backups(store, DB)] == ["verified:readable"]


def test_the_manifest_on_the_target_is_the_sources_byte_for_byte_and_written_once(
        src: FilesystemStorage, store: Storage) -> None:
    backup_id = write_backup(src, NOW - timedelta(hours=3), n=7)
    copy_backup(src, store, DB, backup_id)
    copy_backup(src, store, DB, backup_id)
    assert store.get_bytes(manifest_key(DB, backup_id)) == src.get_bytes(manifest_key(DB, backup_id))
    stored = [v for v in recorded_verifications(store, DB, backup_id) if v.rung == "stored"]
    assert [v.ok for v in stored] == [True, True]  # one per copy run, appended ("stored" never carries over)
    assert "already held, kept" in stored[-1].detail


def test_copy_backup_from_the_cli_over_a_good_target_copy_keeps_it(
        tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case end to end: ``copy --backup ID`` of a corrupt source over a good verified copy."""
    write_config(None, storage={"local": {"type": "filesystem", "path": str(tmp_path / "primary")},
                                "offsite": {"type": "filesystem", "path": str(tmp_path / "offsite")}})
    primary, offsite = FilesystemStorage(tmp_path / "primary"), FilesystemStorage(tmp_path / "offsite")
    backup_id = write_backup(primary, NOW - timedelta(hours=3), n=8)
    code, out, _err = run_json(capsys, "copy", DB, "--target", "offsite", "--backup", backup_id)
    assert code == 0, out
    good = offsite.get_bytes(dump_key(DB, backup_id))
    _corrupt(primary, backup_id)
    code, out, err = run_json(capsys, "copy", DB, "--target", "offsite", "--backup", backup_id)
    assert code == 0, (out, err)
    assert offsite.get_bytes(dump_key(DB, backup_id)) == good
    assert [e.status for e in list_backups(offsite, DB)] == ["verified:readable"]
