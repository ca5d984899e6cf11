"""WAL records in the store, without a server: shipping twice is recognised, other content under the same
name is refused, and a record that points elsewhere is not trusted (everything read from the store is untrusted).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyrage
import pytest

from dbprotect.core.continuous.wal import (
    SegmentRecord,
    fetch_wal,
    segment_record_key,
    ship_completed,
    stored_segments,
    wal_gaps,
)
from dbprotect.core.crypto import parse_recipients
from dbprotect.core.errors import IntegrityError
from dbprotect.core.store.filesystem import FilesystemStorage

NAME = "000000010000000000000005"


def _segment(folder: Path, name: str, fill: bytes) -> Path:
    path = folder / name
    path.write_bytes(fill * 4096)
    return path


def test_the_same_segment_twice_is_skipped_other_content_refused(tmp_path: Path, age_keys: tuple[str, str],
                                                                identity: pyrage.x25519.Identity) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    recipients = parse_recipients([age_keys[1]])
    spool = tmp_path / "spool"
    spool.mkdir()
    record, new = ship_completed(storage, "shop", _segment(spool, NAME, b"a"), recipients)
    assert new and record.plain_bytes == 4096
    again, new = ship_completed(storage, "shop", _segment(spool, NAME, b"a"), recipients)
    assert not new and again == record
    with pytest.raises(IntegrityError, match="other content"):
        ship_completed(storage, "shop", _segment(spool, NAME, b"b"), recipients)
    fetch_wal(storage, "shop", NAME, identity, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"a" * 4096


def test_a_record_pointing_outside_its_database_is_refused(tmp_path: Path, age_keys: tuple[str, str],
                                                           identity: pyrage.x25519.Identity) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    spool = tmp_path / "spool"
    spool.mkdir()
    ship_completed(storage, "other", _segment(spool, NAME, b"x"), parse_recipients([age_keys[1]]))
    ship_completed(storage, "shop", _segment(spool, NAME, b"a"), parse_recipients([age_keys[1]]))
    key = segment_record_key("shop", NAME)
    forged = json.loads(storage.get_bytes(key))
    forged["object"] = f"other/continuous/wal/00000001/{NAME}.zst.age"
    storage.put_bytes(key, json.dumps(forged).encode())
    with pytest.raises(IntegrityError, match="not its own place"):
        SegmentRecord.from_store(storage, key, database="shop", name=NAME)
    with pytest.raises(IntegrityError):
        fetch_wal(storage, "shop", NAME, identity, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gaps_are_counted_per_timeline(tmp_path: Path, age_keys: tuple[str, str]) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    spool = tmp_path / "spool"
    spool.mkdir()
    recipients = parse_recipients([age_keys[1]])
    for name in ("000000010000000000000001", "000000010000000000000002", "000000010000000000000005",
                 "000000020000000000000005", "000000020000000000000006"):
        ship_completed(storage, "shop", _segment(spool, name, b"w"), recipients)
    assert sorted(stored_segments(storage, "shop")) == [1, 2]
    assert wal_gaps(storage, "shop") == [("000000010000000000000003", "000000010000000000000004")]
