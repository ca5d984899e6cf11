"""Foreign keys built while other tables still load (issue 11's restore bench, post-data overlap).

A foreign key runs on its own lane as soon as both its tables' data committed and their own
indexes and constraints are built; a schema with partitions, or a foreign key whose statements do
not read as pg_dump writes them, keeps every foreign key for after the data, as before.
"""

from __future__ import annotations

import psycopg
import pytest

from dbprotect.core.errors import IntegrityError
from dbprotect.core.pg.pg_restore import plan_post_data, run_pg_restore_streamed
from dbprotect_tests.fixtures.fix_pg import pg_bin
from dbprotect_tests.test_parallel_post_data import _dump, _feed, _listing, _post_data_script

SCHEMA_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE);
INSERT INTO customers SELECT g, 'c' || g || '@example.org' FROM generate_series(1, 3000) g;
CREATE TABLE "Orders ""x"" y" (id int PRIMARY KEY, customer int NOT NULL REFERENCES customers (id),
    email text REFERENCES customers (email) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO "Orders ""x"" y" SELECT g, 1 + g % 3000, 'c' || (1 + g % 3000) || '@example.org'
  FROM generate_series(1, 20000) g;
CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES "Orders ""x"" y" (id),
    parent int REFERENCES lines (id));
INSERT INTO lines SELECT g, g, NULLIF(g - 1, 0) FROM generate_series(1, 20000) g;
CREATE TABLE zz_last (id int PRIMARY KEY, payload text);
INSERT INTO zz_last SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 30000) g;
"""

FOREIGN_KEYS = ('Orders "x" y_customer_fkey', 'Orders "x" y_email_fkey', "lines_order_id_fkey", "lines_parent_fkey")


def test_the_plan_pairs_each_foreign_key_with_both_tables(make_db):
    archive = _dump(make_db(SCHEMA_SQL, prefix="src"))
    plan = plan_post_data(_listing(archive), _post_data_script(archive))
    assert sorted((table, referenced) for _, _, table, referenced in plan.foreign) == [
        (b'public."Orders ""x"" y"', b"public.customers"), (b'public."Orders ""x"" y"', b"public.customers"),
        (b"public.lines", b'public."Orders ""x"" y"'), (b"public.lines", b"public.lines")]


def test_foreign_keys_run_before_the_data_is_all_in_and_hold(make_db, pg):
    archive = _dump(make_db(SCHEMA_SQL, prefix="src"))
    target = make_db("", prefix="dst")
    timings: dict[str, float] = {}
    run_pg_restore_streamed(_feed(archive), target, listing=_listing(archive), server_major=18, archive_major=18,
                            jobs=2, pg_bin_dir=str(pg_bin()), timings=timings)
    assert timings["restore_foreign_keys_built_early"] >= 1
    with psycopg.connect(target) as conn:
        keys = conn.execute("SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' ORDER BY 1").fetchall()
        assert keys == [(name, True) for name in sorted(FOREIGN_KEYS)]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO lines VALUES (0, 999999, NULL)")


def test_partitions_or_an_unreadable_key_keep_every_foreign_key_for_after_the_data(make_db):
    partitioned = _dump(make_db(SCHEMA_SQL + "CREATE TABLE ev (id int, at date, PRIMARY KEY (id, at)) "
                                "PARTITION BY RANGE (at); CREATE TABLE ev1 PARTITION OF ev "
                                "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');", prefix="src"))
    assert plan_post_data(_listing(partitioned), _post_data_script(partitioned)).foreign == []
    archive = _dump(make_db(SCHEMA_SQL, prefix="src"))
    script = _post_data_script(archive)
    crafted = script.replace(b"REFERENCES public.customers(id)", b"REFERENCES public.customers (id)", 1)
    assert crafted != script
    assert plan_post_data(_listing(archive), crafted).foreign == []


def test_a_failed_index_build_keeps_its_tables_foreign_keys_from_running(make_db):
    archive = _dump(make_db(SCHEMA_SQL, prefix="src"))
    target = make_db('CREATE TABLE "Orders ""x"" y_pkey" (x int)', prefix="dst")  # the key's index name is taken
    with pytest.raises(IntegrityError):
        run_pg_restore_streamed(_feed(archive), target, listing=_listing(archive), server_major=18,
                                archive_major=18, jobs=2, pg_bin_dir=str(pg_bin()))
    with psycopg.connect(target) as conn:
        keys = conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'f' "
                            "AND conrelid = '\"Orders \"\"x\"\" y\"'::regclass OR conname = 'lines_order_id_fkey'"
                            ).fetchall()
    assert keys == []
