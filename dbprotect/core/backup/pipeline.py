"""The one encryption pipeline: source → zstd → age → SHA-256 → store object, in one pass.

Every stored object of dbprotect that carries database content goes through :func:`encrypt_to_store`:
the logical backup (pg_dump's archive, :mod:`dbprotect.core.backup.stream`), the base backup
(pg_basebackup's tar, :mod:`dbprotect.core.continuous.base`) and each WAL file the receiver ships
(:mod:`dbprotect.core.continuous.wal`). Why one function: the guarantees (constant memory, no
plaintext on disk, the SHA-256 of exactly the stored bytes, the real cause of a failure rather than
pyrage's opaque one) are written and tested once, and a fix to one writer is a fix to all.

The caller owns the writer's life (``storage.open_writer``): it commits only after its own checks
(a tool's exit status, a complete archive or tar) pass, so a failed or cut source never becomes an
object. Small records that must be write-once (``put_if_absent``) use :func:`encrypt_bytes`.

Also here, because every caller streams a child process into the pipeline: :class:`StderrTail`
(drain a child's stderr so it can never block) and :func:`enlarge_pipe`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import pyrage
import zstandard

from dbprotect.core.errors import DbprotectError, StorageError, ToolError
from dbprotect.core.store import ObjectWriter, Storage

READ_SIZE = 1 << 20
PIPE_SIZE = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class StoredStream:
    """What :func:`encrypt_to_store` wrote: bytes after zstd, bytes stored (after age), and their SHA-256."""

    compressed_bytes: int
    stored_bytes: int
    sha256: str


class _CountingReader:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.bytes = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._inner.read(size)
        except BaseException as exc:  # pyrage would hide it behind its own error
            self.error = exc
            raise
        self.bytes += len(data)
        return data


class _HashingWriter:
    def __init__(self, inner: ObjectWriter) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.bytes = 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self._inner.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        self._hash.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        self._inner.flush()

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def encrypt_to_store(source: Readable, writer: ObjectWriter, recipients: list[pyrage.x25519.Recipient], *,
                     storage: Storage, zstd_level: int = 1, zstd_threads: int = 0) -> StoredStream:
    """Read ``source`` to its end through zstd and age into ``writer``, hashing what is written.

    Nothing is committed here. A failure of the source or the store surfaces as what it was (a
    :class:`DbprotectError` raised by either is re-raised as is; any other as :class:`StorageError`),
    never as pyrage's "encryption failed"; an age failure of its own is a :class:`ToolError`.
    ``zstd_threads`` 0 compresses in this thread (small objects: WAL files); more starts zstd's workers.
    """
    compressor = zstandard.ZstdCompressor(level=zstd_level, threads=zstd_threads)
    compressed = _CountingReader(compressor.stream_reader(source, read_size=READ_SIZE))
    sink = _HashingWriter(writer)
    try:
        pyrage.encrypt_io(compressed, sink, recipients)
    except Exception as exc:
        raise _real_cause(exc, compressed, sink, storage) from None
    return StoredStream(compressed.bytes, sink.bytes, sink.hexdigest)


def encrypt_bytes(data: bytes, recipients: list[pyrage.x25519.Recipient]) -> bytes:
    """A small record encrypted whole (no zstd), for a write-once ``put_if_absent``."""
    return bytes(pyrage.encrypt(data, recipients))


def _real_cause(exc: Exception, reader: _CountingReader, sink: _HashingWriter, storage: Storage) -> DbprotectError:
    """Recover the real cause of a failure that surfaced through pyrage."""
    for cause in (sink.error, reader.error):
        if isinstance(cause, DbprotectError):
            return cause
        if cause is not None:
            return StorageError(f"{storage.uri}: backup stream failed: {cause}")
    return ToolError(f"encryption failed: {exc}")


class StderrTail(threading.Thread):
    """Drain a child's stderr (so it can never block on a full pipe), keeping the last lines."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self.lines: deque[str] = deque(maxlen=20)
        self.start()

    def run(self) -> None:
        for raw in self._stream:
            self.lines.append(raw.decode("utf-8", errors="replace").rstrip())

    def last_error(self) -> str:
        for line in reversed(self.lines):
            if "error" in line.lower() or "fatal" in line.lower():
                return line.removeprefix("pg_dump: ")
        return self.lines[-1].removeprefix("pg_dump: ") if self.lines else ""


def enlarge_pipe(stream: BinaryIO) -> None:
    """A 1 MB pipe from the child: fewer wake-ups per MB streamed (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(stream.fileno(), 1031, PIPE_SIZE)  # F_SETPIPE_SZ


__all__ = ["READ_SIZE", "Readable", "StderrTail", "StoredStream", "encrypt_bytes", "encrypt_to_store",
           "enlarge_pipe"]
