"""What the last verification of a base backup found, kept beside it so retention can tell verified bases.

``<database>/continuous/base/<base_id>/verified.json`` is written after each ``pg_verifybackup`` run
(overwritten: the newest verdict counts). Retention only lets a *verified* base anchor the
point-in-time window (:mod:`dbprotect.core.retention.chains`), so the verdict names the SHA-256 of
both stored objects: a verdict that does not match the base's own record (a replaced object, a
forged or copied verdict) makes the base *unverified*, never verified. Everything read is untrusted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from dbprotect.core.continuous.base import BaseBackupRecord, BaseVerification
from dbprotect.core.continuous.objects import base_folder, read_json_record
from dbprotect.core.errors import IntegrityError
from dbprotect.core.store import Storage
from dbprotect.core.store.base import ObjectNotFound

VERDICT_OBJECT = "verified.json"
#: The same values as :data:`dbprotect.core.retention.chains.BaseState` (retention sits above this package).
BaseState = Literal["verified", "unverified", "failed"]


def verdict_key(record: BaseBackupRecord) -> str:
    return f"{base_folder(record.database, record.base_id)}/{VERDICT_OBJECT}"


def record_base_verdict(storage: Storage, record: BaseBackupRecord, verification: BaseVerification,
                        now: datetime | None = None) -> None:
    """Store what ``pg_verifybackup`` found for ``record`` (bound to its objects' SHA-256)."""
    verdict = {"base_id": record.base_id, "ok": verification.ok, "detail": verification.detail,
               "verified_at": (now or datetime.now(UTC)).isoformat(), "base_sha256": record.base["sha256"],
               "backup_manifest_sha256": record.backup_manifest["sha256"]}
    storage.put_bytes(verdict_key(record), json.dumps(verdict, indent=2, sort_keys=True).encode())


def base_state(storage: Storage, record: BaseBackupRecord) -> BaseState:
    """``verified`` only for a passing verdict about exactly these objects; ``failed`` for a failing one."""
    try:
        verdict = read_json_record(storage, verdict_key(record))
    except (ObjectNotFound, IntegrityError):
        return "unverified"
    if (verdict.get("base_id") != record.base_id or verdict.get("base_sha256") != record.base["sha256"]
            or verdict.get("backup_manifest_sha256") != record.backup_manifest["sha256"]):
        return "unverified"
    if verdict.get("ok") is True:
        return "verified"
    return "failed" if verdict.get("ok") is False else "unverified"


__all__ = ["VERDICT_OBJECT", "base_state", "record_base_verdict", "verdict_key"]
