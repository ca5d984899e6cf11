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
import queue
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


_QUEUE_DEPTH = 4  # chunks in flight between two stages: memory stays a few MB whatever the size
_WRITE_SIZE = 1 << 20  # age's 64 KB chunks gathered into this much before each store write
_DONE = object()
_GIVE_UP_SECONDS = 2.0  # how long a failed pipeline waits for its reading thread


class _Stage:
    """A bounded hand-over between two threads that either side can cancel.

    Why not a bare :class:`queue.Queue`: when one side fails the other must not block for ever on
    a full or empty queue, so every wait also watches the shared ``cancelled`` event.
    """

    def __init__(self, cancelled: threading.Event) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._cancelled = cancelled

    def put(self, item: Any) -> bool:
        """False when the pipeline was cancelled (the item is dropped)."""
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        while not self._cancelled.is_set():
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return _DONE


class _Compressing(threading.Thread):
    """Reads the source with large reads and compresses it, in its own thread.

    Why a thread: reading the child's pipe and zstd both release the GIL, so this overlaps with
    age and SHA-256 in the calling thread (pyrage pulls its input in 8 KB reads, which are then
    served from memory, not from a pipe and a compressor each time).
    """

    def __init__(self, source: Readable, compressor: zstandard.ZstdCompressor, out: _Stage,
                 cancelled: threading.Event) -> None:
        super().__init__(daemon=True, name="dbprotect-compress")
        self._source = source
        self._compressor = compressor
        self._out = out
        self._cancelled = cancelled
        self.bytes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            compress = self._compressor.compressobj(size=-1)
            readinto = getattr(self._source, "readinto", None)
            if readinto is not None:
                self._run_readinto(readinto, compress)
                return
            while not self._cancelled.is_set():
                data = self._source.read(READ_SIZE)
                if not data:
                    self._emit(compress.flush())
                    break
                self._emit(compress.compress(data))
        except BaseException as exc:  # surfaced by the reading side, never lost in this thread
            self.error = exc
            self._cancelled.set()
        finally:
            self._out.put(_DONE)

    def _run_readinto(self, readinto: Any, compress: Any) -> None:
        """One reused buffer for every read: zstd copies its input, so the buffer is free again as soon
        as ``compress`` returns. Why: a fresh 1 MB ``bytes`` per read costs an allocation and 256 page
        faults per MB streamed, as much as the pipe copy itself."""
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        while not self._cancelled.is_set():
            size = readinto(view)
            if not size:
                self._emit(compress.flush())
                break
            self._emit(compress.compress(view[:size]))

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self.bytes += len(chunk)
            self._out.put(chunk)


class _StageReader:
    """What pyrage reads: the compressed chunks, served from memory in whatever sizes it asks for."""

    def __init__(self, stage: _Stage, producer: _Compressing) -> None:
        self._stage = stage
        self._producer = producer
        self._chunk = memoryview(b"")
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        while not self._chunk and not self._ended:
            item = self._stage.get()
            if item is _DONE:
                self._ended = True
                if self._producer.error is not None:
                    raise OSError("the compressing stage failed")  # the real cause is read from it
            else:
                self._chunk = memoryview(item)
        if size is None or size < 0:
            size = len(self._chunk)
        data = bytes(self._chunk[:size])
        self._chunk = self._chunk[size:]
        return data


