"""Backup copies: the same encrypted object on another storage target, verified before it counts.

A copy never decrypts anything: it moves the stored bytes (``dump.zst.age``) as they are, so a
target needs no key and the copy is byte-for-byte the backup the manifest describes.

Order, per copy (the backup's own rule: the manifest is the commit), under the database's lock
on the destination (:mod:`dbprotect.core.store.lock`):

0. **what is there already**: a destination manifest for this id that describes other bytes
   (another SHA-256 or size) is refused: nothing is touched. A destination object that already
   matches the source manifest (size and SHA-256) is kept as it is and not copied again; it is
   never overwritten, never deleted. Temporary objects of killed copies are removed.
1. **the dump object, under a temporary name** (``dump.zst.age.copying-<random>`` in the backup's
   folder, which listings ignore): S3 → S3 on the same endpoint is a *server-side* copy (boto3's
   managed ``client.copy``), so the bytes never pass through this machine; anything else streams
   source → destination in 1 MiB chunks, in constant memory. A server-side copy the endpoint
   refuses (``AccessDenied``, not implemented) falls back to streaming.
2. **verification of the temporary object** (rung *stored*): read back, its size and SHA-256
   compared with the source manifest. A mismatch (a corrupt source, a broken transfer) removes the
   temporary object only and raises :class:`IntegrityError`: whatever the destination held under
   the real name is exactly as it was.
3. **commit of the object**: the verified temporary object is renamed to ``dump.zst.age``
   (``os.replace`` on a filesystem; a server-side copy then delete on S3). Only a destination
   object that did *not* match the manifest is ever replaced, and only by verified bytes.
4. **check records** (write-once, numbered): the destination's own ``stored`` result, plus the
   source's results of the rungs that depend only on the bytes (*readable*, *restored*,
   *drilled*): the SHA-256 proves the bytes are the same, so what was proven of them holds on the
   target too.
5. **manifest.json, last**, byte-for-byte the source's, written once (``put_if_absent``). Only now
   does the copy appear in listings, RPO and retention of the target.

A copy that rots later is caught by the copy integrity check (:func:`verify_copy`), which records
a failed ``stored`` result on the target: the entry turns ``failed:stored``, stops counting as a
verified backup there, and the next copy run copies it again (through steps 1-3).

Example::

    result = copy_backup(open_storage(config, "local"), open_storage(config, "offsite"), "shop", backup_id)
    print(result.server_side, result.bytes, result.seconds)
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError

from dbprotect.core.errors import IntegrityError, NotFoundError, StorageError
from dbprotect.core.store import ObjectNotFound, S3Storage, Storage
from dbprotect.core.store.catalog import BackupEntry, list_backups, load_manifest, record_verification, write_check
from dbprotect.core.store.lock import database_lock, ensure_lock_held
from dbprotect.core.store.manifest import (
    CHECKS_FOLDER,
    Manifest,
    Verification,
    check_manifest_location,
    dump_key,
    manifest_key,
    parse_check_key,
)
from dbprotect.core.verify.integrity import IntegrityReport, check_integrity

CHUNK = 1 << 20
#: A copy's bytes live under ``dump.zst.age.copying-<random>`` until verified (listings ignore the name).
TEMP_MARK = ".copying-"
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
    #: The target already held an object matching the manifest: it was verified and kept, not copied.
    already_held: bool = False

    @property
    def throughput_mb_per_s(self) -> float:
        return round(self.bytes / 1e6 / self.seconds, 2) if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "backup_id": self.backup_id, "source": self.source_uri,
                "destination": self.destination_uri, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "verify_seconds": round(self.verify_seconds, 3), "server_side_copy": self.server_side,
                "already_held": self.already_held,
                "throughput_mb_per_s": self.throughput_mb_per_s}


def same_s3_endpoint(src: Storage, dst: Storage) -> bool:
    """Both stores are S3 buckets behind one endpoint (and region), so one client can copy between them."""
    if not (isinstance(src, S3Storage) and isinstance(dst, S3Storage)):
        return False
    return (src.client.meta.endpoint_url == dst.client.meta.endpoint_url
            and src.client.meta.region_name == dst.client.meta.region_name)


def _server_side_copy(src: S3Storage, dst: S3Storage, key: str, dst_key: str) -> bool:
    """Copy inside S3 to ``dst_key``; False when the endpoint refuses (then the caller streams)."""
    source = {"Bucket": src.bucket, "Key": src.full_key(key)}
    try:
        dst.client.copy(source, dst.bucket, dst.full_key(dst_key), Config=dst.transfer_config)
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


def _stream_copy(src: Storage, dst: Storage, src_key: str, dst_key: str) -> None:
    """Source reader → destination writer, chunk by chunk; the writer commits only at the end."""
    with contextlib.closing(src.open_reader(src_key)) as reader, dst.open_writer(dst_key) as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)


@dataclass(frozen=True)
class _Measured:
    ok: bool
    detail: str
    seconds: float


def _measure(storage: Storage, key: str, manifest: Manifest) -> _Measured | None:
    """Size and SHA-256 of ``key`` against the manifest; None when there is no such object."""
    started = time.perf_counter()
    digest, size = hashlib.sha256(), 0
    try:
        storage.stat(key)  # a HEAD first: asking whether the target holds it fetches no bytes
        stream = storage.open_reader(key)
    except ObjectNotFound:
        return None
    with contextlib.closing(stream):
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    seconds = time.perf_counter() - started
    if size != manifest.stored_bytes:
        return _Measured(False, f"size {size} bytes, manifest says {manifest.stored_bytes} (truncated or altered)",
                         seconds)
    if digest.hexdigest() != manifest.sha256:
        return _Measured(False, f"SHA-256 mismatch: manifest {manifest.sha256[:16]}..., object "
                         f"{digest.hexdigest()[:16]}...", seconds)
    return _Measured(True, f"SHA-256 {manifest.sha256[:16]}... matches, {size} bytes", seconds)


def _source_checks(src: Storage, manifest: Manifest) -> list[Verification]:
    """The source's results for rungs that carry over to an identical copy (unreadable ones skipped)."""
    prefix = f"{manifest.database}/{manifest.backup_id}/{CHECKS_FOLDER}/"
    found = []
    for info in src.list(prefix):
        parsed = parse_check_key(info.key.rsplit("/", 1)[-1])
        if not parsed or parsed[1] not in BYTE_RUNGS:
            continue
        try:
            check = Verification.model_validate_json(src.get_bytes(info.key))
        except ObjectNotFound:
            continue
        except ValueError:  # the key is what listings trust: carry that over, and say so
            check = Verification(rung=parsed[1], ok=parsed[2], at=parsed[0],
                                 detail=f"copied from {src.uri} (its check record's body was unreadable)")
        if (check.rung, check.ok) == (parsed[1], parsed[2]):  # the body agrees with its key
            found.append(check)
    return found


