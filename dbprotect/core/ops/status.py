"""What a database's stores hold: RPO from the primary store, and every target's holdings and next cleanup.

Reads listings only (one LIST per 1,000 keys on S3 per target), never a manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dbprotect.core.config.model import Config
from dbprotect.core.errors import (
    DbprotectError,
)
from dbprotect.core.ops.context import (
    primary_store,
    retention_timezone,
    target_store,
)
from dbprotect.core.ops.continuous import ProtectionKind, protection_kind
from dbprotect.core.retention.plan import RetentionPlan, plan_retention
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import BackupEntry, list_backups
from dbprotect.core.verify.rpo import RpoStatus, evaluate_rpo


@dataclass(frozen=True)
class DatabaseStatus:
    database: str
    storage_uri: str
    newest: BackupEntry | None
    backups: int
    rpo: RpoStatus
    #: Per storage target, primary first: what it holds and what its next cleanup would delete.
    targets: tuple[TargetStatus, ...] = ()
    #: Folders of the primary store that are not backups dbprotect can read (an impossible date).
    skipped: tuple[str, ...] = ()
    #: Backups of the primary store dated in the future beyond the tolerance (``clock-skew``).
    clock_skew: tuple[str, ...] = ()
    #: Logical only, or logical + continuous with its newest base, stored LSN and measured RPO (``protection``).
    protection: ProtectionKind | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.database, "storage": self.storage_uri, "backups": self.backups,
            "newest_backup": self.newest.to_dict() if self.newest else None, "rpo": self.rpo.to_dict(),
            "targets": [target.to_dict() for target in self.targets],
            "skipped_folders": list(self.skipped), "clock_skew": list(self.clock_skew),
            **({"protection": self.protection.to_dict()} if self.protection else {}),
        }


def database_status(config: Config, database: str, now: datetime | None = None, *,
                    targets: bool = True, environ: Mapping[str, str] | None = None,
                    protection: bool = False) -> DatabaseStatus:
    """RPO from the primary store, and (``targets``) every target's holdings and next cleanup.

    Reads listings only (one LIST per 1,000 keys on S3 per target), never a manifest: counts,
    bytes, ages and the retention plan all come from object keys and sizes. ``protection`` adds the
    kind of protection; for a continuous database that reads WAL records and asks the server (the
    measured RPO), so the hourly ``rpo_met`` check leaves it off.
    """
    now = now or datetime.now(UTC)
    spec = config.database(database)
    names = config.storage_names(database)
    storage = primary_store(config, database, environ)
    skipped: list[str] = []
    listed = list_backups(storage, database, include_incomplete=True, now=now,
                          tolerance=config.clock_skew_tolerance, skipped=skipped)
    entries = [entry for entry in listed if entry.has_manifest]
    rpo = evaluate_rpo(database, entries, timedelta(hours=spec.rpo_hours), now, tolerance=config.clock_skew_tolerance)
    found: list[TargetStatus] = []
    if targets:
        found.append(target_status(config, database, names[0], now, storage=storage, listed=listed))
        found += [target_status(config, database, name, now, environ=environ) for name in names[1:]]
    trusted = [entry for entry in entries if not entry.clock_skew]
    return DatabaseStatus(database, storage.uri, trusted[0] if trusted else None, len(entries), rpo, tuple(found),
                          skipped=tuple(skipped), clock_skew=tuple(e.backup_id for e in entries if e.clock_skew),
                          protection=protection_kind(config, database) if protection else None)


@dataclass(frozen=True)
class TargetStatus:
    """What one storage target holds of a database, and what its next cleanup would delete."""

    database: str
    target: str
    uri: str
    primary: bool
    backups: int = 0
    verified: int = 0
    total_bytes: int = 0
    oldest: BackupEntry | None = None
    newest: BackupEntry | None = None
    plan: RetentionPlan | None = None
    error: DbprotectError | None = None

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "target": self.target, "uri": self.uri, "primary": self.primary, "backups": self.backups,
            "verified": self.verified, "total_bytes": self.total_bytes,
            "oldest_backup": self.oldest.backup_id if self.oldest else None,
            "oldest_started_at": self.oldest.started_at.isoformat() if self.oldest else None,
            "newest_backup": self.newest.backup_id if self.newest else None,
            "newest_started_at": self.newest.started_at.isoformat() if self.newest else None,
        }
        if self.plan is not None:
            doc["next_cleanup"] = {
                "policy": str(self.plan.policy), "refused": self.plan.refusal,
                "deletes": [d.backup_id for d in self.plan.deletions],
                "incomplete_uploads": [d.backup_id for d in self.plan.garbage],
            }
        if self.error is not None:
            doc["error"] = {"code": self.error.code, "message": self.error.one_line()}
        return doc


def target_status(config: Config, database: str, target: str, now: datetime, *, storage: Storage | None = None,
                  listed: list[BackupEntry] | None = None, environ: Mapping[str, str] | None = None) -> TargetStatus:
    """A target's count, bytes, oldest and newest backup and next cleanup; a failing store is reported, not raised."""
    primary = target == config.primary_storage(database)
    try:
        storage = storage or target_store(config, database, target, environ)
        if listed is None:
            listed = list_backups(storage, database, include_incomplete=True, now=now,
                                  tolerance=config.clock_skew_tolerance)
    except DbprotectError as exc:
        return TargetStatus(database, target, config.storage[target].type, primary, error=exc)
    complete = [entry for entry in listed if entry.has_manifest]
    trusted = [entry for entry in complete if not entry.clock_skew]
    plan = plan_retention(listed, config.database(database).policy_for(target), now, database=database,
                          tz=retention_timezone(config), tolerance=config.clock_skew_tolerance)
    return TargetStatus(
        database, target, storage.uri, primary, backups=len(complete),
        verified=sum(1 for entry in trusted if entry.integrity_ok),
        total_bytes=sum(entry.dump_bytes or 0 for entry in complete),
        oldest=trusted[-1] if trusted else None, newest=trusted[0] if trusted else None, plan=plan)


