"""Backup stores: one small protocol, filesystem and S3 implementations, and a factory."""

from __future__ import annotations

from pathlib import Path

from dbprotect.core.config.model import Config, FilesystemStorageSpec, S3StorageSpec
from dbprotect.core.errors import NotFoundError
from dbprotect.core.store.base import ObjectInfo, ObjectNotFound, ObjectWriter, Storage, WriterContext
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect.core.store.s3 import S3Storage, s3_credentials_from_env


def open_storage(config: Config, name: str) -> Storage:
    """The store a configuration names; relative filesystem paths resolve against the config file."""
    try:
        spec = config.storage[name]
    except KeyError:
        raise NotFoundError(f"no storage target {name!r} in {config.source}") from None
    if isinstance(spec, FilesystemStorageSpec):
        path = Path(spec.path).expanduser()
        if not path.is_absolute():
            path = config.base_dir() / path
        return FilesystemStorage(path)
    assert isinstance(spec, S3StorageSpec)
    access, secret = s3_credentials_from_env(spec.access_key_env, spec.secret_key_env)
    return S3Storage(spec.bucket, spec.prefix, region=spec.region, endpoint_url=spec.endpoint_url,
                     access_key=access, secret_key=secret)


__all__ = [
    "FilesystemStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectWriter",
    "S3Storage",
    "Storage",
    "WriterContext",
    "open_storage",
]
