"""A fresh, verified backup before a destructive change: shared by schema push and ``dbprotect guard``.

Seed 004 asks for "a backup before every downgrade, DROP, TRUNCATE or bulk DELETE"; the design asks
that it has *passed integrity* before the change runs, because an unreadable backup protects
nothing. Production backups go to the database's usual place in its primary store (they are real
recovery points); a development database's pre-change backups go under ``<database>.development``
(a name no configured database can have, since names allow no dot), so they never count for the
production RPO and are never the default backup of a production restore.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

#: How fresh a production backup must be for a schema push (the issue: "taken in the last hour").
FRESH_BACKUP = timedelta(hours=1)


@dataclass(frozen=True)
class ProtectingBackup:
    """The verified backup a destructive change stands on: where it is and whether it was taken now."""

    database: str
    store_name: str
    backup_id: str
    started_at: datetime
    taken_now: bool

    def describe(self) -> str:
        how = "taken now" if self.taken_now else "existing"
        return f"{how} backup {self.backup_id} of {self.store_name}, integrity verified"


def store_name(database: str, environment: str) -> str:
    """The folder of the store a database environment's backups go to (see module docstring)."""
    return database if environment == "production" else f"{database}.{environment}"


