"""How a stored backup becomes plaintext for ``pg_restore``: checked, decrypted, decompressed.

``pg_restore -j`` needs a seekable file, so :func:`decrypted_archive` writes the archive into a
private (0700) temporary folder that is removed when the block ends, also on failure and on
``KeyboardInterrupt`` (and SIGTERM, which the commands turn into one), and that the next restore
sweeps when its process was killed outright (:func:`sweep_restore_folders`). The SHA-256 of the
stored object is checked on the way in, so a restore never runs from an object that differs from
its manifest. :func:`read_archive_listing` needs only the table of contents, so it streams into
``pg_restore --list`` and stops early: no file at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyrage
import zstandard

from dbprotect.core.errors import DbprotectError, IntegrityError, StorageError, ToolError
from dbprotect.core.pg.pg_restore import ENVIRONMENT_FAILURE
from dbprotect.core.pg.tools import ToolPlace, select_tool
from dbprotect.core.store import Storage
from dbprotect.core.store.manifest import Manifest, dump_key
from dbprotect.core.verify.integrity import HashingReader, check_identity_matches

CHUNK = 1 << 20
FOLDER_PREFIX = "dbprotect-restore-"
#: Inside each private folder: "<pid> <host>" of the process that made it, so a sweep knows it died.
HOLDER_FILE = "holder"
#: A private folder without a readable holder is swept only after this long (it may be being set up).
UNHELD_FOLDER_AGE = timedelta(hours=1)


def _holder_alive(folder: Path) -> bool | None:
    """Whether the process that made ``folder`` still runs (None: unknown, e.g. another host or no holder)."""
    try:
        pid_text, host = (folder / HOLDER_FILE).read_text(encoding="utf-8").split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_restore_folders(work_dir: str | os.PathLike[str] | None = None, *,
                          now: datetime | None = None) -> list[Path]:
    """Remove the private plaintext folders that killed restores (SIGKILL) left in ``work_dir``.

    Only folders named ``dbprotect-restore-*``, owned by this user, and either made by a process
    on this host that no longer runs, or (holder unknown) older than :data:`UNHELD_FOLDER_AGE`.
    A folder of a live restore is never touched. Returns what was removed.
    """
    base = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    now = now or datetime.now(UTC)
    removed = []
    try:
        candidates = list(base.glob(f"{FOLDER_PREFIX}*"))
    except OSError:
        return []
    for folder in candidates:
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        alive = _holder_alive(folder)
        age = now - datetime.fromtimestamp(info.st_mtime, UTC)
        if alive is False or (alive is None and age >= UNHELD_FOLDER_AGE):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def decrypted_archive(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                      work_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """The backup's plaintext archive as a file in a private folder, deleted when the block ends.

    Raises :class:`IntegrityError` when the object does not decrypt, decompress, or match the
    manifest's size and SHA-256; :class:`CryptoError` when the identity is not a recipient.
    """
    check_identity_matches(manifest, identity)
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=work_dir))  # mode 0700
    try:
        (folder / HOLDER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
        path = folder / "dump.pgdump"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, contextlib.closing(
                storage.open_reader(dump_key(manifest.database, manifest.backup_id))) as stream:
            source, sink = _Watched(stream), _Watched(out)
            reader = HashingReader(source)
            writer = zstandard.ZstdDecompressor().stream_writer(sink, write_size=CHUNK, closefd=False)
            try:
                pyrage.decrypt_io(reader, writer, [identity])
                writer.flush()
            except (pyrage.DecryptError, zstandard.ZstdError, OSError) as exc:
                _raise_io_failure(source, sink, folder)
                raise IntegrityError(f"backup {manifest.backup_id} does not decrypt and decompress: "
                                     f"{' '.join(str(exc).split())}") from None
            while reader.read(CHUNK):
                pass
        _require_stored_as_manifest(reader.bytes, reader.hexdigest, manifest)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Watched:
    """A reader or writer that remembers the exception its own I/O raised.

    pyrage reports every failure inside ``decrypt_io`` as ``OSError("decryption error")``, whether
    the ciphertext is damaged (the backup's fault: :class:`IntegrityError`, recorded against it) or
    the store or the local disk failed underneath (the environment's: never recorded against the
    backup). What the wrapped stream itself raised tells the two apart.
    """

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return self._inner.read(size)  # type: ignore[attr-defined, no-any-return]
        except BaseException as exc:
            self.failure = exc
            raise

    def write(self, data: bytes) -> int:
        try:
            return self._inner.write(data)  # type: ignore[attr-defined, no-any-return]
        except BaseException as exc:
            self.failure = exc
            raise

    def flush(self) -> None:
        flush = getattr(self._inner, "flush", None)
        if flush:
            flush()


def _raise_io_failure(source: _Watched, sink: _Watched | None, folder: Path | None) -> None:
    """Re-raise what the store or the disk raised under pyrage, if anything did (see :class:`_Watched`)."""
    if source.failure is not None:
        if isinstance(source.failure, DbprotectError) or not isinstance(source.failure, Exception):
            raise source.failure  # ours, or an interrupt (Ctrl-C, SIGTERM, Dagster's): as it came
        raise StorageError(f"reading the backup from the store failed: {' '.join(str(source.failure).split())}")
    if sink is not None and sink.failure is not None:
        if isinstance(sink.failure, DbprotectError) or not isinstance(sink.failure, Exception):
            raise sink.failure
        raise DbprotectError(f"writing the plaintext archive into {folder} failed: "
                             f"{' '.join(str(sink.failure).split())}",
                             hint="free space in the work folder (scratch.work_dir) or point it elsewhere")


class _TocDone(Exception):
    """pg_restore --list has read the table of contents and stopped reading: enough decrypted."""


class _ListingPipe:
    """Writes the decompressed archive into ``pg_restore --list`` until it stops reading."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def write(self, data: bytes) -> int:
        try:
            self._proc.stdin.write(data)  # type: ignore[union-attr]
        except OSError:
            raise _TocDone from None
        return len(data)

    def flush(self) -> None:
        pass


def read_archive_listing(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, *,
                         pg_bin_dir: ToolPlace = None) -> str:
    """``pg_restore --list`` of a stored backup, decrypting only as far as its table of contents.

    For restore plans (``--dry-run``): no file, no plaintext on disk, and on a large backup only
    the first megabytes are fetched, because the TOC comes first in the archive.
    """
    check_identity_matches(manifest, identity)
    source_major = int(manifest.source["server_major"])
    archive_major = int(manifest.pg_dump.get("major") or source_major)
    tool = select_tool("pg_restore", at_least=archive_major, place=pg_bin_dir,
                       newer_than="the archive's pg_dump")
    proc = subprocess.Popen([str(tool.path), "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]  # type: ignore[union-attr]
    for reader in readers:
        reader.start()
    source = None
    try:
        with contextlib.closing(storage.open_reader(dump_key(manifest.database, manifest.backup_id))) as stream:
            source = _Watched(stream)
            writer = zstandard.ZstdDecompressor().stream_writer(_ListingPipe(proc), write_size=CHUNK, closefd=False)
            with contextlib.suppress(_TocDone):
                pyrage.decrypt_io(source, writer, [identity])
                writer.flush()
    except (pyrage.DecryptError, zstandard.ZstdError, OSError) as exc:
        if source is not None:
            _raise_io_failure(source, None, None)
        raise IntegrityError(f"backup {manifest.backup_id} does not decrypt: {' '.join(str(exc).split())}") from None
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        code = proc.wait()
        for reader in readers:
            reader.join()
    if code != 0:
        reason = " ".join(b"".join(err).decode("utf-8", errors="replace").strip().splitlines()[-1:])
        if ENVIRONMENT_FAILURE.search(reason):
            raise ToolError(f"{tool.path} ({tool.text}) cannot read backup {manifest.backup_id}: {reason}",
                            hint=f"use pg_restore {archive_major} or newer (pg_bin_dir, pg_bin_dirs); "
                                 "the backup was not judged")
        raise IntegrityError(f"pg_restore --list cannot read backup {manifest.backup_id}: {reason}")
    return b"".join(out).decode("utf-8", errors="replace")




class FeedStopped(Exception):
    """The consumer of a streamed archive stopped reading (it needed only the first part)."""


class _Sink:
    """What :func:`feed_archive` writes the plaintext into: a callable, stopped by a closed pipe."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self.failure: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self._write(data)
        except (BrokenPipeError, FeedStopped):
            raise FeedStopped from None
        except BaseException as exc:
            self.failure = exc
            raise
        return len(data)

    def flush(self) -> None:
        pass


def feed_archive(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                 write: Callable[[bytes], object], *, whole: bool = True) -> bool:
    """Fetch, check, decrypt and decompress the stored archive into ``write``: nothing touches the disk.

    ``whole``: the archive is read to its end and its size and SHA-256 checked against the manifest
    (:class:`IntegrityError` when they differ, when it does not decrypt or decompress). Otherwise the
    consumer may stop reading early (``write`` raising :class:`BrokenPipeError` or
    :class:`FeedStopped`), which ends the feed quietly: what it was given was authenticated chunk by
    chunk by age, and only a whole pass (the data section's) vouches for the object as a whole.
    Returns False when the consumer stopped early. Store and consumer failures are raised as they
    came (see :class:`_Watched`), never as damage of the backup.
    """
    check_identity_matches(manifest, identity)
    with contextlib.closing(storage.open_reader(dump_key(manifest.database, manifest.backup_id))) as stream:
        source = _Watched(stream)
        reader = HashingReader(source)
        sink = _Sink(write)
        writer = zstandard.ZstdDecompressor().stream_writer(sink, write_size=CHUNK, closefd=False)
        try:
            pyrage.decrypt_io(reader, writer, [identity])
            writer.flush()
        except FeedStopped:
            if whole:
                raise IntegrityError(f"backup {manifest.backup_id}: the restore stopped reading the archive "
                                     "before its end") from None
            return False
        except (pyrage.DecryptError, zstandard.ZstdError, OSError) as exc:
            _raise_io_failure(source, None, None)
            if sink.failure is not None:
                raise sink.failure from None
            raise IntegrityError(f"backup {manifest.backup_id} does not decrypt and decompress: "
                                 f"{' '.join(str(exc).split())}") from None
        while reader.read(CHUNK):
            pass
    _require_stored_as_manifest(reader.bytes, reader.hexdigest, manifest)
    return True


def _require_stored_as_manifest(size: int, sha256: str, manifest: Manifest) -> None:
    """The object read end to end must be the one the manifest names (size and SHA-256), else nothing restores."""
    if size != manifest.stored_bytes or sha256 != manifest.sha256:
        raise IntegrityError(f"backup {manifest.backup_id}: stored object differs from its manifest "
                             f"(size or SHA-256); not restored",
                             hint=f"run 'dbprotect verify {manifest.backup_id}'")
