"""``dbprotect guard -- COMMAND``: a verified backup first, then the destructive command, audited.

Seed 004 wants "automatic backups before destructive ops" (an ``alembic downgrade``, a
``psql -f drop.sql``). The order is the guarantee: marker check, typed confirmation (production),
backup, integrity check of that backup, and only then the command. If anything before the
command fails, the command is never started. The command gets the backup's id in
``$DBPROTECT_GUARD_BACKUP_ID`` (to print or log it); its exit status is returned and recorded.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.model import Config, resolve_dsn
from dbprotect.core.errors import DbprotectError, RefusedError, ToolError
from dbprotect.core.ops.operations import primary_store
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.restore.guards import check_confirmation
from dbprotect.core.schema.protect import ProtectingBackup, take_verified_backup
from dbprotect.core.schema.targets import check_target

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


def guard_command(config: Config, database: str, environment: str, command: Sequence[str], *,
                  confirmation: str | None = None, actor: str = "dbprotect",
                  environ: Mapping[str, str] | None = None) -> GuardResult:
    """Back up (and verify) ``database``'s ``environment``, then run ``command``; see the module docstring."""
    if not command:
        raise RefusedError("no command to guard", hint="dbprotect guard -d DB -e ENV -- COMMAND ARGS...")
    shown = mask_arguments(command)
    audit = AuditLog(primary_store(config, database), actor=actor)
    try:
        check_target(resolve_dsn(config, database, environment, environ), environment)
        if environment == "production":
            check_confirmation(database, confirmation)
        backup = take_verified_backup(config, database, environment, why=f"'{shown}'", actor=actor,
                                      environ=environ)
    except DbprotectError as exc:
        audit.record("guard", database=database, outcome="refused", detail=f"{shown}: not run: {exc.one_line()}",
                     data={"error": exc.code, "environment": environment})
        raise
    env = {**(os.environ if environ is None else environ), BACKUP_ID_ENV: backup.backup_id}
    try:
        done = subprocess.run(list(command), env=dict(env), check=False)
    except OSError as exc:
        audit.record("guard", database=database, outcome="failed", target=backup.backup_id,
                     detail=f"{shown}: could not start: {exc.strerror}", data={"environment": environment})
        raise ToolError(f"the guarded command could not start: {exc.strerror}",
                        hint=f"the backup {backup.backup_id} was taken; check the command") from None
    audit.record("guard", database=database, outcome="ok" if done.returncode == 0 else "failed",
                 target=backup.backup_id, detail=f"{shown}: exit {done.returncode}",
                 data={"environment": environment, "returncode": done.returncode})
    return GuardResult(shown, done.returncode, backup)
