"""The golden corpus of schema pairs: each plan is exactly the reviewed one, and it works.

``schema_corpus/<case>/{before,after}.sql`` are two schemas; ``plan.sql`` is the plan taking
``before`` to ``after`` as reviewed (SQL, then one ``-- unplannable: …`` line per difference the
plan names instead of planning). For every case the test asserts the exact plan, runs it on
``before`` in one transaction and asserts that the re-diff against ``after`` is empty; a case with
unplannable items must instead leave exactly those differences named.
Regenerate after a reviewed change with ``DBPROTECT_REGENERATE_CORPUS=1`` (then read the diff).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbprotect.core.schema.drift import compare_schemas
from dbprotect.core.schema.plan import MigrationPlan, plan_migration
from dbprotect_tests.fixtures.fix_pg import PgServer, psql

CORPUS = Path(__file__).parent / "schema_corpus"
CASES = sorted(path.name for path in CORPUS.iterdir() if (path / "before.sql").is_file())


def render(plan: MigrationPlan) -> str:
    """A plan as its golden file holds it."""
    return plan.sql + "".join(f"-- unplannable: {item}\n" for item in plan.unplannable)


@pytest.fixture
def case_databases(pg: PgServer) -> Iterator[tuple[str, str]]:
    """(before DSN, after DSN): two fresh databases on the session's one server, dropped after."""
    names = [pg.create_database("corpus_before"), pg.create_database("corpus_after")]
    yield pg.dsn(names[0]), pg.dsn(names[1])
    for name in names:
        pg.drop_database(name)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES)
def test_golden_plan_is_exact_and_works(case: str, case_databases: tuple[str, str]) -> None:
    before, after = case_databases
    folder = CORPUS / case
    for dsn, name in ((before, "before.sql"), (after, "after.sql")):
        if (folder / name).read_text().strip():
            psql(dsn, (folder / name).read_text())
    plan = plan_migration(before, after)
    golden = folder / "plan.sql"
    if os.environ.get("DBPROTECT_REGENERATE_CORPUS"):
        golden.write_text(render(plan))
    assert render(plan) == golden.read_text()
    if plan.statements:
        with psycopg.connect(before) as conn, conn.transaction():
            conn.execute(plan.sql.encode())
    remaining = compare_schemas(before, after, left="before", right="after")
    if plan.unplannable:
        assert not remaining.ok, "an unplannable difference must still be drift after the plan"
    else:
        assert remaining.ok, remaining.summary()
        assert plan_migration(before, after).empty
