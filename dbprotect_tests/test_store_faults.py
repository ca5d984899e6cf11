"""Every store writer through every step of its store traffic, failed and killed (issue 10, "Tests").

The harness: :class:`FaultyStorage` wraps a real store (a folder, or S3 over HTTP through the moto
server) and counts each *mutating* call: ``put_bytes``, ``put_if_absent``, ``rename``, ``delete``,
a writer's ``commit`` and ``sweep_partial_writes``. At call N it either raises a
:class:`StorageError` (a store failure) or SIGKILLs its own process (a crash) *before* the call
happens. Killing between two mutations reaches every state a crash can leave, because reads change
nothing.

Each writer runs in a forked child (as a CLI command or a Dagster run would, in its own process),
once cleanly to count its calls, then once per N for both fault kinds on a fresh copy of the same
store. After each fault:

- every listed backup passes verification (stored and readable rungs; the newest listed one is
  restored into PostgreSQL and its row counts checked against its manifest);
- nothing verified is deleted (except what the cleanup's own plan deletes);
- the lock is not stuck (no live holder: the failed child released it, the killed child is
  provably gone), the audit chain is intact;
- the next command of the same kind finishes, and afterwards no partial or temporary object is
  listed and no lock object is left.

The writers: backup (dump commit, manifest commit, audit append, verification recording), cleanup
(retention), copy to a second target, verification recording, audit append, and the lock itself
(acquire, renew, ensure-held, release).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyrage
import pytest
import zstandard

from dbprotect.core.audit import AuditLog, read, verify_chain
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.copy import TEMP_MARK, copy_backup
from dbprotect.core.crypto import identity_recipient, parse_identity
from dbprotect.core.errors import DbprotectError, StorageError
from dbprotect.core.retention.cleanup import execute_cleanup, plan_cleanup
from dbprotect.core.retention.kinds import plan_kind_cleanups
from dbprotect.core.retention.policy import KindRetention, RetentionPolicy
from dbprotect.core.store import FilesystemStorage, S3Storage, Storage
from dbprotect.core.store.base import ObjectNotFound, ObjectWriter, WriterContext
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.core.store.filesystem import PARTIAL_MARK
from dbprotect.core.store.lock import current_holder, database_lock, lock_prefix
from dbprotect.core.store.manifest import dump_key, manifest_key
from dbprotect.core.verify.integrity import check_integrity, verify_backup
from dbprotect_tests.fixtures.fix_fork import wait_status
from dbprotect_tests.fixtures.fix_pg import PgServer, pg_bin, psql, table_counts
from dbprotect_tests.fixtures.fix_storage import create_bucket

DB = "shop"
SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text, email text);
INSERT INTO customers (name, email) SELECT 'name ' || g, 'user' || g || '@example.com' FROM generate_series(1, 200) g;
CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers, total numeric);
INSERT INTO orders (customer, total) SELECT 1 + g % 200, g * 1.5 FROM generate_series(1, 300) g;
"""
#: Every test here forks a child per store call and fault kind (minutes in all): the fast lane runs the
#: guards one by one in test_lock_guards.py instead.
pytestmark = pytest.mark.slow
#: Exit statuses of the forked child: finished, one-line dbprotect error, anything else.
DONE, FAILED_CLEANLY, CRASHED = 0, 3, 70


# -- the harness ----------------------------------------------------------------------------------

class InjectedFault(StorageError):
    """What a failing store raises at the chosen call."""


