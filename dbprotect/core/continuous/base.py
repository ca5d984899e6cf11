"""Base backups: ``pg_basebackup -Ft -D - -X none`` → zstd → age → SHA-256 → store, full or incremental.

Why this shape:

* Tar to standard output is the only pg_basebackup form that never writes the data to disk; the
  stream passes the same zstd → age → SHA-256 pipeline as logical backups
  (:func:`dbprotect.core.backup.pipeline.encrypt_to_store`), in constant memory.
* ``-X none``: the WAL a base backup needs comes from the WAL stream (:mod:`.wal`), as for every
  other point in time; a base backup is restorable only together with it.
* PostgreSQL appends its ``backup_manifest`` as the last member of that tar; :class:`TarWatcher`
  reads the tar headers as they pass and keeps that one member (its size grows with the number of
  files, not with the data), which is stored encrypted beside the base: it is what an incremental
  backup is taken against (``--incremental``), what ``pg_verifybackup`` checks, and where the
  backup's WAL range (timeline, start and end LSN) is read from.
* An incremental backup hands the previous manifest to pg_basebackup through a FIFO in a private
  folder, so even that metadata never lies on disk in plaintext. Taking one therefore needs the
  identity (the private key) to read the previous manifest; a full backup needs only the recipients.
* ``base.json`` is written last and write-once: a base without it does not exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyrage

import dbprotect
from dbprotect.core.backup.pipeline import READ_SIZE, StderrTail, encrypt_bytes, encrypt_to_store, enlarge_pipe
from dbprotect.core.continuous.checks import check_server
from dbprotect.core.continuous.objects import (
    BACKUP_MANIFEST_OBJECT,
    BASE_ID_PATTERN,
    BASE_OBJECT,
    BASE_RECORD,
    base_folder,
    decrypt_object,
    read_json_record,
    sha256_hex,
)
from dbprotect.core.crypto import fingerprint, parse_recipients
from dbprotect.core.errors import IntegrityError, StorageError, ToolError
from dbprotect.core.pg.dsn import mask_dsn, server_label
from dbprotect.core.pg.tools import ToolPlace, connect, require_tool_for_server, split_password, tool_env
from dbprotect.core.store import Storage
from dbprotect.core.store.lock import database_lock, ensure_lock_held
from dbprotect.core.store.manifest import new_backup_id

#: PostgreSQL's backup_manifest for a very large cluster is tens of MB; more than this is not one.
MAX_BACKUP_MANIFEST_BYTES = 512 << 20
TAR_BLOCK = 512
#: zstd level of base backups unless ``continuous.base_compression_level`` says otherwise. Why 1:
#: measured on a 324 MB cluster (bench/continuous_bench.py --levels, CPU seconds of the whole stream,
#: server included): -5 2.26 s / 137 MB stored, -1 2.20 s / 114 MB, 1 2.39 s / 102 MB, 3 4.44 s / 98 MB.
#: The fast levels save under 10% of the CPU (the bytes they leave cost age, SHA-256 and the upload
#: instead) and store 11-34% more, kept for the whole retention window; 3 nearly doubles the CPU
#: for 4% less. Level 1 is the knee.
DEFAULT_BASE_ZSTD_LEVEL = 1


class TarWatcher:
    """Follows a tar stream's headers as bytes pass, keeping one member's content (``backup_manifest``).

    Also tells whether the stream ended where a tar ends (the two zero blocks), so a cut stream is
    never stored as a backup.
    """

    def __init__(self, keep: str = "backup_manifest") -> None:
        self._keep = keep
        self._header = bytearray()
        self._data_left = 0
        self._pad_left = 0
        self._capturing = False
        self._long_name: bytearray | None = None
        self._reading_long_name = False
        self.kept = bytearray()
        self.found = False
        self.ended = False

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and not self.ended:
            if self._data_left:
                take = min(self._data_left, len(view))
                if self._capturing:
                    if len(self.kept) + take > MAX_BACKUP_MANIFEST_BYTES:
                        raise ToolError("pg_basebackup's backup_manifest is larger than any real one")
                    self.kept += view[:take]
                elif self._reading_long_name and self._long_name is not None:
                    self._long_name += view[:take]
                self._data_left -= take
                view = view[take:]
                if not self._data_left:
                    self._capturing = False
                    self._reading_long_name = False
            elif self._pad_left:
                take = min(self._pad_left, len(view))
                self._pad_left -= take
                view = view[take:]
            else:
                take = min(TAR_BLOCK - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == TAR_BLOCK:
                    self._on_header(bytes(self._header))
                    self._header.clear()

    def _on_header(self, block: bytes) -> None:
        if block == bytes(TAR_BLOCK):
            self.ended = True
            return
        size_field = block[124:136]
        if size_field[0] & 0x80:  # base-256 (GNU) for sizes past 8 GiB
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.strip(b"\0 ") or b"0", 8)
        typeflag = block[156:157]
        name = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
        full = (prefix + b"/" + name if prefix else name).decode("utf-8", errors="replace")
        if self._long_name is not None and typeflag not in (b"L",):
            full = bytes(self._long_name).split(b"\0", 1)[0].decode("utf-8", errors="replace")
            self._long_name = None
        self._data_left = size
        self._pad_left = (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK
        if typeflag == b"L":
            self._long_name = bytearray()
            self._reading_long_name = True
        elif typeflag in (b"0", b"\0") and full == self._keep:
            self.found = True
            self.kept.clear()
            self._capturing = True


class _ObservedStream:
    """pg_basebackup's stdout: every chunk also passes the tar watcher."""

    def __init__(self, stream: BinaryIO, watcher: TarWatcher) -> None:
        self._stream = stream
        self._watcher = watcher
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if size and size > 0 else READ_SIZE)
        if data:
            self.bytes += len(data)
            self._watcher.feed(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Into the pipeline's reused buffer (no new 1 MB object per read); the watcher sees the same bytes."""
        size = self._stream.readinto(buffer) or 0
        if size:
            self.bytes += size
            self._watcher.feed(buffer[:size])
        return size


@dataclass(frozen=True)
class BaseBackupRecord:
    """``base.json``: one base backup, what it depends on, and the WAL range it needs."""

    database: str
    base_id: str
    kind: str  # "full" | "incremental"
    parent: str | None  # the base an incremental was taken against
    system_identifier: str
    timeline: int
    start_lsn: str
    end_lsn: str
    started_at: str
    finished_at: str
    server: str
    server_version: str
    tool_version: str
    base: dict[str, Any]  # key, size, sha256, tar_bytes
    backup_manifest: dict[str, Any]  # key, size, sha256
    encryption: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_store(cls, storage: Storage, database: str, base_id: str) -> BaseBackupRecord:
        """Read and check a record: everything read from the store is untrusted."""
        key = f"{base_folder(database, base_id)}/{BASE_RECORD}"
        value = read_json_record(storage, key)
        try:
            record = cls(**value)
        except TypeError as exc:
            raise IntegrityError(f"{key}: not a base backup record ({exc})") from None
        if record.database != database or record.base_id != base_id:
            raise IntegrityError(f"{key}: record names {record.database}/{record.base_id}, not its own folder")
        if record.kind not in ("full", "incremental") or (record.kind == "incremental") != bool(record.parent):
            raise IntegrityError(f"{key}: kind {record.kind!r} and parent {record.parent!r} do not agree")
        for part in (record.base, record.backup_manifest):
            if not isinstance(part.get("size"), int) or not isinstance(part.get("sha256"), str):
                raise IntegrityError(f"{key}: object size or SHA-256 missing")
        return record

    @property
    def start(self) -> int:
        return parse_lsn(self.start_lsn)

    @property
    def end(self) -> int:
        return parse_lsn(self.end_lsn)


def parse_lsn(text: str) -> int:
    """``16/B374D848`` → its 64-bit position; :class:`IntegrityError` for anything else."""
    try:
        high, low = text.split("/")
        return (int(high, 16) << 32) | int(low, 16)
    except (ValueError, AttributeError):
        raise IntegrityError(f"{text!r} is not an LSN") from None


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def list_base_backups(storage: Storage, database: str) -> list[BaseBackupRecord]:
    """The complete base backups of ``database`` (those with a record), oldest first."""
    ids = set()
    for info in storage.list(f"{database}/continuous/base/"):
        parts = info.key.split("/")
        if len(parts) == 5 and parts[4] == BASE_RECORD and BASE_ID_PATTERN.match(parts[3]):
            ids.add(parts[3])
    return [BaseBackupRecord.from_store(storage, database, base_id) for base_id in sorted(ids)]


def sweep_abandoned_bases(storage: Storage, database: str) -> list[str]:
    """Delete the objects of base folders that have no record: what a base backup killed or failed
    before its commit left (never listed, never read, but stored and paid for). Returns the keys deleted.

    Why it is safe: called under the database's lock, which every base backup holds from its first
    write to its commit, and a writer that lost the lock commits no record (``ensure_lock_held``);
    so a record-less folder seen here belongs to no live writer. A folder with a record is never touched.
    """
    folders: dict[str, list[str]] = {}
    for info in storage.list(f"{database}/continuous/base/"):
        parts = info.key.split("/")
        if len(parts) == 5 and BASE_ID_PATTERN.match(parts[3]):
            folders.setdefault(parts[3], []).append(info.key)
    deleted = []
    for keys in folders.values():
        if any(key.endswith(f"/{BASE_RECORD}") for key in keys):
            continue
        for key in sorted(keys):
            storage.delete(key)
            deleted.append(key)
    return deleted


def base_chain(storage: Storage, database: str, base_id: str) -> list[BaseBackupRecord]:
    """The full backup and every incremental up to ``base_id``, oldest first (what pg_combinebackup needs)."""
    chain = [BaseBackupRecord.from_store(storage, database, base_id)]
    while chain[0].parent:
        if len(chain) > 10_000:
            raise IntegrityError(f"base backup chain of {base_id} does not end")
        chain.insert(0, BaseBackupRecord.from_store(storage, database, chain[0].parent))
    return chain


def read_backup_manifest(storage: Storage, record: BaseBackupRecord, identity: pyrage.x25519.Identity,
                         out: BinaryIO) -> None:
    decrypt_object(storage, f"{base_folder(record.database, record.base_id)}/{BACKUP_MANIFEST_OBJECT}",
                   size=record.backup_manifest["size"], sha256=record.backup_manifest["sha256"],
                   identity=identity, out=out, compressed=False,
                   what=f"backup_manifest of base {record.base_id}")


def read_base_tar(storage: Storage, record: BaseBackupRecord, identity: pyrage.x25519.Identity,
                  out: BinaryIO) -> None:
    decrypt_object(storage, f"{base_folder(record.database, record.base_id)}/{BASE_OBJECT}",
                   size=record.base["size"], sha256=record.base["sha256"], identity=identity, out=out,
                   compressed=True, what=f"base backup {record.base_id}")


@contextlib.contextmanager
def _manifest_fifo(storage: Storage, previous: BaseBackupRecord,
                   identity: pyrage.x25519.Identity) -> Any:
    """The previous backup's manifest, decrypted into a FIFO in a private folder (never a plaintext file)."""
    folder = Path(tempfile.mkdtemp(prefix="dbprotect-basebackup-"))
    fifo = folder / "previous_backup_manifest"
    os.mkfifo(fifo, 0o600)
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            with open(fifo, "wb") as out:
                read_backup_manifest(storage, previous, identity, out)
        except BrokenPipeError:
            pass
        except BaseException as exc:
            failure.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield fifo, failure
    finally:
        if feeder.is_alive():  # pg_basebackup never opened it: unblock the writer
            with contextlib.suppress(OSError):
                fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                os.close(fd)
        feeder.join(timeout=10)
        with contextlib.suppress(OSError):
            fifo.unlink()
            folder.rmdir()


def take_base_backup(*, database: str, dsn: str, storage: Storage, recipients: list[str],
                     incremental: bool, identity: pyrage.x25519.Identity | None = None,
                     pg_bin_dir: ToolPlace = None, zstd_level: int = DEFAULT_BASE_ZSTD_LEVEL,
                     zstd_threads: int = 2,
                     now: Callable[[], datetime] = lambda: datetime.now(UTC),
                     owner: str = "dbprotect base backup") -> BaseBackupRecord:
    """Take one base backup of the server behind ``dsn`` into ``storage``.

    ``incremental``: against the newest base backup of the same server when there is one (needs
    ``identity`` to read its manifest); the first is always full. The server is checked first
    (:mod:`.checks`): an unsafe setting is a refusal and nothing runs.
    """
    with database_lock(storage, database, owner=owner):
        age_recipients = parse_recipients(recipients)
        sweep_abandoned_bases(storage, database)
        with contextlib.closing(connect(dsn, autocommit=True, application_name="dbprotect-basebackup")) as conn:
            setup = check_server(conn, incremental=incremental, label=database)
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
            system_identifier = str(row[0]) if row else ""
            version = conn.execute("SHOW server_version").fetchone()
        previous = None
        if incremental:
            same_server = [b for b in list_base_backups(storage, database) if b.system_identifier == system_identifier]
            previous = same_server[-1] if same_server else None
            if previous is not None and identity is None:
                raise ToolError("an incremental base backup reads the previous backup's manifest: the raw "
                                "identity is needed", hint="set the raw key's identity variable, or "
                                                           "continuous.incremental: false")
        tool = require_tool_for_server("pg_basebackup", setup.server_major, pg_bin_dir, dsn=dsn)
        started_at = now()
        base_id = new_backup_id(started_at)
        folder = base_folder(database, base_id)
        with contextlib.ExitStack() as stack:
            extra: list[str] = []
            failure: list[BaseException] = []
            if previous is not None:
                assert identity is not None
                fifo, failure = stack.enter_context(_manifest_fifo(storage, previous, identity))
                extra.append(f"--incremental={fifo}")
            record = _stream_base(
                tool_path=str(tool.path), dsn=dsn, storage=storage, folder=folder, extra=extra,
                age_recipients=age_recipients, zstd_level=zstd_level, zstd_threads=zstd_threads,
                feeder_failure=failure)
        tar_bytes, stored, sha, manifest_bytes = record
        manifest = _parse_backup_manifest(manifest_bytes)
        encrypted_manifest = encrypt_bytes(manifest_bytes, age_recipients)
        manifest_key = f"{folder}/{BACKUP_MANIFEST_OBJECT}"
        if not storage.put_if_absent(manifest_key, encrypted_manifest):
            raise StorageError(f"{storage.uri}: {manifest_key} exists already; nothing was replaced")
        if manifest["system_identifier"] and manifest["system_identifier"] != system_identifier:
            raise IntegrityError("pg_basebackup's manifest names another server than the one checked")
        result = BaseBackupRecord(
            database=database, base_id=base_id, kind="incremental" if previous else "full",
            parent=previous.base_id if previous else None, system_identifier=system_identifier,
            timeline=manifest["timeline"], start_lsn=manifest["start_lsn"], end_lsn=manifest["end_lsn"],
            started_at=started_at.isoformat(), finished_at=now().isoformat(), server=server_label(dsn),
            server_version=str(version[0]) if version else "", tool_version=dbprotect.__version__,
            base={"key": BASE_OBJECT, "size": stored, "sha256": sha, "tar_bytes": tar_bytes,
                  "compression": {"algorithm": "zstd", "level": zstd_level}},
            backup_manifest={"key": BACKUP_MANIFEST_OBJECT, "size": len(encrypted_manifest),
                             "sha256": sha256_hex(encrypted_manifest)},
            encryption={"format": "age-v1",
                        "recipients": [{"fingerprint": fingerprint(r), "recipient": r} for r in recipients]},
        )
        # the commit: only while the lock is still ours (a holder stalled past its lease could otherwise
        # commit a record beside a writer that already swept this folder as abandoned)
        ensure_lock_held(storage, database, f"base backup {base_id} of {database}")
        if not storage.put_if_absent(f"{folder}/{BASE_RECORD}", result.to_json()):
            raise StorageError(f"{storage.uri}: base backup {base_id} already has a record; nothing was replaced")
        return result


def _stream_base(*, tool_path: str, dsn: str, storage: Storage, folder: str, extra: list[str],
                 age_recipients: list[pyrage.x25519.Recipient], zstd_level: int, zstd_threads: int,
                 feeder_failure: list[BaseException]) -> tuple[int, int, str, bytes]:
    """Run pg_basebackup into the store; (tar bytes, stored bytes, SHA-256, backup_manifest)."""
    dsn_without_password, password = split_password(dsn)
    args = [tool_path, "--format=tar", "--pgdata=-", "--wal-method=none", "--checkpoint=fast", "--no-password",
            f"--label=dbprotect {folder}", *extra, f"--dbname={dsn_without_password}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=tool_env(password, PGAPPNAME="dbprotect-pg_basebackup"))
    assert proc.stdout is not None and proc.stderr is not None
    enlarge_pipe(proc.stdout)
    stderr = StderrTail(proc.stderr)
    watcher = TarWatcher()
    try:
        with storage.open_writer(f"{folder}/{BASE_OBJECT}") as writer:
            source = _ObservedStream(proc.stdout, watcher)
            stored = encrypt_to_store(source, writer, age_recipients, storage=storage, zstd_level=zstd_level,
                                      zstd_threads=zstd_threads)
            returncode = proc.wait()
            stderr.join(timeout=5)
            if feeder_failure:
                failure = feeder_failure[0]
                raise failure if isinstance(failure, Exception) else ToolError(str(failure))
            if returncode != 0:
                reason = stderr.last_error().removeprefix("pg_basebackup: ").replace(dsn, mask_dsn(dsn))
                raise ToolError(f"pg_basebackup failed (exit {returncode}): {reason}",
                                hint="the partial base backup was discarded; earlier ones are untouched")
            if not watcher.ended or not watcher.found:
                raise ToolError("pg_basebackup's output ended without a complete tar and backup_manifest; "
                                "the base backup was discarded")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return source.bytes, stored.stored_bytes, stored.sha256, bytes(watcher.kept)


def _parse_backup_manifest(data: bytes) -> dict[str, Any]:
    """Timeline, start and end LSN (its ``WAL-Ranges``) and the system identifier from a backup_manifest."""
    try:
        manifest = json.loads(data)
        ranges = manifest["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        start, end = str(first["Start-LSN"]), str(last["End-LSN"])
        parse_lsn(start)
        parse_lsn(end)
        return {"timeline": int(last["Timeline"]), "start_lsn": start, "end_lsn": end,
                "system_identifier": str(manifest.get("System-Identifier", ""))}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ToolError(f"pg_basebackup's backup_manifest cannot be read: {exc}") from None


@dataclass(frozen=True)
class BaseVerification:
    """The base backup's rungs: stored (size and SHA-256 of both objects) and readable (pg_verifybackup)."""

    base_id: str
    ok: bool
    detail: str
    seconds: float


def verify_base_backup(storage: Storage, record: BaseBackupRecord, identity: pyrage.x25519.Identity, *,
                       pg_bin_dir: ToolPlace = None, work_dir: str | os.PathLike[str] | None = None,
                       server_major: int = 18) -> BaseVerification:
    """Decrypt the base and its manifest into a private (0700) folder, removed afterwards, and run
    ``pg_verifybackup --format=tar --no-parse-wal`` on them (the WAL is the stream's, checked there).

    Why a folder: pg_verifybackup reads files. The plaintext lives there only while it runs.
    An object that does not match its record is a failed verification, never a pass.
    """
    started = time.perf_counter()
    tool = require_tool_for_server("pg_verifybackup", server_major, pg_bin_dir)
    folder = Path(tempfile.mkdtemp(prefix="dbprotect-verifybase-", dir=work_dir))
    try:
        try:
            with open(folder / "base.tar", "xb") as out:
                read_base_tar(storage, record, identity, out)
            with open(folder / "backup_manifest", "xb") as out:
                read_backup_manifest(storage, record, identity, out)
        except IntegrityError as exc:
            return BaseVerification(record.base_id, False, exc.one_line(), time.perf_counter() - started)
        done = subprocess.run([str(tool.path), "--format=tar", "--no-parse-wal", "--quiet", str(folder)],
                              capture_output=True, text=True, timeout=3600)
        detail = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else "pg_verifybackup passed"
        return BaseVerification(record.base_id, done.returncode == 0, detail.replace(str(folder), "<base>"),
                                time.perf_counter() - started)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["DEFAULT_BASE_ZSTD_LEVEL", "BaseBackupRecord", "BaseVerification", "TarWatcher", "base_chain",
           "format_lsn", "list_base_backups", "parse_lsn", "sweep_abandoned_bases", "take_base_backup",
           "verify_base_backup"]
