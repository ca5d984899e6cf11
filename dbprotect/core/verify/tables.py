"""Every table of a restored database against the manifest: row count and content checksum.

Reading every table back is most of the cost of verifying, so :class:`TableVerifier` overlaps the
restore: pg_restore runs with ``--verbose``, and each table is digested as soon as pg_restore
reports its TABLE DATA item finished (committed; nothing later in the archive changes a table's
rows), over one connection per job, largest table first, while pg_restore goes on loading the
other tables and building indexes. Large tables are read through ``psql`` in big buffers, and the
largest in page ranges over all connections at once. Every table is digested under the session
settings the manifest recorded (:func:`dbprotect.core.backup.content.pin_session`), so its checksum
is comparable with the one taken as pg_dump streamed it, and its problems are worded by :func:`_judge`.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from dbprotect.core.backup.archive import TableDigest
from dbprotect.core.backup.content import (
    DUMP_SESSION,
    column_identifiers,
    digest_copy_psql,
    digest_table,
    digest_table_psql,
    pin_session,
)
from dbprotect.core.errors import ToolError
from dbprotect.core.pg.pg_restore import default_jobs
from dbprotect.core.pg.tools import connect, require_tool_for_server, split_password
from dbprotect.core.store.manifest import Manifest

#: Tables with at least this many rows are digested through psql (a process start, about 20 ms,
#: against about 2 µs a row saved); smaller ones over the worker's own psycopg connection.
PSQL_MIN_ROWS = 20_000


#: Tables with at least this many rows are read in page ranges over all workers at once, so the
#: largest table (usually the last one loaded) does not leave one worker reading alone.
SPLIT_MIN_ROWS = 200_000


# Pages of a table, and the columns ``COPY table TO`` gives (not dropped, not generated).
_TABLE_PAGES = """
SELECT pg_relation_size(c.oid) / current_setting('block_size')::int,
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'
"""


@dataclass
class _Split:
    """A table being read in parts: what the parts finished so far add up to."""

    remaining: int
    digest: TableDigest = field(default_factory=TableDigest)
    problem: str | None = None


@dataclass(frozen=True)
class _Part:
    copy: sql.Composable
    split: _Split


@dataclass(frozen=True, order=True)
class _TableJob:
    order: int  # minus the row count: the largest table first
    qualified: str
    schema: str = field(compare=False)
    name: str = field(compare=False)
    #: The copied columns as names, from the manifest (None: the table's own columns).
    columns: tuple[str, ...] | None = field(compare=False)
    rows: int = field(compare=False)
    checksum: str = field(compare=False)


class TableVerifier:
    """Every manifest table's row count and checksum, digested over ``workers`` connections at once.

    Why: reading each table back with COPY is most of a restore's verification, and on one
    connection it leaves the other cores idle. Tables are *released* one by one, as soon as
    pg_restore reports their data committed (:meth:`release`, given the TOC dump ids via
    :meth:`expect`), so most of them are verified while pg_restore is still loading other tables
    and building indexes; :meth:`finish` releases the rest and returns the problems, one line per
    table in table-name order (:func:`_judge`'s words). The digest is the same (:func:`digest_table`'s, or
    :func:`digest_table_psql`'s for large tables), with the session settings from the manifest.
    Use as a context manager: leaving it early (a failed restore, an interrupt) cancels the
    digests in flight and waits for the workers, so no connection outlives the block.
    """

    def __init__(self, dsn: str, manifest: Manifest, *, workers: int | None = None,
                 server_major: int | None = None, pg_bin_dir: str | None = None) -> None:
        self._dsn = dsn
        self._settings = {**DUMP_SESSION, **manifest.checksum.get("session", {})}
        self._target, self._password = split_password(dsn)
        self._psql: Path | None = None
        with contextlib.suppress(ToolError):
            self._psql = require_tool_for_server("psql", server_major or 0, pg_bin_dir, dsn=dsn).path
        self._jobs: dict[str, _TableJob] = {}
        for qualified, record in manifest.tables.items():
            schema, name = record.location(qualified)
            self._jobs[qualified] = _TableJob(-record.rows, qualified, schema, name, record.column_names,
                                              record.rows, record.checksum)
        self._workers = max(1, min(workers or default_jobs(), len(self._jobs) or 1))
        self._by_dump_id: dict[int, str] = {}
        self._released: set[str] = set()
        self._queue: queue.PriorityQueue[tuple[int, int, int, _TableJob | None, _Part | None]] = \
            queue.PriorityQueue()
        self._seq = itertools.count()
        self._problems: dict[str, str] = {}
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._busy: dict[int, psycopg.Connection | subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        #: Tables handed to the workers by :meth:`release`, i.e. while pg_restore was still running.
        self.released_early = 0

    def __enter__(self) -> TableVerifier:
        for number in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"dbprotect-verify-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, listing: str) -> None:
        """Learn each table's TOC dump id from ``pg_restore --list`` output.

        Left out, and so verified only by :meth:`finish` once the whole restore is done: a table
        whose TABLE DATA line can be read as more than one manifest table (names with spaces),
        and every attached partition (``TABLE ATTACH``), because data loaded through the
        partition root (``--load-via-partition-root``) may route rows into another partition.
        """
        names = {(job.schema, job.name): qualified for qualified, job in self._jobs.items()}
        found: dict[str, list[int]] = collections.defaultdict(list)
        for line in listing.splitlines():
            head, sep, text = line.partition("; ")
            parts = text.split(" ", 2)
            if not sep or not head.isdigit() or len(parts) < 3:
                continue
            desc = next((d for d in ("TABLE DATA ", "TABLE ATTACH ") if parts[2].startswith(d)), None)
            if desc is None:
                continue
            words = parts[2].removeprefix(desc).split(" ")
            matches = {names[key] for i in range(1, len(words)) for j in range(i + 1, len(words) + 1)
                       if (key := (" ".join(words[:i]), " ".join(words[i:j]))) in names}
            for qualified in matches:
                found[qualified] += [int(head)] if len(matches) == 1 and desc == "TABLE DATA " else [-1, -1]
        with self._lock:
            self._by_dump_id = {ids[0]: qualified for qualified, ids in found.items() if len(ids) == 1}

    def release(self, dump_id: int) -> None:
        """pg_restore finished the TABLE DATA item ``dump_id``: verify that table now."""
        with self._lock:
            qualified = self._by_dump_id.get(dump_id)
            if qualified is None or qualified in self._released:
                return
            self._released.add(qualified)
            self.released_early += 1
        self._put(self._jobs[qualified])

    def release_all(self) -> None:
        """Hand every table not released yet to the workers now, without waiting for them.

        Why: the caller has other comparisons to run meanwhile (the catalog, the definitions'
        ``pg_dump``); the table reads should not wait for those to finish.
        """
        with self._lock:
            rest = [job for qualified, job in self._jobs.items() if qualified not in self._released]
            self._released.update(self._jobs)
        for job in sorted(rest):
            self._put(job)

    def finish(self) -> list[str]:
        """Verify the tables not released yet, wait for all, and return the problems by table name."""
        self.release_all()
        self._stop_workers(cancel=False)
        if self._failure is not None:
            raise self._failure
        return [self._problems[qualified] for qualified in sorted(self._problems)]

    def close(self) -> None:
        """Cancel what is in flight and wait for the workers (a no-op after :meth:`finish`)."""
        self._stop_workers(cancel=True)

    def _stop_workers(self, *, cancel: bool) -> None:
        if not self._threads:
            return
        if cancel:
            self._stopping.set()
            with self._lock:
                busy = list(self._busy.values())
            for handle in busy:
                with contextlib.suppress(Exception):
                    if isinstance(handle, subprocess.Popen):
                        handle.kill()
                    else:
                        handle.cancel_safe(timeout=5)
        for _ in self._threads:
            self._queue.put((1, 0, next(self._seq), None, None))  # after every table already queued
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _put(self, job: _TableJob, part: _Part | None = None) -> None:
        self._queue.put((0, job.order, next(self._seq), job, part))

    def _work(self) -> None:
        conn: psycopg.Connection | None = None
        me = threading.get_ident()

        def connection() -> psycopg.Connection:
            nonlocal conn
            if conn is None:
                conn = connect(self._dsn, autocommit=True, application_name="dbprotect-verify")
                pin_session(conn, self._settings)
            return conn

        try:
            while True:
                _, _, _, job, part = self._queue.get()
                if job is None or self._stopping.is_set():
                    return
                if part is None and self._psql is not None and self._workers > 1 and job.rows >= SPLIT_MIN_ROWS:
                    parts = self._split(job, connection())
                    for other in parts[1:]:
                        self._put(job, other)
                    part = parts[0] if parts else None
                if part is not None:
                    outcome = self._digest_part(job, part)
                elif self._psql is not None and job.rows >= PSQL_MIN_ROWS:
                    outcome = self._digest(job, None)
                else:
                    outcome = self._digest(job, connection())
                if outcome:
                    with self._lock:
                        self._problems[job.qualified] = outcome
        except BaseException as exc:  # handed to the thread calling finish()
            if not self._stopping.is_set():
                self._failure = self._failure or exc
            self._stopping.set()
        finally:
            with self._lock:
                self._busy.pop(me, None)
            if conn is not None:
                conn.close()

    def _split(self, job: _TableJob, conn: psycopg.Connection) -> list[_Part]:
        """Page ranges of a large table, one per worker; none when it cannot or need not be split.

        Each part is ``COPY (SELECT <the columns COPY of the table gives> FROM ONLY t WHERE ctid
        in a page range) TO STDOUT``: the same rows, rendered by the same output functions, as
        ``COPY t TO STDOUT``, and every row in exactly one part (the last range is open). Needs
        PostgreSQL 14's TID range scans; on older servers each part would read the whole table.
        """
        if conn.info.server_version < 140000:
            return []
        try:
            row = conn.execute(_TABLE_PAGES, (job.schema, job.name)).fetchone()
        except psycopg.Error:
            conn.rollback()
            return []
        if row is None or not (job.columns or row[1]) or int(row[0]) < 2 * self._workers:
            return []
        pages, columns = int(row[0]), job.columns or tuple(row[1])
        split = _Split(self._workers)
        bounds = [pages * i // self._workers for i in range(self._workers)] + [None]
        target = sql.Identifier(job.schema, job.name)
        parts = []
        for lo, hi in itertools.pairwise(bounds):
            where = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({lo},0)"))
            if hi is not None:
                where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({hi},0)"))
            copy = sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT").format(
                column_identifiers(columns), target, where)
            parts.append(_Part(copy, split))
        return parts

    def _digest_part(self, job: _TableJob, part: _Part) -> str | None:
        """One part of a split table; the last part to finish judges the whole table."""
        me = threading.get_ident()

        def started(handle: subprocess.Popen[bytes]) -> None:
            with self._lock:
                self._busy[me] = handle
            if self._stopping.is_set():
                handle.kill()

        problem = None
        try:
            digest = digest_copy_psql(self._psql, self._target, self._password,  # type: ignore[arg-type]
                                      self._settings, part.copy, started=started)
        except psycopg.Error as exc:
            problem = f"{job.qualified}: cannot be read after restore ({' '.join(str(exc).split())[:120]})"
        finally:
            with self._lock:
                self._busy.pop(me, None)
        with self._lock:
            split = part.split
            if problem:
                split.problem = split.problem or problem
            else:
                split.digest.add(digest)
            split.remaining -= 1
            if split.remaining:
                return None
        return split.problem or _judge(job, split.digest)

    def _digest(self, job: _TableJob, conn: psycopg.Connection | None) -> str | None:
        me = threading.get_ident()

        def started(handle: psycopg.Connection | subprocess.Popen[bytes]) -> None:
            with self._lock:
                self._busy[me] = handle
            if self._stopping.is_set() and isinstance(handle, subprocess.Popen):
                handle.kill()

        try:
            if conn is None:
                digest = digest_table_psql(self._psql, self._target, self._password,  # type: ignore[arg-type]
                                           self._settings, job.schema, job.name, job.columns, started=started)
            else:
                started(conn)
                digest = digest_table(conn, job.schema, job.name, job.columns)
        except psycopg.Error as exc:
            if conn is not None:
                conn.rollback()
            return f"{job.qualified}: cannot be read after restore ({' '.join(str(exc).split())[:120]})"
        finally:
            with self._lock:
                self._busy.pop(me, None)
        return _judge(job, digest)


def _judge(job: _TableJob, digest: TableDigest) -> str | None:
    """The problem with a table's digest against the manifest (rows first, then the checksum), or None."""
    if digest.rows != job.rows:
        return f"{job.qualified}: {digest.rows} rows restored, manifest says {job.rows}"
    if digest.checksum != job.checksum:
        return (f"{job.qualified}: content checksum {digest.checksum} differs from the manifest's "
                f"{job.checksum} ({job.rows} rows)")
    return None


