"""Running ``pg_restore``: the restore itself (parallel, interruptible, each table reported as it commits), ``--list``.

The password travels in ``PGPASSWORD``, never on the command line; the tool is the one matching
the archive's server major (:func:`dbprotect.core.pg.tools.require_tool_for_server`).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from dbprotect.core.errors import IntegrityError, ToolError
from dbprotect.core.pg.tools import require_tool_for_server, split_password, tool_env

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


def run_pg_restore(archive: Path, dsn: str, *, server_major: int, jobs: int | None = None,
                   keep_owners: bool = False, pg_bin_dir: str | None = None,
                   progress: Progress | None = None,
                   on_table_data: Callable[[int], None] | None = None) -> None:
    """``pg_restore -j N --exit-on-error`` of ``archive`` into ``dsn``; kills it if interrupted.

    ``keep_owners=False`` adds ``--no-owner --no-acl``: a scratch server need not have the
    source's roles. The password travels in ``PGPASSWORD``, never on the command line.
    ``on_table_data`` is called (from another thread) with the TOC dump id of each TABLE DATA
    item as soon as pg_restore reports it finished, i.e. committed: from then on that table's
    content is final, so it can be verified while the rest of the archive is still restoring.
    pg_restore only reports finished items in parallel mode (``jobs`` > 1).
    """
    tool = require_tool_for_server("pg_restore", server_major, pg_bin_dir)
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
        raise ToolError(f"pg_restore failed (exit {proc.returncode}): {reason.removeprefix('pg_restore: ')}")


def list_archive(archive: Path, *, server_major: int, pg_bin_dir: str | None = None) -> str:
    """``pg_restore --list`` of the archive file: its table of contents as text."""
    tool = require_tool_for_server("pg_restore", server_major, pg_bin_dir)
    out = subprocess.run([str(tool.path), "--list", str(archive)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise IntegrityError(f"pg_restore --list cannot read the archive: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


