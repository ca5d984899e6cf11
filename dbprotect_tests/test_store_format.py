"""Format 2 reads format-1 stores (docs/store-format.md, "Reading format 1").

A format-1 store is written here by hand, byte for byte as dbprotect 0.1 wrote it: a manifest with
``format_version: 1`` and its results in ``verifications``, check objects named without a sequence.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from dbprotect.core.errors import IntegrityError
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import list_backups, load_manifest, record_verification, recorded_verifications
from dbprotect.core.store.manifest import FORMAT_VERSION, Verification, dump_key, manifest_key, parse_check_key

DB = "shop"
BACKUP = "20251001T020000Z-0a0b0c"
AT = datetime(2025, 10, 1, 2, 5, tzinfo=UTC)


def _v1_store(store: Storage) -> bytes:
    dump = b"a format-1 dump" * 50
    store.put_bytes(dump_key(DB, BACKUP), dump)
    results = [{"rung": rung, "ok": True, "at": AT.isoformat(), "detail": "", "by": "dbprotect", "metrics": {}}
               for rung in ("stored", "readable")]
    for result in results:
        store.put_bytes(f"{DB}/{BACKUP}/checks/20251001T020500000000Z-{result['rung']}-ok.json",
                        json.dumps(result).encode())
    manifest = {
        "format_version": 1, "tool": "dbprotect", "tool_version": "0.1.0", "database": DB, "backup_id": BACKUP,
        "environment": "production", "source": {"dbname": DB}, "pg_dump": {"major": 17},
        "started_at": "2025-10-01T02:00:00+00:00", "snapshot_at": "2025-10-01T02:00:00+00:00",
        "finished_at": "2025-10-01T02:04:00+00:00", "duration_seconds": 240.0,
        "bytes": {"dump": len(dump), "compressed": len(dump), "stored": len(dump)},
        "object": {"key": "dump.zst.age", "size": len(dump), "sha256": hashlib.sha256(dump).hexdigest()},
        "compression": {"algorithm": "zstd", "level": 3}, "encryption": {"format": "age-v1", "recipients": []},
        "checksum": {}, "tables": {"public.t": {"rows": 1, "checksum": "0" * 16}}, "sequences": {},
        "large_objects": {"count": 0, "bytes": 0}, "verifications": results,
    }
    data = json.dumps(manifest, indent=2).encode()
    store.put_bytes(manifest_key(DB, BACKUP), data)
    return data


def test_a_format_1_backup_is_listed_and_read(store: Storage) -> None:
    _v1_store(store)
    assert FORMAT_VERSION == 2
    [entry] = list_backups(store, DB)
    assert entry.status == "verified:readable" and entry.integrity_ok
    manifest = load_manifest(store, DB, BACKUP)
    assert manifest.format_version == 1 and manifest.audit_head is None
    assert [(v.rung, v.ok) for v in recorded_verifications(store, DB, BACKUP)] == [("stored", True), ("readable", True)]


def test_a_new_result_on_a_format_1_backup_is_a_numbered_check_and_the_manifest_stays(store: Storage) -> None:
    before = _v1_store(store)
    manifest = load_manifest(store, DB, BACKUP)
    record_verification(store, manifest, Verification(rung="stored", ok=False, at=AT + timedelta(days=30),
                                                      detail="SHA-256 mismatch", by="test"))
    assert store.get_bytes(manifest_key(DB, BACKUP)) == before
    names = [info.key.rsplit("/", 1)[-1] for info in store.list(f"{DB}/{BACKUP}/checks/")]
    assert sorted(parse_check_key(name)[3] for name in names) == [0, 0, 1]
    assert list_backups(store, DB)[0].status == "failed:stored"
    assert [(v.rung, v.ok) for v in recorded_verifications(store, DB, BACKUP)] == [
        ("stored", True), ("readable", True), ("stored", False)]


def test_an_unknown_format_version_is_refused(store: Storage) -> None:
    _v1_store(store)
    raw = json.loads(store.get_bytes(manifest_key(DB, BACKUP)))
    raw["format_version"] = 3
    store.put_bytes(manifest_key(DB, BACKUP), json.dumps(raw).encode())
    with pytest.raises(IntegrityError, match=r"format_version 3 is not supported .*reads 1, 2"):
        load_manifest(store, DB, BACKUP)
