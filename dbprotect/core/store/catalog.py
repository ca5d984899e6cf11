"""The catalog: which backups a store holds, and in what state, from the store alone.

Nothing here reads Dagster's database: the store is the source of truth, so an on-call engineer
can list and check backups with Dagster down. Listing reads object keys and sizes only (one
LIST request per 1,000 keys on S3), never one GET per backup; manifests are read on demand.

A backup without ``manifest.json`` is an incomplete upload: it is never listed as a backup and
never counted for RPO (``include_incomplete=True`` shows them, for cleanup and diagnosis).

The store is untrusted input, and so are the clocks that named its objects:

* a folder whose name is not a backup id that parses (``20251399T...``, an impossible date) is
  reported in ``skipped`` and left out, never a crash of every listing;
* a backup dated more than :data:`CLOCK_SKEW_TOLERANCE` after ``now`` is flagged ``clock_skew``
  (status ``clock-skew``): it is never ``latest``, never counts for RPO and retention never
  counts or deletes it (:mod:`dbprotect.core.retention.plan`);
* the order of a backup's checks is their sequence number, not their timestamps: a check
  recorded by a clock 30 days ahead is not "newest" once a later check exists.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dbprotect.core.errors import NotFoundError
from dbprotect.core.store import ObjectNotFound, Storage
from dbprotect.core.store.lock import database_lock, ensure_lock_held
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
    check_manifest_location,
    manifest_key,
    parse_check_key,
)

#: How far in the future a backup may be dated before it is flagged ``clock-skew`` (hosts' clocks
#: differ by seconds; a backup an hour or a year ahead was taken by a wrong clock).
#: Configurable as ``clock_skew_tolerance_minutes`` in dbprotect.yaml.
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)


def is_clock_skewed(started_at: datetime, now: datetime, tolerance: timedelta = CLOCK_SKEW_TOLERANCE) -> bool:
    """Dated further in the future than ``tolerance``: a wrong clock named it; its age means nothing."""
    return started_at - now > tolerance


#: How long a verification waits to record its result while another writer (a backup, a cleanup)
#: holds the database's lock: longer than a command's wait, since the work is already done.
RECORD_WAIT_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class CheckRecord:
    at: datetime
    rung: str
    ok: bool
    #: Place in the backup's order of checks (0: written before sequences existed).
    seq: int = 0

    @property
    def order(self) -> tuple[int, datetime]:
        """How checks are ordered: by sequence, and only among unsequenced ones by time."""
        return self.seq, self.at


@dataclass(slots=True)
class BackupEntry:
    """One backup as seen in a listing (no manifest read)."""

    database: str
    backup_id: str
    started_at: datetime
    has_manifest: bool = False
    dump_bytes: int | None = None
    checks: list[CheckRecord] = field(default_factory=list)
    #: Dated further in the future than the listing's tolerance (see :func:`is_clock_skewed`).
    clock_skew: bool = False
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
                if current is None or check.order >= current.order:
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
        if self.clock_skew:
            return "clock-skew"
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
            "clock_skew": self.clock_skew,
            "checks": [{"at": c.at.isoformat(), "rung": c.rung, "ok": c.ok, "seq": c.seq}
                       for c in sorted(self.checks, key=lambda c: c.order)],
        }


def list_backups(storage: Storage, database: str, *, include_incomplete: bool = False,
                 now: datetime | None = None, tolerance: timedelta = CLOCK_SKEW_TOLERANCE,
                 skipped: list[str] | None = None) -> list[BackupEntry]:
    """The backups of ``database`` in ``storage``, newest first.

    Entries dated more than ``tolerance`` after ``now`` (default: this host's clock) are flagged
    ``clock_skew``. A folder whose name does not parse as a backup id is left out and, when
    ``skipped`` is given, named there with the reason (once per folder).
    """
    now = now or datetime.now(UTC)
    entries: dict[str, BackupEntry] = {}
    bad: dict[str, str] = {}
    for info in storage.list(f"{database}/"):
        parts = info.key.split("/")
        if len(parts) < 3 or parts[0] != database:
            continue
        backup_id = parts[1]
        entry = entries.get(backup_id)
        if entry is None:
            if backup_id in bad:
                continue
            try:
                started_at = backup_time(backup_id)
            except ValueError:
                if parts[2:] == [MANIFEST_OBJECT] or BACKUP_ID_PATTERN.match(backup_id):
                    bad[backup_id] = f"{database}/{backup_id}/: folder name is not a backup id with a real date"
                else:
                    bad[backup_id] = ""  # not a backup folder at all: ignored as before, unreported
                continue
            entry = entries[backup_id] = BackupEntry(database, backup_id, started_at,
                                                     clock_skew=is_clock_skewed(started_at, now, tolerance))
        rest = parts[2:]
        if rest == [MANIFEST_OBJECT]:
            entry.has_manifest = True
        elif rest == [DUMP_OBJECT]:
            entry.dump_bytes = info.size
        elif len(rest) == 2 and rest[0] == CHECKS_FOLDER:
            parsed = parse_check_key(rest[1])
            if parsed:
                entry.add_check(CheckRecord(*parsed))
    if skipped is not None:
        skipped.extend(reason for reason in bad.values() if reason)
    found = [entry for entry in entries.values() if include_incomplete or entry.has_manifest]
    return sorted(found, key=lambda entry: entry.backup_id, reverse=True)


def newest_backup(storage: Storage, database: str, *, integrity_ok: bool = False,
                  now: datetime | None = None) -> BackupEntry | None:
    """The newest backup (that passed integrity, with ``integrity_ok``); never one dated in the future."""
    for entry in list_backups(storage, database, now=now):
        if not entry.clock_skew and (not integrity_ok or entry.integrity_ok):
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
    """The manifest of ``<database>/<backup_id>/``, validated, and refused if it names another folder."""
    key = manifest_key(database, backup_id)
    where = storage.object_uri(key)
    return check_manifest_location(Manifest.from_json(storage.get_bytes(key), where=where), database, backup_id,
                                   where=where)


def next_check_sequence(storage: Storage, database: str, backup_id: str) -> int:
    """The sequence number the next check object of a backup gets: one more than the highest listed.

    Checks are ordered by this number when read back (never by their timestamps, which come from
    whatever clock the recording host had). Writers serialise on the database's lock.
    """
    highest = 0
    for info in storage.list(f"{database}/{backup_id}/{CHECKS_FOLDER}/"):
        parsed = parse_check_key(info.key.rsplit("/", 1)[-1])
        if parsed:
            highest = max(highest, parsed[3])
    return highest + 1


def write_check(storage: Storage, database: str, backup_id: str, verification: Verification) -> str:
    """Store one verification result as a new write-once object with the next sequence number.

    The caller holds the database's lock (so the sequence cannot be taken twice); ``put_if_absent``
    makes sure of it anyway and never replaces an earlier result. Returns the key written.
    """
    seq = next_check_sequence(storage, database, backup_id)
    body = verification.model_dump_json(indent=2).encode() + b"\n"
    ensure_lock_held(storage, database, f"the {verification.rung} result of backup {backup_id} of {database}")
    while True:
        key = check_key(database, backup_id, verification.at, verification.rung, verification.ok, seq)
        if storage.put_if_absent(key, body):
            return key
        seq += 1


def record_verification(storage: Storage, manifest: Manifest, verification: Verification) -> None:
    """Store a verification result as its own write-once check object; the manifest is never rewritten.

    Held under the database's lock, and only while the backup's manifest exists: a verification
    that raced a cleanup never writes into a folder whose backup was deleted (it would reappear in
    listings with its object missing). Raises :class:`NotFoundError` then.
    """
    record_check(storage, manifest.database, manifest.backup_id, verification)


def record_check(storage: Storage, database: str, backup_id: str, verification: Verification) -> None:
    """:func:`record_verification` by folder: also for a backup whose manifest exists but cannot be read.

    A garbage or tampered manifest is a failure of that backup, and recording it (a failed
    ``stored`` check) is what turns the RPO red and makes the default restore pass it over.
    """
    with database_lock(storage, database, owner=verification.by or "dbprotect verify",
                       wait_seconds=RECORD_WAIT_SECONDS):
        try:
            storage.stat(manifest_key(database, backup_id))
        except ObjectNotFound:
            raise NotFoundError(
                f"backup {backup_id} of {database} was deleted from {storage.uri} while it was "
                f"being verified: its {verification.rung} result was not recorded",
                hint="retention removed it; verify a backup that exists ('dbprotect list "
                f"{database}')") from None
        write_check(storage, database, backup_id, verification)


def recorded_verifications(storage: Storage, database: str, backup_id: str) -> list[Verification]:
    """Every verification result recorded for one backup, in the order it was written.

    Format 2: the check objects, by their sequence number. A format-1 manifest also carries the
    results appended to it (its check objects duplicate them); those come first, then any check
    object written since with a sequence number. A check object whose body is unreadable is given
    from its key alone (rung, result, time), which is what listings trust anyway.
    """
    manifest = load_manifest(storage, database, backup_id)
    prefix = f"{database}/{backup_id}/{CHECKS_FOLDER}/"
    numbered: list[tuple[int, str, Verification]] = []
    for info in storage.list(prefix):
        name = info.key[len(prefix):]
        parsed = parse_check_key(name)
        if parsed is None or (manifest.verifications and parsed[3] == 0):
            continue
        seq = parsed[3]
        try:
            check = Verification.model_validate_json(storage.get_bytes(info.key))
        except (ValueError, ObjectNotFound):
            check = Verification(rung=parsed[1], ok=parsed[2], at=parsed[0], detail="(unreadable check record)")
        numbered.append((seq, name, check))
    return list(manifest.verifications) + [check for _seq, _name, check in sorted(numbered, key=lambda c: c[:2])]


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
