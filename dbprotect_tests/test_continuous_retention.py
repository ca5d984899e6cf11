"""Chain-aware retention of continuous objects against a real embedded PostgreSQL 18 (``wal_server``).

Two full base backups with an incremental between them and WAL streamed across all three; a window
covering only the newest full: the cleanup removes the old full, its incremental and the WAL before
the newest base's start, and a point-in-time restore inside the window still holds exactly the
expected rows. The sweep is SIGKILLed in the middle (twice, at different deletions): every kept base
and its WAL stay, the plan after the kill is the same, and the next cleanup finishes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyrage
import pytest
import yaml

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.load import load_config
from dbprotect.core.continuous.base import list_base_backups, take_base_backup
from dbprotect.core.continuous.pitr import stop_restored
from dbprotect.core.continuous.wal import stored_segments
from dbprotect.core.ops.continuous import restore_database_to_point, verify_base_backups
from dbprotect.core.ops.retention import cleanup_database
from dbprotect.core.retention.chain_cleanup import plan_continuous_cleanup, sweep_continuous
from dbprotect.core.retention.chains import ChainPolicy
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect.core.store.lock import database_lock
from dbprotect_tests.fixtures.fix_fork import wait_status
from dbprotect_tests.test_continuous_pitr import _insert, _notes, _open_for_server
from dbprotect_tests.test_continuous_wal import (
    continuous_config,
    start_receiver,
    stop_receiver,
    switch_and_wait_shipped,
    wait_streaming,
)

pytestmark = pytest.mark.slow


class KillingStorage:
    """A real store whose process SIGKILLs itself just before its ``kill_at``-th delete (a crash)."""

    def __init__(self, inner: FilesystemStorage, kill_at: int) -> None:
        self._inner = inner
        self._kill_at = kill_at
        self.deletes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def delete(self, key: str) -> None:
        self.deletes += 1
        if self.deletes == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self._inner.delete(key)


def _killed_sweep(root: Path, policy: ChainPolicy, now: datetime, kill_at: int) -> int:
    """Run the continuous mark-and-sweep in a forked child that dies at delete ``kill_at``; its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: a cleanup process
        try:
            storage = KillingStorage(FilesystemStorage(root), kill_at)
            with database_lock(storage, "shop", owner="killed cleanup"):  # type: ignore[arg-type]
                plan = plan_continuous_cleanup(storage, "shop", policy, now)  # type: ignore[arg-type]
                assert plan is not None
                sweep_continuous(storage, plan, dry_run=False, audit=AuditLog(storage, actor="killed"))  # type: ignore[arg-type]
        finally:
            os._exit(0)
    return wait_status(pid)


def _kept_intact(storage: FilesystemStorage, policy: ChainPolicy, now: datetime, keep_id: str,
                 keep_start: int) -> None:
    """The newest full and every WAL segment from its start are listed, and the plan still keeps them."""
    plan = plan_continuous_cleanup(storage, "shop", policy, now)
    assert plan is not None
    assert keep_id in [b.base_id for b in list_base_backups(storage, "shop")]
    assert [d.name for d in plan.plan.of_kind("base", "keep")] == [keep_id]
    assert plan.plan.wal_cutoff == keep_start
    numbers = sorted(int(name[8:], 16) for name in stored_segments(storage, "shop")[1])
    assert numbers == list(range(numbers[0], numbers[-1] + 1)), "kept WAL is contiguous"


