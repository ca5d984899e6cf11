"""Base backups against a real embedded PostgreSQL 18 (``wal_server``, a server of its own): full and
incremental through the encrypted stream, pg_verifybackup as the readability rung, damage detected.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import psycopg
import pyrage
import pytest

from dbprotect.core.continuous.base import (
    BaseBackupRecord,
    TarWatcher,
    base_chain,
    list_base_backups,
    take_base_backup,
    verify_base_backup,
)
from dbprotect.core.continuous.objects import BASE_OBJECT, base_folder
from dbprotect.core.store.filesystem import FilesystemStorage


def test_tar_watcher_keeps_the_manifest_and_sees_a_cut_stream(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("PG_VERSION", b"18\n"), ("backup_manifest", b'{"x": 1}' * 300)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buffer.getvalue()
    watcher = TarWatcher()
    for start in range(0, len(whole), 7):  # odd chunk sizes cross every boundary
        watcher.feed(whole[start:start + 7])
    assert watcher.found and watcher.ended and bytes(watcher.kept) == b'{"x": 1}' * 300
    cut = TarWatcher()
    cut.feed(whole[:1500])
    assert not cut.ended


@pytest.mark.slow
def test_full_then_incremental_base_backup_verified(wal_server: str, tmp_path: Path, age_keys: tuple[str, str],
                                                    identity: pyrage.x25519.Identity) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    recipient = age_keys[1]
    with psycopg.connect(wal_server, autocommit=True) as conn:
        conn.execute("INSERT INTO events SELECT g, 'before' FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING")
    full = take_base_backup(database="shop", dsn=wal_server, storage=storage, recipients=[recipient],
                            incremental=True, identity=identity)
    assert full.kind == "full" and full.parent is None and full.end >= full.start
    with psycopg.connect(wal_server, autocommit=True) as conn:
        conn.execute("INSERT INTO events SELECT g, 'after' FROM generate_series(1001, 1100) g ON CONFLICT DO NOTHING")
    incremental = take_base_backup(database="shop", dsn=wal_server, storage=storage, recipients=[recipient],
                                   incremental=True, identity=identity)
    assert incremental.kind == "incremental" and incremental.parent == full.base_id
    assert incremental.base["size"] < full.base["size"]
    assert [b.base_id for b in list_base_backups(storage, "shop")] == [full.base_id, incremental.base_id]
    assert [b.base_id for b in base_chain(storage, "shop", incremental.base_id)] == [full.base_id,
                                                                                      incremental.base_id]
    for record in (full, incremental):
        result = verify_base_backup(storage, record, identity)
        assert result.ok, result.detail
    # no plaintext: the stored objects are age files
    stored = (tmp_path / "store" / base_folder("shop", full.base_id) / BASE_OBJECT).read_bytes()
    assert stored.startswith(b"age-encryption.org/v1")
    assert b"PG_VERSION" not in stored


@pytest.mark.slow
def test_a_flipped_byte_in_a_base_backup_fails_verification(wal_server: str, tmp_path: Path,
                                                            age_keys: tuple[str, str],
                                                            identity: pyrage.x25519.Identity) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    record = take_base_backup(database="shop", dsn=wal_server, storage=storage, recipients=[age_keys[1]],
                              incremental=False)
    path = tmp_path / "store" / base_folder("shop", record.base_id) / BASE_OBJECT
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify_base_backup(storage, BaseBackupRecord.from_store(storage, "shop", record.base_id), identity)
    assert not result.ok
    assert "decrypt" in result.detail or "differs" in result.detail
