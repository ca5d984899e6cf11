"""The threaded zstd → age → SHA-256 pipeline: every byte arrives, and every stage's failure surfaces as itself.

Why here: :func:`encrypt_to_store` runs its stages in three threads; a failure in one must stop
the others (none left blocked on a full or empty hand-over) and must never be taken for the end
of the stream, which would commit a truncated backup as a whole one.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pyrage
import pytest
import zstandard

from dbprotect.core.backup.pipeline import encrypt_to_store
from dbprotect.core.crypto import generate_keypair, parse_recipients
from dbprotect.core.errors import IntegrityError, StorageError
from dbprotect.core.store import FilesystemStorage


class _FailingSource:
    """Yields ``good`` bytes in 1 MB reads, then raises ``error``."""

    def __init__(self, good: int, error: BaseException) -> None:
        self._left = good
        self._error = error

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise self._error
        take = min(self._left, size if size > 0 else 1 << 20)
        self._left -= take
        return os.urandom(take)


class _FailingWriter:
    def __init__(self, after: int) -> None:
        self.written = 0
        self._after = after

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self._after:
            raise OSError("disk full")
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("dbprotect-")}


@pytest.mark.parametrize("threads", [0, 2])
def test_every_byte_arrives_and_the_hash_is_of_the_stored_bytes(tmp_path: Path, threads: int) -> None:
    identity, recipient = generate_keypair()
    data = os.urandom(3 << 20) + b"compressible " * 400_000
    storage = FilesystemStorage(tmp_path)
    with storage.open_writer("obj") as writer:
        result = encrypt_to_store(io.BytesIO(data), writer, parse_recipients([recipient]), storage=storage,
                                  zstd_level=1, zstd_threads=threads)
    stored = (tmp_path / "obj").read_bytes()
    assert result.stored_bytes == len(stored) and result.sha256 == hashlib.sha256(stored).hexdigest()
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(
        pyrage.decrypt(stored, [pyrage.x25519.Identity.from_str(identity)]))
    assert plain == data
    assert not _threads()


def test_a_source_failure_surfaces_as_itself_and_nothing_is_committed(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path)
    _, recipient = generate_keypair()
    with pytest.raises(IntegrityError, match="cut"), storage.open_writer("obj") as writer:
        encrypt_to_store(_FailingSource(5 << 20, IntegrityError("source cut")), writer, parse_recipients([recipient]),
                         storage=storage, zstd_threads=2)
    assert not (tmp_path / "obj").exists()
    assert not _threads()


def test_a_plain_source_error_is_a_storage_error_not_an_end_of_stream(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path)
    _, recipient = generate_keypair()
    with pytest.raises(StorageError, match="pipe broke"), storage.open_writer("obj") as writer:
        encrypt_to_store(_FailingSource(2 << 20, OSError("pipe broke")), writer, parse_recipients([recipient]),
                         storage=storage)
    assert not (tmp_path / "obj").exists()


def test_a_store_failure_stops_the_reading_side(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path)
    _, recipient = generate_keypair()
    source = _FailingSource(200 << 20, AssertionError("read to the end despite the store failing"))
    with pytest.raises(StorageError, match="disk full"):
        encrypt_to_store(source, _FailingWriter(after=2 << 20), parse_recipients([recipient]),  # type: ignore[arg-type]
                         storage=storage, zstd_threads=2)
    assert not _threads()
