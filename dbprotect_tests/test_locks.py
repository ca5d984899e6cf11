"""The per-database writer lock in the store, and write-once verification records (issue 10, point 6).

On both kinds of store (a folder and S3 over HTTP): create-if-absent generations, a lease renewed
while held and broken only after it runs out, one clear line naming the holder for a second
writer, and the race the issue found: a verification recording into a backup that a cleanup had
deleted. Other threads are other writers here (the lock is re-entrant only within one thread of
control), so threads play the second process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbprotect.core.errors import NotFoundError, Refusals, RefusedError
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store import lock as lock_module
from dbprotect.core.store.catalog import list_backups, load_manifest, record_verification, recorded_verifications
from dbprotect.core.store.filesystem import PARTIAL_GRACE_SECONDS, PARTIAL_MARK
from dbprotect.core.store.lock import DatabaseLock, current_holder, database_lock, lock_key, lock_prefix
from dbprotect.core.store.manifest import CHECKS_FOLDER, Verification, manifest_key, parse_check_key
from dbprotect_tests.fixtures.backups import DB, NOW, write_backup
from dbprotect_tests.fixtures.cli import run_json


def _lock_objects(store: Storage) -> list[str]:
    return [info.key for info in store.list(lock_prefix(DB))]


def _in_thread(fn: Callable[[], object]) -> BaseException | object:
    """Run ``fn`` in another thread (another writer) and return its result or its exception."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # reported to the test
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box[0]


def test_a_held_lock_names_its_holder_and_is_gone_after_release(store: Storage) -> None:
    with database_lock(store, DB, owner="cli:alice") as lock:
        keys = _lock_objects(store)
        assert keys == [lock_key(DB, 1)]
        body = json.loads(store.get_bytes(keys[0]))
        assert (body["owner"], body["pid"], body["database"]) == ("cli:alice", os.getpid(), DB)
        assert body["host"] and body["lease_seconds"] == 300
        holder = current_holder(store, DB)
        assert holder is not None and holder.owner == "cli:alice"
        assert lock.still_held()
    assert _lock_objects(store) == [] and current_holder(store, DB) is None


def test_a_second_writer_waits_briefly_then_fails_with_one_line_naming_the_holder(store: Storage) -> None:
    with database_lock(store, DB, owner="dagster:shop_backup_job"):
        started = time.monotonic()
        error = _in_thread(lambda: DatabaseLock(store, DB, owner="cli:bob", wait_seconds=1.0).acquire())
        waited = time.monotonic() - started
    assert isinstance(error, RefusedError) and error.code == Refusals.DATABASE_LOCKED.code == "DBP930"
    assert error.exit_code == 9 and 1.0 <= waited < 5
    line = error.one_line()
    assert "\n" not in line and "dagster:shop_backup_job" in line and f"pid {os.getpid()}" in line
    assert f"database {DB!r} is locked" in line


def test_the_lock_is_reentrant_in_one_thread_of_control(store: Storage) -> None:
    with database_lock(store, DB, owner="restore") as outer, database_lock(store, DB, owner="restore") as inner:
        assert inner is outer and _lock_objects(store) == [lock_key(DB, 1)]
    assert _lock_objects(store) == []


def test_a_waiting_writer_gets_the_lock_when_the_holder_releases(store: Storage) -> None:
    holder = DatabaseLock(store, DB, owner="first")
    holder.acquire()
    threading.Timer(0.5, holder.release).start()
    second = DatabaseLock(store, DB, owner="second", wait_seconds=10)
    second.acquire()
    try:
        assert current_holder(store, DB).owner == "second"  # type: ignore[union-attr]
    finally:
        second.release()


def test_only_one_of_several_racing_writers_holds_the_lock_at_a_time(store: Storage) -> None:
    inside, most, errors = [0], [0], []
    guard = threading.Lock()

    def writer(n: int) -> None:
        lock = DatabaseLock(store, DB, owner=f"w{n}", wait_seconds=60)
        try:
            lock.acquire()
        except BaseException as exc:  # reported below
            errors.append(exc)
            return
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with guard:
            inside[0] -= 1
        lock.release()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and most[0] == 1
    assert _lock_objects(store) == []


