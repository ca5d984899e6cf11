"""The backup store's layout and the manifest that makes a backup a backup.

Layout (documented for humans in ``docs/store-format.md``)::

    <database>/<backup-id>/dump.zst.age          pg_dump -Fc -Z0 | zstd | age
    <database>/<backup-id>/manifest.json         written last: its presence makes the backup exist
    <database>/<backup-id>/checks/<when>-<rung>-<ok|failed>.json   one object per verification

A ``backup-id`` is ``YYYYMMDDTHHMMSSZ-xxxxxx`` (UTC start time, random suffix), so ids sort by
time. Verification results are written as their own small objects, named so that a listing of
keys alone tells each backup's state (no GET per backup), and are also appended to the
manifest's ``verifications`` list for whoever reads the manifest by hand.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dbprotect.core.errors import IntegrityError

FORMAT_VERSION = 1
DUMP_OBJECT = "dump.zst.age"
MANIFEST_OBJECT = "manifest.json"
CHECKS_FOLDER = "checks"

Rung = Literal["stored", "readable", "restored", "drilled"]
RUNGS: tuple[str, ...] = ("stored", "readable", "restored", "drilled")

BACKUP_ID_PATTERN = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{6})$")
_CHECK_KEY = re.compile(r"^(\d{8}T\d{6}(?:\d{6})?Z)-(stored|readable|restored|drilled)-(ok|failed)\.json$")


def new_backup_id(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-ffffrr``: ``ffff`` orders backups started within the same second
    (microseconds // 16, in hex), ``rr`` is random so two writers never collide."""
    at = now.astimezone(UTC)
    return f"{at:%Y%m%dT%H%M%SZ}-{at.microsecond // 16:04x}{secrets.token_hex(1)}"


def backup_time(backup_id: str) -> datetime:
    if not BACKUP_ID_PATTERN.match(backup_id):
        raise ValueError(f"{backup_id!r} is not a backup id")
    return _parse_stamp(backup_id[:16])


def _parse_stamp(stamp: str) -> datetime:
    """``YYYYMMDDTHHMMSS[ffffff]Z`` by slicing: listings parse one per object, strptime is 10x slower."""
    micro = int(stamp[15:21]) if len(stamp) > 16 else 0
    return datetime(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                    int(stamp[13:15]), micro, tzinfo=UTC)


def dump_key(database: str, backup_id: str) -> str:
    return f"{database}/{backup_id}/{DUMP_OBJECT}"


def manifest_key(database: str, backup_id: str) -> str:
    return f"{database}/{backup_id}/{MANIFEST_OBJECT}"


def check_key(database: str, backup_id: str, at: datetime, rung: str, ok: bool) -> str:
    stamp = f"{at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"
    return f"{database}/{backup_id}/{CHECKS_FOLDER}/{stamp}-{rung}-{'ok' if ok else 'failed'}.json"


def parse_check_key(name: str) -> tuple[datetime, str, bool] | None:
    """``(when, rung, ok)`` from a check object's file name, or None if it is not one."""
    match = _CHECK_KEY.match(name)
    if not match:
        return None
    return _parse_stamp(match.group(1)), match.group(2), match.group(3) == "ok"


class TableRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    rows: int
    checksum: str
    columns: str | None = None


class Verification(BaseModel):
    model_config = ConfigDict(extra="allow")
    rung: str
    ok: bool
    at: datetime
    detail: str = ""
    by: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)


class Manifest(BaseModel):
    """Everything needed to trust, find and restore one backup. Readers refuse unknown versions."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    tool: str = "dbprotect"
    tool_version: str
    database: str
    backup_id: str
    environment: str = "production"
    source: dict[str, Any]
    pg_dump: dict[str, Any]
    started_at: datetime
    snapshot_at: datetime
    finished_at: datetime
    duration_seconds: float
    bytes: dict[str, int]
    object: dict[str, Any]
    compression: dict[str, Any]
    encryption: dict[str, Any]
    checksum: dict[str, Any]
    tables: dict[str, TableRecord]
    sequences: dict[str, dict[str, Any]] = Field(default_factory=dict)
    large_objects: dict[str, int] = Field(default_factory=dict)
    verifications: list[Verification] = Field(default_factory=list)

    @property
    def sha256(self) -> str:
        return str(self.object["sha256"])

    @property
    def stored_bytes(self) -> int:
        return int(self.object["size"])

    @property
    def total_rows(self) -> int:
        return sum(table.rows for table in self.tables.values())

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> Manifest:
        try:
            raw = json.loads(data)
        except ValueError:
            raise IntegrityError(f"{where}: manifest is not valid JSON") from None
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if version != FORMAT_VERSION:
            raise IntegrityError(
                f"{where}: manifest format_version {version!r} is not supported (this dbprotect reads "
                f"{FORMAT_VERSION})",
                hint="upgrade dbprotect",
            )
        try:
            return cls.model_validate(raw)
        except Exception as exc:
            raise IntegrityError(f"{where}: manifest is malformed: {str(exc).splitlines()[0]}") from None
