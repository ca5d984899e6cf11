"""The catalog: which backups a store holds, and in what state, from the store alone.

Nothing here reads Dagster's database: the store is the source of truth, so an on-call engineer
can list and check backups with Dagster down. Listing reads object keys and sizes only (one
LIST request per 1,000 keys on S3), never one GET per backup; manifests are read on demand.

A backup without ``manifest.json`` is an incomplete upload: it is never listed as a backup and
never counted for RPO (``include_incomplete=True`` shows them, for cleanup and diagnosis).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from dbprotect.core.errors import NotFoundError
from dbprotect.core.store import Storage
from dbprotect.core.store.manifest import (
    BACKUP_ID_PATTERN,
    CHECKS_FOLDER,
    DUMP_OBJECT,
    MANIFEST_OBJECT,
    RUNGS,
    Manifest,
    Verification,
    backup_time,
    check_key,
    manifest_key,
    parse_check_key,
)


@dataclass(frozen=True, slots=True)
class CheckRecord:
    at: datetime
    rung: str
    ok: bool


@dataclass(slots=True)
class BackupEntry:
    """One backup as seen in a listing (no manifest read)."""

    database: str
    backup_id: str
    started_at: datetime
    has_manifest: bool = False
    dump_bytes: int | None = None
    checks: list[CheckRecord] = field(default_factory=list)
    #: (number of checks it was computed from, latest check per rung): listings ask thousands of times
    _latest: tuple[int, dict[str, CheckRecord], list[str]] | None = field(default=None, repr=False,
                                                                          compare=False)

    @property
    def complete(self) -> bool:
        return self.has_manifest and self.dump_bytes is not None

    def add_check(self, check: CheckRecord) -> None:
        self.checks.append(check)
        self._latest = None

    def _summary(self) -> tuple[int, dict[str, CheckRecord], list[str]]:
        if self._latest is None or self._latest[0] != len(self.checks):
            latest: dict[str, CheckRecord] = {}
            for check in self.checks:
                current = latest.get(check.rung)
                if current is None or check.at >= current.at:
                    latest[check.rung] = check
            failed = [rung for rung in RUNGS if rung in latest and not latest[rung].ok]
            self._latest = (len(self.checks), latest, failed)
        return self._latest

    def latest(self, rung: str) -> CheckRecord | None:
        return self._summary()[1].get(rung)

    @property
    def failed_rungs(self) -> list[str]:
        return list(self._summary()[2])

    def passed(self, rung: str) -> bool:
        """The latest result of ``rung`` is a pass and no rung's latest result is a failure."""
        latest = self.latest(rung)
        return latest is not None and latest.ok and not self.failed_rungs

    @property
    def integrity_ok(self) -> bool:
        """Rungs 1 and 2 of the verification ladder: stored (SHA-256) and readable (decrypts, parses)."""
        return self.complete and self.passed("stored") and self.passed("readable")

    @property
    def status(self) -> str:
        if not self.has_manifest:
            return "incomplete"
        if self.dump_bytes is None:
            return "missing-object"
        if self.failed_rungs:
            return "failed:" + ",".join(self.failed_rungs)
        passed = [rung for rung in RUNGS if self.passed(rung)]
        return f"verified:{passed[-1]}" if passed else "unverified"

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.database,
            "backup_id": self.backup_id,
            "started_at": self.started_at.isoformat(),
            "status": self.status,
            "dump_bytes": self.dump_bytes,
            "integrity_ok": self.integrity_ok,
            "checks": [{"at": c.at.isoformat(), "rung": c.rung, "ok": c.ok}
                       for c in sorted(self.checks, key=lambda c: c.at)],
        }


def list_backups(storage: Storage, database: str, *, include_incomplete: bool = False) -> list[BackupEntry]:
    """The backups of ``database`` in ``storage``, newest first."""
    entries: dict[str, BackupEntry] = {}
    for info in storage.list(f"{database}/"):
        parts = info.key.split("/")
        if len(parts) < 3 or parts[0] != database or not BACKUP_ID_PATTERN.match(parts[1]):
            continue
        backup_id = parts[1]
        entry = entries.get(backup_id)
        if entry is None:
            entry = entries[backup_id] = BackupEntry(database, backup_id, backup_time(backup_id))
        rest = parts[2:]
        if rest == [MANIFEST_OBJECT]:
            entry.has_manifest = True
        elif rest == [DUMP_OBJECT]:
            entry.dump_bytes = info.size
        elif len(rest) == 2 and rest[0] == CHECKS_FOLDER:
            parsed = parse_check_key(rest[1])
            if parsed:
                entry.add_check(CheckRecord(*parsed))
    found = [entry for entry in entries.values() if include_incomplete or entry.has_manifest]
    return sorted(found, key=lambda entry: entry.backup_id, reverse=True)


def newest_backup(storage: Storage, database: str, *, integrity_ok: bool = False) -> BackupEntry | None:
    for entry in list_backups(storage, database):
        if not integrity_ok or entry.integrity_ok:
            return entry
    return None


def find_backup(storage: Storage, databases: list[str], backup_id: str) -> BackupEntry:
    """The backup with this id in any of ``databases``; :class:`NotFoundError` otherwise."""
    if backup_id == "latest" and len(databases) == 1:
        entry = newest_backup(storage, databases[0])
        if entry:
            return entry
    for database in databases:
        for entry in list_backups(storage, database):
            if entry.backup_id == backup_id:
                return entry
    raise NotFoundError(
        f"no backup {backup_id!r} in {storage.uri} (databases: {', '.join(databases)})",
        hint="'dbprotect list DATABASE' shows the backups that exist",
    )


def load_manifest(storage: Storage, database: str, backup_id: str) -> Manifest:
    key = manifest_key(database, backup_id)
    return Manifest.from_json(storage.get_bytes(key), where=storage.object_uri(key))


def record_verification(storage: Storage, manifest: Manifest, verification: Verification) -> None:
    """Store a verification result: its own key (for listings) and appended to the manifest."""
    key = check_key(manifest.database, manifest.backup_id, verification.at, verification.rung, verification.ok)
    storage.put_bytes(key, verification.model_dump_json(indent=2).encode() + b"\n")
    manifest.verifications.append(verification)
    storage.put_bytes(manifest_key(manifest.database, manifest.backup_id), manifest.to_json())


def databases_in_store(storage: Storage) -> list[str]:
    """Top-level database folders present in a store (a store can outlive its configuration)."""
    names: dict[str, int] = defaultdict(int)
    for info in storage.list(""):
        head, _, rest = info.key.partition("/")
        if rest.endswith("/" + MANIFEST_OBJECT):
            names[head] += 1
    return sorted(names)


def newest_verified_backup(storage: Storage, database: str) -> str:
    """The default backup to restore: the newest one whose every recorded rung passed (at least 1-2).

    A backup that failed any rung (integrity, restore verification, a drill) is skipped, and so
    is one never verified: an on-call restore should not be the first test of a backup.
    """
    entry = newest_backup(storage, database, integrity_ok=True)
    if entry is None:
        raise NotFoundError(f"database {database!r} has no backup that passed verification in {storage.uri}",
                            hint=f"verify one ('dbprotect verify latest -d {database}') or name a BACKUP_ID")
    return entry.backup_id
