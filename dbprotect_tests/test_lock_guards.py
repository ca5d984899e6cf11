"""Locks that mean it (issue 10, points 6 and 10): a holder whose lock was broken commits nothing,
a skewed client clock cannot break a live lock, a pid proves a death only inside its own kernel
boot and pid namespace, an empty-folder removal cannot fail a concurrent lock acquire, and a
stray future-dated folder cannot push real audit anchors out.

"Broken" is played the way it happens: another writer creates the next lock generation (as one
does once our lease ran out while we stalled), at the moment just before our commit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dbprotect.core.audit import AuditEvent, append, audit_head, collect_anchors, verify_chain
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.copy import copy_backup
from dbprotect.core.errors import RefusedError, StorageError
from dbprotect.core.retention.cleanup import execute_cleanup, plan_cleanup
from dbprotect.core.retention.policy import RetentionPolicy
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store import lock as lock_module
from dbprotect.core.store.catalog import list_backups, record_verification, recorded_verifications
from dbprotect.core.store.catalog import load_manifest as load
from dbprotect.core.store.lock import DatabaseLock, LockHolder, _process_gone, database_lock, held_lock, lock_key
from dbprotect.core.store.manifest import Verification, manifest_key
from dbprotect_tests.fixtures.backups import DB, NOW, assert_listed_and_valid, write_backup

SQL = "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 50);"


class BreaksLockBefore:
    """A store on which another writer breaks our lock (takes the next generation) at our next lock
    renewal after a call matching ``after`` (or at the first one): what a holder stalled past its
    lease would find when it checks, just before a commit."""

    def __init__(self, inner: Storage, after: Callable[[str, str], bool] | None = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.after = after
        self.armed = after is None
        self.broke = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _seen(self, operation: str, key: str) -> None:
        if not self.armed and self.after is not None and self.after(operation, key):
            self.armed = True

    def put_bytes(self, key: str, data: bytes) -> None:
        lock = held_lock(self, DB)  # type: ignore[arg-type]
        if (self.armed and not self.broke and lock is not None and lock.generation is not None
                and key == lock_key(DB, lock.generation)):
            thief = json.loads(lock._body())
            thief.update(owner="thief", token="0" * 32)
            self.inner.put_bytes(lock_key(DB, lock.generation + 1), json.dumps(thief).encode())
            self.broke = True
        self._seen("put_bytes", key)
        self.inner.put_bytes(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._seen("put_if_absent", key)
        return self.inner.put_if_absent(key, data)

    def rename(self, src_key: str, dst_key: str) -> None:
        self._seen("rename", dst_key)
        self.inner.rename(src_key, dst_key)

    def delete(self, key: str) -> None:
        self._seen("delete", key)
        self.inner.delete(key)


def _lost(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and "lost the lock" in str(exc) and "\n" not in str(exc)


# -- a broken lock commits nothing ------------------------------------------------------------------

def test_a_backup_whose_lock_was_broken_commits_no_manifest(tmp_path: Path, make_db: Callable[..., str],
                                                            age_keys: tuple[str, str]) -> None:
    dsn = make_db(SQL)
    store = FilesystemStorage(tmp_path / "store")
    racy = BreaksLockBefore(store)  # at the check before the manifest's commit
    with pytest.raises(StorageError) as caught:
        run_backup(database=DB, dsn=dsn, storage=racy, recipients=[age_keys[1]])  # type: ignore[arg-type]
    assert racy.broke and _lost(caught.value) and "was not committed" in str(caught.value)
    assert list_backups(store, DB, include_incomplete=False) == []
    assert not [info.key for info in store.list(f"{DB}/") if info.key.endswith("manifest.json")]


def test_a_copy_whose_lock_was_broken_replaces_nothing_and_commits_nothing(tmp_path: Path) -> None:
    source = FilesystemStorage(tmp_path / "source")
    backup_id = write_backup(source, NOW - timedelta(hours=2))
    target = FilesystemStorage(tmp_path / "target")
    racy = BreaksLockBefore(target)  # at the check before the rename
    with pytest.raises(StorageError) as caught:
        copy_backup(source, racy, DB, backup_id)  # type: ignore[arg-type]
    assert racy.broke and _lost(caught.value)
    assert [info.key for info in target.list(f"{DB}/")] == []  # the temporary object removed, nothing committed


def test_a_copy_whose_lock_was_broken_before_its_manifest_does_not_commit_it(tmp_path: Path) -> None:
    source = FilesystemStorage(tmp_path / "source")
    backup_id = write_backup(source, NOW - timedelta(hours=2))
    target = FilesystemStorage(tmp_path / "target")
    racy = BreaksLockBefore(target, lambda op, key: op == "put_if_absent" and "-stored-" in key)
    with pytest.raises(StorageError) as caught:
        copy_backup(source, racy, DB, backup_id)  # type: ignore[arg-type]
    assert racy.broke and _lost(caught.value)
    assert list_backups(target, DB) == []


def test_a_cleanup_whose_lock_was_broken_deletes_no_further_backup(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    ids = [write_backup(store, NOW - timedelta(days=d), n=d) for d in (4, 3, 2, 1)]
    # broken while the first deletion is audited: the second and third must not be deleted
    racy = BreaksLockBefore(store, lambda op, key: op == "put_if_absent" and key.startswith("_audit/"))
    with database_lock(racy, DB, owner="cleanup"):  # type: ignore[arg-type]
        plan = plan_cleanup(racy, DB, RetentionPolicy.parse("keep_last=1"), NOW)  # type: ignore[arg-type]
        assert [d.backup_id for d in plan.deletions] == ids[:3]
        with pytest.raises(StorageError) as caught:
            execute_cleanup(racy, plan)  # type: ignore[arg-type]
    assert racy.broke and "lost the lock" in str(caught.value)
    assert assert_listed_and_valid(store) == [ids[3], ids[2], ids[1]]


def test_a_check_is_not_recorded_by_a_holder_whose_lock_was_broken(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(store, NOW - timedelta(hours=2), verified=False)
    manifest = load(store, DB, backup_id)
    racy = BreaksLockBefore(store)
    with database_lock(racy, DB, owner="verify"), pytest.raises(StorageError) as caught:  # type: ignore[arg-type]
        record_verification(racy, manifest, Verification(rung="stored", ok=False, at=NOW,  # type: ignore[arg-type]
                                                          detail="a stale verdict"))
    assert racy.broke and _lost(caught.value)
    assert recorded_verifications(store, DB, backup_id) == []


def test_ensure_held_renews_a_lock_that_is_still_ours(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    with database_lock(store, DB, owner="x") as lock:
        before = store.stat(lock_key(DB, 1)).modified
        lock.ensure_held("a commit")
        assert store.stat(lock_key(DB, 1)).modified >= before and not lock.lost


# -- the lease is judged by the store's clock ---------------------------------------------------------

def _skewed_datetime(offset: timedelta) -> type[datetime]:
    class Skewed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + offset

    return Skewed


def _dead_holder(store: Storage, lease: timedelta) -> DatabaseLock:
    """A holder in this process (so no pid proof applies) that stopped renewing, as a frozen one does."""
    holder = DatabaseLock(store, DB, owner="frozen-holder", lease=lease)
    holder.acquire()
    holder._stop.set()
    assert holder._renewer is not None
    holder._renewer.join()
    return holder


def test_a_client_clock_hours_ahead_cannot_break_a_live_lock(store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _dead_holder(store, timedelta(minutes=5))
    monkeypatch.setattr(lock_module, "datetime", _skewed_datetime(timedelta(hours=3)))
    contender = DatabaseLock(store, DB, owner="skewed-host", wait_seconds=0.5)
    with pytest.raises(RefusedError, match="frozen-holder"):
        contender.acquire()
    assert holder.still_held()
    holder.release()


def test_a_client_clock_behind_still_breaks_a_lock_whose_lease_ran_out(store: Storage,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _dead_holder(store, timedelta(seconds=1))
    monkeypatch.setattr(lock_module, "datetime", _skewed_datetime(-timedelta(hours=3)))
    time.sleep(2.2)  # S3 keeps LastModified to the second
    with database_lock(store, DB, owner="next", wait_seconds=5) as lock:
        assert lock.generation == 2
    assert not holder.still_held()


# -- a pid proves a death only in its own boot and pid namespace ----------------------------------------

@pytest.fixture
def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


@pytest.fixture
def live_pid() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def _holder(pid: int, **changes: Any) -> LockHolder:
    body = json.loads(DatabaseLock(FilesystemStorage("/nonexistent"), DB, owner="x")._body())
    fields = {"generation": 1, "owner": "x", "host": body["host"], "pid": pid, "acquired_at": "", "modified": None,
              "instance": body["instance"], "started": body["started"]}
    return LockHolder(**{**fields, **changes})


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").exists(), reason="needs Linux /proc")
def test_a_pid_proves_nothing_from_another_pid_namespace_or_boot(dead_pid: int) -> None:
    assert _process_gone(_holder(dead_pid))  # our instance, pid gone: dead at once
    other = _holder(dead_pid, instance="another-boot/pid:[4026531999]")  # a container sharing our host name
    assert not _process_gone(other)
    assert not _process_gone(_holder(dead_pid, instance=""))  # written by a version without an instance


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").exists(), reason="needs Linux /proc")
def test_a_reused_pid_is_recognised_by_its_start_time(live_pid: int) -> None:
    started = lock_module._process_start(live_pid)
    assert started is not None
    assert not _process_gone(_holder(live_pid, started=started))  # the holder itself, alive
    assert _process_gone(_holder(live_pid, started=started - 1))  # another process now has the holder's pid


def test_a_lock_from_another_container_with_our_host_name_is_not_broken(tmp_path: Path, dead_pid: int) -> None:
    store = FilesystemStorage(tmp_path / "store")
    body = json.loads(DatabaseLock(store, DB, owner="x")._body())
    body.update(owner="backup-in-container-b", pid=dead_pid, instance="boot-b/pid:[4026532001]")
    store.put_bytes(lock_key(DB, 1), json.dumps(body).encode())
    with pytest.raises(RefusedError, match="backup-in-container-b"):
        DatabaseLock(store, DB, owner="container-a", wait_seconds=0.4).acquire()


# -- an empty-folder removal does not fail a concurrent write in that folder -----------------------------------

def test_a_folder_removed_as_empty_by_a_concurrent_delete_does_not_fail_a_lock_acquire(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemStorage(tmp_path / "store")
    real_mkdir = Path.mkdir
    removed: list[Path] = []

    def mkdir_then_lose_it(self: Path, *args: Any, **kwargs: Any) -> None:
        real_mkdir(self, *args, **kwargs)
        if kwargs.get("parents") and self.name == DB and self.parent.name == "_locks" and len(removed) < 2:
            removed.append(self)
            self.rmdir()  # a release's delete removing the folder it left empty, at just this moment

    monkeypatch.setattr(Path, "mkdir", mkdir_then_lose_it)
    with database_lock(store, DB, owner="racer", wait_seconds=1) as lock:
        assert lock.generation == 1
    assert len(removed) == 2


# -- anchors come from the newest *records*, not the newest folder names --------------------------------------

def test_stray_future_dated_folders_do_not_push_real_anchors_out(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    for i in range(1, 6):
        append(store, AuditEvent(at=NOW, actor="t", action="backup", database=DB, outcome="ok", target=str(i)))
    backup_id = write_backup(store, NOW - timedelta(hours=1))
    raw = json.loads(store.get_bytes(manifest_key(DB, backup_id)))
    raw["audit_head"] = audit_head(store)  # seq 5
    store.put_bytes(manifest_key(DB, backup_id), json.dumps(raw).encode())
    for n in range(3):  # dated in 2099, anchored nowhere
        stray = f"2099010{n + 1}T000000Z-00000{n}"
        store.put_bytes(manifest_key(DB, stray), json.dumps({**raw, "backup_id": stray, "audit_head": None}).encode())
    assert max(anchor.seq for anchor in collect_anchors(store)) == 5
    store.delete("_audit/000000000005.json")  # truncation
    report = verify_chain(store, anchors=collect_anchors(store))
    assert "truncated" in report.kinds()


# -- a holder that failed to release, failed to sweep, or was forked -------------------------------------------

class FailsOnce:
    """A store whose first call matching ``matches`` raises a store error (a hiccup)."""

    def __init__(self, inner: Storage, operation: str, matches: Callable[[str], bool]) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.operation = operation
        self.matches = matches
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _maybe_fail(self, operation: str, key: str) -> None:
        if not self.failed and operation == self.operation and self.matches(key):
            self.failed = True
            raise StorageError(f"file store: injected hiccup at {operation} {key}")

    def delete(self, key: str) -> None:
        self._maybe_fail("delete", key)
        self.inner.delete(key)

    def sweep_partial_writes(self, prefix: str) -> list[str]:
        self._maybe_fail("sweep", prefix)
        return self.inner.sweep_partial_writes(prefix)


def test_a_release_the_store_failed_does_not_make_this_process_wait_for_itself(tmp_path: Path) -> None:
    """Found by the fault harness: a verification's second rung waited 120 s for its own first rung's lock."""
    store = FilesystemStorage(tmp_path / "store")
    hiccup = FailsOnce(store, "delete", lambda key: key.startswith("_locks/"))
    with database_lock(hiccup, DB, owner="rung-1"):  # type: ignore[arg-type]
        pass
    assert hiccup.failed and [info.key for info in store.list("_locks/")] == [lock_key(DB, 1)]
    with database_lock(store, DB, owner="rung-2", wait_seconds=0.5) as lock:  # not 5 minutes
        assert lock.generation == 2


def test_an_acquire_whose_sweep_fails_leaves_no_lock_renewed_behind(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    hiccup = FailsOnce(store, "sweep", lambda prefix: True)
    lock = DatabaseLock(hiccup, DB, owner="first", lease=timedelta(seconds=1.5))  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="injected hiccup"):
        lock.acquire()
    assert lock._renewer is not None and not lock._renewer.is_alive()
    assert [info.key for info in store.list("_locks/")] == []


def _fork(work: Callable[[], None]) -> int:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            work()
        finally:
            os._exit(0)
    return pid


def test_a_live_forked_holder_renewing_is_respected_and_once_killed_is_dead_at_once(tmp_path: Path) -> None:
    """A real SIGKILL mid-renewal: a forked child (it inherits the parent's memory, not its start time) holds
    the lock with a short lease, renewing every half second; the parent must wait while it lives, and may
    take the lock at once when it is killed (same kernel and pid namespace, pid gone)."""
    store = FilesystemStorage(tmp_path / "store")
    ready = tmp_path / "ready"

    def hold() -> None:
        with database_lock(FilesystemStorage(store.root), DB, owner="forked-holder", lease=timedelta(seconds=1.5)):
            ready.touch()
            time.sleep(60)

    pid = _fork(hold)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline, "the child never took the lock"
            time.sleep(0.05)
        with pytest.raises(RefusedError, match="forked-holder"):  # alive for longer than its lease: renewed
            DatabaseLock(store, DB, owner="parent", wait_seconds=2.5).acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    started = time.monotonic()
    with database_lock(store, DB, owner="parent", wait_seconds=1) as lock:
        assert lock.generation == 2
    assert time.monotonic() - started < 1
