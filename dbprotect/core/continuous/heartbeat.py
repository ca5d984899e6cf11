"""Heartbeat rows on the source: the markers a point-in-time drill proves a restore against.

A restore to a moment T is only *proved* when something written just before T is there and something
written just after T is not. Business tables cannot say which rows were written when, so dbprotect writes
its own: one row a minute (``continuous.heartbeat_seconds``) into ``dbprotect.heartbeat`` on the source,
from the long-running WAL receiver (the one dbprotect process that runs all the time next to the server;
a Dagster schedule could not write every minute without a run a minute). ``dbprotect wal heartbeat DB``
writes one row by hand.

Each row carries ``at`` (``clock_timestamp()``, the server's clock, the same clock
``recovery_target_time`` is compared with) and ``lsn`` (the WAL insert position when the row was made:
the commit record comes after it, so a stored WAL end beyond the *next* heartbeat's ``lsn`` certainly
holds this row's commit).

A failed insert never stops the receiver: the WAL stream matters more than the marker. One line is
logged and the next tick tries again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg

from dbprotect.core.errors import DbprotectError
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.pg.tools import connect

SCHEMA = "dbprotect"
TABLE = f"{SCHEMA}.heartbeat"
APPLICATION_NAME = "dbprotect-heartbeat"

#: Idempotent: run before every insert's first try, and again after a failure (someone dropped it).
CREATE_SQL = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " id bigserial PRIMARY KEY,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn(),"
    " writer text NOT NULL DEFAULT current_setting('application_name'))",
)


@dataclass(frozen=True)
class Heartbeat:
    id: int
    at: datetime
    lsn: str


def ensure_heartbeat_table(conn: psycopg.Connection) -> None:
    """Create ``dbprotect.heartbeat`` when missing. Two writers racing on CREATE … IF NOT EXISTS can
    collide on the catalogue's unique index; the loser finds the table there on its second try."""
    for attempt in (1, 2):
        try:
            with conn.transaction():
                for statement in CREATE_SQL:
                    conn.execute(statement)
            return
        except psycopg.errors.UniqueViolation:
            if attempt == 2:
                raise


def write_heartbeat(dsn: str) -> Heartbeat:
    """Insert one heartbeat row (creating the table when missing) and return it, committed."""
    with contextlib.closing(connect(dsn, autocommit=True, application_name=APPLICATION_NAME)) as conn:
        ensure_heartbeat_table(conn)
        row = conn.execute(f"INSERT INTO {TABLE} DEFAULT VALUES RETURNING id, at, lsn::text").fetchone()
    assert row is not None
    return Heartbeat(int(row[0]), row[1], str(row[2]))


def read_heartbeats(conn: psycopg.Connection, *, after: datetime | None = None) -> list[Heartbeat]:
    """Heartbeat rows in id order (those at or after ``after`` when given); [] when the table is absent."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(f"SELECT id, at, lsn::text FROM {TABLE} WHERE %s::timestamptz IS NULL OR at >= %s "
                        "ORDER BY id", (after, after)).fetchall()
    return [Heartbeat(int(i), at, str(lsn)) for i, at, lsn in rows]


def run_heartbeats(dsn: str, *, interval_seconds: float, stop: threading.Event,
                   log: Callable[[str], None] = lambda line: None) -> int:
    """Write a heartbeat every ``interval_seconds`` until ``stop`` is set; returns how many were written.

    Never raises for a failed insert (server down, permission, disk full): one line per failure, then the
    next tick. The first row is written at once, so a drill right after start-up has a marker.
    """
    written = 0
    while not stop.is_set():
        try:
            write_heartbeat(dsn)
            written += 1
        except (DbprotectError, psycopg.Error, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log(f"heartbeat not written ({reason.replace(dsn, mask_dsn(dsn))}); trying again in "
                f"{interval_seconds:g} s")
        stop.wait(interval_seconds)
    return written


@contextlib.contextmanager
def heartbeat_thread(dsn: str, *, interval_seconds: float,
                     log: Callable[[str], None]) -> Iterator[threading.Thread]:
    """Run :func:`run_heartbeats` in a daemon thread for the duration of the ``with`` block."""
    stop = threading.Event()
    thread = threading.Thread(target=run_heartbeats, kwargs={"dsn": dsn, "interval_seconds": interval_seconds,
                                                             "stop": stop, "log": log},
                              daemon=True, name="dbprotect-heartbeat")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=30)
