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

Rows are pruned by the same writer, or the table would grow by a row a minute forever: about once an
hour (``PRUNE_EVERY_SECONDS``), one ``DELETE`` of at most ``PRUNE_BATCH`` rows older than the retention
window plus ``PRUNE_MARGIN``, judged by the server's own clock (the clock ``at`` was written with). A
drill only restores to a moment inside what retention keeps, and retention keeps every moment of its
window; the margin covers the older anchor base the window's first moments start from (a full base a
week old at most with a weekly schedule). Pruning never changes a drill's verdict: the restored server
holds the rows as they were at T, and a prune deletes only rows far older than any T a drill can pick,
so ``before`` is still there and nothing after it is. A failed prune is logged like a failed insert.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

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


#: How often the writer prunes; at most this many rows go in one DELETE (a backlog drains over a few hours:
#: one batch an hour removes far more than the 60 rows an hour a one-minute writer adds).
PRUNE_EVERY_SECONDS = 3600.0
PRUNE_BATCH = 10_000
#: Kept beyond the retention window: the older anchor base that reaches the window's first moments.
PRUNE_MARGIN = timedelta(days=7)


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


def prune_heartbeats(conn: psycopg.Connection, *, keep: timedelta, limit: int = PRUNE_BATCH) -> int:
    """Delete at most ``limit`` of the oldest rows whose ``at`` is more than ``keep`` before the server's
    ``clock_timestamp()``; returns how many went. One statement (the primary key walks the oldest first);
    0 when the table is absent."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
    if not exists or not exists[0]:
        return 0
    cursor = conn.execute(
        f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} "
        "WHERE at < clock_timestamp() - make_interval(secs => %s) ORDER BY id LIMIT %s)",
        (keep.total_seconds(), limit))
    return cursor.rowcount


def prune_window(retention_days: float) -> timedelta:
    """How long heartbeat rows are kept for a database whose continuous retention is ``retention_days``."""
    return timedelta(days=retention_days) + PRUNE_MARGIN


def run_heartbeats(dsn: str, *, interval_seconds: float, stop: threading.Event,
                   log: Callable[[str], None] = lambda line: None, keep: timedelta | None = None,
                   prune_every_seconds: float = PRUNE_EVERY_SECONDS) -> int:
    """Write a heartbeat every ``interval_seconds`` until ``stop`` is set; returns how many were written.
    With ``keep``, also prune rows older than that (:func:`prune_heartbeats`) after the first row and then
    every ``prune_every_seconds``.

    Never raises for a failed insert or prune (server down, permission, disk full): one line per failure,
    then the next tick. The first row is written at once, so a drill right after start-up has a marker.
    """
    written = 0
    next_prune = time.monotonic()
    while not stop.is_set():
        try:
            write_heartbeat(dsn)
            written += 1
        except (DbprotectError, psycopg.Error, OSError) as exc:
            log(f"heartbeat not written ({_reason(exc, dsn)}); trying again in {interval_seconds:g} s")
        if keep is not None and written and time.monotonic() >= next_prune:
            next_prune = time.monotonic() + prune_every_seconds
            try:
                with contextlib.closing(connect(dsn, autocommit=True, application_name=APPLICATION_NAME)) as conn:
                    prune_heartbeats(conn, keep=keep)
            except (DbprotectError, psycopg.Error, OSError) as exc:
                log(f"old heartbeats not pruned ({_reason(exc, dsn)}); trying again in {prune_every_seconds:g} s")
        stop.wait(interval_seconds)
    return written


def _reason(exc: BaseException, dsn: str) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return reason.replace(dsn, mask_dsn(dsn))


@contextlib.contextmanager
def heartbeat_thread(dsn: str, *, interval_seconds: float, log: Callable[[str], None],
                     keep: timedelta | None = None) -> Iterator[threading.Thread]:
    """Run :func:`run_heartbeats` in a daemon thread for the duration of the ``with`` block."""
    stop = threading.Event()
    thread = threading.Thread(target=run_heartbeats, kwargs={"dsn": dsn, "interval_seconds": interval_seconds,
                                                             "stop": stop, "log": log, "keep": keep},
                              daemon=True, name="dbprotect-heartbeat")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=30)
