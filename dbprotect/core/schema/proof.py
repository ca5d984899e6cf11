"""Plans proven before they touch a target: run the plan on a scratch copy of the target's schema.

A plan from ``results`` (even refined) is a claim: "these statements take the target's schema to
the source's". Before ``schema push`` lets a plan near a real target, the claim is checked where
being wrong costs nothing: the target's schema (``pg_dump --schema-only``, no data) is loaded into
a scratch database, the plan runs there in one transaction, and the scratch database is compared
with the source again. Only an empty re-diff proves the plan; a failing statement or any
remaining difference is returned, and the push refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from dbprotect.core.errors import ToolError
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.pg.scratch import ScratchServer, scratch_database
from dbprotect.core.pg.tools import connect
from dbprotect.core.schema.drift import DriftReport, compare_schemas
from dbprotect.core.schema.snapshot import dump_schema


@dataclass(frozen=True)
class PlanProof:
    """What running the plan on a copy of the target's schema showed."""

    error: str | None
    remaining: DriftReport | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.remaining is not None and self.remaining.ok

    def summary(self) -> str:
        if self.error is not None:
            return f"the plan failed on a scratch copy of the target's schema: {self.error}"
        assert self.remaining is not None
        if self.remaining.ok:
            return "the plan, run on a scratch copy of the target's schema, left no difference"
        return ("the plan, run on a scratch copy of the target's schema, left "
                + "; ".join(self.remaining.lines()))


def schema_dump(dsn: str, *, pg_bin_dir: str | None = None) -> str:
    """``pg_dump --schema-only`` of ``dsn`` as SQL psycopg can run (psql meta-commands removed)."""
    dump, _version = dump_schema(dsn, pg_bin_dir=pg_bin_dir)
    return "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def prove_plan(script: str, *, target_dsn: str, source_dsn: str, scratch: ScratchServer,
               source: str = "source", pg_bin_dir: str | None = None) -> PlanProof:
    """Load the target's schema into a scratch database, run ``script`` there, re-diff against the source."""
    dump = schema_dump(target_dsn, pg_bin_dir=pg_bin_dir)
    with scratch_database(scratch) as copy:
        try:
            with connect(copy.dsn, autocommit=True, application_name="dbprotect-schema") as conn:
                conn.execute(dump.encode())
        except psycopg.Error as exc:
            raise ToolError(f"the target's schema could not be loaded into a scratch database: {_first_line(exc)}",
                            hint="the scratch server needs the target's extensions and major version") from None
        try:
            with connect(copy.dsn, application_name="dbprotect-schema") as conn, conn.transaction():
                conn.execute(script.encode())
        except psycopg.Error as exc:
            return PlanProof(mask_dsn(_first_line(exc)), None)
        return PlanProof(None, compare_schemas(source_dsn, copy.dsn, left=source, right="the proven copy"))


__all__ = ["PlanProof", "prove_plan", "schema_dump"]
