"""A point-in-time restore by hand from a full base *plus an incremental*, with stock tools only.

docs/store-format.md's chain block (``age -d | zstd -d | tar -x`` per base, ``pg_combinebackup``) is read
from the document and run as written; then its stock ``restore_command`` (``age -d … | zstd -d``) replays
the WAL to a time after the incremental. The restored server must hold exactly the rows committed before
that time: those written before the incremental, those written after it and before the target, and not
the one written after the target. A wrong document (or a chain in the wrong order) fails this test.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyrage
import pytest

from dbprotect.core.config.load import load_config
from dbprotect.core.continuous.base import take_base_backup
from dbprotect.core.continuous.pitr import free_port
from dbprotect.core.pg.tools import require_tool_for_server
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect_tests.test_continuous_pitr import _insert, _notes, _open_for_server
from dbprotect_tests.test_continuous_wal import (
    continuous_config,
    start_receiver,
    stop_receiver,
    switch_and_wait_shipped,
    wait_for,
    wait_streaming,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("age") and shutil.which("zstd") and shutil.which("tar")),
                                 reason="the by-hand restore needs the stock age, zstd and tar on PATH")]

DOC = Path(__file__).resolve().parents[1] / "docs" / "store-format.md"
#: This file's rows on the shared WAL server (see ``_insert``) and its note prefix.
PREFIX = "byhand-incr-"


def _chain_block() -> list[str]:
    """The fenced block of the document that combines a chain: its lines, the first one (the example's
    variables) left out, since the test sets S, FULL and INCR itself."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    [block] = [b for b in blocks if "pg_combinebackup full incr -o base" in b]
    lines = block.strip().splitlines()
    assert lines[0].startswith("S=") and "FULL=" in lines[0] and "INCR=" in lines[0]
    return lines[1:]


def _doc_line(pattern: str) -> str:
    [line] = [line for line in DOC.read_text(encoding="utf-8").splitlines() if re.match(pattern, line)]
    return line


def test_by_hand_pitr_from_a_full_base_and_an_incremental_with_stock_tools(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path, age_keys: tuple[str, str],
        identity: pyrage.x25519.Identity) -> None:
    slot = "dbprotect_test_byhand_incr"
    config_path = continuous_config(write_config, wal_server, slot)
    config = load_config(config_path)
    storage = FilesystemStorage(tmp_path / "store")
    receiver = start_receiver(config_path, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, slot)
        full = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                recipients=config.keys.raw.recipients, incremental=False)
        _insert(wal_server, PREFIX + "a", range(1_100_000, 1_100_400))
        with psycopg.connect(wal_server, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        time.sleep(1.5)  # WAL summaries catch up before the incremental
        incremental = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                       recipients=config.keys.raw.recipients, incremental=True, identity=identity)
        assert incremental.kind == "incremental" and incremental.parent == full.base_id
        time.sleep(1.1)  # the target stays clearly after the incremental's end
        _insert(wal_server, PREFIX + "b", range(1_100_400, 1_100_460))
        target, _ = _insert(wal_server, PREFIX + "c", range(1_100_460, 1_100_470))
        time.sleep(1.1)
        _insert(wal_server, PREFIX + "d", range(1_100_470, 1_100_471))  # one row after the target
        switch_and_wait_shipped(wal_server, storage)
    finally:
        stop_receiver(receiver, wal_server, slot)

    # the key as an operator keeps it: a file only the server's OS user (which runs restore_command) reads
    keys = tmp_path / "keys"
    keys.mkdir()
    key_file = keys / "raw-backups.agekey"
    key_file.write_text(age_keys[0] + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    server_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if server_user:
        os.chown(key_file, server_user.pw_uid, server_user.pw_gid)
        _open_for_server(keys)
        _open_for_server(tmp_path / "store")
        for path in (tmp_path / "store").rglob("*"):
            path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))

    # 1. the chain, exactly as documented, in a folder holding the key by its documented name
    pg_combinebackup = require_tool_for_server("pg_combinebackup", 18, None).path
    work = tmp_path / "byhand"
    work.mkdir()
    (work / "raw-backups.agekey").symlink_to(key_file)
    env = {**os.environ, "PATH": f"{Path(pg_combinebackup).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "S": str(tmp_path / "store/shop/continuous/base"), "FULL": full.base_id, "INCR": incremental.base_id}
    script = "\n".join(_chain_block())

    # counter-test first: the chain named in the wrong order stops at the parent check, unpacking nothing
    swapped = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, capture_output=True,
                             text=True, env={**env, "FULL": incremental.base_id, "INCR": full.base_id})
    assert swapped.returncode != 0 and not (work / "full").exists() and not (work / "base").exists()

    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    data = work / "base"
    assert (data / "PG_VERSION").is_file() and (data / "backup_label").is_file()
    assert not (work / "full").exists() and not (work / "incr").exists()
    assert f"START WAL LOCATION: {incremental.start_lsn}" in (data / "backup_label").read_text(encoding="utf-8")

    # 2. recovery with the documented stock restore_command (paths made this store's and this key's)
    restore_line = (_doc_line(r"^restore_command = 'f=%f;")
                    .replace("/store/fintech/", f"{tmp_path / 'store'}/shop/")
                    .replace("/keys/raw-backups.agekey", str(key_file)))
    assert "dbprotect" not in restore_line
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

        wait_for(promoted, "the by-hand restore of the chain to reach its target and promote", 120)
        # before the incremental, after it and before the target: present; after the target: absent
        assert _notes(dsn, PREFIX) == {PREFIX + "a": 400, PREFIX + "b": 60, PREFIX + "c": 10}
        server_log = log.read_text(errors="replace")
        assert "recovery stopping before commit" in server_log and "restored log file" in server_log
    finally:
        subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
