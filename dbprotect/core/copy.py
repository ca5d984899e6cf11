"""Backup copies: the same encrypted object on another storage target, verified before it counts.

A copy never decrypts anything: it moves the stored bytes (``dump.zst.age``) as they are, so a
target needs no key and the copy is byte-for-byte the backup the manifest describes.

Order, per copy (the backup's own rule: the manifest is the commit):

1. **the dump object**: S3 → S3 on the same endpoint is a *server-side* copy (boto3's managed
   ``client.copy``: ``CopyObject``, or ``UploadPartCopy`` parts for large objects), so the bytes
   never pass through this machine; anything else streams source → destination in 1 MiB chunks,
   in constant memory. A server-side copy the endpoint refuses (``AccessDenied``, not implemented)
   falls back to streaming.
2. **verification on the destination** (rung *stored*): the destination object is read back and
   its size and SHA-256 compared with the source manifest. A mismatch removes the destination
   object, writes no manifest and raises :class:`IntegrityError`: a corrupted copy never becomes
   a backup on the target (to the catalog it never existed; if even the removal fails, it is an
   incomplete upload that cleanup removes after a day).
3. **check records**: the destination's own ``stored`` result, plus the source's results of the
   rungs that depend only on the bytes (*readable*, *restored*, *drilled*): the SHA-256 proves
   the bytes are the same, so what was proven of them holds on the target too.
4. **manifest.json, last**: the source manifest with the destination's ``stored`` result
   appended. Only now does the copy appear in listings, RPO and retention of the target.

A copy that rots later is caught by the copy integrity check (:func:`verify_copy`), which records
a failed ``stored`` result on the target: the entry turns ``failed:stored``, stops counting as a
verified backup there, and the next copy run copies it again.

Example::

    result = copy_backup(open_storage(config, "local"), open_storage(config, "offsite"), "shop", backup_id)
    print(result.server_side, result.bytes, result.seconds)
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError

from dbprotect.core.errors import IntegrityError, NotFoundError, StorageError
from dbprotect.core.store import ObjectNotFound, S3Storage, Storage
from dbprotect.core.store.catalog import BackupEntry, list_backups, load_manifest, record_verification
from dbprotect.core.store.manifest import (
    CHECKS_FOLDER,
    Manifest,
    Verification,
    check_key,
    dump_key,
    manifest_key,
    parse_check_key,
)
from dbprotect.core.verify.integrity import IntegrityReport, check_integrity

CHUNK = 1 << 20
#: Rungs proven of the bytes themselves: they carry over to an identical copy. *stored* does not:
#: it is a fact about one store's object, so every target measures its own.
BYTE_RUNGS = ("readable", "restored", "drilled")
#: S3 error codes that mean "this endpoint will not copy between these buckets for us".
_NO_SERVER_SIDE = {"AccessDenied", "NotImplemented", "InvalidRequest", "XNotImplemented"}


@dataclass(frozen=True)
class CopyResult:
    """One finished copy: verified on the destination and committed by its manifest."""

    database: str
    backup_id: str
    source_uri: str
    destination_uri: str
    bytes: int
    seconds: float
    server_side: bool
    verify_seconds: float

    @property
    def throughput_mb_per_s(self) -> float:
        return round(self.bytes / 1e6 / self.seconds, 2) if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "backup_id": self.backup_id, "source": self.source_uri,
                "destination": self.destination_uri, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "verify_seconds": round(self.verify_seconds, 3), "server_side_copy": self.server_side,
                "throughput_mb_per_s": self.throughput_mb_per_s}


def same_s3_endpoint(src: Storage, dst: Storage) -> bool:
    """Both stores are S3 buckets behind one endpoint (and region), so one client can copy between them."""
    if not (isinstance(src, S3Storage) and isinstance(dst, S3Storage)):
        return False
    return (src.client.meta.endpoint_url == dst.client.meta.endpoint_url
            and src.client.meta.region_name == dst.client.meta.region_name)


def _server_side_copy(src: S3Storage, dst: S3Storage, key: str) -> bool:
    """Copy inside S3; False when the endpoint refuses (then the caller streams)."""
    source = {"Bucket": src.bucket, "Key": src.full_key(key)}
    try:
        dst.client.copy(source, dst.bucket, dst.full_key(key), Config=dst.transfer_config)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _NO_SERVER_SIDE:
            return False
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ObjectNotFound(f"{src.uri}: {key} not found") from None
        raise StorageError(f"{dst.uri}: server-side copy of {key} from {src.uri} failed: {code}") from None
    except BotoCoreError as exc:
        raise StorageError(f"{dst.uri}: server-side copy of {key} from {src.uri} failed: {exc}") from None
    return True


def _stream_copy(src: Storage, dst: Storage, key: str) -> None:
    """Source reader → destination writer, chunk by chunk; the writer commits only at the end."""
    with contextlib.closing(src.open_reader(key)) as reader, dst.open_writer(key) as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)


def _source_checks(src: Storage, manifest: Manifest) -> list[str]:
    """Keys of the source's check records for rungs that carry over to an identical copy."""
    prefix = f"{manifest.database}/{manifest.backup_id}/{CHECKS_FOLDER}/"
    keys = []
    for info in src.list(prefix):
        parsed = parse_check_key(info.key.rsplit("/", 1)[-1])
        if parsed and parsed[1] in BYTE_RUNGS:
            keys.append(info.key)
    return keys


