"""The demo's databases and what is in them: the fintech schema, generated data, the masking rules.

The package data beside this module holds the content; this module loads it:

- ``demo_schema.sql``: tables before the ``@after-data`` line, constraints and indexes after it;
- ``demo_data.sql``: the data generation, run between the two parts of the schema;
- ``demo_words.yaml``: the countries, names, e-mail domains, merchants and bios it draws from;
- ``demo_rules.yaml``: the masking rules of the schema, copied into the work folder by the demo.

Why it is shaped this way:

- The data is generated server-side (``generate_series`` and ``random()`` after ``setseed``) in
  a handful of statements: no Python row loops, a few seconds for a few hundred thousand rows, and
  the same people every time.
- A database is only reused when its load *finished*: the marker comment is written in the load
  transaction, so an interrupted first run is reloaded rather than trusted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import psycopg
import yaml
from psycopg import sql

from dbprotect.core.errors import DatabaseError
from dbprotect.core.pg.markers import read_marker, set_marker
from dbprotect.core.pg.tools import connect

DEFAULT_ROWS = 300_000
MIN_ROWS = 1_000
#: The databases on the demo server.
PG_DATABASE = "fintech_prod"  # production, with the data
DEV_PG_DATABASE = "fintech_dev"  # development: the schema, no rows (sanitized copies land here)
WARM_PG_DATABASE = "fintech_standby"  # the warm copy; created and marked by its first refresh
#: The tables the data fills, in load order.
TABLES = ("tenants", "users", "accounts", "transactions", "audit_log")
#: demo_schema.sql is split here: tables before the data, constraints and indexes after it.
AFTER_DATA_MARK = "-- @after-data"
SEED = 0.4242
#: Fixed "now" of the generated history, so the data is the same on every machine and run.
ANCHOR = datetime(2025, 11, 1, tzinfo=UTC)
#: The comment written in the load transaction; its presence means "loaded completely".
_LOADED_COMMENT = "dbprotect demo data v1 rows={rows}"
_LOADED = re.compile(r"dbprotect demo data v1 rows=(\d+)")
#: The lists of demo_words.yaml that demo_data.sql uses as text[] (each with its length, n_<list>).
_WORD_LISTS = ("first_names", "last_names", "email_domains", "merchants", "bios")

StepCallback = Callable[[str], None]


def loaded_rows(admin_dsn: str) -> int | None:
    """Rows an earlier run finished loading, from the database comment; None if not loaded."""
    with connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (PG_DATABASE,)
        ).fetchone()
    if row is None:
        return None
    match = _LOADED.search(row[0] or "")
    return int(match.group(1)) if match else -1  # -1: the database exists but its load never finished


def ensure_demo_data(admin_dsn: str, dsn: str, rows: int | None, step: StepCallback) -> bool:
    """Create and load ``fintech_prod`` unless a finished load of the requested size is there."""
    previous = loaded_rows(admin_dsn)
    wanted = rows or (previous if previous and previous > 0 else DEFAULT_ROWS)
    if previous == wanted:
        step(f"reusing {PG_DATABASE}, loaded by an earlier run ({wanted:,} rows requested then)")
        return False
    database = sql.Identifier(PG_DATABASE)
    with connect(admin_dsn, autocommit=True) as conn:
        if previous is not None:
            step(f"dropping {PG_DATABASE} (earlier load: {'unfinished' if previous < 0 else f'{previous:,} rows'})")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(database))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
        # The environment marker every destructive step checks before it touches a database.
        conn.execute(sql.SQL("ALTER DATABASE {} SET dbprotect.environment = 'production'").format(database))
    step(f"loading the fintech schema and about {wanted:,} rows of generated personal data")
    load_demo_data(dsn, wanted)
    return True


def ensure_dev_database(admin_dsn: str, dev_dsn: str, step: StepCallback) -> bool:
    """Create ``fintech_dev`` with the demo schema and no rows, marked development; True if created now.

    The marker is set last, so it means "schema loaded": a database without it is a leftover of
    an interrupted run and is recreated. A marked one is reused as it is, even if a promotion
    replaced its contents since (that is what the development database is for).
    """
    database = sql.Identifier(DEV_PG_DATABASE)
    with connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEV_PG_DATABASE,)).fetchone()
        if exists and read_marker(conn, DEV_PG_DATABASE) == "development":
            return False
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(database))
        step(f"creating {DEV_PG_DATABASE} (development: the same schema, no rows)")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
    tables, _, constraints = demo_schema_sql().partition(AFTER_DATA_MARK)
    try:
        with connect(dev_dsn) as dev:
            dev.execute(tables)
            dev.execute(constraints)
    except psycopg.Error as exc:
        raise DatabaseError(f"loading the demo schema into {DEV_PG_DATABASE} failed: {' '.join(str(exc).split())}") \
            from None
    with connect(admin_dsn, autocommit=True) as conn:
        set_marker(conn, DEV_PG_DATABASE, "development")
    return True


def table_sizes(rows: int) -> dict[str, int]:
    """Split ``rows`` across the tables roughly as a young fintech would have them."""
    users = max(100, rows * 15 // 100)
    accounts = max(users, rows * 20 // 100)
    transactions = rows * 50 // 100
    tenants = max(3, min(40, rows // 10_000))
    audit = max(0, rows - users - accounts - transactions - tenants)
    return {"tenants": tenants, "users": users, "accounts": accounts, "transactions": transactions,
            "audit_log": audit}


def load_demo_data(dsn: str, rows: int) -> None:
    """Schema, data and the "loaded" marker in one transaction: all of it or nothing.

    The marker comment is always on ``fintech_prod``, whatever database ``dsn`` names (tests
    load the data into a database of that name on their own server).
    """
    tables, _, constraints = demo_schema_sql().partition(AFTER_DATA_MARK)
    comment = sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(PG_DATABASE), sql.Literal(_LOADED_COMMENT.format(rows=rows)))
    try:
        with connect(dsn) as conn:
            conn.execute(tables)
            conn.execute(generation_sql(table_sizes(rows)))
            conn.execute(constraints)
            conn.execute(comment)
            conn.execute("ANALYZE")
    except psycopg.Error as exc:
        raise DatabaseError(f"loading the demo data failed: {' '.join(str(exc).split())}") from None


def generation_sql(sizes: dict[str, int]) -> sql.Composed:
    """demo_data.sql with its placeholders filled in (see the head of that file), as psycopg literals.

    One script, several statements, no bind parameters: server-side parameters allow one
    statement per call, and the script must run as the one transaction it was written for.
    """
    words = demo_words()
    values: dict[str, sql.Composable] = {
        "seed": sql.Literal(SEED),
        "anchor": sql.Literal(ANCHOR),
        "countries": _countries_values(words["countries"]),
        "n_countries": sql.Literal(len(words["countries"])),
    }
    for name in _WORD_LISTS:
        values[name] = _text_array(words[name])
        values[f"n_{name}"] = sql.Literal(len(words[name]))
    values.update({f"n_{table}": sql.Literal(count) for table, count in sizes.items()})
    return sql.SQL(_package_text("demo_data.sql")).format(**values)


def count_rows(dsn: str) -> dict[str, int]:
    """Exact row counts of the demo tables (what the backup's manifest must agree with)."""
    counts = {}
    with connect(dsn, autocommit=True) as conn:
        for name in TABLES:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", name))).fetchone()
            counts[f"public.{name}"] = int(row[0])  # type: ignore[index]
    return counts


def demo_schema_sql() -> str:
    return _package_text("demo_schema.sql")


def demo_rules_yaml() -> str:
    """The masking rules of the demo schema (a test keeps them equal to the reviewed copy)."""
    return _package_text("demo_rules.yaml")


@cache
def demo_words() -> dict[str, Any]:
    """demo_words.yaml: the countries and the word lists the data is drawn from."""
    return yaml.safe_load(_package_text("demo_words.yaml"))


def _package_text(name: str) -> str:
    return resources.files("dbprotect.demo").joinpath(name).read_text(encoding="utf-8")


def _text_array(values: list[str]) -> sql.Composed:
    return sql.SQL("{}::text[]").format(sql.Literal(values))


def _countries_values(countries: list[dict[str, Any]]) -> sql.Composed:
    """The VALUES rows of the demo_countries temporary table: k (0-based), then the fields in table order."""
    rows = [
        sql.SQL("({})").format(sql.SQL(", ").join([
            sql.Literal(k), *(sql.Literal(country[field]) for field in
                              ("code", "name", "dial", "timezone", "language", "currency")),
            _text_array(country["cities"]),
        ]))
        for k, country in enumerate(countries)
    ]
    return sql.SQL(",\n    ").join(rows)
