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
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
_ENVIRONMENT_FAILURE = re.compile(
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
    if _ENVIRONMENT_FAILURE.search(reason):
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
        while True:
            if progress:
                progress("restore")
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
        proc.stderr.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        reason = errors[-1] if errors else (tail[-1] if tail else "")
        raise _failure("pg_restore", proc.returncode, reason)


def _run_filtered(choice: RestoreTool, archive: Path, dsn: str, *, keep_owners: bool, place: ToolPlace,
                  progress: Progress | None) -> None:
    """``pg_restore -f -`` without the lines the older target rejects, into ``psql -v ON_ERROR_STOP=1``.

    The script is what pg_restore would have sent over its own connection (same options, same
    order); psql stops at the first error as ``--exit-on-error`` does. A newer psql talks to an
    older server (it understands the script's ``\\restrict`` lines, which an older minor may not).
    """
    psql = select_tool("psql", at_least=choice.tool.major, prefer=choice.tool.major, dsn=dsn, place=place)
    target, password = split_password(dsn)
    env = tool_env(password)
    dump_args = [str(choice.tool.path), "--file=-"]
    if not keep_owners:
        dump_args += ["--no-owner", "--no-acl"]
    script = subprocess.Popen([*dump_args, str(archive)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
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
        if _ENVIRONMENT_FAILURE.search(reason):
            raise ToolError(f"{tool.path} ({tool.text}) cannot read this archive: {reason}",
                            hint=f"use pg_restore {wanted} or newer (pg_bin_dir, pg_bin_dirs); "
                                 "the backup was not judged")
        raise IntegrityError(f"pg_restore --list cannot read the archive: {[reason]}")
    return out.stdout


