"""The storage contract: a handful of operations every backend implements the same way.

Modelled on restic's backend interface: small, with the contract in the docstrings, so a new
backend is a few dozen lines and one shared conformance suite (``dbprotect_tests/test_storage.py``)
proves it. Keys are ``/``-separated relative paths (``shop/20261123T020000Z-1a2b/manifest.json``).

Contract:

- ``open_writer(key)`` returns a writer whose bytes become visible under ``key`` only when
  ``commit()`` returns; ``abort()`` (or an exception inside ``with``) leaves nothing listable
  behind — no partial object, no open multipart upload.
- ``put_bytes`` is atomic in the same sense: readers see the old object or the new one.
- ``list(prefix)`` yields every committed object under ``prefix`` with its size, in key order.
- ``open_reader``/``get_bytes``/``stat`` raise :class:`ObjectNotFound` for a missing key.
- ``delete`` of a missing key is not an error (deletion is idempotent, so a cleanup that died
  half-way can simply run again).
- ``put_if_absent(key, data)`` creates ``key`` only if no object has that key, atomically (two
  writers racing: exactly one gets True); it never replaces an object. Locks and write-once
  objects (check records, lock generations) rely on it: ``O_EXCL``/``link`` on a filesystem,
  ``PutObject`` with ``If-None-Match: *`` on S3.
- ``rename(src_key, dst_key)`` makes the object at ``src_key`` appear whole under ``dst_key``
  (replacing what was there) and removes ``src_key``: ``os.replace`` on a filesystem; on S3 a
  server-side copy (atomic: the new object appears only when it completes) then a delete. A copy
  commits a verified temporary object this way.
- ``sweep_partial_writes(prefix)`` removes what killed writers left under ``prefix`` (a
  filesystem's ``.partial-`` files, S3's unfinished multipart uploads) once older than the
  backend's grace period, and returns what it removed. Only a caller holding the lock of the
  database under ``prefix`` calls it (:mod:`dbprotect.core.store.lock`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import BinaryIO, Protocol, runtime_checkable

from dbprotect.core.errors import NotFoundError


class ObjectNotFound(NotFoundError):
    """The key does not exist in the store."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None


class ObjectWriter(Protocol):
    """A write in progress; see the module docstring for the visibility contract."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def flush(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class WriterContext:
    """``with storage.open_writer(key) as w:`` commits on success and aborts on any exception."""

    def __init__(self, writer: ObjectWriter) -> None:
        self._writer = writer

    def __enter__(self) -> ObjectWriter:
        return self._writer

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self._writer.commit()
        else:
            self._writer.abort()


@runtime_checkable
class Storage(Protocol):
    """A backup store: filesystem folder, S3 bucket prefix, or memory (tests)."""

    #: Where the store is, for people (``file:///var/backups``, ``s3://bucket/prefix``); no secrets.
    uri: str

    def open_writer(self, key: str) -> WriterContext: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool: ...

    def rename(self, src_key: str, dst_key: str) -> None: ...

    def sweep_partial_writes(self, prefix: str) -> list[str]: ...

    def get_bytes(self, key: str) -> bytes: ...

    def open_reader(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def object_uri(self, key: str) -> str: ...