def copy_backup(src: Storage, dst: Storage, database: str, backup_id: str, *, by: str = "dbprotect copy",
                allow_server_side: bool = True) -> CopyResult:
    """Copy one backup from ``src`` to ``dst`` without decrypting it; verify it before it counts.

    Raises :class:`NotFoundError` when the source has no such backup, :class:`IntegrityError`
    when the destination's bytes do not match the manifest (nothing is committed), and
    :class:`StorageError` when either store fails (nothing is committed either: the manifest
    comes last). Copying a backup the destination already holds copies it again (repairs it).
    """
    manifest = load_manifest(src, database, backup_id)
    key = dump_key(database, backup_id)
    started = time.perf_counter()
    server_side = False
    if allow_server_side and same_s3_endpoint(src, dst):
        assert isinstance(src, S3Storage) and isinstance(dst, S3Storage)
        server_side = _server_side_copy(src, dst, key)
    if not server_side:
        _stream_copy(src, dst, key)
    copied = time.perf_counter()
    report = check_integrity(dst, manifest, None)  # rung "stored" only: no key needed, none used
    stored = report.results[0]
    if not stored.ok:
        with contextlib.suppress(StorageError):
            dst.delete(key)
        raise IntegrityError(
            f"copy of backup {backup_id} of {database} to {dst.uri} does not match its manifest: {stored.detail}",
            hint="nothing was committed on the destination; check the source with 'dbprotect verify "
            f"{backup_id} --stored-only' and the destination store, then copy again")
    for check in _source_checks(src, manifest):
        dst.put_bytes(check, src.get_bytes(check))
    at = datetime.now(UTC)
    verification = Verification(rung="stored", ok=True, at=at, detail=f"copy from {src.uri}: {stored.detail}",
                                by=by, metrics={"seconds": round(stored.seconds, 3)})
    dst.put_bytes(check_key(database, backup_id, at, "stored", True),
                  verification.model_dump_json(indent=2).encode() + b"\n")
    manifest.verifications.append(verification)
    dst.put_bytes(manifest_key(database, backup_id), manifest.to_json())  # the commit, last
    return CopyResult(database, backup_id, src.uri, dst.uri, manifest.stored_bytes, copied - started, server_side,
                      stored.seconds)


def verify_copy(dst: Storage, database: str, backup_id: str, *, by: str = "dbprotect copy check") -> IntegrityReport:
    """Rung *stored* of a copy on its target, recorded there: a failure stops it counting as a backup."""
    manifest = load_manifest(dst, database, backup_id)
    report = check_integrity(dst, manifest, None)
    at = datetime.now(UTC)
    for result in report.results:
        record_verification(dst, manifest, Verification(rung=result.rung, ok=result.ok, at=at, detail=result.detail,
                                                        by=by, metrics={"seconds": round(result.seconds, 3)}))
    return report


@dataclass(frozen=True)
class CopyPlan:
    """What a copy run would do for one target: the backup to copy, or why there is nothing to do."""

    database: str
    backup_id: str | None
    reason: str

    @property
    def needed(self) -> bool:
        return self.backup_id is not None


def plan_copy(src: Storage, dst: Storage, database: str) -> CopyPlan:
    """The newest verified backup of the source, unless the destination already holds it verified.

    A target catches up with the present, not the past: older backups missing on the target are
    not back-filled (the target's own retention would delete most of them again); copy one by id
    with :func:`copy_backup` if it is needed. A copy that failed its check on the target counts as
    missing, so it is copied again.
    """
    source = [entry for entry in list_backups(src, database) if entry.integrity_ok]
    if not source:
        raise NotFoundError(f"database {database!r} has no verified backup in {src.uri} to copy",
                            hint=f"take and verify one first ('dbprotect backup {database}')")
    newest = source[0]
    held = {entry.backup_id: entry for entry in list_backups(dst, database)}
    copy = held.get(newest.backup_id)
    if copy is not None and copy.integrity_ok:
        return CopyPlan(database, None, f"{dst.uri} already holds the newest verified backup {newest.backup_id}")
    why = "holds it, but the copy failed verification" if copy is not None else "does not hold it yet"
    return CopyPlan(database, newest.backup_id, f"newest verified backup {newest.backup_id}: {dst.uri} {why}")


def holdings(stores: dict[str, Storage], database: str) -> dict[str, dict[str, BackupEntry]]:
    """Per target name, the backups it holds (by id): the "which target holds what" table's input."""
    return {name: {entry.backup_id: entry for entry in list_backups(store, database)}
            for name, store in stores.items()}


__all__ = [
    "BYTE_RUNGS",
    "CopyPlan",
    "CopyResult",
    "copy_backup",
    "holdings",
    "plan_copy",
    "same_s3_endpoint",
    "verify_copy",
]
