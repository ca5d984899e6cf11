"""The pipeline's reused read buffer (sources with ``readinto``: pg_basebackup's pipe): short reads,
a reused buffer and a failure mid-way must each deliver exactly what the source gave, or fail as itself.

Why: the compressing thread reads every chunk into one buffer it reuses. If zstd (in-process
workers) kept a reference to the buffer instead of copying it, or a short read were taken as a full
one, the stored object would silently hold other bytes than the source's; these tests make both fail.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

import pyrage
import pytest
import zstandard

from dbprotect.core.backup.pipeline import encrypt_to_store
from dbprotect.core.crypto import generate_keypair, parse_recipients
from dbprotect.core.errors import IntegrityError, StorageError
from dbprotect.core.store import FilesystemStorage


class _PipeLike:
    """``readinto`` only, in short random sizes like a pipe, optionally failing after ``fail_after`` bytes."""

    def __init__(self, data: bytes, seed: int, fail_after: int | None = None,
                 error: BaseException | None = None) -> None:
        self._data = memoryview(data)
        self._random = random.Random(seed)
        self._fail_after = fail_after
        self._error = error
        self.reads = 0
        self.served = 0

    def readinto(self, buffer: memoryview) -> int:
        if self._fail_after is not None and self.served >= self._fail_after:
            assert self._error is not None
            raise self._error
        size = min(len(buffer), len(self._data), self._random.choice((1, 511, 4096, 65_536, 1 << 20)))
        buffer[:size] = self._data[:size]
        buffer[size:size + 64] = b"\xff" * len(buffer[size:size + 64])  # bytes past the read are never data
        self._data = self._data[size:]
        self.reads += 1
        self.served += size
        return size

    def read(self, size: int = -1) -> bytes:  # pragma: no cover - the pipeline must prefer readinto
        raise AssertionError("read() used although readinto() exists")


def _decrypt(stored: bytes, identity: str) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(
        pyrage.decrypt(stored, [pyrage.x25519.Identity.from_str(identity)]))


@pytest.mark.parametrize(("threads", "level"), [(0, 1), (2, 1), (2, -5)])
def test_short_reads_into_a_reused_buffer_deliver_every_byte(tmp_path: Path, threads: int, level: int) -> None:
    identity, recipient = generate_keypair()
    # distinct content in every MB, so a buffer overwritten before zstd consumed it cannot go unseen
    data = b"".join(hashlib.sha256(str(i).encode()).digest() * 32_768 for i in range(6)) + os.urandom(3 << 20)
    source = _PipeLike(data, seed=threads * 100 + level)
    storage = FilesystemStorage(tmp_path)
    with storage.open_writer("obj") as writer:
        result = encrypt_to_store(source, writer, parse_recipients([recipient]), storage=storage,
                                  zstd_level=level, zstd_threads=threads)
    stored = (tmp_path / "obj").read_bytes()
    assert source.reads > 10
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert _decrypt(stored, identity) == data


@pytest.mark.parametrize(("error", "expected"), [(IntegrityError("source cut"), IntegrityError),
                                                 (OSError("pipe broke"), StorageError)])
def test_a_readinto_failure_surfaces_as_itself_and_nothing_is_committed(
        tmp_path: Path, error: BaseException, expected: type[Exception]) -> None:
    _, recipient = generate_keypair()
    storage = FilesystemStorage(tmp_path)
    source = _PipeLike(os.urandom(8 << 20), seed=1, fail_after=3 << 20, error=error)
    with pytest.raises(expected, match=r"cut|pipe broke"), storage.open_writer("obj") as writer:
        encrypt_to_store(source, writer, parse_recipients([recipient]), storage=storage, zstd_threads=2)
    assert not (tmp_path / "obj").exists()


def test_bytesio_sources_take_the_readinto_path_and_match(tmp_path: Path) -> None:
    """A plain binary file object (``readinto`` and ``read``) gives the same stored plaintext."""
    identity, recipient = generate_keypair()
    data = b"row\t" * 900_000
    storage = FilesystemStorage(tmp_path)
    with storage.open_writer("obj") as writer:
        encrypt_to_store(io.BytesIO(data), writer, parse_recipients([recipient]), storage=storage, zstd_threads=2)
    assert _decrypt((tmp_path / "obj").read_bytes(), identity) == data
