"""``dbprotect guard -- COMMAND``: a verified backup first, then the destructive command, audited.

Seed 004 wants "automatic backups before destructive ops" (an ``alembic downgrade``, a
``psql -f drop.sql``). The order is the guarantee: marker check, typed confirmation (production),
backup, integrity check of that backup, and only then the command. If anything before the
command fails, the command is never started. The command gets the backup's id in
``$DBPROTECT_GUARD_BACKUP_ID`` (to print or log it); its exit status is returned and recorded.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.schema.protect import ProtectingBackup

BACKUP_ID_ENV = "DBPROTECT_GUARD_BACKUP_ID"


def mask_arguments(command: Sequence[str]) -> str:
    """The command as one line for the audit log, any DSN in it masked."""
    return shlex.join(mask_dsn(arg) if "://" in arg or "password" in arg.lower() else arg for arg in command)


@dataclass(frozen=True)
class GuardResult:
    command: str
    returncode: int
    backup: ProtectingBackup

    def to_dict(self) -> dict[str, object]:
        return {"command": self.command, "returncode": self.returncode, "backup_id": self.backup.backup_id,
                "backup": self.backup.describe()}


