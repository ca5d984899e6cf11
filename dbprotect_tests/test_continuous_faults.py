"""The continuous writers through every step of their store traffic, failed and killed (issue 15).

The machinery is :mod:`dbprotect_tests.test_store_faults`'s: :class:`FaultyStorage` fails or SIGKILLs
its forked writer *before* its N-th mutating store call, once per call on the filesystem store and at
the first call of each kind plus the last on S3 (moto server). The writers here:

- a **full base backup** and an **incremental** one (against a full in the seed store), from the
  session's ``wal_server``;
- the **WAL shipper** as the receiver runs it: what the spool holds (a completed segment, a timeline
  history file) shipped oldest first and removed from the spool once stored, then the current
  ``.partial`` segment, over a store that already holds earlier segments and a partial of the one
  now completed.

After each fault, and again after the next run of the same writer:

- every listed base backup verifies (size and SHA-256 of both objects, then ``pg_verifybackup``),
  an incremental's parent is listed, and the seed's bases are still there;
- WAL: every stored segment and history file verifies, no gap inside a timeline, nothing that left
  the spool is missing from the store (a segment leaves the spool only once stored), and each partial
  record names an object that decrypts to what the record says;
- no lock is stuck (the store's database lock; the spool's ``flock``).

After the next run only: nothing partial or temporary is listed, no lock object is left, no base
folder without its record and no WAL object that no record names (what a killed writer left is
swept by the next one).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyrage
import pytest

from dbprotect.core.continuous.base import BaseBackupRecord, list_base_backups, take_base_backup, verify_base_backup
from dbprotect.core.continuous.objects import BASE_RECORD, decrypt_object
from dbprotect.core.continuous.wal import (
    LOCK_FILE,
    ReceiverStats,
    SegmentRecord,
    _ship_current_partial,
    _ship_spool,
    history_record_key,
    segment_record_key,
    ship_completed,
    ship_partial,
    stored_segments,
    verify_wal,
    wal_prefix,
)
from dbprotect.core.crypto import parse_recipients
from dbprotect.core.errors import StorageError
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store.lock import current_holder
from dbprotect.core.store.manifest import new_backup_id
from dbprotect_tests.test_lock_guards import BreaksLockBefore
from dbprotect_tests.test_store_faults import (
    DB,
    StoreMaker,
    _maker,
    run_through_every_fault,
)

pytestmark = pytest.mark.slow

SEGMENT_BYTES = 16 << 20
SEEDED_SEGMENTS = ("000000010000000000000001", "000000010000000000000002")
COMPLETED = "000000010000000000000003"
HISTORY = "00000002.history"
PARTIAL = "000000020000000000000003.partial"


# -- base backups --------------------------------------------------------------------------------------

class BaseVerifier:
    """Runs the base rungs once per distinct stored base (the seed's base is the same in every copy)."""

    #: (base id, SHA-256) of the bases that passed, across the module's tests (fresh ids for new bases).
    passed: set[tuple[str, str]] = set()

    def __init__(self, identity: pyrage.x25519.Identity) -> None:
        self.identity = identity

    def check(self, store: Storage, record: BaseBackupRecord, where: str) -> None:
        if (record.base_id, record.base["sha256"]) in self.passed:
            return
        result = verify_base_backup(store, record, self.identity)
        assert result.ok, f"{where}: listed base {record.base_id} fails verification: {result.detail}"
        self.passed.add((record.base_id, record.base["sha256"]))


def record_less_base_folders(store: Storage) -> list[str]:
    """Base folders holding objects but no ``base.json``: what a killed base backup leaves."""
    folders: dict[str, set[str]] = {}
    for info in store.list(f"{DB}/continuous/base/"):
        parts = info.key.split("/")
        if len(parts) == 5:
            folders.setdefault(parts[3], set()).add(parts[4])
    return sorted(base_id for base_id, names in folders.items() if BASE_RECORD not in names)


def assert_bases_sound(store: Storage, verifier: BaseVerifier, *, must_keep: set[str], where: str) -> list[str]:
    listed = list_base_backups(store, DB)
    ids = [record.base_id for record in listed]
    assert must_keep <= set(ids), f"{where}: verified base backups lost: {sorted(must_keep - set(ids))}"
    for record in listed:
        assert record.parent is None or record.parent in ids, f"{where}: {record.base_id}'s parent is not listed"
        verifier.check(store, record, where)
    assert current_holder(store, DB) is None, f"{where}: the lock is stuck"
    return ids


@pytest.fixture
def base_verifier(identity: pyrage.x25519.Identity) -> BaseVerifier:
    return BaseVerifier(identity)


@pytest.fixture(scope="module")
def full_base_seed(tmp_path_factory: pytest.TempPathFactory, wal_server: str,
                   age_keys: tuple[str, str]) -> tuple[Path, str]:
    """A store holding one full base backup of ``wal_server`` (what an incremental is taken against)."""
    folder = tmp_path_factory.mktemp("base-seed") / "store"
    with psycopg.connect(wal_server, autocommit=True) as conn:
        conn.execute("INSERT INTO events SELECT g, 'faults' FROM generate_series(500000, 500999) g "
                     "ON CONFLICT DO NOTHING")
    record = take_base_backup(database=DB, dsn=wal_server, storage=FilesystemStorage(folder),
                              recipients=[age_keys[1]], incremental=False)
    return folder, record.base_id


@pytest.mark.parametrize("kind", ["filesystem", "s3"])
@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_a_base_backup_survives_every_fault(
        kind: str, incremental: bool, tmp_path: Path, request: pytest.FixtureRequest, wal_server: str,
        age_keys: tuple[str, str], identity: pyrage.x25519.Identity, base_verifier: BaseVerifier,
        full_base_seed: tuple[Path, str]) -> None:
    maker = _maker(kind, tmp_path, request)
    seed, held = (full_base_seed if incremental else (None, None))

    def base_backup(store: Storage) -> None:
        """What ``dbprotect wal base-backup`` does (ops.continuous): one base backup under the lock."""
        record = take_base_backup(database=DB, dsn=wal_server, storage=store, recipients=[age_keys[1]],
                                  incremental=incremental, identity=identity, owner="cli:test")
        assert record.kind == ("incremental" if incremental else "full")

    def check(store: Storage, where: str) -> None:
        ids = assert_bases_sound(store, base_verifier, must_keep={held} if held else set(), where=where)
        assert len(ids) <= (1 if held else 0) + 2, where
        if "then the next command" in where:
            assert len(ids) >= (1 if held else 0) + 1, f"{where}: the next base backup is not listed"
            assert not record_less_base_folders(store), f"{where}: left behind: {record_less_base_folders(store)}"

    calls = run_through_every_fault(maker, seed, base_backup, check, base_backup, tmp_path)
    assert any(call.startswith("commit ") and call.endswith("/base.tar.zst.age") for call in calls), calls
    assert any(call.endswith("/backup_manifest.age") for call in calls), calls
    assert calls[-2].startswith("put_if_absent ") and calls[-2].endswith(f"/{BASE_RECORD}"), calls


def test_an_abandoned_base_folder_is_swept_but_never_a_complete_one(
        tmp_path: Path, wal_server: str, age_keys: tuple[str, str], identity: pyrage.x25519.Identity,
        base_verifier: BaseVerifier, full_base_seed: tuple[Path, str]) -> None:
    """The sweep removes exactly the record-less folders: the listed full seed and its objects stay."""
    seed, held = full_base_seed
    store = FilesystemStorage(tmp_path / "store")
    shutil.copytree(seed, store.root)
    abandoned = f"{DB}/continuous/base/{new_backup_id(datetime.now(UTC))}"
    store.put_bytes(f"{abandoned}/base.tar.zst.age", b"age-encryption.org/v1 cut")
    before = {info.key for info in store.list(f"{DB}/continuous/base/{held}/")}
    record = take_base_backup(database=DB, dsn=wal_server, storage=store, recipients=[age_keys[1]],
                              incremental=True, identity=identity)
    assert record.parent == held
    assert not record_less_base_folders(store)
    assert before <= {info.key for info in store.list(f"{DB}/continuous/base/{held}/")}
    assert_bases_sound(store, base_verifier, must_keep={held, record.base_id}, where="after the sweep")


def test_a_base_backup_whose_lock_was_broken_commits_no_record(
        tmp_path: Path, wal_server: str, age_keys: tuple[str, str]) -> None:
    """A holder stalled past its lease (another writer took the lock) commits no ``base.json``."""
    store = FilesystemStorage(tmp_path / "store")
    racy = BreaksLockBefore(store)  # at the check just before the record's commit
    with pytest.raises(StorageError) as caught:
        take_base_backup(database=DB, dsn=wal_server, storage=racy, recipients=[age_keys[1]],  # type: ignore[arg-type]
                         incremental=False)
    assert racy.broke and "lost the lock" in str(caught.value), caught.value
    assert list_base_backups(store, DB) == []
    assert not [info.key for info in store.list(f"{DB}/") if info.key.endswith(f"/{BASE_RECORD}")]


# -- the WAL shipper -----------------------------------------------------------------------------------

def _wal_file(name: str, size: int) -> bytes:
    """WAL-like content: a distinct head (so each file's SHA-256 differs), then zeros (as a fresh segment)."""
    head = (name.encode() * 4096)[: 64 << 10]
    return head + os.urandom(4096) + bytes(size - len(head) - 4096)


@dataclass
class Spools:
    """One spool folder per store (the receiver's spool lives beside its store across a crash), named
    by the store's URI so the forked writer and the checking parent find the same one."""

    seed: Path
    base: Path

    def of(self, store: Storage) -> Path:
        spool = self.base / f"spool-{hashlib.sha256(store.uri.encode()).hexdigest()[:12]}"
        if not spool.exists():
            shutil.copytree(self.seed, spool)
        return spool


@pytest.fixture(scope="module")
def wal_seed(tmp_path_factory: pytest.TempPathFactory, age_keys: tuple[str, str]) -> tuple[Path, Path]:
    """(store, spool): two segments and a partial of the third stored; the spool holds the third
    completed, the history file of timeline 2 and timeline 2's ``.partial``."""
    root = tmp_path_factory.mktemp("wal-seed")
    store = FilesystemStorage(root / "store")
    recipients = parse_recipients([age_keys[1]])
    work = root / "work"
    work.mkdir()
    for name in SEEDED_SEGMENTS:
        (work / name).write_bytes(_wal_file(name, SEGMENT_BYTES))
        ship_completed(store, DB, work / name, recipients)
    (work / f"{COMPLETED}.partial").write_bytes(_wal_file(COMPLETED, SEGMENT_BYTES)[: SEGMENT_BYTES // 2]
                                                + bytes(SEGMENT_BYTES // 2))
    ship_partial(store, DB, work / f"{COMPLETED}.partial", recipients)
    spool = root / "spool"
    spool.mkdir(mode=0o700)
    (spool / COMPLETED).write_bytes(_wal_file(COMPLETED, SEGMENT_BYTES))
    (spool / HISTORY).write_bytes(b"1\t0/3000028\tno recovery target specified\n")
    (spool / PARTIAL).write_bytes(_wal_file(PARTIAL, SEGMENT_BYTES)[: 1 << 20] + bytes(SEGMENT_BYTES - (1 << 20)))
    return root / "store", spool


def _referenced_and_stored_wal_objects(store: Storage) -> tuple[set[str], set[str]]:
    """(objects some record names, objects stored) under the database's WAL folder."""
    referenced, objects = set(), set()
    for info in store.list(wal_prefix(DB) + "/"):
        if not info.key.endswith(".json"):
            objects.add(info.key)
            continue
        name = info.key.rsplit("/", 1)[-1].removesuffix(".json")
        referenced.add(SegmentRecord.from_store(store, info.key, database=DB, name=name).object)
    return referenced, objects


def assert_wal_sound(store: Storage, spool: Path, identity: pyrage.x25519.Identity, where: str) -> None:
    verification = verify_wal(store, DB, identity)
    assert verification.ok, f"{where}: {verification.problems} gaps {verification.gaps}"
    stored = set(stored_segments(store, DB).get(1, []))
    assert set(SEEDED_SEGMENTS) <= stored, f"{where}: stored segments lost"
    in_spool = {path.name for path in spool.iterdir()}
    if COMPLETED not in in_spool:
        assert COMPLETED in stored, f"{where}: {COMPLETED} left the spool but is not stored"
    if HISTORY not in in_spool:
        store.stat(history_record_key(DB, HISTORY))  # left the spool, so it is stored
    for info in [*store.list(f"{wal_prefix(DB)}/history/"), *store.list(f"{wal_prefix(DB)}/partial/")]:
        if info.key.endswith(".json"):  # history and partial records: verify_wal reads completed segments only
            name = info.key.rsplit("/", 1)[-1].removesuffix(".json")
            record = SegmentRecord.from_store(store, info.key, database=DB, name=name)
            out = io.BytesIO()
            decrypt_object(store, record.object, size=record.size, sha256=record.sha256, identity=identity,
                           out=out, compressed=True, what=name)
            assert len(out.getvalue()) == record.plain_bytes, f"{where}: {name} differs from its record"
    with open(spool / LOCK_FILE, "a+") as lock:  # the receiver's one-per-spool lock is free
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("kind", ["filesystem", "s3"])
def test_the_wal_shipper_survives_every_fault(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                                              age_keys: tuple[str, str], identity: pyrage.x25519.Identity,
                                              wal_seed: tuple[Path, Path]) -> None:
    maker: StoreMaker = _maker(kind, tmp_path, request)
    seed_store, seed_spool = wal_seed
    spools = Spools(seed_spool, tmp_path)
    recipients = parse_recipients([age_keys[1]])

    def ship(store: Storage) -> None:
        """One pass of the receiver's loop over the spool (what ``dbprotect wal receive`` runs), under
        the spool's lock, as a restarted receiver does first."""
        spool = spools.of(store)
        with open(spool / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stats = ReceiverStats()
            _ship_spool(store, DB, spool, recipients, SEGMENT_BYTES, stats, lambda line: None)
            _ship_current_partial(store, DB, spool, recipients, SEGMENT_BYTES, stats, None)

    def check(store: Storage, where: str) -> None:
        spool = spools.of(store)
        assert_wal_sound(store, spool, identity, where)
        if "then the next command" in where:
            assert not [p.name for p in spool.iterdir() if p.name in (COMPLETED, HISTORY)], where
            assert COMPLETED in stored_segments(store, DB)[1], where
            store.stat(segment_record_key(DB, COMPLETED))
            referenced, objects = _referenced_and_stored_wal_objects(store)
            assert objects == referenced, f"{where}: WAL objects no record names: {sorted(objects - referenced)}"
            partials = {info.key.rsplit("/", 1)[-1] for info in store.list(f"{wal_prefix(DB)}/partial/")
                        if info.key.endswith(".json")}
            assert partials == {f"{PARTIAL.removesuffix('.partial')}.json"}, f"{where}: partial records {partials}"

    calls = run_through_every_fault(maker, seed_store, ship, check, ship, tmp_path)
    assert any(call.startswith(f"commit {wal_prefix(DB)}/history/") for call in calls), calls
    assert any(call.startswith(f"put_if_absent {segment_record_key(DB, COMPLETED)}") for call in calls), calls
    assert any(call.startswith(f"delete {wal_prefix(DB)}/partial/{COMPLETED}") for call in calls), calls
    assert calls[-1].startswith(f"put_bytes {wal_prefix(DB)}/partial/"), calls