def _held_checks(dst: Storage, database: str, backup_id: str) -> set[tuple[datetime, str, bool]]:
    prefix = f"{database}/{backup_id}/{CHECKS_FOLDER}/"
    return {parsed[:3] for info in dst.list(prefix) if (parsed := parse_check_key(info.key.rsplit("/", 1)[-1]))}


def _sweep_dead_temporaries(dst: Storage, database: str) -> None:
    """Temporary objects of copies killed before they committed (we hold the lock: none is live)."""
    for info in dst.list(f"{database}/"):
        if TEMP_MARK in info.key.rsplit("/", 1)[-1]:
            with contextlib.suppress(StorageError):
                dst.delete(info.key)


def _refuse_other_backup(dst: Storage, manifest: Manifest) -> None:
    """A destination manifest for this id that describes other bytes: touch nothing."""
    key = manifest_key(manifest.database, manifest.backup_id)
    try:
        held = dst.get_bytes(key)
    except ObjectNotFound:
        return
    try:
        theirs = Manifest.from_json(held, where=dst.object_uri(key))
        same = (theirs.sha256, theirs.stored_bytes) == (manifest.sha256, manifest.stored_bytes)
    except (IntegrityError, KeyError, ValueError, TypeError):
        same = False
    if not same:
        raise IntegrityError(
            f"{dst.uri} already holds a backup {manifest.backup_id} of {manifest.database} whose manifest describes "
            "other bytes than the source's: nothing was copied, nothing on the target was changed",
            hint="compare both manifests; the target's copy is never overwritten by a copy run")


