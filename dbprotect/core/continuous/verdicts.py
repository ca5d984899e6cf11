"""What the last verification of a base backup found, kept beside it so retention can tell verified bases.

``<database>/continuous/base/<base_id>/verified.json`` is written after each ``pg_verifybackup`` run
(overwritten: the newest verdict counts). Retention only lets a *verified* base anchor the
point-in-time window (:mod:`dbprotect.core.retention.chains`), so the verdict names the SHA-256 of
both stored objects: a verdict that does not match the base's own record (a replaced object, a
forged or copied verdict) makes the base *unverified*, never verified. Everything read is untrusted.

Crash safety: the verdict is one whole-object write made only after ``pg_verifybackup`` has returned
(:func:`verify_and_record`), so a writer killed or failed at any point leaves the previous verdict or
none: never a verdict about a check that did not finish. A torn or foreign ``verified.json`` reads as
*unverified*, and the next verification overwrites it (it never reads the old verdict to skip work).
What a verdict cannot prove is who wrote it: like every record in the store, one written with
matching SHA-256s by someone holding store write access is believed by retention until the next
verification replaces it (``dbprotect_tests/test_continuous_verdict_faults.py`` shows that it does).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Literal

import pyrage

from dbprotect.core.continuous.base import BaseBackupRecord, BaseVerification, verify_base_backup
from dbprotect.core.continuous.objects import base_folder, read_json_record
from dbprotect.core.errors import IntegrityError
from dbprotect.core.pg.tools import ToolPlace
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


def verify_and_record(storage: Storage, record: BaseBackupRecord, identity: pyrage.x25519.Identity, *,
                      pg_bin_dir: ToolPlace = None, work_dir: str | os.PathLike[str] | None = None) -> BaseVerification:
    """Run ``pg_verifybackup`` over ``record``, then store its verdict: the order is the guarantee.

    The one writer of ``verified.json`` (``dbprotect wal verify`` calls it through
    :func:`dbprotect.core.ops.continuous.verify_base_backups`): the verdict is written from the
    finished check's result only, so no fault can leave a base reported verified whose check did
    not complete.
    """
    verification = verify_base_backup(storage, record, identity, pg_bin_dir=pg_bin_dir, work_dir=work_dir)
    record_base_verdict(storage, record, verification)
    return verification


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


__all__ = ["VERDICT_OBJECT", "base_state", "record_base_verdict", "verdict_key", "verify_and_record"]
