"""Lint that sees through SQL: rules on the parse tree, one report per problem, the target's version."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbprotect.core.ops.schema import lint_migrations
from dbprotect.core.schema.lint import lint_files, lint_text
from dbprotect_tests.fixtures.fix_pg import PgServer


@pytest.mark.parametrize(("sql", "rules"), [
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d;",
     ["data-modifying-cte", "delete-without-where"]),
    ("WITH u AS (UPDATE orders SET total = 0 WHERE id = 1 RETURNING *) SELECT * FROM u;", ["data-modifying-cte"]),
    ("SELECT * FROM (SELECT 1) s WHERE EXISTS (WITH x AS (UPDATE t SET a = 1 RETURNING 1) SELECT 1 FROM x);",
     ["data-modifying-cte", "update-without-where"]),
    ("INSERT INTO archive WITH d AS (DELETE FROM orders WHERE old RETURNING *) SELECT * FROM d;",
     ["data-modifying-cte"]),
    ("DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$;", ["do-block"]),
    ("TRUNCATE orders;", ["truncate"]),
    ("DROP VIEW v CASCADE;", ["drop-cascade"]),
    ("DROP TABLE orders CASCADE;", ["drop-table", "drop-cascade"]),
    ("ALTER TABLE orders DROP COLUMN total CASCADE;", ["drop-column", "drop-cascade"]),
    ("ALTER TABLE orders ALTER COLUMN total SET NOT NULL;", ["lock-heavy"]),
    ("ALTER TABLE orders ADD CONSTRAINT c CHECK (total > 0);", ["lock-heavy"]),
    ("ALTER TABLE orders ADD CONSTRAINT f FOREIGN KEY (cid) REFERENCES customers (id);", ["lock-heavy"]),
    ("ALTER TABLE orders SET LOGGED;", ["lock-heavy"]),
    ("ALTER TABLE orders SET TABLESPACE slow;", ["lock-heavy"]),
    ("VACUUM FULL orders;", ["lock-heavy"]),
    ("CLUSTER orders USING orders_pkey;", ["lock-heavy"]),
])
def test_each_parsed_rule(sql: str, rules: list[str]) -> None:
    assert sorted(f.rule for f in lint_text(f"SELECT 1;\n{sql}\n", "m.sql").findings) == sorted(rules)
    waivers = "".join(f"-- dbprotect: allow {rule} because reviewed in PR 7\n" for rule in rules)
    waived = lint_text(f"SELECT 1;\n{waivers}{sql}\n", "m.sql")
    assert waived.ok and len(waived.waived) == len(rules)


@pytest.mark.parametrize("sql", [
    "ALTER TABLE orders ADD CONSTRAINT c CHECK (total > 0) NOT VALID;",
    "ALTER TABLE orders VALIDATE CONSTRAINT c;",
    "WITH r AS (SELECT * FROM orders) SELECT * FROM r;",
    "DELETE FROM orders WHERE id = 1;",
    "VACUUM orders;",
    "DROP VIEW v;",
])
def test_safe_forms_pass(sql: str) -> None:
    assert lint_text(f"{sql}\n", "m.sql").ok


def test_one_report_per_problem_from_ours_and_squawks(tmp_path: Path) -> None:
    path = tmp_path / "005.sql"
    path.write_text("DROP TABLE orders CASCADE;\n\nALTER TABLE orders\n  ADD CONSTRAINT f FOREIGN KEY (cid)\n"
                    "  REFERENCES customers (id);\n")
    result = lint_files([path])
    rules = [(f.line, f.rule) for f in result.findings]
    assert rules.count((1, "drop-table")) == 1 and (1, "ban-drop-table") not in rules
    assert [r for r in rules if r[0] >= 3] == [(3, "lock-heavy")], rules  # squawk's two rules folded in
    lock = next(f for f in result.findings if f.rule == "lock-heavy")
    assert "constraint-missing-not-valid" in lock.message and "adding-foreign-key-constraint" in lock.message
    # a waiver in squawk's name covers the one report
    path.write_text("-- dbprotect: allow ban-drop-table because replaced in 004\nDROP TABLE orders;\n")
    assert lint_files([path]).ok


def test_version_comes_from_the_target_not_the_flag(tmp_path: Path, pg: PgServer) -> None:
    path = tmp_path / "006.sql"
    path.write_text("ALTER TABLE orders ADD COLUMN flag boolean DEFAULT false;\n")
    # squawk flags a column with a default only before PostgreSQL 11 (it rewrote the table then)
    assert any(f.rule == "adding-field-with-default" for f in lint_files([path], pg_version=10).findings)
    asked = lint_migrations([path], pg_version=10, dsn=pg.admin_dsn)
    assert asked.ok and asked.pg_version == 18, asked.lines()
    assert asked.pg_version_from.startswith("the target") and "--pg-version 10 ignored" in asked.pg_version_from
    unasked = lint_migrations([path])
    assert unasked.pg_version == 18 and "default" in unasked.pg_version_from
