"""A backup store in an S3 bucket (AWS, MinIO, or any S3-compatible endpoint).

Large objects go up as a multipart upload driven by boto3's transfer manager (we do not
re-implement multipart). The stream we upload cannot seek, so a bounded in-memory pipe feeds the
transfer manager from a background thread: memory stays at about ``3 * part_size`` whatever the
backup's size. When the backup fails, the pipe raises inside the transfer manager, which aborts
the multipart upload: no object and no dangling upload remain. An object appears in the bucket
only when ``CompleteMultipartUpload`` succeeds, which is S3's own atomic commit.

A process killed with SIGKILL cannot abort its upload: the next writer on that database (holding
its lock) aborts multipart uploads older than :data:`MULTIPART_GRACE` under the database's prefix
(:meth:`S3Storage.sweep_partial_writes`). ``put_if_absent`` is a ``PutObject`` with
``If-None-Match: *`` (AWS S3 since August 2024, MinIO, moto): the endpoint refuses with
``PreconditionFailed`` (412) when the key exists. An endpoint that ignores the header would turn
it into a plain overwrite, so lock acquisition re-reads what it wrote (:mod:`.lock`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from dbprotect.core.errors import ConfigError, StorageError
from dbprotect.core.redact import register
from dbprotect.core.store.base import ObjectInfo, ObjectNotFound, WriterContext

PART_SIZE = 8 * 1024 * 1024
#: An unfinished multipart upload older than this belongs to a killed writer (a backup of a day is
#: far beyond any configured RTO), so the next writer on that database aborts it.
MULTIPART_GRACE = timedelta(days=1)
_EOF = object()


class UploadAborted(Exception):
    """Raised inside the transfer manager to make it abort the multipart upload."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip().rstrip(":")
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_not_found(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound")


class _PipeReader:
    """The reading end of a bounded pipe: ``read(n)`` returns exactly n bytes until the end."""

    def __init__(self, chunks: queue.Queue[Any]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._eof = False

    def read(self, amount: int = -1) -> bytes:
        while not self._eof and (amount < 0 or len(self._buffer) < amount):
            item = self._chunks.get()
            if item is _EOF:
                self._eof = True
            elif isinstance(item, BaseException):
                raise UploadAborted(str(item))
            else:
                self._buffer += item
        if amount < 0:
            amount = len(self._buffer)
        data = bytes(self._buffer[:amount])
        del self._buffer[:amount]
        return data


class _S3Writer:
    def __init__(self, storage: S3Storage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._chunks: queue.Queue[Any] = queue.Queue(maxsize=2 * PART_SIZE // (256 * 1024))
        self._pending = bytearray()
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._upload, name=f"s3-upload:{key}", daemon=True)
        self._thread.start()

    def _upload(self) -> None:
        try:
            self._storage.client.upload_fileobj(
                _PipeReader(self._chunks), self._storage.bucket, self._storage.full_key(self._key),
                Config=self._storage.transfer_config,
            )
        except BaseException as exc:  # reported to the writing thread in commit()
            self._error = exc
            self._drain()

    def _drain(self) -> None:
        """Unblock a producer stuck on a full queue after the uploader died."""
        try:
            while True:
                self._chunks.get_nowait()
        except queue.Empty:
            pass

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if self._error is not None:
            raise StorageError(f"{self._storage.uri}: upload of {self._key} failed: {_describe(self._error)}")
        self._pending += data
        if len(self._pending) >= 256 * 1024:
            self._send(bytes(self._pending))
            self._pending.clear()
        return len(data)

    def _send(self, item: Any) -> None:
        while self._thread.is_alive():
            try:
                self._chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        if self._error is not None:
            raise StorageError(f"{self._storage.uri}: upload of {self._key} failed: {_describe(self._error)}")

    def flush(self) -> None:
        pass

    def commit(self) -> None:
        if self._pending:
            self._send(bytes(self._pending))
            self._pending.clear()
        self._send(_EOF)
        self._thread.join()
        self._done = True
        if self._error is not None:
            raise StorageError(
                f"{self._storage.uri}: upload of {self._key} failed: {_describe(self._error)}",
                hint="the multipart upload was aborted; nothing partial is left in the bucket",
            )

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pending.clear()
        # Never raise from abort: the caller is already handling the error that made it abort,
        # and an upload thread that died on its own has aborted its multipart upload itself.
        with contextlib.suppress(StorageError):
            self._send(RuntimeError("backup aborted"))
        self._thread.join()


class S3Storage:
    """A store under ``s3://bucket/prefix``; credentials come from boto3's usual chain."""

    def __init__(self, bucket: str, prefix: str = "", *, region: str | None = None,
                 endpoint_url: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, part_size: int = PART_SIZE) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        if endpoint_url:
            self.uri += f" (endpoint {endpoint_url})"
        # boto3 and botocore.config load when an S3 store is opened: together ~370 ms (python -X
        # importtime) that every command on a filesystem store would otherwise pay.
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        session = boto3.session.Session()
        self.client = session.client(
            "s3", region_name=region, endpoint_url=endpoint_url,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10,
                              read_timeout=120),
        )
        self.transfer_config = TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=2,
            use_threads=True,
        )

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def object_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def _fail(self, action: str, key: str, exc: BaseException) -> StorageError:
        return StorageError(f"{self.uri}: cannot {action} {key}: {_describe(exc)}")

    def open_writer(self, key: str) -> WriterContext:
        return WriterContext(_S3Writer(self, key))

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("save", key, exc) from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise self._fail("create", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("create", key, exc) from None
        return True

    def rename(self, src_key: str, dst_key: str) -> None:
        source = {"Bucket": self.bucket, "Key": self.full_key(src_key)}
        try:
            # the managed copy: CopyObject, or UploadPartCopy parts past 5 GB; atomic either way
            self.client.copy(source, self.bucket, self.full_key(dst_key), Config=self.transfer_config)
        except ClientError as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(f"{self.uri}: {src_key} not found") from None
            raise self._fail("rename", src_key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("rename", src_key, exc) from None
        self.delete(src_key)

    def sweep_partial_writes(self, prefix: str) -> list[str]:
        cutoff = datetime.now(UTC) - MULTIPART_GRACE
        strip = len(self.prefix) + 1 if self.prefix else 0
        aborted: list[str] = []
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for upload in page.get("Uploads", []):
                    initiated = upload.get("Initiated")
                    if initiated is None or initiated >= cutoff:
                        continue
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted.append(upload["Key"][strip:])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("abort old uploads under", prefix or "/", exc) from None
        return sorted(aborted)

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as body:
            return body.read()

    def open_reader(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(f"{self.uri}: {key} not found") from None
            raise self._fail("read", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from None
        return response["Body"]  # type: ignore[no-any-return]

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(f"{self.uri}: {key} not found") from None
            raise self._fail("stat", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("stat", key, exc) from None
        return ObjectInfo(key, int(head["ContentLength"]), head.get("LastModified"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]), item.get("LastModified"))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list", prefix or "/", exc) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from None

    def open_multipart_uploads(self, prefix: str = "") -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted (for tests and cleanup)."""
        try:
            response = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.full_key(prefix))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list uploads under", prefix or "/", exc) from None
        return [upload["Key"] for upload in response.get("Uploads", [])]


def s3_credentials_from_env(access_key_env: str | None, secret_key_env: str | None,
                            environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """Explicit credentials when the config names their variables, read from ``environ`` (the
    caller's secrets: Dagster's resource; the CLI passes nothing and so reads the process
    environment); else ``(None, None)`` and boto3's default chain.

    A named variable that is unset is a one-line :class:`ConfigError`, never a silent fall back to
    boto3's chain: that chain reads ``os.environ``, the channel a run given ``environ`` must not use.
    """
    environ = os.environ if environ is None else environ
    values: list[str | None] = []
    for name in (access_key_env, secret_key_env):
        value = environ.get(name) if name else None
        if name and not value:
            raise ConfigError(f"${name} is not set (a credential of an S3 store)",
                              hint=f"export {name}=... or remove it from the store's configuration")
        values.append(value)
    register(values[1])  # redacted from all output
    return values[0], values[1]
