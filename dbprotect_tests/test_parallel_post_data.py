"""Post-data in parallel (issue 11, point 5's performance): each table's indexes and constraints
are built by ``-L`` lists on ``jobs`` connections as soon as its data committed, the rest after.

A schema with foreign keys, a partitioned table, deferred constraints, an index on an
expression, a NOT VALID check its rows violate and an indexed materialized view restores and
compares clean; the plan pairs every index and constraint with its table, and pairs nothing when
a name is crafted to look like an item header; a failure in one post-data worker stops the
restore (nothing after it runs, no pg_restore is left) and a failed restore leaves no target and
no staging database.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.errors import IntegrityError
from dbprotect.core.pg import pg_restore
from dbprotect.core.pg.pg_restore import plan_post_data, run_pg_restore_streamed
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.fixtures.fix_pg import pg_bin

SCHEMA_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, UNIQUE (email) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO customers SELECT g, 'c' || g || '@example.org' FROM generate_series(1, 3000) g;
CREATE INDEX customers_lower_email ON customers (lower(email));
CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount numeric CHECK (amount >= 0));
INSERT INTO orders SELECT g, 1 + g % 3000, g % 97 FROM generate_series(1, 20000) g;
INSERT INTO orders VALUES (0, 1, 5000);
ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer) REFERENCES customers (id)
    DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX orders_customer ON orders (customer);
CREATE INDEX orders_big ON orders ((amount * 2)) WHERE amount > 10;
ALTER TABLE orders ADD CONSTRAINT orders_small CHECK (amount < 1000) NOT VALID;
CREATE TABLE events (id int, at date NOT NULL, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2026_01 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE events_2026_02 PARTITION OF events FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
INSERT INTO events SELECT g, date '2026-01-01' + g % 59, 'e' || g FROM generate_series(1, 5000) g;
CREATE INDEX events_what ON events (what);
CREATE TABLE "Odd Name" ("Key" int PRIMARY KEY, v text);
INSERT INTO "Odd Name" SELECT g, md5(g::text) FROM generate_series(1, 500) g;
CREATE INDEX "odd ""quoted"" index" ON "Odd Name" (upper(v));
CREATE MATERIALIZED VIEW order_totals AS SELECT customer, sum(amount) AS total FROM orders GROUP BY customer;
CREATE UNIQUE INDEX order_totals_customer ON order_totals (customer);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
"""


def _tool(name: str) -> str:
    return str(pg_bin() / name)


def _dump(dsn: str) -> bytes:
    return subprocess.run([_tool("pg_dump"), "--format=custom", f"--dbname={dsn}"], check=True,
                          capture_output=True).stdout


def _listing(archive: bytes) -> str:
    out = subprocess.run([_tool("pg_restore"), "--list"], input=archive, check=True, capture_output=True)
    return out.stdout.decode()


def _feed(archive: bytes) -> Callable[[Callable[[bytes], object], bool], bool]:
    def feed(write: Callable[[bytes], object], whole: bool) -> bool:
        for start in range(0, len(archive), 1 << 16):
            try:
                write(archive[start:start + (1 << 16)])
            except BrokenPipeError:
                if whole:
                    raise
                return False
        return True
    return feed


def _post_data_script(archive: bytes) -> bytes:
    return subprocess.run([_tool("pg_restore"), "--section=post-data", "--file=-"], input=archive, check=True,
                          capture_output=True).stdout


