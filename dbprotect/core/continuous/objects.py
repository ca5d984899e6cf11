"""Stored objects of continuous protection: where they live, and the one way each is written and read.

Layout under the database's folder (``docs/store-format.md``)::

    <database>/continuous/base/<base_id>/base.tar.zst.age        pg_basebackup's tar → zstd → age
    <database>/continuous/base/<base_id>/backup_manifest.age     PostgreSQL's backup_manifest → age
    <database>/continuous/base/<base_id>/base.json               our record, written last, write-once

A base backup without ``base.json`` does not exist (a killed backup leaves at most objects nobody reads).
Every object is encrypted to the raw keys' recipients; what is read back is checked against the
record's size and SHA-256 before anything trusts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, BinaryIO

import pyrage
import zstandard

from dbprotect.core.errors import DbprotectError, IntegrityError, StorageError
from dbprotect.core.store import Storage
from dbprotect.core.verify.integrity import HashingReader

CHUNK = 1 << 20
BASE_OBJECT = "base.tar.zst.age"
BACKUP_MANIFEST_OBJECT = "backup_manifest.age"
BASE_RECORD = "base.json"
BASE_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4,}$")
#: A record read from the store larger than this is refused before parsing (everything read is untrusted).
MAX_RECORD_BYTES = 1 << 20


def base_folder(database: str, base_id: str) -> str:
    return f"{database}/continuous/base/{base_id}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json_record(storage: Storage, key: str) -> dict[str, Any]:
    """A small JSON record from the store, bounded and checked to be an object."""
    data = storage.get_bytes(key)
    if len(data) > MAX_RECORD_BYTES:
        raise IntegrityError(f"{key}: record is {len(data)} bytes, more than a record can be")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{key}: not a JSON record ({exc})") from None
    if not isinstance(value, dict):
        raise IntegrityError(f"{key}: not a JSON object")
    return value


class _Watched:
    """Remembers what its own I/O raised: pyrage hides every failure behind "decryption error"."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return bytes(self._inner.read(size))
        except BaseException as exc:
            self.failure = exc
            raise

    def write(self, data: bytes) -> int:
        try:
            self._inner.write(data)
        except BaseException as exc:
            self.failure = exc
            raise
        return len(data)

    def flush(self) -> None:
        with contextlib.suppress(AttributeError):
            self._inner.flush()


def decrypt_object(storage: Storage, key: str, *, size: int, sha256: str, identity: pyrage.x25519.Identity,
                   out: BinaryIO, compressed: bool, what: str,
                   on_mismatch: Callable[[], None] | None = None) -> None:
    """Stream the stored object ``key`` through age (and zstd) into ``out``, checking size and SHA-256.

    The hash is of the stored (encrypted) bytes, so it is checked after the last byte; the caller
    discards what was written when this raises (:class:`IntegrityError`: the object is damaged;
    :class:`StorageError`: the store or the local disk failed).
    """
    with contextlib.closing(storage.open_reader(key)) as stream:
        source, sink = _Watched(stream), _Watched(out)
        reader = HashingReader(source)
        writer: Any = (zstandard.ZstdDecompressor().stream_writer(sink, write_size=CHUNK, closefd=False)
                       if compressed else sink)
        try:
            pyrage.decrypt_io(reader, writer, [identity])
            writer.flush()
        except (pyrage.DecryptError, zstandard.ZstdError, OSError) as exc:
            for failure in (source.failure, sink.failure):
                if isinstance(failure, DbprotectError):
                    raise failure from None
                if failure is not None:
                    raise StorageError(f"{what}: reading or writing failed: {failure}") from None
            raise IntegrityError(f"{what} does not decrypt: {' '.join(str(exc).split())}") from None
        while reader.read(CHUNK):
            pass
    if reader.bytes != size or reader.hexdigest != sha256:
        raise IntegrityError(f"{what}: stored object differs from its record (size or SHA-256)")
