"""Backup stores: one small protocol, filesystem and S3 implementations (opened from configuration by
:func:`dbprotect.core.ops.context.open_storage`), the store layout, manifests and the catalog."""

from __future__ import annotations

from dbprotect.core.store.base import ObjectInfo, ObjectNotFound, ObjectWriter, Storage, WriterContext
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect.core.store.s3 import S3Storage

__all__ = [
    "FilesystemStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectWriter",
    "S3Storage",
    "Storage",
    "WriterContext",
]
