"""The by-hand point-in-time restore that docs/store-format.md documents, run with stock tools only.

The commands are read from the document itself (the base's ``age -d | zstd -d | tar -x`` line and the
``restore_command`` line), so a wrong document fails this test. Against a filesystem store written by the
real receiver and base backup; PostgreSQL's own ``pg_ctl`` starts the result, which must hold exactly the
rows committed before the target time.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dbprotect.core.continuous.base import take_base_backup
from dbprotect_tests.continuous_helpers import (
    NEEDS_STOCK_TOOLS,
    continuous_setup,
    documented_restore_line,
    operator_key,
    receiving,
    recovered_by_hand,
    store_format_line,
)
from dbprotect_tests.test_continuous_pitr import _insert, _notes
from dbprotect_tests.test_continuous_wal import switch_and_wait_shipped

pytestmark = [pytest.mark.slow, NEEDS_STOCK_TOOLS]


def test_by_hand_pitr_with_stock_tools_as_documented(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path, age_keys: tuple[str, str]) -> None:
    slot = "dbprotect_test_byhand"
    config_path, config, storage = continuous_setup(write_config, wal_server, slot, tmp_path)
    with receiving(config_path, wal_server, slot, tmp_path / "receiver.log"):
        take_base_backup(database="shop", dsn=wal_server, storage=storage, recipients=config.keys.raw.recipients,
                         incremental=False)
        time.sleep(1.1)
        _insert(wal_server, "pitr-hand-a", range(300_000, 300_300))
        target, _ = _insert(wal_server, "pitr-hand-b", range(300_300, 300_320))
        time.sleep(1.1)
        _insert(wal_server, "pitr-hand-c", range(300_320, 300_400))
        switch_and_wait_shipped(wal_server, storage)
    key_file, server_user = operator_key(tmp_path, age_keys[0])

    # 1. the base, exactly as documented (run in a folder holding the object and the key by their doc names)
    [base_folder] = (tmp_path / "store/shop/continuous/base").iterdir()
    work = tmp_path / "byhand"
    work.mkdir()
    (work / "base.tar.zst.age").symlink_to(base_folder / "base.tar.zst.age")
    (work / "raw-backups.agekey").symlink_to(key_file)
    unpack = store_format_line(r"^mkdir -m 700 base && age -d ")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", unpack], cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = work / "base"
    assert (data / "PG_VERSION").is_file() and (data / "backup_label").is_file()

    # 2. recovery with the documented restore_command (paths made this store's and this key's)
    restore_line = documented_restore_line(tmp_path, key_file)
    with recovered_by_hand(tmp_path, work, data, server_user, restore_line, target,
                           "the by-hand restore to reach its target and promote") as dsn:
        assert _notes(dsn, "pitr-hand-") == {"pitr-hand-a": 300, "pitr-hand-b": 20}