def _kill(lock: DatabaseLock) -> None:
    """What SIGKILL does to a holder: no more renewals, no release."""
    lock._stop.set()
    if lock._renewer is not None:
        lock._renewer.join()


def test_a_dead_holders_lock_is_not_broken_before_its_lease_runs_out(store: Storage) -> None:
    dead = DatabaseLock(store, DB, owner="killed-backup", lease=timedelta(minutes=5))
    dead.acquire()
    _kill(dead)
    error = _in_thread(lambda: DatabaseLock(store, DB, owner="next", wait_seconds=0.5).acquire())
    assert isinstance(error, RefusedError) and "killed-backup" in error.one_line()


def test_a_holder_whose_process_is_gone_from_this_host_is_dead_at_once(tmp_path: Path) -> None:
    """Proof instead of time: a SIGKILLed command's lock does not block the next command on its host."""
    import subprocess
    import sys

    store = FilesystemStorage(tmp_path / "store")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead_pid = int(child.stdout)
    body = json.loads(DatabaseLock(store, DB, owner="x")._body())
    store.put_bytes(lock_key(DB, 3), json.dumps({**body, "owner": "killed-restore", "pid": dead_pid}).encode())
    with database_lock(store, DB, owner="next", wait_seconds=0.5) as lock:
        assert lock.generation == 4
    # the same object naming another host is not judged by our process table: it waits out its lease
    store.put_bytes(lock_key(DB, 5), json.dumps({**body, "owner": "elsewhere", "pid": dead_pid,
                                                  "host": "another-host"}).encode())
    error = _in_thread(lambda: DatabaseLock(store, DB, owner="next", wait_seconds=0.3).acquire())
    assert isinstance(error, RefusedError) and "elsewhere on another-host" in error.one_line()


def test_a_dead_holders_lock_is_broken_after_its_lease(store: Storage) -> None:
    dead = DatabaseLock(store, DB, owner="killed-backup", lease=timedelta(seconds=1))
    dead.acquire()
    _kill(dead)
    time.sleep(2.2)  # S3 keeps LastModified to the second
    after = DatabaseLock(store, DB, owner="next", wait_seconds=5)
    after.acquire()
    try:
        assert after.generation == 2 and _lock_objects(store) == [lock_key(DB, 2)]  # the dead one removed
        assert not dead.still_held() and not dead.renew() and dead.lost
    finally:
        after.release()
        dead.release()  # a holder that comes back never removes the new holder's lock
    assert _lock_objects(store) == []


def test_a_live_holder_renews_its_lease_so_it_is_never_broken(store: Storage) -> None:
    # 2 s: S3's LastModified is kept to the second, so a renewal can look up to a second old
    with database_lock(store, DB, owner="long-backup", lease=timedelta(seconds=2)):
        time.sleep(4.5)  # more than two leases
        error = _in_thread(lambda: DatabaseLock(store, DB, owner="cleanup", wait_seconds=0.5).acquire())
        assert isinstance(error, RefusedError) and "long-backup" in error.one_line()


