"""``mark`` and ``check-target``: set and test the environment marker of the database behind a DSN.

Seed 004 promises "tests NEVER touch the development database"; ``check_target(dsn, "test")``
makes that checkable: a test suite calls ``dbprotect check-target "$TEST_DATABASE_URL" --expect
test`` first and stops when the database is unmarked or marked development or production. The
marker itself and its rules are :mod:`dbprotect.core.pg.markers`'; this only resolves the database
name from a DSN.
"""

from __future__ import annotations

from dbprotect.core.errors import Refusals, RefusedError
from dbprotect.core.pg.dsn import dbname_of, mask_dsn
from dbprotect.core.pg.markers import ENVIRONMENTS, read_marker, require_marker, set_marker
from dbprotect.core.pg.tools import connect


def _dbname(dsn: str) -> str:
    name = dbname_of(dsn)
    if not name:
        raise RefusedError(f"{mask_dsn(dsn)} names no database; refusing to guess which one is meant",
                           hint="put the database name in the DSN (postgresql://host/DBNAME)",
                           refusal=Refusals.DSN_WITHOUT_DATABASE)
    return name


def mark_database(dsn: str, environment: str) -> tuple[str, str | None]:
    """Set the marker of the database ``dsn`` names; returns (database name, previous marker)."""
    if environment not in ENVIRONMENTS:
        raise RefusedError(f"unknown environment {environment!r}", hint=f"name one of: {', '.join(ENVIRONMENTS)}",
                           refusal=Refusals.UNKNOWN_ENVIRONMENT)
    name = _dbname(dsn)
    with connect(dsn, autocommit=True) as conn:
        previous = read_marker(conn, name)
        set_marker(conn, name, environment)
    return name, previous


def check_target(dsn: str, expect: str) -> str:
    """The database name when it is marked ``expect``; :class:`RefusedError` otherwise (unmarked too)."""
    name = _dbname(dsn)
    with connect(dsn, autocommit=True) as conn:
        require_marker(conn, name, expect)
    return name
