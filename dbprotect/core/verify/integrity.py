"""Rungs 1 and 2 of the verification ladder: *stored* and *readable*.

- **stored**: the object exists, has the manifest's size, and its SHA-256 equals the manifest's.
- **readable**: it decrypts with the raw-backup identity (age checks a MAC on every 64 KiB
  chunk), decompresses, ``pg_restore --list`` parses its table of contents, and the archive
  reader finds every table the manifest lists with the same row count and checksum.

Both rungs are computed in one streaming pass over the object (no plaintext on disk). A wrong
or missing identity is *not* a failed backup: it raises :class:`CryptoError` before anything is
recorded, because the backup may be perfectly good.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyrage
import zstandard

from dbprotect.core.backup.archive import ArchiveInspector, TruncatedArchive, UnsupportedArchive
from dbprotect.core.crypto import fingerprint, identity_recipient
from dbprotect.core.errors import CryptoError, IntegrityError
from dbprotect.core.pg.tools import select_tool
from dbprotect.core.store import ObjectNotFound, Storage
from dbprotect.core.store.catalog import load_manifest, record_check, record_verification
from dbprotect.core.store.manifest import Manifest, Verification, dump_key

CHUNK = 1 << 20


@dataclass
class RungResult:
    rung: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class IntegrityReport:
    database: str
    backup_id: str
    results: list[RungResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(result.ok for result in self.results)

    def summary(self) -> str:
        return "; ".join(f"{r.rung}: {'ok' if r.ok else 'FAILED'} ({r.detail})" for r in self.results)

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.database, "backup_id": self.backup_id, "ok": self.ok,
            "results": [r.__dict__ for r in self.results],
        }


def summarize_problems(problems: list[str], shown: int = 5) -> str:
    """The first ``shown`` problems joined, and how many more there are: one readable line."""
    more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


class HashingReader:
    """A reader that hashes (SHA-256) and counts every byte read through it: the *stored* rung,
    computed on the same pass that decrypts."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size if size and size > 0 else CHUNK)  # type: ignore[attr-defined]
        self._hash.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _ArchiveSink:
    """Receives the decompressed archive: feeds the inspector and ``pg_restore --list``."""

    def __init__(self, pg_restore: str) -> None:
        self.inspector = ArchiveInspector()
        self.bytes = 0
        self._proc = subprocess.Popen([pg_restore, "--list"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        assert self._proc.stdout and self._proc.stderr
        self._readers = [
            threading.Thread(target=lambda: self._stdout.append(self._proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
            threading.Thread(target=lambda: self._stderr.append(self._proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
        ]
        for reader in self._readers:
            reader.start()
        self._stdin_open = True

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        self.inspector.feed(data)
        if self._stdin_open:
            try:
                self._proc.stdin.write(data)  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                self._stdin_open = False  # pg_restore --list stops reading after the TOC
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> tuple[int, str, str]:
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # type: ignore[union-attr]
        code = self._proc.wait()
        for reader in self._readers:
            reader.join()
        out = b"".join(self._stdout).decode("utf-8", errors="replace")
        err = b"".join(self._stderr).decode("utf-8", errors="replace").strip()
        return code, out, err


def check_identity_matches(manifest: Manifest, identity: pyrage.x25519.Identity) -> None:
    """Refuse early, naming fingerprints only, when this identity cannot open the backup."""
    mine = fingerprint(identity_recipient(identity))
    theirs = [r["fingerprint"] for r in manifest.encryption.get("recipients", [])]
    if mine not in theirs:
        raise CryptoError(
            f"the identity given (public key {mine}) is not a recipient of backup {manifest.backup_id} "
            f"(recipients: {', '.join(theirs) or 'none recorded'})",
            hint="use the raw-backup identity whose public key is in keys.raw.recipients",
        )


def check_integrity(storage: Storage, manifest: Manifest,
                    identity: pyrage.x25519.Identity | None) -> IntegrityReport:
    """Run rung 1 (and rung 2 when an identity is given) over one streaming read of the object."""
    report = IntegrityReport(manifest.database, manifest.backup_id)
    key = dump_key(manifest.database, manifest.backup_id)
    if identity is not None:
        check_identity_matches(manifest, identity)
    started = time.perf_counter()
    try:
        stream = storage.open_reader(key)
    except ObjectNotFound:
        report.results.append(RungResult("stored", False, f"object {key} is missing", time.perf_counter() - started))
        return report
    with contextlib.closing(stream):
        reader = HashingReader(stream)
        readable: RungResult | None = None
        if identity is not None:
            readable = _decrypt_and_parse(reader, manifest, identity)
        reader.drain()  # a failed decrypt stops early; the hash still needs every byte
    stored = _stored_result(manifest, reader, time.perf_counter() - started)
    report.results.append(stored)
    if readable is not None:
        report.results.append(readable)
    return report


def _stored_result(manifest: Manifest, reader: HashingReader, seconds: float) -> RungResult:
    if reader.bytes != manifest.stored_bytes:
        return RungResult("stored", False,
                          f"size {reader.bytes} bytes, manifest says {manifest.stored_bytes} (truncated or altered)",
                          seconds)
    if reader.hexdigest != manifest.sha256:
        return RungResult("stored", False,
                          f"SHA-256 mismatch: manifest {manifest.sha256[:16]}..., object {reader.hexdigest[:16]}...",
                          seconds)
    return RungResult("stored", True, f"SHA-256 {manifest.sha256[:16]}... matches, {reader.bytes} bytes", seconds)


def _decrypt_and_parse(reader: HashingReader, manifest: Manifest,
                       identity: pyrage.x25519.Identity) -> RungResult:
    started = time.perf_counter()
    archive_major = int(manifest.pg_dump.get("major") or manifest.source["server_major"])
    tool = select_tool("pg_restore", at_least=archive_major,  # too old a tool: the environment's failure
                       newer_than="the archive's pg_dump")
    sink = _ArchiveSink(str(tool.path))
    decompressor = zstandard.ZstdDecompressor().stream_writer(sink, write_size=CHUNK, closefd=False)
    problem = ""
    try:
        pyrage.decrypt_io(reader, decompressor, [identity])
        decompressor.flush()
    except Exception as exc:
        problem = _describe_read_failure(exc)
    code, listing, err = sink.close()
    seconds = time.perf_counter() - started
    if problem:
        return RungResult("readable", False, problem, seconds)
    if code != 0:
        reason = err.splitlines()[-1] if err else f"exit {code}"
        return RungResult("readable", False, f"pg_restore --list failed: {reason}", seconds)
    try:
        summary = sink.inspector.finish()
    except TruncatedArchive as exc:
        return RungResult("readable", False, f"archive is incomplete: {exc}", seconds)
    except UnsupportedArchive as exc:
        return RungResult("readable", True,
                          f"pg_restore lists {_entries(listing)} entries; rows not re-read ({exc})", seconds)
    mismatches = _compare_tables(manifest, {name: (d.rows, d.checksum) for name, d in summary.tables.items()})
    if mismatches:
        return RungResult("readable", False, "archive differs from manifest: " + "; ".join(mismatches[:5]), seconds)
    return RungResult("readable", True,
                      f"decrypts, decompresses, pg_restore lists {_entries(listing)} entries, "
                      f"{len(summary.tables)} tables match the manifest", seconds)


def _entries(listing: str) -> int:
    return sum(1 for line in listing.splitlines() if line and not line.startswith(";"))


def _describe_read_failure(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, pyrage.DecryptError) or "decrypt" in text.lower():
        return f"decryption failed (corrupted or truncated ciphertext): {text}"
    if isinstance(exc, zstandard.ZstdError):
        return f"decompression failed: {text}"
    return f"cannot read the archive: {text or type(exc).__name__}"


def _compare_tables(manifest: Manifest, found: dict[str, tuple[int, str]]) -> list[str]:
    problems = []
    for name, record in manifest.tables.items():
        if name not in found:
            problems.append(f"{name}: missing from the archive")
            continue
        rows, checksum = found[name]
        if rows != record.rows:
            problems.append(f"{name}: {rows} rows, manifest says {record.rows}")
        elif checksum != record.checksum:
            problems.append(f"{name}: content checksum differs")
    problems.extend(f"{name}: not in the manifest" for name in sorted(set(found) - set(manifest.tables)))
    return problems


def verify_backup(storage: Storage, database: str, backup_id: str, identity: pyrage.x25519.Identity | None,
                  *, by: str = "dbprotect", record: bool = True) -> IntegrityReport:
    """Check a stored backup and (by default) record each rung's result in the store.

    A manifest that exists but cannot be trusted (not valid JSON, fields out of bounds, naming
    another folder) fails rung *stored* and is recorded as such: it is this backup's failure.
    """
    try:
        manifest = load_manifest(storage, database, backup_id)
    except IntegrityError as exc:
        if record:
            record_check(storage, database, backup_id, Verification(
                rung="stored", ok=False, at=datetime.now(UTC), detail=f"manifest unreadable: {exc.one_line()}", by=by))
        raise
    report = check_integrity(storage, manifest, identity)
    if record:
        at = datetime.now(UTC)
        for result in report.results:
            record_verification(storage, manifest, Verification(
                rung=result.rung, ok=result.ok, at=at, detail=result.detail, by=by,
                metrics={"seconds": round(result.seconds, 3)},
            ))
    return report