def copy_backup(src: Storage, dst: Storage, database: str, backup_id: str, *, by: str = "dbprotect copy",
                allow_server_side: bool = True) -> CopyResult:
    """Copy one backup from ``src`` to ``dst`` without decrypting it; verify it before it counts.

    Raises :class:`NotFoundError` when the source has no such backup, :class:`IntegrityError`
    when the copied bytes do not match the manifest (nothing is committed, the destination's
    existing object is untouched), and :class:`StorageError` when either store fails (nothing is
    committed either: the manifest comes last). Copying a backup the destination already holds
    verifies the object there and keeps it when it matches; only one that does not match is
    replaced, by verified bytes.
    """
    with database_lock(dst, database, owner=by):
        return _copy_locked(src, dst, database, backup_id, by=by, allow_server_side=allow_server_side)


def _copy_locked(src: Storage, dst: Storage, database: str, backup_id: str, *, by: str,
                 allow_server_side: bool) -> CopyResult:
    manifest_bytes = src.get_bytes(manifest_key(database, backup_id))
    where = src.object_uri(manifest_key(database, backup_id))
    # Validated and refused unless it names the folder it was read from (as catalog.load_manifest does):
    # its database and backup id decide which checks are read and which target manifest is compared.
    manifest = check_manifest_location(Manifest.from_json(manifest_bytes, where=where), database, backup_id,
                                       where=where)
    _refuse_other_backup(dst, manifest)
    _sweep_dead_temporaries(dst, database)
    key = dump_key(database, backup_id)
    started = time.perf_counter()
    server_side = False
    stored = _measure(dst, key, manifest)
    already_held = stored is not None and stored.ok
    if not already_held:
        temporary = f"{key}{TEMP_MARK}{secrets.token_hex(6)}"
        try:
            if allow_server_side and same_s3_endpoint(src, dst):
                assert isinstance(src, S3Storage) and isinstance(dst, S3Storage)
                server_side = _server_side_copy(src, dst, key, temporary)
            if not server_side:
                _stream_copy(src, dst, key, temporary)
            stored = _measure(dst, temporary, manifest)
            if stored is None or not stored.ok:
                detail = stored.detail if stored else "the temporary object vanished"
                raise IntegrityError(
                    f"copy of backup {backup_id} of {database} to {dst.uri} does not match its manifest: {detail}",
                    hint="nothing was committed and the target's own object was left as it was; check the source "
                    f"with 'dbprotect verify {backup_id} --stored-only' and the destination store, then copy again")
            ensure_lock_held(dst, database, f"the copy of backup {backup_id} of {database}")
            dst.rename(temporary, key)
        except BaseException:
            with contextlib.suppress(Exception):
                dst.delete(temporary)
            raise
    assert stored is not None
    copied = time.perf_counter()
    held = _held_checks(dst, database, backup_id)
    for check in _source_checks(src, manifest):
        if (check.at, check.rung, check.ok) not in held:
            write_check(dst, database, backup_id, check)
    at = datetime.now(UTC)
    how = "already held, kept" if already_held else f"copy from {src.uri}"
    write_check(dst, database, backup_id, Verification(
        rung="stored", ok=True, at=at, detail=f"{how}: {stored.detail}", by=by,
        metrics={"seconds": round(stored.seconds, 3)}))
    ensure_lock_held(dst, database, f"the manifest of the copy of backup {backup_id} of {database}")
    committed = dst.put_if_absent(manifest_key(database, backup_id), manifest_bytes)  # the commit, last; never replaced
    if not committed and dst.get_bytes(manifest_key(database, backup_id)) != manifest_bytes:
        raise IntegrityError(f"backup {backup_id} of {database} on {dst.uri} already has another manifest; "
                             "the copy was not committed", hint="compare the two stores' manifests by hand")
    return CopyResult(database, backup_id, src.uri, dst.uri, manifest.stored_bytes, copied - started, server_side,
                      stored.seconds, already_held)


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
