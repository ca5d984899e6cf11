"""Schema sync between environments: the plan comes from ``results``; the rules come from here.

Directions (ARCHITECTURE.md)::

    production  -> development   allowed (the target's marker must say development)
    development -> production    only when (a) the plan passes migration lint, (b) a backup of
                                 production taken within the last hour passed integrity (taken
                                 now if there is none), and (c) the database's name is typed
                                 as confirmation
    anything else                refused

Only schema moves: the plan is DDL from ``results dbdiff`` taking the target's schema to the
source's, and there is no option that copies rows, so data never flows development ->
production. The plan is always shown before it runs (``dry_run`` returns it and changes
nothing); it runs in one transaction with lock and statement timeouts, and afterwards the two
schemas are compared again: the push reports success only when no drift remains.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dbprotect.core.errors import DatabaseError, Refusals, RefusedError
from dbprotect.core.pg.dsn import dbname_of, mask_dsn
from dbprotect.core.pg.markers import require_marker
from dbprotect.core.pg.tools import connect
from dbprotect.core.schema.drift import DriftReport
from dbprotect.core.schema.lint import DEFAULT_EXCLUDED_SQUAWK_RULES, Finding, LintResult, lint_text, run_squawk
from dbprotect.core.schema.protect import ProtectingBackup

ENVIRONMENTS = ("production", "development")
#: Put before every plan: a push waits at most this long for a lock, then fails instead of queueing traffic.
PLAN_PREAMBLE = "SET lock_timeout = '5s';\nSET statement_timeout = '15min';\n"


@dataclass(frozen=True)
class SchemaPlan:
    """The DDL that takes ``target``'s schema to ``source``'s, and its lint result when linted."""

    database: str
    source: str
    target: str
    target_dsn_masked: str
    sql: str
    lint: LintResult | None = None
    #: differences no statement of the plan covers (named, so "no changes" is never said wrongly)
    unplannable: tuple[str, ...] = ()
    #: what running the plan on a scratch copy of the target's schema showed ("" when not run)
    proof: str = ""

    @property
    def empty(self) -> bool:
        return not self.sql.strip() and not self.unplannable

    def script(self) -> str:
        """What runs (and what is linted): the timeouts, then results' DDL."""
        return PLAN_PREAMBLE + self.sql if self.sql.strip() else ""

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "source": self.source, "target": self.target,
                "target_dsn": self.target_dsn_masked, "empty": self.empty, "sql": self.script(),
                "unplannable": list(self.unplannable), "proof": self.proof or None,
                "lint": self.lint.to_dict() if self.lint else None}


@dataclass(frozen=True)
class PushResult:
    plan: SchemaPlan
    applied: bool
    backup: ProtectingBackup | None = None
    drift_after: DriftReport | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "applied": self.applied,
                "backup": self.backup.describe() if self.backup else None,
                "backup_id": self.backup.backup_id if self.backup else None,
                "drift_after": self.drift_after.to_dict() if self.drift_after else None}


def check_sync_direction(source: str, target: str) -> None:
    for name in (source, target):
        if name not in ENVIRONMENTS:
            raise RefusedError(f"unknown environment {name!r}", hint=f"name one of: {', '.join(ENVIRONMENTS)}",
                               refusal=Refusals.UNKNOWN_ENVIRONMENT)
    if source == target:
        raise RefusedError(f"refused: source and target are both {source}; nothing to sync",
                           refusal=Refusals.SYNC_SAME_ENVIRONMENT)


def lint_plan(plan_sql: str, database: str, *, pg_version: int,
              exclude: tuple[str, ...] = DEFAULT_EXCLUDED_SQUAWK_RULES) -> LintResult:
    """Lint a generated plan as a file named ``<database>-schema-plan.sql`` (squawk reads files)."""
    with tempfile.TemporaryDirectory(prefix="dbprotect-plan-") as folder:
        path = Path(folder) / f"{database}-schema-plan.sql"
        path.write_text(plan_sql, encoding="utf-8")
        squawk = run_squawk(path, pg_version=pg_version, exclude=exclude)
    lines = plan_sql.splitlines()
    readded = {name.lower() for name in re.findall(r'add constraint "([^"]+)"', plan_sql, re.IGNORECASE)}

    def recreated(finding: Finding) -> bool:
        """results drops and re-adds foreign keys around a table change: not a lost guarantee."""
        match = re.search(r'drop constraint "([^"]+)"', lines[finding.line - 1] if finding.line <= len(lines) else "",
                          re.IGNORECASE)
        return finding.rule == "ban-drop-constraint" and bool(match) and match.group(1).lower() in readded

    return lint_text(plan_sql, path.name, squawk=[
        Finding(path.name, f.line, f.rule, f.message, f.source) for f in squawk if not recreated(f)])


def require_target_marker(dsn: str, target: str) -> None:
    name = dbname_of(dsn)
    if not name:
        raise RefusedError(f"the {target} DSN {mask_dsn(dsn)} names no database; refusing to guess",
                           refusal=Refusals.DSN_WITHOUT_DATABASE)
    with connect(dsn, autocommit=True) as conn:
        require_marker(conn, name, target)


def apply_plan(dsn: str, script: str) -> None:
    """Run a plan in one transaction: all of it or, on any error, none of it."""
    try:
        with connect(dsn) as conn, conn.transaction():
            conn.execute(script.encode())
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"the schema plan failed on {mask_dsn(dsn)} and was rolled back: {first}",
                            hint="run with --dry-run to see the plan; fix the source schema or the target") from None


__all__ = ["PushResult", "SchemaPlan", "apply_plan", "check_sync_direction", "lint_plan", "require_target_marker"]