def test_window_over_the_newest_full_removes_the_old_chain_and_a_killed_sweep_loses_nothing(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path,
        identity: pyrage.x25519.Identity) -> None:
    slot = "dbprotect_test_chainret"
    config_path = continuous_config(write_config, wal_server, slot)
    _open_for_server(tmp_path)
    root = tmp_path / "store"
    storage = FilesystemStorage(root)
    config = load_config(config_path)
    receiver = start_receiver(config_path, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, slot)
        old = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                               recipients=config.keys.raw.recipients, incremental=False)
        _insert(wal_server, "keep-a", range(200_000, 200_300))
        with psycopg.connect(wal_server, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        time.sleep(1.5)  # WAL summaries catch up before the incremental
        incremental = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                       recipients=config.keys.raw.recipients, incremental=True, identity=identity)
        assert incremental.parent == old.base_id
        _insert(wal_server, "keep-b", range(200_300, 200_400))
        with psycopg.connect(wal_server, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        newest = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                  recipients=config.keys.raw.recipients, incremental=False)
        time.sleep(1.1)  # the window starts after the newest base finished and before the target
        # and after the WAL dates the newest base: a stored sample reaching its end (chains.py rule 9)
        with psycopg.connect(wal_server, autocommit=True) as conn:  # WAL to switch (the base ended one)
            conn.execute("SELECT pg_logical_emit_message(false, 'dbprotect-test', 'date the base')")
        switch_and_wait_shipped(wal_server, storage)
        window_start = datetime.now(UTC)
        time.sleep(1.1)
        _insert(wal_server, "keep-c", range(200_400, 200_450))
        target_time, _ = _insert(wal_server, "keep-d", range(200_450, 200_470))
        time.sleep(1.1)
        _insert(wal_server, "keep-e", range(200_470, 200_480))
        switch_and_wait_shipped(wal_server, storage)
    finally:
        stop_receiver(receiver, wal_server, slot)
    now = datetime.now(UTC)
    window = now - window_start
    doc = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    doc["databases"]["shop"]["continuous"].update(retention_days=window / timedelta(days=1), min_full_bases=1)
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    config = load_config(config_path)
    policy = ChainPolicy(window, 1)

    # unverified bases anchor nothing: before verification, nothing is deleted
    dry = cleanup_database(config, "shop", dry_run=True, now=now)[0]
    assert dry.error is None and dry.continuous is not None
    assert dry.continuous.plan.anchor is None and dry.continuous.plan.deletions == []
    assert all(v.ok for v in verify_base_backups(config, "shop"))
    before = {d.name: d.action for d in plan_continuous_cleanup(storage, "shop", policy, now).plan.decisions}  # type: ignore[union-attr]
    assert {k: before[k] for k in (old.base_id, incremental.base_id, newest.base_id)} == \
        {old.base_id: "delete", incremental.base_id: "delete", newest.base_id: "keep"}
    segments_before = stored_segments(storage, "shop")[1]
    wal_deletions = [n for n in segments_before if before[n] == "delete"]
    assert wal_deletions and max(wal_deletions) < min(n for n in segments_before if before[n] == "keep")

    # SIGKILL mid-sweep: after the incremental's record, then in the middle of the WAL (oldest first)
    for attempt in range(2):
        if attempt == 0:
            kill_at = 2
        else:
            counted = plan_continuous_cleanup(storage, "shop", policy, now)
            assert counted is not None and "headless base " + incremental.base_id in counted.garbage
            sweep_continuous(storage, counted, dry_run=True, audit=AuditLog(storage, actor="count"))
            kill_at = counted.deleted_objects - len(wal_deletions)
        status = _killed_sweep(root, policy, now, kill_at)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        _kept_intact(storage, policy, now, newest.base_id, newest.start)
    done = cleanup_database(config, "shop", now=now)[0]  # the dead holder's lock is taken over
    assert done.error is None and done.continuous is not None, done.error
    assert [b.base_id for b in list_base_backups(storage, "shop")] == [newest.base_id]
    assert not [p for p in (root / "shop" / "continuous" / "base").iterdir() if p.name != newest.base_id]
    assert min(stored_segments(storage, "shop")[1]) == min(n for n in segments_before if before[n] == "keep")
    again = cleanup_database(config, "shop", now=now)[0]
    assert again.error is None and again.continuous is not None and again.continuous.deleted == []
    assert "continuous" in (done.to_dict() or {})

    _open_for_server(root)
    for path in root.rglob("*"):
        path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))
    restored = restore_database_to_point(config, "shop", data_dir=tmp_path / "in-window", to_time=target_time)
    try:
        assert restored.chain == [newest.base_id]
        assert _notes(restored.dsn(), "keep-") == {"keep-a": 300, "keep-b": 100, "keep-c": 50, "keep-d": 20}
    finally:
        stop_restored(restored)