def test_an_unreadable_lock_object_still_blocks_until_its_lease_runs_out(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    store.put_bytes(lock_key(DB, 7), b"\x00 not json")
    error = _in_thread(lambda: DatabaseLock(store, DB, owner="next", wait_seconds=0.3).acquire())
    assert isinstance(error, RefusedError) and "unreadable lock object" in error.one_line()
    old = time.time() - 301
    os.utime(store.root / lock_key(DB, 7), (old, old))
    with database_lock(store, DB, owner="next") as lock:
        assert lock.generation == 8


def test_taking_the_lock_sweeps_partial_files_that_killed_backups_left(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(store, NOW - timedelta(hours=2), n=1)
    partial = store.root / DB / "20261123T030000Z-000009" / f"dump.zst.age{PARTIAL_MARK}deadbeef"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a dump from a SIGKILLed backup")
    old = time.time() - PARTIAL_GRACE_SECONDS - 5
    os.utime(partial, (old, old))
    with database_lock(store, DB, owner="next backup") as lock:
        assert lock.swept == [partial.relative_to(store.root).as_posix()]
    assert not partial.exists() and [e.backup_id for e in list_backups(store, DB)] == [backup_id]


def test_verification_results_are_numbered_write_once_objects_and_the_manifest_is_never_rewritten(
        store: Storage) -> None:
    backup_id = write_backup(store, NOW - timedelta(hours=2), n=2, verified=False)
    manifest_bytes = store.get_bytes(manifest_key(DB, backup_id))
    manifest = load_manifest(store, DB, backup_id)
    later = datetime(2027, 1, 1, tzinfo=UTC)  # a clock far ahead, then a correct one
    record_verification(store, manifest, Verification(rung="stored", ok=True, at=later, by="skewed"))
    record_verification(store, manifest, Verification(rung="stored", ok=False, at=NOW, by="now"))
    assert store.get_bytes(manifest_key(DB, backup_id)) == manifest_bytes
    prefix = f"{DB}/{backup_id}/{CHECKS_FOLDER}/"
    names = [info.key[len(prefix):] for info in store.list(prefix)]
    assert sorted(parse_check_key(name)[3] for name in names) == [1, 2]
    assert [(v.by, v.ok) for v in recorded_verifications(store, DB, backup_id)] == [("skewed", True), ("now", False)]
    assert _lock_objects(store) == []  # recording held the lock and released it


def test_a_verification_never_records_into_a_backup_a_cleanup_deleted(store: Storage) -> None:
    """The race the issue found: verify reads the manifest, cleanup deletes the backup, verify records."""
    backup_id = write_backup(store, NOW - timedelta(hours=2), n=3)
    manifest = load_manifest(store, DB, backup_id)  # the verification starts
    for info in list(store.list(f"{DB}/{backup_id}/")):  # a cleanup deletes the backup meanwhile
        store.delete(info.key)
    with pytest.raises(NotFoundError, match=r"was deleted .* while it was being verified"):
        record_verification(store, manifest, Verification(rung="stored", ok=True, at=NOW, by="verify"))
    assert list(store.list(f"{DB}/")) == []
    assert list_backups(store, DB, include_incomplete=True) == []


def test_a_verification_waits_for_a_cleanup_holding_the_lock_then_refuses_a_deleted_backup(store: Storage) -> None:
    backup_id = write_backup(store, NOW - timedelta(hours=2), n=4)
    manifest = load_manifest(store, DB, backup_id)
    cleanup = DatabaseLock(store, DB, owner="schedule:cleanup")
    cleanup.acquire()

    def sweep_then_release() -> None:
        for info in list(store.list(f"{DB}/{backup_id}/")):
            store.delete(info.key)
        cleanup.release()

    threading.Timer(0.5, sweep_then_release).start()
    error = _in_thread(lambda: record_verification(store, manifest, Verification(
        rung="readable", ok=True, at=NOW, by="verify")))
    assert isinstance(error, NotFoundError)
    assert list_backups(store, DB, include_incomplete=True) == []


@pytest.mark.slow
def test_a_backup_from_the_cli_while_another_writer_holds_the_lock_exits_9_naming_it(
        write_config: Callable[..., Path], make_db: Callable[..., str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # the CLI's writer waits DEFAULT_WAIT_SECONDS (15 s) for the lock; what is tested is the refusal after it
    monkeypatch.setattr(lock_module, "DEFAULT_WAIT_SECONDS", 1.0)
    write_config(make_db("create table t (id int primary key); insert into t values (1);"))
    store = FilesystemStorage(tmp_path / "store")
    other = DatabaseLock(store, DB, owner="dagster:shop_cleanup_job", wait_seconds=1)
    other.acquire()
    started = time.monotonic()
    try:
        code, out, err = run_json(capsys, "backup", DB)
    finally:
        other.release()
    assert code == 9, (out, err)
    assert time.monotonic() - started >= 1.0  # it waited for the holder before refusing
    assert out["error"]["code"] == "DBP930" and "dagster:shop_cleanup_job" in out["error"]["message"]
    assert list_backups(store, DB, include_incomplete=True) == []
    code, out, err = run_json(capsys, "backup", DB)  # released: the next backup runs
    assert code == 0, (out, err)