class FaultyStorage:
    """A Storage that fails or kills its process at its ``at``-th mutating call (1-based; None: never).

    Reads pass through untouched. ``calls`` records every mutating call as ``"<operation> <key>"``.
    """

    def __init__(self, inner: Storage, *, at: int | None = None, kind: str = "fail") -> None:
        self.inner = inner
        self.uri = inner.uri
        self.at = at
        self.kind = kind
        self.calls: list[str] = []

    def step(self, operation: str, key: str) -> None:
        self.calls.append(f"{operation} {key}")
        if self.at is not None and len(self.calls) == self.at:
            if self.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"injected store failure at call {self.at} ({operation} {key})")

    def __getattr__(self, name: str) -> Any:  # reads: get_bytes, open_reader, stat, list, object_uri
        return getattr(self.inner, name)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.step("put_bytes", key)
        self.inner.put_bytes(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.step("put_if_absent", key)
        return self.inner.put_if_absent(key, data)

    def rename(self, src_key: str, dst_key: str) -> None:
        self.step("rename", f"{src_key} -> {dst_key}")
        self.inner.rename(src_key, dst_key)

    def delete(self, key: str) -> None:
        self.step("delete", key)
        self.inner.delete(key)

    def sweep_partial_writes(self, prefix: str) -> list[str]:
        self.step("sweep", prefix)
        return self.inner.sweep_partial_writes(prefix)

    def open_writer(self, key: str) -> WriterContext:
        return WriterContext(_FaultyWriter(self, key, self.inner.open_writer(key)._writer))


@dataclass
class _FaultyWriter:
    store: FaultyStorage
    key: str
    inner: ObjectWriter

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    def commit(self) -> None:
        try:
            self.store.step("commit", self.key)
        except InjectedFault:
            self.inner.abort()
            raise
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


def in_child(work: Callable[[], None], *, report: Path | None = None) -> int:
    """Run ``work`` in a forked process (its own pid, as a command is): its exit status, -9 if killed."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = DONE
        try:
            work()
        except DbprotectError as exc:
            code = FAILED_CLEANLY if "\n" not in exc.one_line() else CRASHED
            if report is not None:
                report.write_text(exc.one_line())
        except BaseException:
            traceback.print_exc()
            code = CRASHED
        os._exit(code)
    return os.waitstatus_to_exitcode(wait_status(pid))


# -- stores -------------------------------------------------------------------------------------

@dataclass
class StoreMaker:
    """Fresh stores of one kind, each a copy of a seed folder (so every run starts from one state)."""

    kind: str
    base: Path
    endpoint: str | None = None
    bucket: str | None = None
    made: int = field(default=0)

    def fresh(self, seed: Path | None = None) -> Storage:
        self.made += 1
        if self.kind == "filesystem":
            root = self.base / f"store-{self.made}"
            if seed is not None:
                shutil.copytree(seed, root)
            return FilesystemStorage(root)
        assert self.endpoint and self.bucket
        store = S3Storage(self.bucket, f"case-{self.made}", endpoint_url=self.endpoint, region="us-east-1")
        if seed is not None:
            source = FilesystemStorage(seed)
            for info in source.list(""):
                store.put_bytes(info.key, source.get_bytes(info.key))
        return store

    def reopen(self, store: Storage) -> Storage:
        """The same store through a new client (a forked child must not share the parent's connections)."""
        if isinstance(store, FilesystemStorage):
            return FilesystemStorage(store.root)
        assert isinstance(store, S3Storage)
        return S3Storage(store.bucket, store.prefix, endpoint_url=self.endpoint, region="us-east-1")


def _maker(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreMaker:
    if kind == "filesystem":
        return StoreMaker(kind, tmp_path)
    endpoint = request.getfixturevalue("s3_endpoint")
    return StoreMaker(kind, tmp_path, endpoint, create_bucket(endpoint, "faults"))


# -- module-wide: one small database, one seed store of real backups -----------------------------

@pytest.fixture(scope="module")
def source_dsn(pg: PgServer) -> Iterator[str]:
    name = pg.create_database("faults")
    dsn = pg.dsn(name)
    psql(dsn, SQL)
    yield dsn
    pg.drop_database(name)


@pytest.fixture(scope="module")
def identity(age_keys: tuple[str, str]) -> pyrage.x25519.Identity:
    return parse_identity(age_keys[0], source="test")


@dataclass(frozen=True)
class Seed:
    folder: Path
    backups: tuple[str, ...]  # oldest first, each verified (stored + readable)


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory, source_dsn: str, age_keys: tuple[str, str],
         identity: pyrage.x25519.Identity) -> Seed:
    """Three verified real backups, dated three, two and one day ago."""
    folder = tmp_path_factory.mktemp("seed") / "store"
    store = FilesystemStorage(folder)
    ids = []
    for days in (3, 2, 1):
        at = datetime.now(UTC) - timedelta(days=days)
        backup = run_backup(database=DB, dsn=source_dsn, storage=store, recipients=[age_keys[1]], now=lambda at=at: at)
        assert verify_backup(store, DB, backup.manifest.backup_id, identity).ok
        ids.append(backup.manifest.backup_id)
    AuditLog(store, actor="seed").record("backup", database=DB, outcome="ok", target=ids[-1])
    return Seed(folder, tuple(ids))


class Restorer:
    """Restores the newest listed backup into an emptied database (once per distinct backup).

    One database for the module, its ``public`` schema dropped and made again before each restore
    (the source's objects all live there): a CREATE DATABASE per restore was a third of the backup
    test's time on a loaded machine, and the restore sees the same empty schema either way.
    """

    def __init__(self, pg: PgServer, identity: pyrage.x25519.Identity) -> None:
        self.pg = pg
        self.identity = identity
        self.done: set[tuple[str, str]] = set()
        self.name = pg.create_database("faultsrestore")

    def close(self) -> None:
        self.pg.drop_database(self.name)

    def check(self, store: Storage, backup_id: str) -> None:
        manifest = load_manifest(store, DB, backup_id)
        if (manifest.backup_id, manifest.sha256) in self.done:
            return
        dsn = self.pg.dsn(self.name)
        psql(dsn, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        assert table_counts(dsn) == {}, "the restore database is not empty"
        with store.open_reader(dump_key(DB, backup_id)) as src:
            proc = subprocess.Popen([str(pg_bin() / "pg_restore"), "--no-owner", "--exit-on-error",
                                     f"--dbname={dsn}"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdin is not None and proc.stderr is not None
            writer = zstandard.ZstdDecompressor().stream_writer(proc.stdin, closefd=False)
            pyrage.decrypt_io(src, writer, [self.identity])
            writer.flush()
            proc.stdin.close()
            assert proc.wait() == 0, proc.stderr.read()
        counts = table_counts(dsn)
        assert {name: counts[name] for name in manifest.tables} == \
            {name: table.rows for name, table in manifest.tables.items()}
        self.done.add((manifest.backup_id, manifest.sha256))


@pytest.fixture(scope="module")
def restorer(pg: PgServer, identity: pyrage.x25519.Identity) -> Iterator[Restorer]:
    restorer = Restorer(pg, identity)
    yield restorer
    restorer.close()


# -- what must hold after every fault ---------------------------------------------------------------

#: (manifest bytes, dump bytes, identity) of every backup that passed ``check_integrity`` in this
#: process, by SHA-256. ``check_integrity`` reads nothing but those two objects and the identity, so
#: the same bytes in another copy of the store give the same report: the seed's backups, copied into
#: every faulted store, were decrypted and parsed again at every check (a third of each test's time).
#: Any byte changed in either object is a new key and is verified in full.
_VERIFIED: set[tuple[str, str, str]] = set()


def assert_verifies(store: Storage, identity: pyrage.x25519.Identity, backup_id: str, where: str) -> None:
    """``check_integrity`` of one listed backup passes (or passed for exactly these bytes before)."""
    try:
        key = (hashlib.sha256(store.get_bytes(manifest_key(DB, backup_id))).hexdigest(),
               hashlib.sha256(store.get_bytes(dump_key(DB, backup_id))).hexdigest(), identity_recipient(identity))
    except ObjectNotFound:
        key = None  # a missing object: check_integrity says which
    if key is not None and key in _VERIFIED:
        return
    report = check_integrity(store, load_manifest(store, DB, backup_id), identity)
    assert report.ok, f"{where}: listed backup {backup_id} fails verification: {report.summary()}"
    if key is not None:
        _VERIFIED.add(key)


def assert_sound(store: Storage, identity: pyrage.x25519.Identity, restorer: Restorer | None, *,
                 must_keep: set[str], where: str) -> list[str]:
    """Every listed backup verifies, the ones that must survive are listed, no live lock, chain intact."""
    listed = [entry.backup_id for entry in list_backups(store, DB)]
    assert must_keep <= set(listed), f"{where}: verified backups lost: {sorted(must_keep - set(listed))}"
    for backup_id in listed:
        assert_verifies(store, identity, backup_id, where)
    if restorer is not None and listed:
        restorer.check(store, listed[0])
    assert current_holder(store, DB) is None, f"{where}: the lock is stuck"
    chain = verify_chain(store)
    assert chain.ok, f"{where}: {chain.render()}"
    return listed


def assert_tidy(store: Storage, where: str) -> None:
    """After the next command: nothing partial or temporary listed, no lock object left."""
    keys = [info.key for info in store.list("")]
    leftovers = [key for key in keys if PARTIAL_MARK in key or TEMP_MARK in key or key.startswith(lock_prefix(DB))]
    assert not leftovers, f"{where}: left behind: {leftovers}"


def fault_points(calls: list[str], kind: str) -> list[int]:
    """The calls to fault: every one on the filesystem store; on S3, the first call of each kind and the last.

    The writers' steps are the same code on both stores; what S3 adds is how each *kind* of call
    fails there (conditional puts, multipart commits, deletes). Every step on S3 made the suite
    several minutes longer, with the filesystem run already reaching every crash state.
    """
    if kind != "s3":
        return list(range(1, len(calls) + 1))
    first_of_each: dict[str, int] = {}
    for n, call in enumerate(calls, 1):
        first_of_each.setdefault(call.split()[0], n)
    return sorted(set(first_of_each.values()) | {len(calls)})


def run_through_every_fault(maker: StoreMaker, seed: Path | None, work: Callable[[Storage], None],
                            check: Callable[[Storage, str], None], next_command: Callable[[Storage], None],
                            tmp_path: Path) -> list[str]:
    """Count ``work``'s mutating store calls in a clean run, then fail and kill it at each one.

    ``check(store, where)`` runs after each fault and again after ``next_command``; returns the
    clean run's calls (so a test can assert the steps it expects are among them).
    """
    report = tmp_path / "calls.txt"
    clean = maker.fresh(seed)

    def counted() -> None:
        faulty = FaultyStorage(maker.reopen(clean))
        try:
            work(faulty)  # type: ignore[arg-type]
        finally:
            report.write_text("\n".join(faulty.calls))

    assert in_child(counted) == DONE, "the clean run failed"
    calls = report.read_text().splitlines()
    assert calls, "the writer made no store call"
    check(clean, "clean run")
    for kind in ("fail", "kill"):
        for n in fault_points(calls, maker.kind):
            store = maker.fresh(seed)
            where = f"{kind} at call {n}/{len(calls)} ({calls[n - 1]})"
            status = in_child(lambda store=store, n=n, kind=kind: work(
                FaultyStorage(maker.reopen(store), at=n, kind=kind)), report=tmp_path / "error.txt")  # type: ignore[arg-type]
            expected = {DONE, FAILED_CLEANLY} if kind == "fail" else {-signal.SIGKILL}
            assert status in expected, f"{where}: child exited {status}"
            check(store, where)
            next_command(store)
            check(store, f"{where}, then the next command")
            assert_tidy(store, f"{where}, then the next command")
    return calls


# -- the writers ----------------------------------------------------------------------------------------

STORE_KINDS = ["filesystem", pytest.param("s3", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_backup_with_its_audit_record_and_verification_survives_every_fault(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, seed: Seed, source_dsn: str,
        age_keys: tuple[str, str], identity: pyrage.x25519.Identity, restorer: Restorer) -> None:
    maker = _maker(kind, tmp_path, request)

    def backup(store: Storage) -> None:
        """What ``dbprotect backup`` then the scheduled verify do (ops.backup_database, verify_database_backup)."""
        result = run_backup(database=DB, dsn=source_dsn, storage=store, recipients=[age_keys[1]], owner="cli:test")
        AuditLog(store, actor="cli:test").record("backup", database=DB, outcome="ok",
                                                 target=result.manifest.backup_id)
        verify_backup(store, DB, result.manifest.backup_id, identity, by="cli:test")

    def check(store: Storage, where: str) -> None:
        listed = assert_sound(store, identity, restorer, must_keep=set(seed.backups), where=where)
        assert len(listed) <= len(seed.backups) + 2, where

    calls = run_through_every_fault(maker, seed.folder, backup, check, backup, tmp_path)
    steps = {call.split()[0] for call in calls}
    assert {"put_if_absent", "commit", "put_bytes", "delete", "sweep"} <= steps, calls
    assert any(call.endswith("/manifest.json") for call in calls) and any("/checks/" in call for call in calls)
    assert any(call.startswith("put_if_absent _audit/") for call in calls), calls


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_copy_to_a_second_target_survives_every_fault(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, seed: Seed,
        identity: pyrage.x25519.Identity, restorer: Restorer) -> None:
    """The target already holds the oldest backup (verified): a copy of the newest, faulted anywhere,
    never costs it, and the next copy commits the newest."""
    maker = _maker(kind, tmp_path, request)
    source = FilesystemStorage(seed.folder)
    held = seed.backups[0]
    target_seed = tmp_path / "target-seed"
    copy_backup(source, FilesystemStorage(target_seed), DB, held)
    newest = seed.backups[-1]

    def copy(store: Storage) -> None:
        copy_backup(FilesystemStorage(seed.folder), store, DB, newest, by="cli:test")
        AuditLog(store, actor="cli:test").record("copy", database=DB, outcome="ok", target=newest)

    def check(store: Storage, where: str) -> None:
        listed = assert_sound(store, identity, restorer, must_keep={held}, where=where)
        assert set(listed) <= {held, newest}, where

    def copy_again(store: Storage) -> None:
        copy(store)
        assert newest in {entry.backup_id for entry in list_backups(store, DB) if entry.integrity_ok}

    calls = run_through_every_fault(maker, target_seed, copy, check, copy_again, tmp_path)
    assert any(call.startswith("rename ") and TEMP_MARK in call for call in calls), calls
    assert any(call.endswith("/manifest.json") for call in calls), calls


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_cleanup_survives_every_fault_and_the_next_one_finishes_it(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, seed: Seed,
        identity: pyrage.x25519.Identity) -> None:
    maker = _maker(kind, tmp_path, request)
    newest = seed.backups[-1]
    policy = RetentionPolicy.parse("keep_last=1")

    def cleanup(store: Storage) -> None:
        """What ``dbprotect cleanup`` does (ops.retention): plan and sweep under the database's lock."""
        with database_lock(store, DB, owner="cli:test"):
            plan = plan_cleanup(store, DB, policy, datetime.now(UTC))
            assert [d.backup_id for d in plan.deletions] == list(seed.backups[:-1])
            execute_cleanup(store, plan, audit=AuditLog(store, actor="cli:test"))

    def check(store: Storage, where: str) -> None:
        assert_sound(store, identity, None, must_keep={newest}, where=where)

    def cleanup_again(store: Storage) -> None:
        with database_lock(store, DB, owner="cli:test"):
            plan = plan_cleanup(store, DB, policy, datetime.now(UTC))
            execute_cleanup(store, plan, audit=AuditLog(store, actor="cli:test"))
        assert [e.backup_id for e in list_backups(store, DB, include_incomplete=True)] == [newest]
        assert all(info.key.startswith(f"{DB}/{newest}/") for info in store.list(f"{DB}/"))

    calls = run_through_every_fault(maker, seed.folder, cleanup, check, cleanup_again, tmp_path)
    assert [call for call in calls if call.endswith("/manifest.json")][:2] == [
        f"delete {DB}/{old}/manifest.json" for old in seed.backups[:-1]], calls


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_recording_a_verification_survives_every_fault(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, seed: Seed,
        identity: pyrage.x25519.Identity) -> None:
    maker = _maker(kind, tmp_path, request)
    newest = seed.backups[-1]

    def verify(store: Storage) -> None:
        verify_backup(store, DB, newest, identity, by="cli:test")

    def check(store: Storage, where: str) -> None:
        assert_sound(store, identity, None, must_keep=set(seed.backups), where=where)
        entry = next(e for e in list_backups(store, DB) if e.backup_id == newest)
        assert entry.integrity_ok, f"{where}: a faulted recording turned a good backup {entry.status}"

    calls = run_through_every_fault(maker, seed.folder, verify, check, verify, tmp_path)
    assert sum("/checks/" in call for call in calls) == 2, calls


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_audit_appends_survive_every_fault(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                                           seed: Seed, identity: pyrage.x25519.Identity) -> None:
    maker = _maker(kind, tmp_path, request)

    def appends(store: Storage) -> None:
        log = AuditLog(store, actor="cli:test")
        for n in range(3):
            log.record("verify", database=DB, outcome=f"ok {n}")

    def check(store: Storage, where: str) -> None:
        assert_sound(store, identity, None, must_keep=set(seed.backups), where=where)
        outcomes = [r.outcome for r in read(store) if r.actor == "cli:test"]
        steps = [int(outcome[-1]) for outcome in outcomes]
        # each run's records in order, none lost before a later one: every n > 0 follows n - 1
        assert all(n == 0 or (i > 0 and steps[i - 1] == n - 1) for i, n in enumerate(steps)), (where, outcomes)

    calls = run_through_every_fault(maker, seed.folder, appends, check, appends, tmp_path)
    assert len(calls) == 3 and all(call.startswith("put_if_absent _audit/") for call in calls), calls


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_the_lock_survives_every_fault_in_acquire_renew_and_release(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, seed: Seed,
        identity: pyrage.x25519.Identity) -> None:
    maker = _maker(kind, tmp_path, request)

    def hold(store: Storage) -> None:
        with database_lock(store, DB, owner="cli:test", wait_seconds=2) as lock:
            assert lock.renew()
            lock.ensure_held("a test commit")

    def check(store: Storage, where: str) -> None:
        assert_sound(store, identity, None, must_keep=set(seed.backups), where=where)

    calls = run_through_every_fault(maker, seed.folder, hold, check, hold, tmp_path)
    assert [call.split()[0] for call in calls] == ["put_if_absent", "sweep", "put_bytes", "put_bytes", "delete"]


# -- real kills from outside, mid-stream ---------------------------------------------------------------------

class SlowReads:
    """A source store whose object reads trickle (so a copy is still streaming when it is killed)."""

    def __init__(self, inner: Storage, ready: Path) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.ready = ready

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open_reader(self, key: str) -> Any:
        reader = self.inner.open_reader(key)
        ready = self.ready

        class Trickle:
            def read(self, size: int = -1) -> bytes:
                ready.touch()
                time.sleep(0.05)
                return reader.read(512)  # a few KB of dump: seconds of streaming

            def close(self) -> None:
                reader.close()

        return Trickle()


def test_a_copy_killed_from_outside_while_streaming_keeps_the_target_whole(
        tmp_path: Path, seed: Seed, identity: pyrage.x25519.Identity) -> None:
    """SIGKILL from the parent while the child streams the newest backup to a target that already
    holds a verified older one: nothing of the new one is listed, the old one is untouched, the lock
    does not block the next copy, and the next copy commits the newest and leaves nothing temporary."""
    source = FilesystemStorage(seed.folder)
    target = FilesystemStorage(tmp_path / "target")
    copy_backup(source, target, DB, seed.backups[0])
    before = {info.key: target.get_bytes(info.key) for info in target.list(f"{DB}/")}
    newest = seed.backups[-1]
    ready = tmp_path / "streaming"
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            copy_backup(SlowReads(FilesystemStorage(seed.folder), ready), FilesystemStorage(target.root),  # type: ignore[arg-type]
                        DB, newest)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, "the child never started streaming"
        time.sleep(0.02)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(wait_status(pid)) == -signal.SIGKILL
    assert [p for p in target.root.rglob("*") if PARTIAL_MARK in p.name], "killed mid-stream: a partial write is left"
    assert [entry.backup_id for entry in list_backups(target, DB)] == [seed.backups[0]]
    assert {key: target.get_bytes(key) for key in before} == before  # the verified copy untouched
    assert current_holder(target, DB) is None  # the killed holder's pid is gone: not stuck
    copy_backup(source, target, DB, newest)
    assert_sound(target, identity, None, must_keep=set(seed.backups[::2]), where="after the next copy")
    assert_tidy(target, "after the next copy")
    assert {seed.backups[0], newest} == {entry.backup_id for entry in list_backups(target, DB) if entry.integrity_ok}


# -- the manifest reads of cleanup by kind (issue 11.4) ------------------------------------------------

class ManifestReadFaults:
    """A Storage whose ``at``-th read of a ``manifest.json`` fails (``fail``) or returns garbage (``garbage``).

    Every other call passes through; ``reads`` records the manifest keys read, in order.
    """

    def __init__(self, inner: Storage, *, at: int | None = None, kind: str = "fail") -> None:
        self.inner, self.uri, self.at, self.kind = inner, inner.uri, at, kind
        self.reads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("/manifest.json"):
            self.reads.append(key)
            if self.at is not None and len(self.reads) == self.at:
                if self.kind == "fail":
                    raise StorageError(f"injected read failure of {key}")
                return b'{"backup_id": "garbage", "tables": ['
        return self.inner.get_bytes(key)


@pytest.mark.parametrize("kind", ["fail", "garbage"])
def test_cleanup_by_kind_keeps_a_backup_whose_manifest_read_fails_or_is_garbage(
        kind: str, tmp_path: Path, seed: Seed, identity: pyrage.x25519.Identity) -> None:
    """Each manifest read of the sweep by kind (the own folder's kinds), failed or answered with garbage:
    the backup it was about is never deleted, a store failure deletes nothing in the folder, and
    every backup the clean plan keeps is still there."""
    policy = RetentionPolicy.parse("keep_last=1")

    def sweep(store: Storage) -> list[str]:
        deleted = []
        with database_lock(store, DB, owner="cli:test"):
            for plan in plan_kind_cleanups(store, DB, policy, KindRetention(), datetime.now(UTC)):
                deleted += [d.backup_id for d in plan.deletions]
                execute_cleanup(store, plan, audit=AuditLog(store, actor="cli:test"))
        return deleted

    clean_copy = tmp_path / "clean"
    shutil.copytree(seed.folder, clean_copy)
    counted = ManifestReadFaults(FilesystemStorage(clean_copy))
    assert set(sweep(counted)) == set(seed.backups[:-1])  # the clean plan deletes the two older ones
    clean_reads = list(counted.reads)
    assert clean_reads, "the sweep read no manifest"
    for n, key in enumerate(clean_reads, 1):
        folder = tmp_path / f"{kind}-{n}"
        shutil.copytree(seed.folder, folder)
        faulty = ManifestReadFaults(FilesystemStorage(folder), at=n, kind=kind)
        where = f"{kind} at manifest read {n}/{len(clean_reads)} ({key})"
        try:
            deleted = sweep(faulty)  # type: ignore[arg-type]
        except DbprotectError:
            deleted = []  # refused cleanly: nothing may be gone
        store = FilesystemStorage(folder)
        listed = {e.backup_id for e in list_backups(store, DB)}
        faulted_id = key.split("/")[1]
        assert faulted_id in listed, f"{where}: the backup whose manifest did not read was deleted"
        if kind == "fail":
            assert listed == set(seed.backups), f"{where}: a store failure still deleted {sorted(deleted)}"
        assert seed.backups[-1] in listed, where
        assert_sound(store, identity, None, must_keep={seed.backups[-1], faulted_id}, where=where)


def test_the_checks_after_a_fault_still_fail_on_a_damaged_copy_of_a_backup_they_passed(
        tmp_path: Path, seed: Seed, identity: pyrage.x25519.Identity, restorer: Restorer) -> None:
    """What the harness remembers (bytes that verified, backups restored) never hides a change: one
    byte flipped in a seed backup's dump, in a copy of the store, fails the check that passed the seed."""
    whole = FilesystemStorage(tmp_path / "whole")
    shutil.copytree(seed.folder, whole.root)
    assert_sound(whole, identity, restorer, must_keep=set(seed.backups), where="whole")
    damaged = FilesystemStorage(tmp_path / "damaged")
    shutil.copytree(seed.folder, damaged.root)
    dump = damaged.root / dump_key(DB, seed.backups[0])
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match=f"listed backup {seed.backups[0]} fails verification"):
        assert_sound(damaged, identity, restorer, must_keep=set(seed.backups), where="damaged")
    # and the restore check restores each new backup into an empty database
    restorer.done.clear()
    assert_sound(whole, identity, restorer, must_keep=set(seed.backups), where="whole again")
