"""Recovery point objective: how old is the newest backup we know we can read?

Only a backup that passed integrity (rungs *stored* and *readable*) counts: an unverified or
failed backup is no recovery point. A database with no such backup at all violates its RPO,
which is how a backup that never happened gets noticed. The clock is passed in, never read here.

A backup dated more than the clock-skew tolerance after ``now`` was named by a wrong clock: it
does not count (a backup "a year ahead" would otherwise keep RPO green for a year). And an age
below zero is never a pass: the clocks disagree, so the age means nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dbprotect.core.store.catalog import CLOCK_SKEW_TOLERANCE, BackupEntry, is_clock_skewed


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


def evaluate_rpo(database: str, entries: list[BackupEntry], rpo: timedelta, now: datetime, *,
                 tolerance: timedelta = CLOCK_SKEW_TOLERANCE) -> RpoStatus:
    """Whether the newest integrity-checked backup of ``database`` is younger than ``rpo``.

    Backups dated more than ``tolerance`` after ``now`` are left out (``clock-skew``); a negative
    age of the newest one left fails.
    """
    skewed = [entry for entry in entries
              if entry.complete and (entry.clock_skew or is_clock_skewed(entry.started_at, now, tolerance))]
    skewed_ids = {entry.backup_id for entry in skewed}
    note = (f"; {len(skewed)} backup(s) dated in the future ignored (clock-skew, newest {skewed[0].backup_id})"
            if skewed else "")
    verified = [entry for entry in entries if entry.integrity_ok and entry.backup_id not in skewed_ids]
    if not verified:
        unverified = sum(1 for entry in entries if entry.complete and entry.backup_id not in skewed_ids)
        reason = "no backup has passed integrity yet"
        if unverified:
            reason += f" ({unverified} backup(s) not verified or failed)"
        return RpoStatus(database, rpo, None, None, False, reason + note)
    newest = max(verified, key=lambda entry: entry.started_at)
    age = now - newest.started_at
    hours = age.total_seconds() / 3600
    limit = rpo.total_seconds() / 3600
    if age < timedelta(0):
        return RpoStatus(database, rpo, newest.backup_id, age, False,
                         f"newest verified backup {newest.backup_id} is dated {-hours * 60:.1f} min in the future: "
                         f"the clocks disagree, so its age proves nothing{note}")
    if age <= rpo:
        return RpoStatus(database, rpo, newest.backup_id, age, True,
                         f"newest verified backup {newest.backup_id} is {hours:.1f} h old (RPO {limit:g} h){note}")
    return RpoStatus(database, rpo, newest.backup_id, age, False,
                     f"newest verified backup {newest.backup_id} is {hours:.1f} h old, over the RPO of "
                     f"{limit:g} h{note}")
