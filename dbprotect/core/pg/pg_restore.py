"""Running ``pg_restore``: the restore itself (parallel, interruptible, each table reported as it commits), ``--list``.

The password travels in ``PGPASSWORD``, never on the command line. The tool (:func:`restore_tool`)
must read the archive (at least the major of the pg_dump that wrote it) and is preferably of the
target server's major. When only a newer one exists, a restore into an older server would fail on
the settings newer pg_restores send first (``SET transaction_timeout = 0`` from 17 on, which a 13-16
server rejects): the restore then runs as ``pg_restore -f -`` piped through a filter that drops
exactly those lines, into ``psql`` (one connection, so tables are verified after it, not during).
That is the decision for "18 -> 15": handled, because the archive's own SQL comes from the source
server, which is no newer than the target (an older target than the source is refused earlier).
Failures of the environment (no fitting tool, an unreadable archive version, a lost or refused
connection) are :class:`ToolError` / :class:`DatabaseError`, never counted against the backup;
anything else pg_restore rejects is an :class:`IntegrityError` (the backup does not restore).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from dbprotect.core.errors import DatabaseError, IntegrityError, ToolError
from dbprotect.core.pg.tools import ToolPlace, ToolVersion, connect, select_tool, server_major, split_password, tool_env

CHUNK = 1 << 20

#: Called with the phase name repeatedly while pg_restore runs; raising from it (e.g.
#: KeyboardInterrupt) kills pg_restore and aborts cleanly.
Progress = Callable[[str], None]


POLL_SECONDS = 0.25


def default_jobs() -> int:
    """pg_restore -j: as many jobs as cores."""
    return max(1, os.cpu_count() or 1)


#: A ``pg_restore --verbose`` line saying a table's data is loaded and committed (parallel mode).
_DATA_DONE = re.compile(r"finished item (\d+) TABLE DATA ")


#: Its other progress lines (not errors, warnings, details or hints), left out of error reports.
_PROGRESS_LINE = re.compile(r"pg_restore: (?!error:|warning:|detail:|hint:)")


#: Lines a pg_restore of major >= key sends before anything else, which servers older than key reject.
NEWER_SETTINGS: dict[int, tuple[bytes, ...]] = {17: (b"SET transaction_timeout = 0;",)}

#: pg_restore messages that mean the environment failed (tool, server, connection), not the archive.
ENVIRONMENT_FAILURE = re.compile(
    r"unsupported version \(\d+\.\d+\) in file header|unrecognized configuration parameter|"
    r"SSL support is not compiled in|connection to server .* failed|could not connect|"
    r"server closed the connection unexpectedly|terminating connection due to administrator command|"
    r"no connection to the server|could not open extension control file", re.I)


def archive_dump_major(archive: Path) -> int | None:
    """The major of the pg_dump that wrote a custom-format archive, from its header; None if unreadable.

    Header: ``PGDMP``, version major/minor/revision, int size, offset size, format, compression
    (a byte from 1.15 on, an int before), seven date ints, then the database name, the server
    version and the pg_dump version as length-prefixed strings (an int is a sign byte + int size bytes).
    """
    try:
        with archive.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if head[:5] != b"PGDMP" or len(head) < 11:
        return None
    version, int_size, pos = (head[5], head[6]), head[8], 11
    if not 1 <= int_size <= 8:
        return None

    def read_int() -> int:
        nonlocal pos
        sign, raw = head[pos], head[pos + 1:pos + 1 + int_size]
        pos += 1 + int_size
        value = int.from_bytes(raw, "little")
        return -value if sign else value

    try:
        if version >= (1, 15):
            pos += 1
        else:
            read_int()
        for _ in range(7):
            read_int()
        strings = []
        for _ in range(3):
            length = read_int()
            strings.append(head[pos:pos + max(length, 0)].decode("ascii", errors="replace"))
            pos += max(length, 0)
    except IndexError:
        return None
    match = re.match(r"(\d+)", strings[2])
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RestoreTool:
    """The pg_restore for one restore, and whether its output must be filtered for an older target."""

    tool: ToolVersion
    target_major: int
    rejected: tuple[bytes, ...]

    @property
    def filtered(self) -> bool:
        return bool(self.rejected)


def restore_tool(archive_major: int, target_major: int, *, dsn: str | None = None,
                 place: ToolPlace = None) -> RestoreTool:
    """pg_restore able to read an archive of ``archive_major`` into a ``target_major`` server (its own
    major preferred), with the settings lines the target would reject (:data:`NEWER_SETTINGS`)."""
    tool = select_tool("pg_restore", at_least=archive_major, prefer=target_major, dsn=dsn, place=place,
                       newer_than="the archive's pg_dump")
    rejected = tuple(line for since, lines in NEWER_SETTINGS.items() if tool.major >= since > target_major
                     for line in lines)
    return RestoreTool(tool, target_major, rejected)


def _target_major(dsn: str) -> int:
    with connect(dsn, autocommit=True, application_name="dbprotect-restore") as conn:
        return server_major(conn)


def _failure(tool: str, returncode: int, reason: str) -> Exception:
    reason = reason.removeprefix(f"{tool}: ")
    message = f"{tool} failed (exit {returncode}): {reason}"
    if ENVIRONMENT_FAILURE.search(reason):
        if re.search(r"connect|connection", reason, re.I):
            return DatabaseError(message, hint="the server was unreachable or went away; the backup was not judged")
        return ToolError(message, hint="the restore environment (tools or server) does not fit this archive; "
                                       "the backup was not judged")
    return IntegrityError(message)


def run_pg_restore(archive: Path, dsn: str, *, server_major: int, jobs: int | None = None,
                   keep_owners: bool = False, pg_bin_dir: ToolPlace = None,
                   progress: Progress | None = None,
                   on_table_data: Callable[[int], None] | None = None, archive_major: int | None = None) -> None:
    """``pg_restore -j N --exit-on-error`` of ``archive`` into ``dsn``; kills it if interrupted.

    ``keep_owners=False`` adds ``--no-owner --no-acl``: a scratch server need not have the
    source's roles. The password travels in ``PGPASSWORD``, never on the command line.
    ``on_table_data`` is called (from another thread) with the TOC dump id of each TABLE DATA
    item as soon as pg_restore reports it finished, i.e. committed: from then on that table's
    content is final, so it can be verified while the rest of the archive is still restoring.
    pg_restore only reports finished items in parallel mode (``jobs`` > 1).
    ``server_major``: the archive's source server; ``archive_major``: its pg_dump's (read from the
    header when not given). The tool is chosen per target server (:func:`restore_tool`).
    """
    archive_major = archive_major or archive_dump_major(archive) or server_major
    choice = restore_tool(archive_major, _target_major(dsn), dsn=dsn, place=pg_bin_dir)
    if choice.filtered:
        _run_filtered(choice, archive, dsn, keep_owners=keep_owners, place=pg_bin_dir, progress=progress)
        return
    tool = choice.tool
    target, password = split_password(dsn)
    args = [str(tool.path), "--exit-on-error", f"--jobs={jobs or default_jobs()}", "--no-password",
            f"--dbname={target}"]
    if not keep_owners:
        args += ["--no-owner", "--no-acl"]
    if on_table_data:
        args.append("--verbose")
    env = tool_env(password)
    if on_table_data:  # untranslated progress lines; a translated one would only delay the checks
        env["LC_MESSAGES"] = "C"
        if "LC_ALL" in env:
            env["LC_ALL"] = "C"
    proc = subprocess.Popen([*args, str(archive)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    errors: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def read_stderr() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            line = raw.decode("utf-8", errors="replace").strip()
            done = _DATA_DONE.search(line) if on_table_data else None
            if done:
                on_table_data(int(done.group(1)))  # type: ignore[misc]
            elif line and not (on_table_data and _PROGRESS_LINE.match(line)):
                tail.append(line)
                if "error" in line.lower() and len(errors) < 20:
                    errors.append(line)

    reader = threading.Thread(target=read_stderr, name="pg_restore-stderr", daemon=True)
    reader.start()
    try:
        _wait(proc, progress)
    finally:
        reader.join()
        proc.stderr.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        reason = errors[-1] if errors else (tail[-1] if tail else "")
        raise _failure("pg_restore", proc.returncode, reason)


def _run_filtered(choice: RestoreTool, archive: Path | Feed, dsn: str, *, keep_owners: bool, place: ToolPlace,
                  progress: Progress | None, extra_args: tuple[str, ...] = ()) -> None:
    """``pg_restore -f -`` without the lines the older target rejects, into ``psql -v ON_ERROR_STOP=1``.

    The script is what pg_restore would have sent over its own connection (same options, same
    order); psql stops at the first error as ``--exit-on-error`` does. A newer psql talks to an
    older server (it understands the script's ``\\restrict`` lines, which an older minor may not).
    ``archive``: a file, or a :data:`Feed` that streams it into pg_restore's standard input.
    """
    psql = select_tool("psql", at_least=choice.tool.major, prefer=choice.tool.major, dsn=dsn, place=place)
    target, password = split_password(dsn)
    env = tool_env(password)
    dump_args = [str(choice.tool.path), "--file=-", *extra_args]
    if not keep_owners:
        dump_args += ["--no-owner", "--no-acl"]
    streamed = not isinstance(archive, Path)
    script = subprocess.Popen([*dump_args, *([] if streamed else [str(archive)])],
                              stdin=subprocess.PIPE if streamed else subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    feeder = _Feeder(archive, script, whole=False) if streamed else None  # type: ignore[arg-type]
    loader = subprocess.Popen([str(psql.path), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password",
                               f"--dbname={target}"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env)
    stderr: dict[str, bytes] = {}

    def pump() -> None:
        try:
            for line in script.stdout:  # type: ignore[union-attr]
                if line.rstrip(b"\r\n") in choice.rejected:
                    continue
                loader.stdin.write(line)  # type: ignore[union-attr]
        except OSError:
            pass  # psql stopped at an error: its stderr says which
        finally:
            with contextlib.suppress(OSError):
                loader.stdin.close()  # type: ignore[union-attr]

    def drain(name: str, proc: subprocess.Popen[bytes]) -> None:
        stderr[name] = proc.stderr.read()  # type: ignore[union-attr]

    threads = [threading.Thread(target=pump, daemon=True),
               threading.Thread(target=drain, args=("pg_restore", script), daemon=True),
               threading.Thread(target=drain, args=("psql", loader), daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while loader.poll() is None or script.poll() is None:
            if progress:
                progress("restore")
            with contextlib.suppress(subprocess.TimeoutExpired):
                loader.wait(timeout=POLL_SECONDS)
            if loader.poll() is not None and script.poll() is None:
                script.kill()
    finally:
        for proc in (script, loader):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for thread in threads:
            thread.join(timeout=10)
        if feeder:
            feeder.join()
    if feeder:
        feeder.raise_failure()  # a damaged archive or a failed store first: it is why the tools stopped
    for name, proc in (("psql", loader), ("pg_restore", script)):  # psql's error first: it stopped pg_restore
        if proc.returncode != 0:
            lines = [line for line in stderr.get(name, b"").decode("utf-8", "replace").splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower()]
            raise _failure(name, proc.returncode, (errors or lines or [""])[-1].strip())


def list_archive(archive: Path, *, server_major: int, pg_bin_dir: ToolPlace = None,
                 archive_major: int | None = None) -> str:
    """``pg_restore --list`` of the archive file: its table of contents as text (a tool that can read
    the archive: as new as the pg_dump that wrote it)."""
    wanted = archive_major or archive_dump_major(archive) or server_major
    tool = select_tool("pg_restore", at_least=wanted, place=pg_bin_dir,
                       newer_than="the archive's pg_dump")
    out = subprocess.run([str(tool.path), "--list", str(archive)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or [""])[-1]
        if ENVIRONMENT_FAILURE.search(reason):
            raise ToolError(f"{tool.path} ({tool.text}) cannot read this archive: {reason}",
                            hint=f"use pg_restore {wanted} or newer (pg_bin_dir, pg_bin_dirs); "
                                 "the backup was not judged")
        raise IntegrityError(f"pg_restore --list cannot read the archive: {[reason]}")
    return out.stdout




# -- the streaming restore: no plaintext file ---------------------------------------------------

#: Streams the plaintext archive into the callable it is given; ``whole``: to the end, checked
#: against the manifest (else the consumer may stop early). Returns whether it reached the end.
Feed = Callable[[Callable[[bytes], object], bool], bool]

#: A ``-- Data for Name: …; Type: TABLE DATA; …`` comment of ``pg_restore -f -``: the next COPY is that table's.
_DATA_COMMENT = re.compile(rb"^-- Data for Name: .*; Type: TABLE DATA; Schema: ")
_COPY_LINE = re.compile(rb"^COPY .* FROM stdin;$")
_COPY_END = b"\n\\.\n"


class _Feeder:
    """A thread that streams the archive into a process's standard input, then closes it."""

    def __init__(self, feed: Feed, proc: subprocess.Popen[bytes], *, whole: bool) -> None:
        self._feed, self._proc, self._whole = feed, proc, whole
        self.failure: BaseException | None = None
        self.finished = False
        self._aborted = False
        self._consumer_gone = False
        #: CPU time of the feeding thread: fetching, SHA-256, age and zstd (and the pipe writes).
        self.cpu = 0.0
        self._thread = threading.Thread(target=self._run, name="dbprotect-feed", daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        """Into the process; in a whole pass, once it stopped reading, on to the end unwritten (the
        SHA-256 of the whole object is still checked), unless the restore is being abandoned."""
        if self._aborted:
            raise BrokenPipeError("the restore stopped")
        if self._consumer_gone:
            return
        try:
            self._proc.stdin.write(data)  # type: ignore[union-attr]
        except BrokenPipeError:
            if not self._whole:
                raise
            self._consumer_gone = True

    def abort(self) -> None:
        """Stop feeding at the next chunk (the restore failed: no need to read the rest of the store)."""
        self._aborted = True

    def _run(self) -> None:
        started = time.thread_time()
        try:
            self.finished = self._feed(self._write, self._whole)
        except BaseException as exc:  # handed to the thread that waits for it
            if not self._aborted:  # after an abort, the failure that caused it is the one to report
                self.failure = exc
        finally:
            self.cpu = time.thread_time() - started
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # type: ignore[union-attr]

    def join(self) -> None:
        self._thread.join()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


def _wait(proc: subprocess.Popen[bytes], progress: Progress | None) -> None:
    try:
        while True:
            if progress:
                progress("restore")
            try:
                proc.wait(timeout=POLL_SECONDS)
                return
            except subprocess.TimeoutExpired:
                continue
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _section(choice: RestoreTool, feed: Feed, dsn: str, args: list[str], *, keep_owners: bool,
             place: ToolPlace, progress: Progress | None, items: list[str] | None = None) -> None:
    """One section (``--section=pre-data`` / ``post-data``, or a ``-L`` list) restored from a stream.

    pg_restore reads the archive from its standard input and stops once it has what it needs
    (these sections live in the table of contents, at the archive's start); the feed then ends quietly.
    ``items``: restore only these lines of the table of contents (``-L``), handed over through a
    pipe (``/dev/fd/N``), so not even the list touches the disk.
    """
    if choice.filtered:
        if items is not None:
            raise ValueError("a -L list is not supported on the filtered path")
        _run_filtered(choice, feed, dsn, keep_owners=keep_owners, place=place, progress=progress,
                      extra_args=tuple(args))
        return
    target, password = split_password(dsn)
    command = [str(choice.tool.path), "--exit-on-error", "--no-password", f"--dbname={target}", *args]
    if not keep_owners:
        command += ["--no-owner", "--no-acl"]
    list_read = list_write = -1
    if items is not None:
        list_read, list_write = os.pipe()
        command.append(f"--use-list=/dev/fd/{list_read}")
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=tool_env(password), pass_fds=(list_read,) if items is not None else ())
    except BaseException:
        if items is not None:
            os.close(list_write)
        raise
    finally:
        if items is not None:
            os.close(list_read)
    if items is not None:
        threading.Thread(target=_write_list, args=(list_write, items), daemon=True).start()
    feeder = _Feeder(feed, proc, whole=False)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        _wait(proc, progress)
    finally:
        feeder.join()
        reader.join()
        proc.stderr.close()  # type: ignore[union-attr]
    feeder.raise_failure()
    if proc.returncode != 0:
        lines = [line.strip() for line in b"".join(err).decode("utf-8", "replace").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        raise _failure("pg_restore", proc.returncode, (errors or lines or [""])[-1])


def _write_list(fd: int, items: list[str]) -> None:
    """Write a ``-L`` list into the pipe pg_restore reads it from (a thread: it may exceed the pipe's buffer)."""
    with contextlib.suppress(OSError), os.fdopen(fd, "wb") as out:
        out.write("".join(f"{line}\n" for line in items).encode("utf-8"))


def _table_data_ids(listing: str) -> list[int]:
    """The TOC dump ids of the TABLE DATA items, in archive order (the order ``pg_restore -f -`` writes them)."""
    ids = []
    for line in listing.splitlines():
        head, sep, text = line.partition("; ")
        parts = text.split(" ", 2)
        if sep and head.isdigit() and len(parts) == 3 and parts[2].startswith("TABLE DATA "):
            ids.append(int(head))
    return ids


_ABORT = object()
_END = object()
_STOP = object()

#: A table's COPY stays on one connection until this many bytes of it were routed; beyond that,
#: each further block of rows goes to the least busy connection, so a large table loads over all
#: of them at once (pg_restore -j loads a table on one connection only, but it has a seekable
#: file and loads two tables at once; one stream can only be split by rows).
SPLIT_MIN_BYTES = 8 << 20


class _Aborted(Exception):
    """Raised inside a COPY to roll it back."""


class _TableLoad:
    """One table's COPY from the script, in one part per connection that got some of its rows.

    The table is loaded (committed, final) once the router has passed its terminator and every
    part has committed; only then is it reported, so a table is never verified or indexed while
    one of its parts is still loading.
    """

    def __init__(self, statement: bytes, dump_id: int | None, table: bytes | None) -> None:
        self.statement, self.dump_id, self.table = statement, dump_id, table
        self.workers: list[_CopyWorker] = []
        self.routed = 0
        self.committed = 0
        self.all_routed = False


class _CopyWorker:
    """One connection loading COPY parts, each committed on its own, on its own thread.

    Its inbox holds, in order: a :class:`_TableLoad` (open its COPY), blocks of whole rows, and
    ``_END`` (commit that part); ``_STOP`` ends the thread, ``_ABORT`` rolls back what is open.
    """

    def __init__(self, dsn: str, session: list[bytes], done: Callable[[_CopyWorker, _TableLoad | None], None]) -> None:
        self._dsn, self._session, self._done = dsn, session, done
        self.inbox: queue.Queue[object] = queue.Queue(maxsize=8)
        self.failure: BaseException | None = None
        self.cpu = 0.0
        self._aborting = False
        self._thread = threading.Thread(target=self._run, name="dbprotect-copy", daemon=True)
        self._thread.start()

    def put(self, item: object) -> None:
        """Hand the worker a message; waits while its inbox is full, raising the worker's failure."""
        while True:
            if self.failure is not None:
                raise self.failure  # the table failed to load: the restore stops here
            with contextlib.suppress(queue.Full):
                self.inbox.put(item, timeout=POLL_SECONDS)
                return

    def stop(self) -> None:
        self.put(_STOP)
        self._thread.join()

    def abort(self) -> None:
        """Roll back the part being loaded, if any, and end the thread (the restore failed)."""
        self._aborting = True
        with contextlib.suppress(queue.Full):
            self.inbox.put_nowait(_ABORT)
        self._thread.join(timeout=30)

    def _next(self) -> object:
        item = self.inbox.get()
        if item is _ABORT or self._aborting:
            raise _Aborted
        return item

    def _run(self) -> None:
        conn = None
        started = time.thread_time()
        try:
            conn = connect(self._dsn, application_name="dbprotect-restore")
            for statement in self._session:
                conn.execute(statement.decode("utf-8"))
            conn.commit()
            while isinstance(load := self._next(), _TableLoad):
                with conn.cursor() as cur, cur.copy(load.statement.decode("utf-8")) as copy:
                    while (block := self._next()) is not _END:
                        copy.write(block)  # type: ignore[arg-type]
                conn.commit()
                self._done(self, load)
        except _Aborted:
            return
        except BaseException as exc:  # handed to the loader, which stops the restore
            self.failure = exc
            self._done(self, None)
            with contextlib.suppress(queue.Empty):  # unblock the loader if it was writing to us
                while True:
                    self.inbox.get_nowait()
        finally:
            self.cpu = time.thread_time() - started
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


class _DataLoader:
    """The data section of ``pg_restore -f -``, routed by blocks of rows into parallel COPY connections.

    Statements outside COPY (settings, sequence values, large objects) run in order on one
    connection. COPY data is passed through as blocks of whole rows (up to a read's size, cut at
    the last row end: no per-row work in Python). A table starts on the least busy connection;
    a large one (over :data:`SPLIT_MIN_BYTES`) is then spread over all ``jobs`` connections, each
    with its own COPY of the same table, while the next tables already start on whichever is
    free. Each part is committed on its own; a table is reported to ``on_table_data`` and
    ``on_table_loaded`` once all its parts are in. Any failure aborts every part still open
    and the caller drops the staging database.
    """

    def __init__(self, dsn: str, *, jobs: int, rejected: tuple[bytes, ...], table_ids: list[int],
                 on_table_data: Callable[[int], None] | None,
                 on_table_loaded: Callable[[bytes], None] | None = None) -> None:
        self._dsn, self._jobs, self._rejected = dsn, max(1, jobs), rejected
        self._table_ids, self._next_table = table_ids, 0
        self._on_table_data = on_table_data
        self._on_table_loaded = on_table_loaded
        self._session: list[bytes] = []
        self._statement: list[bytes] = []
        self._data_started = False
        self._control = connect(dsn, autocommit=True, application_name="dbprotect-restore")
        self._workers: list[_CopyWorker] = []
        self._copying: _TableLoad | None = None
        self._current: _CopyWorker | None = None  # the worker taking the rows of the open COPY
        self._row_start = True  # the buffer begins at a row's start (where ``\.`` ends the data)
        self._pending_id: int | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        #: Tables whose rows went over more than one connection.
        self.tables_split = 0

    @property
    def copy_cpu_seconds(self) -> float:
        """CPU time of the COPY threads (psycopg's ``copy.write``), known once they ended."""
        return sum(worker.cpu for worker in self._workers)

    def _part_done(self, worker: _CopyWorker, load: _TableLoad | None) -> None:
        if worker.failure is not None or load is None:
            return
        with self._lock:
            load.committed += 1
            finished = load.all_routed and load.committed == len(load.workers)
        if finished:
            self._table_done(load)

    def _table_done(self, load: _TableLoad) -> None:
        if load.dump_id is not None and self._on_table_data:
            self._on_table_data(load.dump_id)
        if load.table is not None and self._on_table_loaded:
            self._on_table_loaded(load.table)

    def _check_workers(self) -> None:
        for worker in self._workers:
            if worker.failure is not None:
                raise worker.failure

    def _least_busy(self) -> _CopyWorker:
        if len(self._workers) < self._jobs:
            worker = _CopyWorker(self._dsn, list(self._session), self._part_done)
            self._workers.append(worker)
            return worker
        return min(self._workers, key=lambda w: w.inbox.qsize())

    def _send(self, block: bytes) -> None:
        """Rows of the open COPY to a worker: where the row began, or (at a row start) where it fits best."""
        load = self._copying
        assert load is not None
        worker = self._current
        if worker is None or (self._row_start and load.routed >= SPLIT_MIN_BYTES and self._jobs > 1):
            worker = self._least_busy()
        if worker not in load.workers:
            with self._lock:
                load.workers.append(worker)
            if len(load.workers) == 2:
                self.tables_split += 1
            worker.put(load)
        self._current = worker
        worker.put(block)
        load.routed += len(block)

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the script."""
        self._buffer = self._buffer + data if self._buffer else data
        while self._buffer:
            if self._copying is not None:
                if not self._copy_part():
                    return
                continue
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                return
            self._buffer = rest
            self._line(line)

    def _copy_part(self) -> bool:
        """Forward the open COPY's rows up to its terminator; False when more input is needed."""
        buffer = self._buffer
        if self._row_start and buffer[:3] == b"\\.\n":  # the terminator at a row start
            self._end_copy(3)
            return True
        if self._row_start and len(buffer) < 3 and b"\\.\n".startswith(buffer):
            return False  # maybe the terminator's beginning
        index = buffer.find(_COPY_END)
        if index >= 0:
            self._send(buffer[:index + 1])
            self._end_copy(index + len(_COPY_END))
            return True
        last = buffer.rfind(b"\n")
        if last >= 0:  # whole rows; the rest is a row's beginning (or the terminator's)
            self._send(buffer[:last + 1])
            self._buffer = buffer[last + 1:]
            self._row_start = True
            return False
        if len(buffer) >= CHUNK:  # inside one long row: on to where it began
            self._send(buffer)
            self._buffer = b""
            self._row_start = False
        return False

    def _end_copy(self, consumed: int) -> None:
        load = self._copying
        assert load is not None
        self._buffer = self._buffer[consumed:]
        self._copying, self._current, self._row_start = None, None, True
        with self._lock:
            load.all_routed = True
            finished = load.committed == len(load.workers)
        for worker in load.workers:
            worker.put(_END)
        if finished:  # an empty table: no part at all
            self._table_done(load)
        self._check_workers()

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not self._statement:
            if not line or line.startswith(b"\\") or (line.startswith(b"--") and not _DATA_COMMENT.match(line)):
                return  # blank, a psql meta-command (\restrict), a comment
            if _DATA_COMMENT.match(line):
                self._pending_id = (self._table_ids[self._next_table]
                                    if self._next_table < len(self._table_ids) else None)
                self._next_table += 1
                return
            if _COPY_LINE.match(line):
                self._data_started = True
                self._copying = _TableLoad(line, self._pending_id, _copy_target(line))
                self._pending_id = None
                self._current, self._row_start = None, True
                return
            if line in self._rejected:
                return
        self._statement.append(line)
        if line.endswith(b";"):
            statement = b"\n".join(self._statement)
            self._statement = []
            if not self._data_started:
                self._session.append(statement)
            self._control.execute(statement.decode("utf-8"))

    def finish(self) -> None:
        """Wait for every table to be committed; raise what any worker raised."""
        try:
            if self._copying is not None or self._buffer.strip() or self._statement:
                raise IntegrityError("pg_restore's data section ended inside a COPY or a statement")
            for worker in self._workers:
                worker.stop()
            self._check_workers()
        finally:
            self.close()

    def close(self) -> None:
        """End every worker: a part still loading is rolled back (idempotent)."""
        for worker in self._workers:
            worker.abort()
        with contextlib.suppress(Exception):
            self._control.close()

def _load_data(choice: RestoreTool, feed: Feed, dsn: str, *, jobs: int, listing: str,
               on_table_data: Callable[[int], None] | None, progress: Progress | None,
               post_data: _PostData | None = None, usage: dict[str, float] | None = None) -> None:
    """The data section from one whole, checked pass over the archive, into ``jobs`` COPY connections.

    ``post_data`` is told each table whose data committed (its indexes and constraints may be
    built now) and is checked for a failure at every chunk: one failed post-data worker stops the load.
    ``usage`` gets where the client's CPU time went (see :data:`DATA_USAGE`), for the bench.
    """
    script = subprocess.Popen([str(choice.tool.path), "--section=data", "--file=-"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tool_env(None))
    feeder = _Feeder(feed, script, whole=True)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(script.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    loader = None
    routing = 0.0
    tool_cpu = 0.0
    try:
        loader = _DataLoader(dsn, jobs=jobs, rejected=choice.rejected, table_ids=_table_data_ids(listing),
                             on_table_data=on_table_data,
                             on_table_loaded=post_data.table_loaded if post_data else None)
        started = time.thread_time()
        while chunk := script.stdout.read(CHUNK):  # type: ignore[union-attr]  # whole blocks: fewer hand-overs
            if progress:
                progress("restore")
            if post_data:
                post_data.raise_failure()
            loader.feed(chunk)
        routing = time.thread_time() - started
        tool_cpu = _reap(script)
        feeder.join()
        feeder.raise_failure()  # damaged, truncated, or not the manifest's object: before anything else
        if script.returncode != 0:
            lines = [line.strip() for line in b"".join(err).decode("utf-8", "replace").splitlines() if line.strip()]
            raise _failure("pg_restore", script.returncode, (lines or [""])[-1])
        loader.finish()
        if usage is not None:
            usage.update({"restore_data_feed_cpu": round(feeder.cpu, 3), "restore_data_tool_cpu": round(tool_cpu, 3),
                          "restore_data_route_cpu": round(routing, 3),
                          "restore_data_copy_cpu": round(loader.copy_cpu_seconds, 3),
                          "restore_data_tables_split": loader.tables_split})
    except psycopg.Error as exc:
        feeder.abort()
        if script.poll() is None:
            script.kill()
        feeder.join()
        feeder.raise_failure()
        reason = " ".join(str(exc).split())
        if isinstance(exc, psycopg.OperationalError) and ENVIRONMENT_FAILURE.search(reason):
            raise DatabaseError(f"restoring the data failed: {reason}",
                                hint="the server was unreachable or went away; the backup was not judged") from None
        raise IntegrityError(f"restoring the data failed: {reason}") from None
    except BaseException:
        feeder.abort()
        if script.poll() is None:
            script.kill()
        feeder.join()
        if feeder.failure is not None and isinstance(feeder.failure, Exception):
            raise feeder.failure from None
        raise
    finally:
        if script.poll() is None:
            script.kill()
        script.wait()
        reader.join()
        for stream in (script.stdout, script.stderr):
            stream.close()  # type: ignore[union-attr]
        if loader is not None:
            loader.close()


#: What ``usage`` of :func:`_load_data` holds: CPU seconds of the feeding thread (store, SHA-256,
#: age, zstd), of pg_restore writing the script, of the routing thread, and of the COPY threads.
DATA_USAGE = ("restore_data_feed_cpu", "restore_data_tool_cpu", "restore_data_route_cpu", "restore_data_copy_cpu")


def _reap(proc: subprocess.Popen[bytes]) -> float:
    """Wait for ``proc`` and return its CPU seconds (user + system), from ``wait4``."""
    if proc.returncode is not None:
        return 0.0
    try:
        _, status, rusage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # reaped elsewhere
        proc.wait()
        return 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return rusage.ru_utime + rusage.ru_stime


# -- post-data in parallel, each table's indexes as soon as its data is in -----------------------

#: A possibly schema-qualified name as pg_dump prints it (``public.t``, ``"My Schema"."a ""b"""``).
_NAME = rb'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_QUALIFIED = rb"(" + _NAME + rb"(?:\." + _NAME + rb")?)"
_COPY_TARGET = re.compile(rb"^COPY " + _QUALIFIED + rb" ")
#: The first statement pg_dump writes for an INDEX and for a CONSTRAINT item: the table it is on.
_ITEM_TABLE = {"INDEX": re.compile(rb"^CREATE (?:UNIQUE )?INDEX " + _NAME + rb" ON (?:ONLY )?" + _QUALIFIED + rb" "),
               "CONSTRAINT": re.compile(rb"^ALTER TABLE (?:ONLY )?" + _QUALIFIED + rb"$")}
#: Post-data items built per table and in parallel: each touches only its own table. Everything
#: else (foreign keys, index attachments, triggers, rules, policies, NOT VALID checks, comments,
#: materialized view data, ...) runs afterwards, in archive order, on one connection.
PER_TABLE_KINDS = tuple(_ITEM_TABLE)
#: A foreign key as pg_dump writes it: ``ALTER TABLE [ONLY] <table>`` then, on the next line,
#: ``    ADD CONSTRAINT <name> FOREIGN KEY (<columns>) REFERENCES <table>(``.
FOREIGN_KEY = "FK CONSTRAINT"
_FK_TABLE = re.compile(rb"^ALTER TABLE (?:ONLY )?" + _QUALIFIED + rb"$")
_FK_REFERENCES = re.compile(rb"^    ADD CONSTRAINT " + _NAME + rb" FOREIGN KEY \(" + _NAME + rb"(?:, " + _NAME
                            + rb")*\) REFERENCES " + _QUALIFIED + rb"\(")
#: A ``-- Name: …; Type: …; Schema: …; Owner: …`` header of one item in ``pg_restore -f -``.
_ITEM_HEADER = re.compile(rb"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: (.*)$")


def _copy_target(copy_line: bytes) -> bytes | None:
    match = _COPY_TARGET.match(copy_line)
    return match.group(1) if match else None


@dataclass
class PostDataPlan:
    """The post-data section split for parallel work.

    ``per_table``: the table (as pg_dump names it) -> the TOC lines of its indexes and
    constraints, each group built once that table's data is committed; ``unmapped``: indexes and
    constraints whose table is not known (built once all data is in); ``per_table_ids``: the dump
    ids of all of those; the rest of the post-data section runs after them
    (:data:`PER_TABLE_KINDS`).
    """

    per_table: dict[bytes, list[str]]
    unmapped: list[str]
    per_table_ids: set[int]
    #: Foreign keys that may run before the data is all in: (dump id, TOC line, its table, the
    #: table it references). Empty unless every index and constraint was paired with its table.
    foreign: list[tuple[int, str, bytes, bytes]] = field(default_factory=list)


def _listing_items(listing: str, kinds: tuple[str, ...] = PER_TABLE_KINDS) -> list[tuple[int, str, str]]:
    """(dump id, kind, line) of every item of a ``pg_restore --list`` listing whose kind is one of ``kinds``."""
    items = []
    for line in listing.splitlines():
        head, sep, text = line.partition("; ")
        parts = text.split(" ", 2)
        if sep and head.isdigit() and len(parts) == 3:
            kind = next((k for k in kinds if parts[2].startswith(k + " ")), None)
            if kind and not (kind == "INDEX" and parts[2].startswith("INDEX ATTACH ")):  # needs both indexes: later
                items.append((int(head), kind, line))
    return items


def plan_post_data(listing: str, script: bytes) -> PostDataPlan:
    """Which table each index and constraint of the archive is on, from the post-data script.

    ``script`` is ``pg_restore --section=post-data -f -`` (only the table of contents: no data).
    Its item headers come in the listing's order; each per-table item's header must match its
    listing line exactly (kind, schema, name, owner), and the item's first statement names the
    table. If the headers and the listing do not pair up one to one (a name crafted to look like
    a header, an unknown pg_dump format), no item is mapped: all are built after the data, still
    in parallel. A mapping only decides *when* an item runs and on which connection; pg_restore
    runs the archive's own items, never text parsed here.
    """
    items = _listing_items(listing)
    headers: list[tuple[str, str, int]] = []  # (kind, listing text, index of the header line)
    lines = script.split(b"\n")
    for index, line in enumerate(lines):
        match = _ITEM_HEADER.match(line)
        if match and match.group(2).decode("utf-8", "replace") in PER_TABLE_KINDS:
            tag, kind, schema, owner = (part.decode("utf-8", "replace") for part in match.groups())
            headers.append((kind, f"{kind} {schema} {tag} {owner}", index))
    ids = {dump_id for dump_id, _, _ in items}
    if len(headers) != len(items):
        return PostDataPlan({}, [line for _, _, line in items], ids)
    per_table: dict[bytes, list[str]] = {}
    unmapped: list[str] = []
    for (dump_id, kind, line), (header_kind, text, at) in zip(items, headers, strict=True):
        del dump_id
        if header_kind != kind or line.partition("; ")[2].split(" ", 2)[2] != text:
            return PostDataPlan({}, [line for _, _, line in items], ids)
        table = None
        for following in lines[at + 1:at + 12]:  # the header's closing "--", blank lines, SETs
            match = _ITEM_TABLE[kind].match(following)
            if match:
                table = match.group(1)
                break
            if _ITEM_HEADER.match(following):
                break
        if table is None:
            unmapped.append(line)
        else:
            per_table.setdefault(table, []).append(line)
    foreign = _plan_foreign_keys(listing, lines) if not unmapped else []
    return PostDataPlan(per_table, unmapped, ids, foreign)


def _plan_foreign_keys(listing: str, lines: list[bytes]) -> list[tuple[int, str, bytes, bytes]]:
    """Each foreign key of the archive with its table and the table it references; [] unless all pair.

    Paired like the indexes (headers and listing lines one to one, in order, exactly equal); a
    foreign key whose two statements do not read as pg_dump writes them (a crafted name, another
    form) makes the whole list empty: every foreign key then runs after the data, as before. A
    wrong pairing could only start a foreign key early, which would fail a good backup; hence
    all or nothing. Why only with every index paired (the caller's rule): a foreign key needs the
    unique index it references, which must be built before it, and only a paired index is known
    to be built with its table. Nor with partitions (attachments in the listing): an index on a
    partitioned table is valid only once every partition's is attached, after the data.
    """
    if _listing_items(listing, ("TABLE ATTACH", "INDEX ATTACH")):
        return []  # partitions: a partitioned table's unique index is valid only once every part is attached
    items = _listing_items(listing, (FOREIGN_KEY,))
    headers: list[tuple[str, int]] = []
    for index, line in enumerate(lines):
        match = _ITEM_HEADER.match(line)
        if match and match.group(2) == FOREIGN_KEY.encode():
            tag, kind, schema, owner = (part.decode("utf-8", "replace") for part in match.groups())
            headers.append((f"{kind} {schema} {tag} {owner}", index))
    if len(headers) != len(items):
        return []
    foreign = []
    for (dump_id, _, line), (text, at) in zip(items, headers, strict=True):
        if line.partition("; ")[2].split(" ", 2)[2] != text:
            return []
        following = [candidate for candidate in lines[at + 1:at + 12] if candidate and candidate != b"--"
                     and not candidate.startswith((b"SET ", b"SELECT pg_catalog.set_config"))]
        table = _FK_TABLE.match(following[0]) if following else None
        referenced = _FK_REFERENCES.match(following[1]) if len(following) > 1 else None
        if table is None or referenced is None:
            return []
        foreign.append((dump_id, line, table.group(1), referenced.group(1)))
    return foreign


class _Stopped(Exception):
    """A post-data worker is told to stop: another one, or the data load, failed."""


class _PostData:
    """Indexes and constraints built by ``jobs`` workers, each table's as soon as its data committed.

    Each batch is one ``pg_restore --section=post-data -L`` over its own stream of the archive
    (only the table of contents is read). The first failure stops every other worker (their
    pg_restore is killed) and the data load; the staging database is then dropped by the caller.
    """

    def __init__(self, choice: RestoreTool, feed: Feed, dsn: str, plan: PostDataPlan, *, jobs: int,
                 keep_owners: bool, place: ToolPlace) -> None:
        self._choice, self._feed, self._dsn = choice, feed, dsn
        self._keep_owners, self._place = keep_owners, place
        self._waiting = dict(plan.per_table)
        self._ready: list[tuple[bytes | None, list[str]]] = []
        self._unmapped = plan.unmapped
        self._closing = False
        self._stop = False
        self.failure: BaseException | None = None
        self.built_early = 0  # groups started before the whole data section was in
        #: Tables whose data committed and whose indexes and constraints (if any) are built.
        self._settled: set[bytes] = set()
        self._loaded: set[bytes] = set()
        self._foreign = list(plan.foreign)  # in archive order; taken by the foreign-key lane
        #: Dump ids of the foreign keys the lane took: they are left out of what runs after the data.
        self.foreign_ids: set[int] = set()
        self._cond = threading.Condition()
        self._workers = [threading.Thread(target=self._run, name="dbprotect-post-data", daemon=True)
                         for _ in range(max(1, jobs))]
        if self._foreign:
            self._workers.append(threading.Thread(target=self._run_foreign, name="dbprotect-foreign-keys",
                                                  daemon=True))
        for worker in self._workers:
            worker.start()

    def table_loaded(self, table: bytes) -> None:
        with self._cond:
            self._loaded.add(table)
            group = self._waiting.pop(table, None)
            if group:
                self._ready.append((table, group))
            elif table not in self._settled:
                self._settled.add(table)  # no index or constraint of its own to wait for
            self._cond.notify_all()

    def data_done(self) -> None:
        """All data is in: whatever still waits (partitioned parents, unmapped items) may be built."""
        with self._cond:
            self._ready.extend(self._waiting.items())
            self._waiting.clear()
            if self._unmapped:
                self._ready.append((None, self._unmapped))
            self._closing = True
            self._cond.notify_all()

    def _take(self) -> tuple[list[bytes], list[str]] | None:
        with self._cond:
            while not self._ready and not self._closing and not self._stop:
                self._cond.wait()
            if self._stop or not self._ready:
                return None
            builders = len(self._workers) - (1 if self._foreign_lane else 0)
            share = -(-len(self._ready) // builders)  # ceil: leave some for the others
            taken = self._ready[:share]
            del self._ready[:share]
            if not self._closing:
                self.built_early += share
            return ([table for table, _ in taken if table is not None],
                    [line for _, group in taken for line in group])

    @property
    def _foreign_lane(self) -> bool:
        return bool(self._workers) and self._workers[-1].name == "dbprotect-foreign-keys"

    def _take_foreign(self) -> list[str] | None:
        """The foreign keys whose two tables are settled, in archive order; None once the data is all in.

        Why one lane, one batch at a time: a foreign key locks both its tables (SHARE ROW
        EXCLUSIVE, which conflicts with itself), so two running at once on crossed tables could
        deadlock; one after another they cannot. A table is settled once its data committed and
        its own indexes and constraints were built (the unique index a key references among them;
        a failed build never settles its table, so nothing depending on it runs). Whatever is not
        taken before the data is all in runs after it with the rest of post-data, as before.
        """
        with self._cond:
            while True:
                if self._stop or self._closing:
                    return None
                ready = [item for item in self._foreign if item[2] in self._settled and item[3] in self._settled]
                if ready:
                    self._foreign = [item for item in self._foreign if item not in ready]
                    self.foreign_ids.update(dump_id for dump_id, _, _, _ in ready)
                    return [line for _, line, _, _ in ready]
                self._cond.wait()

    def _run_foreign(self) -> None:
        while (batch := self._take_foreign()) is not None:
            if not self._build(batch):
                return

    def _check_stop(self, _phase: str) -> None:
        if self._stop:
            raise _Stopped

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            tables, batch = taken
            if not self._build(batch):
                return
            with self._cond:
                self._settled.update(table for table in tables if table in self._loaded)
                self._cond.notify_all()

    def _build(self, batch: list[str]) -> bool:
        """One ``-L`` batch; False (every worker told to stop) when it failed."""
        try:
            _section(self._choice, self._feed, self._dsn, ["--section=post-data"], keep_owners=self._keep_owners,
                     place=self._place, progress=self._check_stop, items=batch)
        except BaseException as exc:
            with self._cond:
                if self.failure is None and not isinstance(exc, _Stopped):
                    self.failure = exc
                self._stop = True
                self._cond.notify_all()
            return False
        return True

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def abort(self) -> None:
        """Stop every worker (their pg_restore is killed at its next poll) and wait for them."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()

    def wait(self, progress: Progress | None) -> None:
        """Wait until every batch is built; the first failure is raised (the others were stopped)."""
        for worker in self._workers:
            while worker.is_alive():
                if progress:
                    progress("restore")
                worker.join(timeout=POLL_SECONDS)
        self.raise_failure()


class _Background:
    """A call on its own thread; :meth:`result` waits for it and raises what it raised."""

    def __init__(self, call: Callable[..., bytes], *args: object) -> None:
        self._value = b""
        self._failure: BaseException | None = None

        def run() -> None:
            try:
                self._value = call(*args)
            except BaseException as exc:  # handed to the thread that waits for it
                self._failure = exc

        self._thread = threading.Thread(target=run, name="dbprotect-plan", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> bytes:
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        return self._value


def _post_data_script(choice: RestoreTool, feed: Feed) -> bytes:
    """``pg_restore --section=post-data -f -`` from a stream: the post-data SQL, read only to plan it."""
    proc = subprocess.Popen([str(choice.tool.path), "--section=post-data", "--file=-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=tool_env(None))
    feeder = _Feeder(feed, proc, whole=False)
    try:
        out = proc.stdout.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None and feeder.failure is not None:
            proc.kill()
        proc.wait()
        feeder.join()
        proc.stdout.close()  # type: ignore[union-attr]
    feeder.raise_failure()
    return out if proc.returncode == 0 else b""


def run_pg_restore_streamed(feed: Feed, dsn: str, *, listing: str, server_major: int, archive_major: int,
                            jobs: int | None = None, keep_owners: bool = False, pg_bin_dir: ToolPlace = None,
                            progress: Progress | None = None,
                            on_table_data: Callable[[int], None] | None = None,
                            timings: dict[str, float] | None = None) -> None:
    """Restore an archive that is never a file: pre-data, data, post-data, each from its own stream.

    Why not ``pg_restore -j``: it needs a seekable file, i.e. the plaintext archive on disk. Here
    pre-data and post-data live in the table of contents at the archive's start, so pg_restore
    stops reading after a few megabytes; the data section is one whole pass (SHA-256 and size
    checked at its end) whose tables load ``jobs`` at a time on their own connections (a large
    table's rows spread over all of them, :class:`_DataLoader`), each committed and reported to
    ``on_table_data`` once all of it is in. Post-data, as ``pg_restore -j``
    does it: each table's indexes and constraints are built (``jobs`` workers, ``-L`` lists) as
    soon as that table's data committed, while the other tables still load; then the rest of the
    post-data section (foreign keys, attachments, triggers, policies, ...) in archive order. A
    restore that fails anywhere stops every worker and leaves only its staging database, which
    the caller drops. ``timings`` gets ``restore_pre_data_seconds``, ``restore_data_seconds``
    (with the indexes built meanwhile) and ``restore_post_data_seconds`` (what is left after the data),
    and the data section's CPU use (:data:`DATA_USAGE`).
    """
    choice = restore_tool(archive_major, _target_major(dsn), dsn=dsn, place=pg_bin_dir)
    del server_major  # the tool is chosen by the archive's pg_dump and the target
    timings = {} if timings is None else timings
    jobs = jobs or default_jobs()
    started = time.perf_counter()
    planning = None if choice.filtered else _Background(_post_data_script, choice, feed)  # beside pre-data
    try:
        _section(choice, feed, dsn, ["--section=pre-data"], keep_owners=keep_owners, place=pg_bin_dir,
                 progress=progress)
    except BaseException:
        if planning:
            planning.join()  # the pre-data failure is the one to report
        raise
    script = planning.result() if planning else b""
    timings["restore_pre_data_seconds"] = round(time.perf_counter() - started, 3)
    if choice.filtered:  # one psql connection: no parallel post-data
        started = time.perf_counter()
        _load_data(choice, feed, dsn, jobs=jobs, listing=listing, on_table_data=on_table_data, progress=progress,
                   usage=timings)
        timings["restore_data_seconds"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        _section(choice, feed, dsn, ["--section=post-data"], keep_owners=keep_owners, place=pg_bin_dir,
                 progress=progress)
        timings["restore_post_data_seconds"] = round(time.perf_counter() - started, 3)
        return
    started = time.perf_counter()
    plan = plan_post_data(listing, script)
    post = _PostData(choice, feed, dsn, plan, jobs=jobs, keep_owners=keep_owners, place=pg_bin_dir)
    try:
        _load_data(choice, feed, dsn, jobs=jobs, listing=listing, on_table_data=on_table_data, progress=progress,
                   post_data=post, usage=timings)
        timings["restore_data_seconds"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        post.data_done()
        post.wait(progress)
    except BaseException:  # a failed worker's own failure is already the one raised (see _load_data)
        post.abort()
        raise
    timings["restore_post_data_groups_built_early"] = post.built_early
    timings["restore_foreign_keys_built_early"] = len(post.foreign_ids)
    rest = [line for line in listing.splitlines()
            if line.partition("; ")[0].isdigit()
            and int(line.partition("; ")[0]) not in plan.per_table_ids | post.foreign_ids]
    _section(choice, feed, dsn, ["--section=post-data"], keep_owners=keep_owners, place=pg_bin_dir,
             progress=progress, items=rest)
    timings["restore_post_data_seconds"] = round(time.perf_counter() - started, 3)