class _Storing(threading.Thread):
    """Hashes and writes the encrypted bytes to the store in its own thread (an upload overlaps age)."""

    def __init__(self, writer: ObjectWriter, stage: _Stage, cancelled: threading.Event) -> None:
        super().__init__(daemon=True, name="dbprotect-store")
        self._writer = writer
        self._stage = stage
        self._cancelled = cancelled
        self._hash = hashlib.sha256()
        self.bytes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (item := self._stage.get()) is not _DONE:
                self._writer.write(item)
                self._hash.update(item)
                self.bytes += len(item)
            if not self._cancelled.is_set():
                self._writer.flush()
        except BaseException as exc:
            self.error = exc
            self._cancelled.set()

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _StageWriter:
    """What pyrage writes to: gathers its 64 KB chunks into large ones for :class:`_Storing`."""

    def __init__(self, stage: _Stage, consumer: _Storing) -> None:
        self._stage = stage
        self._consumer = consumer
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> int:
        self._pending.append(bytes(data))  # pyrage's chunk is its own bytes already: no copy then
        self._pending_bytes += len(data)
        if self._pending_bytes >= _WRITE_SIZE:
            self._hand_over()
        return len(data)

    def flush(self) -> None:
        """Nothing to do: pyrage's last chunk is handed over by :meth:`close`, the store flushed by the stage."""

    def close(self) -> None:
        if self._pending:
            self._hand_over()

    def _hand_over(self) -> None:
        """One join per hand-over: each encrypted byte is copied once between pyrage and the store."""
        if not self._stage.put(b"".join(self._pending)):
            raise OSError("the storing stage failed")  # the real cause is read from it
        self._pending.clear()
        self._pending_bytes = 0


def encrypt_to_store(source: Readable, writer: ObjectWriter, recipients: list[pyrage.x25519.Recipient], *,
                     storage: Storage, zstd_level: int = 1, zstd_threads: int = 0,
                     zstd_params: zstandard.ZstdCompressionParameters | None = None) -> StoredStream:
    """Read ``source`` to its end through zstd and age into ``writer``, hashing what is written.

    Three stages in three threads, each handing bounded chunks to the next (memory stays constant
    and nothing touches the disk but the store's writer): read and compress; encrypt (pyrage, in
    this thread); hash and write. Each of them spends its time in C with the GIL released, so a
    base backup streams at close to the speed of its slowest stage rather than their sum.

    Nothing is committed here. A failure of the source or the store surfaces as what it was (a
    :class:`DbprotectError` raised by either is re-raised as is; any other as :class:`StorageError`),
    never as pyrage's "encryption failed"; an age failure of its own is a :class:`ToolError`.
    ``zstd_threads`` 0 compresses in the compressing thread (small objects: WAL files); more starts
    zstd's workers. ``zstd_params``, when given, replaces ``zstd_level``'s parameters (a writer
    tuned for its own data: the logical backup's archive), its worker count included.
    """
    cancelled = threading.Event()
    compressed, encrypted = _Stage(cancelled), _Stage(cancelled)
    compressor = (zstandard.ZstdCompressor(level=zstd_level, threads=zstd_threads) if zstd_params is None
                  else zstandard.ZstdCompressor(compression_params=zstd_params))
    producer = _Compressing(source, compressor, compressed, cancelled)
    consumer = _Storing(writer, encrypted, cancelled)
    sink = _StageWriter(encrypted, consumer)
    producer.start()
    consumer.start()
    failure: BaseException | None = None
    try:
        pyrage.encrypt_io(_StageReader(compressed, producer), sink, recipients)
        sink.close()
        encrypted.put(_DONE)
    except BaseException as exc:  # an interrupt too: no stage may be left waiting for the other
        failure = exc
        cancelled.set()
    # On success both threads finish on their own. On a failure the storing thread ends after its
    # current write; the compressing one after its current read, which the caller ends by stopping
    # the child: it is not waited for past a moment.
    producer.join(timeout=None if failure is None else _GIVE_UP_SECONDS)
    consumer.join()
    if failure is not None and not isinstance(failure, Exception):
        raise failure
    if failure is not None or producer.error is not None or consumer.error is not None:
        raise _real_cause(failure, producer.error, consumer.error, storage) from None
    return StoredStream(producer.bytes, consumer.bytes, consumer.hexdigest)


def encrypt_bytes(data: bytes, recipients: list[pyrage.x25519.Recipient]) -> bytes:
    """A small record encrypted whole (no zstd), for a write-once ``put_if_absent``."""
    return bytes(pyrage.encrypt(data, recipients))


def _real_cause(exc: Exception | None, source_error: BaseException | None, store_error: BaseException | None,
                storage: Storage) -> DbprotectError:
    """Recover the real cause of a failure that surfaced through pyrage or one of the stages."""
    for cause in (store_error, source_error):
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
