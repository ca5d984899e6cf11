"""Steps the continuous-protection tests share, written once: a receiver streaming for the length of a
block, the WAL switch and segment lookups, the operator's key file, the lines of docs/store-format.md the
by-hand tests run, and a recovery started by hand with PostgreSQL's own ``pg_ctl``. A helper module, not
a pytest plugin: it holds no fixture and no test."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import yaml

from dbprotect.core.config.load import load_config
from dbprotect.core.config.model import Config
from dbprotect.core.continuous.heartbeat import read_heartbeats
from dbprotect.core.continuous.pitr import free_port
from dbprotect.core.pg.tools import require_tool_for_server
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect_tests.test_continuous_pitr import _open_for_server
from dbprotect_tests.test_continuous_wal import (
    continuous_config,
    start_receiver,
    stop_receiver,
    wait_for,
    wait_streaming,
)

#: The document whose by-hand commands the by-hand tests run as written.
STORE_FORMAT_DOC = Path(__file__).resolve().parents[1] / "docs" / "store-format.md"
#: The by-hand restore runs the stock tools the document names; without them there is nothing to test.
NEEDS_STOCK_TOOLS = pytest.mark.skipif(
    not (shutil.which("age") and shutil.which("zstd") and shutil.which("tar")),
    reason="the by-hand restore needs the stock age, zstd and tar on PATH")


def store_format_line(pattern: str) -> str:
    """The one line of docs/store-format.md matching ``pattern`` (more or none fails the test)."""
    [line] = [line for line in STORE_FORMAT_DOC.read_text(encoding="utf-8").splitlines() if re.match(pattern, line)]
    return line


def documented_restore_line(tmp_path: Path, key_file: Path) -> str:
    """The document's stock ``restore_command`` line, its example paths made this test's store and key."""
    return (store_format_line(r"^restore_command = 'f=%f;")
            .replace("/store/fintech/", f"{tmp_path / 'store'}/shop/")
            .replace("/keys/raw-backups.agekey", str(key_file)))


def heartbeat_config(write_config: Callable[..., Path], dsn: str, slot: str) -> Path:
    """A config whose ``shop`` streams from ``slot`` with a heartbeat a second (what a drill needs)."""
    path = write_config(dsn)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["databases"]["shop"]["continuous"] = {"slot": slot, "partial_upload_seconds": 1, "incremental": False,
                                              "heartbeat_seconds": 1}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def continuous_setup(write_config: Callable[..., Path], dsn: str, slot: str, tmp_path: Path, *,
                     heartbeats: bool = False) -> tuple[Path, Config, FilesystemStorage]:
    """A continuous test's start: the config file (``shop`` streaming from ``slot``; with a heartbeat a
    second when ``heartbeats``), that config loaded, and the filesystem store under ``tmp_path``."""
    config_path = (heartbeat_config if heartbeats else continuous_config)(write_config, dsn, slot)
    return config_path, load_config(config_path), FilesystemStorage(tmp_path / "store")


@contextmanager
def receiving(config_path: Path, dsn: str, slot: str, log: Path) -> Iterator[None]:
    """The real receiver streaming from ``slot`` for the block; stopped (its spool shipped, the slot
    dropped) however the block ends, so a failed test leaves no slot holding the shared server's WAL."""
    receiver = start_receiver(config_path, log)
    try:
        wait_streaming(dsn, slot)
        yield
    finally:
        stop_receiver(receiver, dsn, slot)


def switch_wal(dsn: str) -> None:
    """Close the current WAL segment: what is written next goes into a segment of its own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")


def segment_of(dsn: str, lsn: str) -> str:
    """The name of the WAL segment holding ``lsn`` (on the server's current timeline)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,)).fetchone()
    assert row is not None
    return str(row[0])


def wait_heartbeats_after(dsn: str, after: datetime, count: int) -> None:
    """Until ``count`` heartbeats were written after ``after`` (the receiver's writer, one a second):
    enough of them for a drill to choose a moment between two."""
    def written() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return len(read_heartbeats(conn, after=after))

    wait_for(lambda: written() >= count, f"{count} heartbeats after the base backup", 60)


def stop_after_lines(count: int) -> tuple[threading.Event, list[str], Callable[[str], None]]:
    """A heartbeat writer's ``stop`` and ``log``: the log keeps its lines and sets ``stop`` at the
    ``count``-th, so a writer that should carry on after failures is seen to do so ``count`` times."""
    stop = threading.Event()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if len(lines) == count:
            stop.set()

    return stop, lines, log


def operator_key(tmp_path: Path, age_secret: str) -> tuple[Path, pwd.struct_passwd | None]:
    """The key as an operator keeps it: a file only the server's OS user (which runs restore_command)
    reads; the store under ``tmp_path`` made readable to that user. Returns the key file and that user
    (``postgres`` when the tests run as root, else None: the server runs as us)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    key_file = keys / "raw-backups.agekey"
    key_file.write_text(age_secret + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    server_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if server_user:
        os.chown(key_file, server_user.pw_uid, server_user.pw_gid)
        _open_for_server(keys)
        _open_for_server(tmp_path / "store")
        for path in (tmp_path / "store").rglob("*"):
            path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))
    return key_file, server_user


@contextmanager
def recovered_by_hand(tmp_path: Path, work: Path, data: Path, server_user: pwd.struct_passwd | None,
                      restore_line: str, target: datetime, what: str) -> Iterator[str]:
    """Recover ``data`` (unpacked by hand in ``work``) to ``target`` with ``restore_line`` as an operator
    would: ``recovery.signal`` and the settings in ``postgresql.auto.conf``, started by ``pg_ctl`` as the
    server's user; yields the DSN of the promoted server (``what`` names the wait), stops it after."""
    (data / "pg_wal").mkdir(mode=0o700, exist_ok=True)
    (data / "recovery.signal").touch()
    with open(data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write(f"\n{restore_line}\nrecovery_target_time = '{target.isoformat(sep=' ')}'\n"
                   "recovery_target_action = 'promote'\n")
    socket_dir = tmp_path / "sock"
    socket_dir.mkdir()
    if server_user:
        _open_for_server(work)
        for path in [data, socket_dir, *data.rglob("*")]:
            os.chown(path, server_user.pw_uid, server_user.pw_gid, follow_symlinks=False)
    data.chmod(0o700)
    pg_ctl = require_tool_for_server("pg_ctl", 18, None).path
    as_user = ["runuser", "-u", "postgres", "--"] if server_user else []
    port = free_port()
    log = data / "server.log"
    started = subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-l", str(log), "-w", "-t", "120",
                              "-o", f"-c port={port} -c listen_addresses='' -k {socket_dir}", "start"],
                             capture_output=True, text=True)
    try:
        assert started.returncode == 0, log.read_text(errors="replace")[-2000:]
        dsn = f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"

        def promoted() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row is not None and not row[0])

        wait_for(promoted, what, 120)
        yield dsn
    finally:
        subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
