"""The by-hand point-in-time restore that docs/store-format.md documents, run with stock tools only.

The commands are read from the document itself (the base's ``age -d | zstd -d | tar -x`` line and the
``restore_command`` line), so a wrong document fails this test. Against a filesystem store written by the
real receiver and base backup; PostgreSQL's own ``pg_ctl`` starts the result, which must hold exactly the
rows committed before the target time.
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


def _doc_line(pattern: str) -> str:
    [line] = [line for line in DOC.read_text(encoding="utf-8").splitlines() if re.match(pattern, line)]
    return line



def test_by_hand_pitr_with_stock_tools_as_documented(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path, age_keys: tuple[str, str]) -> None:
    slot = "dbprotect_test_byhand"
    config_path = continuous_config(write_config, wal_server, slot)
    config = load_config(config_path)
    storage = FilesystemStorage(tmp_path / "store")
    receiver = start_receiver(config_path, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, slot)
        take_base_backup(database="shop", dsn=wal_server, storage=storage, recipients=config.keys.raw.recipients,
                         incremental=False)
        time.sleep(1.1)
        _insert(wal_server, "pitr-hand-a", range(300_000, 300_300))
        target, _ = _insert(wal_server, "pitr-hand-b", range(300_300, 300_320))
        time.sleep(1.1)
        _insert(wal_server, "pitr-hand-c", range(300_320, 300_400))
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

    # 1. the base, exactly as documented (run in a folder holding the object and the key by their doc names)
    [base_folder] = (tmp_path / "store/shop/continuous/base").iterdir()
    work = tmp_path / "byhand"
    work.mkdir()
    (work / "base.tar.zst.age").symlink_to(base_folder / "base.tar.zst.age")
    (work / "raw-backups.agekey").symlink_to(key_file)
    unpack = _doc_line(r"^mkdir -m 700 base && age -d ")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", unpack], cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = work / "base"
    assert (data / "PG_VERSION").is_file() and (data / "backup_label").is_file()

    # 2. recovery with the documented restore_command (paths made this store's and this key's)
    restore_line = _doc_line(r"^restore_command = 'f=%f;")
    restore_line = (restore_line.replace("/store/fintech/", f"{tmp_path / 'store'}/shop/")
                    .replace("/keys/raw-backups.agekey", str(key_file)))
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
    started = subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-l", str(data / "server.log"), "-w", "-t",
                              "120", "-o", f"-c port={port} -c listen_addresses='' -k {socket_dir}", "start"],
                             capture_output=True, text=True)
    try:
        assert started.returncode == 0, (data / "server.log").read_text(errors="replace")[-2000:]
        dsn = f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"

        def promoted() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row is not None and not row[0])

        wait_for(promoted, "the by-hand restore to reach its target and promote", 120)
        assert _notes(dsn, "pitr-hand-") == {"pitr-hand-a": 300, "pitr-hand-b": 20}
    finally:
        subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
