"""Recovery point objective: how old is the newest backup we know we can read?

Only a backup that passed integrity (rungs *stored* and *readable*) counts: an unverified or
failed backup is no recovery point. A database with no such backup at all violates its RPO,
which is how a backup that never happened gets noticed. The clock is passed in, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dbprotect.core.store.catalog import BackupEntry


@dataclass(frozen=True)
class RpoStatus:
    database: str
    rpo: timedelta
    newest_backup_id: str | None
    age: timedelta | None
    ok: bool
    reason: str

    @property
    def age_hours(self) -> float | None:
        return None if self.age is None else round(self.age.total_seconds() / 3600, 3)

    def to_dict(self) -> dict[str, object]:
        return {
            "database": self.database, "ok": self.ok, "rpo_hours": self.rpo.total_seconds() / 3600,
            "newest_verified_backup": self.newest_backup_id, "age_hours": self.age_hours, "reason": self.reason,
        }


def evaluate_rpo(database: str, entries: list[BackupEntry], rpo: timedelta, now: datetime) -> RpoStatus:
    """Whether the newest integrity-checked backup of ``database`` is younger than ``rpo``."""
    verified = [entry for entry in entries if entry.integrity_ok]
    if not verified:
        unverified = sum(1 for entry in entries if entry.complete)
        reason = "no backup has passed integrity yet"
        if unverified:
            reason += f" ({unverified} backup(s) not verified or failed)"
        return RpoStatus(database, rpo, None, None, False, reason)
    newest = max(verified, key=lambda entry: entry.started_at)
    age = now - newest.started_at
    hours = age.total_seconds() / 3600
    limit = rpo.total_seconds() / 3600
    if age <= rpo:
        return RpoStatus(database, rpo, newest.backup_id, age, True,
                         f"newest verified backup {newest.backup_id} is {hours:.1f} h old (RPO {limit:g} h)")
    return RpoStatus(database, rpo, newest.backup_id, age, False,
                     f"newest verified backup {newest.backup_id} is {hours:.1f} h old, over the RPO of {limit:g} h")
