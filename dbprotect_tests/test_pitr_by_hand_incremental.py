"""A point-in-time restore by hand from a full base *plus an incremental*, with stock tools only.

docs/store-format.md's chain block (``age -d | zstd -d | tar -x`` per base, ``pg_combinebackup``) is read
from the document and run as written; then its stock ``restore_command`` (``age -d … | zstd -d``) replays
the WAL to a time after the incremental. The restored server must hold exactly the rows committed before
that time: those written before the incremental, those written after it and before the target, and not
the one written after the target. A wrong document (or a chain in the wrong order) fails this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest

from dbprotect.core.continuous.base import take_base_backup
from dbprotect.core.pg.tools import require_tool_for_server
from dbprotect_tests.continuous_helpers import (
    NEEDS_STOCK_TOOLS,
    STORE_FORMAT_DOC,
    continuous_setup,
    documented_restore_line,
    operator_key,
    receiving,
    recovered_by_hand,
    switch_wal,
)
from dbprotect_tests.test_continuous_pitr import _insert, _notes
from dbprotect_tests.test_continuous_wal import switch_and_wait_shipped

pytestmark = [pytest.mark.slow, NEEDS_STOCK_TOOLS]

#: This file's rows on the shared WAL server (see ``_insert``) and its note prefix.
PREFIX = "byhand-incr-"


def _chain_block() -> list[str]:
    """The fenced block of the document that combines a chain: its lines, the first one (the example's
    variables) left out, since the test sets S, FULL and INCR itself."""
    blocks = re.findall(r"```bash\n(.*?)```", STORE_FORMAT_DOC.read_text(encoding="utf-8"), flags=re.S)
    [block] = [b for b in blocks if "pg_combinebackup full incr -o base" in b]
    lines = block.strip().splitlines()
    assert lines[0].startswith("S=") and "FULL=" in lines[0] and "INCR=" in lines[0]
    return lines[1:]


def test_by_hand_pitr_from_a_full_base_and_an_incremental_with_stock_tools(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path, age_keys: tuple[str, str],
        identity: pyrage.x25519.Identity) -> None:
    slot = "dbprotect_test_byhand_incr"
    config_path, config, storage = continuous_setup(write_config, wal_server, slot, tmp_path)
    with receiving(config_path, wal_server, slot, tmp_path / "receiver.log"):
        full = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                recipients=config.keys.raw.recipients, incremental=False)
        _insert(wal_server, PREFIX + "a", range(1_100_000, 1_100_400))
        switch_wal(wal_server)
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
    key_file, server_user = operator_key(tmp_path, age_keys[0])

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
    restore_line = documented_restore_line(tmp_path, key_file)
    assert "dbprotect" not in restore_line
    with recovered_by_hand(tmp_path, work, data, server_user, restore_line, target,
                           "the by-hand restore of the chain to reach its target and promote") as dsn:
        # before the incremental, after it and before the target: present; after the target: absent
        assert _notes(dsn, PREFIX) == {PREFIX + "a": 400, PREFIX + "b": 60, PREFIX + "c": 10}
        server_log = (data / "server.log").read_text(errors="replace")
        assert "recovery stopping before commit" in server_log and "restored log file" in server_log