@pytest.mark.slow
def test_a_schema_with_every_kind_of_post_data_restores_in_parallel_and_compares_clean(
        make_db, pg, write_config, monkeypatch, capsys):
    source = make_db(SCHEMA_SQL, prefix="src")
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(source, database="shop", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    code, backup, _ = run_json(capsys, "backup", "shop")
    assert code == 0
    code, restored, err = run_json(capsys, "restore", "shop", backup["backup_id"], "--target", "new:parallel_copy")
    try:
        assert code == 0, err  # the restore's own comparison (rung 3's) found no difference
        assert restored["metrics"]["restore_post_data_groups_built_early"] >= 1
        counts = ("SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM events), "
                  "(SELECT count(*) FROM order_totals)")
        with psycopg.connect(pg.dsn("parallel_copy")) as copy, psycopg.connect(source) as original:
            assert copy.execute(counts).fetchone() == original.execute(counts).fetchone() == (20001, 5000, 3000)
        compared = run(["compare", backup["backup_id"], "shop", "--target", "production:parallel_copy"])
        assert compared == 0, capsys.readouterr()
        with psycopg.connect(pg.dsn("parallel_copy")) as conn:
            assert conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'orders_small'"
                                ).fetchone() == (False,)
            assert conn.execute("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                "WHERE c.relkind = 'i'").fetchone()[0] == 4  # partition indexes attached
    finally:
        pg.drop_database("parallel_copy")


def test_the_plan_pairs_every_index_and_constraint_with_its_table(make_db):
    archive = _dump(make_db(SCHEMA_SQL, prefix="src"))
    plan = plan_post_data(_listing(archive), _post_data_script(archive))
    assert plan.unmapped == []
    tables = {table: sorted(line.split(" ", 4)[4].rsplit(" ", 1)[0] for line in lines)
              for table, lines in plan.per_table.items()}
    assert tables[b"public.orders"] == ["public orders orders_pkey", "public orders_big",
                                        "public orders_customer"]
    assert tables[b'public."Odd Name"'] == ['public Odd Name Odd Name_pkey', 'public odd "quoted" index']
    assert b"public.events" in tables and b"public.events_2026_01" in tables
    assert tables[b"public.order_totals"] == ["public order_totals_customer"]
    assert not any("orders_customer_fk" in line for lines in plan.per_table.values() for line in lines)
    assert not any("orders_small" in line for lines in plan.per_table.values() for line in lines)


def test_a_name_crafted_like_an_item_header_pairs_nothing(make_db):
    """A comment (post-data, attacker-chosen text) holding a line shaped like an item header: the
    headers no longer pair one to one with the listing, so nothing is paired (all built after the data)."""
    archive = _dump(make_db("CREATE TABLE t (x int PRIMARY KEY, y int); CREATE INDEX t_y ON t (y);"
                            "COMMENT ON INDEX t_y IS E'\\n--\\n-- Name: t t_pkey; Type: CONSTRAINT; "
                            "Schema: public; Owner: postgres\\n--\\n\\nALTER TABLE ONLY public.other\\n';",
                            prefix="src"))
    script = _post_data_script(archive)
    assert b"\n-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres\n" in script
    plan = plan_post_data(_listing(archive), script)
    assert plan.per_table == {}
    assert len(plan.unmapped) == 2 and len(plan.per_table_ids) == 2
    honest = plan_post_data(_listing(archive), script.replace(b"ALTER TABLE ONLY public.other", b"x"))
    assert honest.per_table == {}  # still one header too many: refused whatever follows it


def test_a_failed_post_data_worker_stops_the_restore(make_db, pg):
    archive = _dump(make_db(SCHEMA_SQL, prefix="src"))
    target = make_db("CREATE TABLE orders_big (x int)", prefix="dst")  # its index's name is taken: that build fails
    with pytest.raises(IntegrityError, match="orders_big"):
        run_pg_restore_streamed(_feed(archive), target, listing=_listing(archive), server_major=18,
                                archive_major=18, jobs=2, pg_bin_dir=str(pg_bin()))
    with psycopg.connect(target) as conn:
        later = conn.execute("SELECT count(*) FROM pg_constraint WHERE conname = 'orders_customer_fk'").fetchone()
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'orders_touch'").fetchone()
    assert later == (0,) and triggers == (0,)  # nothing after the per-table items ran
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in children if Path(f"/proc/{pid}").exists()]
    assert "pg_restore" not in names


@pytest.mark.slow
def test_a_failed_post_data_worker_fails_the_restore_and_leaves_no_target_or_staging(
        make_db, pg, write_config, monkeypatch, capsys):
    source = make_db(SCHEMA_SQL, prefix="src")
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(source, database="shop", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    code, backup, _ = run_json(capsys, "backup", "shop")
    assert code == 0
    real_section = pg_restore._section

    def failing_batch(*args: object, items: list[str] | None = None, **kwargs: object) -> None:
        """The batch holding orders' indexes fails as a real build would (after part of it ran)."""
        if items is not None and any(" orders_customer " in line for line in items):
            raise IntegrityError("pg_restore failed (exit 1): could not create index \"orders_customer\"")
        real_section(*args, items=items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pg_restore, "_section", failing_batch)
    code = run(["restore", "shop", backup["backup_id"], "--target", "new:never_there"])
    err = capsys.readouterr().err
    assert code == IntegrityError.exit_code, err
    assert "orders_customer" in err and "Traceback" not in err
    assert not pg.has_database("never_there")
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []
