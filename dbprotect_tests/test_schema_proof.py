"""Truthful plans end to end: unplannable differences are named and refused, plans are proven first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dbprotect.cli.app import run
from dbprotect.core.config.load import load_config
from dbprotect.core.errors import Refusals, RefusedError
from dbprotect.core.ops import push_schema
from dbprotect.core.ops import schema as ops_schema
from dbprotect.core.ops.schema import plan_sync
from dbprotect.core.schema.drift import compare_schemas
from dbprotect.core.schema.snapshot import take_snapshot
from dbprotect_tests.fixtures.fix_pg import PgServer, mark_environment

PARTITIONED = """
CREATE TABLE p (id int, k int) PARTITION BY RANGE (k);
CREATE INDEX p_id_idx ON p (id);
CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);
"""


@pytest.fixture
def pair(make_db: Callable[..., str], write_config: Callable[..., Path], pg: PgServer,
         monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], tuple[str, str]]:
    """Factory: (development DSN, production DSN) from two schemas, marked and configured as 'shop'."""

    def factory(dev_sql: str, prod_sql: str) -> tuple[str, str]:
        dev, prod = make_db(dev_sql, prefix="dev"), make_db(prod_sql, prefix="prod")
        mark_environment(prod, "production")
        mark_environment(dev, "development")
        write_config(prod, database="shop", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
        monkeypatch.setenv("TEST_SHOP_DEV_DSN", dev)
        monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
        return dev, prod

    return factory


def test_unplannable_difference_is_named_never_no_changes(pair: Callable[[str, str], tuple[str, str]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    dev, _ = pair("CREATE DOMAIN qty AS integer;", "CREATE DOMAIN qty AS bigint;")
    before = take_snapshot(dev).sha256
    plan = plan_sync(load_config(), "shop", "production", "development")
    assert not plan.empty and plan.unplannable and "domain public.qty" in plan.unplannable[0]
    assert run(["schema", "diff", "production", "development", "shop"]) == 0
    out = capsys.readouterr().out
    assert "UNPLANNABLE" in out and "no changes" not in out
    with pytest.raises(RefusedError, match="cannot express 1 difference") as refused:
        push_schema(load_config(), "shop", "production", "development")
    assert refused.value.refusal == Refusals.SCHEMA_UNPLANNABLE
    assert take_snapshot(dev).sha256 == before


def test_push_refuses_a_plan_the_scratch_copy_disproves(pair: Callable[[str, str], tuple[str, str]],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # production's new partition has an index renamed away from PostgreSQL's automatic name: the plan
    # (CREATE TABLE ... PARTITION OF) creates p2_id_idx, so it cannot make the schemas equal
    dev, prod = pair(PARTITIONED, PARTITIONED + "CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);\n"
                     "ALTER INDEX p2_id_idx RENAME TO p2_by_id;")
    before = take_snapshot(dev).sha256
    # diff names what the plan would leave, found by the same proof
    assert run(["schema", "diff", "production", "development", "shop"]) == 0
    out = capsys.readouterr().out
    assert "-- UNPLANNABLE (push refuses): index public.p2_by_id: only in production (left by the plan" in out
    with pytest.raises(RefusedError, match="scratch copy of the target's schema, left") as refused:
        push_schema(load_config(), "shop", "production", "development")
    assert refused.value.refusal == Refusals.SCHEMA_PLAN_UNPROVEN
    assert take_snapshot(dev).sha256 == before, "the development database was touched"
    assert not compare_schemas(dev, prod).ok


def test_push_refuses_a_plan_that_fails_on_the_scratch_copy(pair: Callable[[str, str], tuple[str, str]],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dev, _ = pair("CREATE TABLE t (id int);", "CREATE TABLE t (id int, note text);")
    before = take_snapshot(dev).sha256
    real = ops_schema.plan_migration

    def broken(from_dsn: str, to_dsn: str) -> object:
        plan = real(from_dsn, to_dsn)
        return type(plan)((*plan.statements, "alter table no_such_table add column x int;"), plan.unplannable)

    monkeypatch.setattr(ops_schema, "plan_migration", broken)
    with pytest.raises(RefusedError, match="the plan failed on a scratch copy"):
        push_schema(load_config(), "shop", "production", "development")
    assert take_snapshot(dev).sha256 == before


def test_proven_plan_is_applied(pair: Callable[[str, str], tuple[str, str]]) -> None:
    dev, prod = pair("CREATE DOMAIN rating_year AS integer CHECK (VALUE > 1900);\n"
                     "CREATE TABLE film (id int PRIMARY KEY, y rating_year);\n" + PARTITIONED,
                     "CREATE DOMAIN rating_year AS integer DEFAULT 2000 CHECK (VALUE > 1950);\n"
                     "CREATE TABLE film (id int PRIMARY KEY, y rating_year);\n" + PARTITIONED
                     + "CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);\n")
    assert not compare_schemas(dev, prod).ok
    result = push_schema(load_config(), "shop", "production", "development")
    assert result.applied and "left no difference" in result.notes[0]
    assert compare_schemas(dev, prod).ok
    assert plan_sync(load_config(), "shop", "production", "development").empty
