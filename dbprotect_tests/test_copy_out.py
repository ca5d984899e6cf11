"""Reading COPY rows straight from libpq (:mod:`dbprotect.core.sanitize.copy_out`), on real PostgreSQL: the same
rows as psycopg's iteration, the server's error raised as psycopg raises it, and the connection left ready."""

from __future__ import annotations

import psycopg
import pytest

from dbprotect.core.sanitize.copy_out import copy_rows

ROWS = ("CREATE TABLE t (id int, body text);"
        "INSERT INTO t SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE repeat(E'a\\tb\\\\c\\n', i % 5) || i END "
        "FROM generate_series(1, 60000) i;")


def test_the_rows_are_psycopgs_and_the_connection_is_ready_after(make_db) -> None:
    dsn = make_db(ROWS)
    with psycopg.connect(dsn) as conn:
        with conn.cursor().copy("COPY t TO STDOUT") as reader:
            expected = [bytes(row) for row in reader]
        with conn.cursor().copy("COPY t TO STDOUT") as reader:
            assert [bytes(row) for row in copy_rows(reader)] == expected
        assert len(expected) == 60000 and conn.execute("SELECT count(*) FROM t").fetchone() == (60000,)
        with conn.cursor().copy("COPY (SELECT 1 WHERE false) TO STDOUT") as reader:
            assert list(copy_rows(reader)) == []
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_error_the_server_raises_mid_copy_is_raised_as_psycopg_raises_it(make_db) -> None:
    dsn = make_db(ROWS)
    query = "COPY (SELECT 1 / (i - 40000) FROM generate_series(1, 60000) i) TO STDOUT"
    with psycopg.connect(dsn) as conn:
        rows = []
        with pytest.raises(psycopg.errors.DivisionByZero), conn.cursor().copy(query) as reader:
            rows.extend(copy_rows(reader))
        assert len(rows) > 0
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_copy_left_on_an_exception_is_cancelled_and_the_connection_recovers(make_db) -> None:
    dsn = make_db(ROWS)
    with psycopg.connect(dsn) as conn:
        with pytest.raises(RuntimeError, match="stop"), conn.cursor().copy("COPY t TO STDOUT") as reader:
            for index, _row in enumerate(copy_rows(reader)):
                if index == 100:
                    raise RuntimeError("stop")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (60000,)
