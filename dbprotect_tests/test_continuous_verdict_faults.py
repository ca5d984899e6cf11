"""The base-backup verdict writer (``verified.json``) through every fault, and verdicts nobody wrote honestly.

``verified.json`` decides which bases retention may count as verified (the anchor, ``min_full_bases``)
and which ones point-in-time restore passes over (a failed verdict), so a verdict that says more than
its check proved is the worst defect here. The harness is :mod:`dbprotect_tests.test_store_faults`'s,
as :mod:`dbprotect_tests.test_continuous_faults` uses it: the writer (what ``dbprotect wal verify`` does
for the bases: :func:`~dbprotect.core.continuous.verdicts.verify_and_record` over every listed base,
oldest first) is failed and SIGKILLed before each of its store writes, on the filesystem store and on
S3 (moto server; the first call of each kind and the last).

The seed store holds two full bases whose objects match their ``base.json``: a good one, and a copy of
it whose ``backup_manifest`` (its own checksum changed, re-encrypted — anyone with the public key can)
fails ``pg_verifybackup``; a second seed adds what earlier runs left (the good base's passing verdict,
a torn one beside the failing base), so each write also overwrites. After each fault and after the
next verification:

- no base is verified (by :func:`base_state`, by retention's plan, by point-in-time restore's choice)
  unless ``pg_verifybackup`` passes it, and a good base is never *failed*;
- nothing is deleted: every object of the seed is still stored, with its size;
- after the next verification, each base's state is exactly what ``pg_verifybackup`` finds.

The counter-test runs the harness over a writer that records "verified" before its check completes
and shows the harness catches it. No rows are written to the shared WAL server.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyrage
import pytest

from dbprotect.core.backup.pipeline import encrypt_bytes
from dbprotect.core.continuous.base import (
    BaseBackupRecord,
    BaseVerification,
    list_base_backups,
    read_backup_manifest,
    take_base_backup,
    verify_base_backup,
)
from dbprotect.core.continuous.objects import BACKUP_MANIFEST_OBJECT, BASE_OBJECT, BASE_RECORD, base_folder, sha256_hex
from dbprotect.core.continuous.pitr import usable_bases
from dbprotect.core.continuous.verdicts import base_state, record_base_verdict, verdict_key, verify_and_record
from dbprotect.core.crypto import parse_identity, parse_recipients
from dbprotect.core.retention.chain_cleanup import plan_continuous_cleanup
from dbprotect.core.retention.chains import ChainPolicy
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store.manifest import new_backup_id
from dbprotect_tests.test_store_faults import DB, _maker, run_through_every_fault

pytestmark = pytest.mark.slow

#: Every full base counts for ``min_full_bases`` when verified: retention's plan names which ones it believed.
POLICY = ChainPolicy(window=timedelta(days=7), min_full_bases=5)


@dataclass(frozen=True)
class VerdictSeed:
    folder: Path
    good: str
    bad: str
    #: key → size of every object in the seed (nothing may go missing or change size).
    objects: dict[str, int]

    def truth(self, base_id: str) -> str:
        """What ``pg_verifybackup`` finds (checked once, when the seed was made)."""
        return "verified" if base_id == self.good else "failed"


def failing_copy(store: FilesystemStorage, record: BaseBackupRecord, identity: pyrage.x25519.Identity,
                 public_key: str) -> BaseBackupRecord:
    """A second base, ``base.json`` and objects consistent, that ``pg_verifybackup`` fails: the good
    base's tar, and its ``backup_manifest`` with one hex digit of the manifest's own checksum changed."""
    base_id = new_backup_id(datetime.now(UTC))
    source, folder = base_folder(DB, record.base_id), base_folder(DB, base_id)
    out = io.BytesIO()
    read_backup_manifest(store, record, identity, out)
    manifest = bytearray(out.getvalue())
    at = manifest.rindex(b'"Manifest-Checksum": "') + len(b'"Manifest-Checksum": "')
    manifest[at] = ord("0") if manifest[at] != ord("0") else ord("1")
    encrypted = encrypt_bytes(bytes(manifest), parse_recipients([public_key]))
    (store.root / folder).mkdir(parents=True)
    shutil.copyfile(store.root / source / BASE_OBJECT, store.root / folder / BASE_OBJECT)
    store.put_bytes(f"{folder}/{BACKUP_MANIFEST_OBJECT}", encrypted)
    forged = replace(record, base_id=base_id, backup_manifest={**record.backup_manifest, "size": len(encrypted),
                                                               "sha256": sha256_hex(encrypted)})
    store.put_bytes(f"{folder}/{BASE_RECORD}", forged.to_json())
    return forged


@pytest.fixture(scope="module")
def verdict_seed(tmp_path_factory: pytest.TempPathFactory, wal_server: str, age_keys: tuple[str, str]) -> VerdictSeed:
    identity = parse_identity(age_keys[0], source="test")
    folder = tmp_path_factory.mktemp("verdict-seed") / "store"
    store = FilesystemStorage(folder)
    good = take_base_backup(database=DB, dsn=wal_server, storage=store, recipients=[age_keys[1]], incremental=False)
    bad = failing_copy(store, good, identity, age_keys[1])
    assert verify_base_backup(store, good, identity).ok
    failed = verify_base_backup(store, bad, identity)
    assert not failed.ok and "checksum" in failed.detail, failed.detail
    return VerdictSeed(folder, good.base_id, bad.base_id, {info.key: info.size for info in store.list("")})


@pytest.fixture(scope="module")
def verdict_seed_with_earlier(tmp_path_factory: pytest.TempPathFactory, verdict_seed: VerdictSeed) -> VerdictSeed:
    """The same bases with what earlier runs left: the good base's passing verdict, and a torn
    ``verified.json`` beside the failing base (as a non-atomic writer killed mid-write would leave)."""
    folder = tmp_path_factory.mktemp("verdict-seed-earlier") / "store"
    shutil.copytree(verdict_seed.folder, folder)
    store = FilesystemStorage(folder)
    good, bad = (BaseBackupRecord.from_store(store, DB, base_id) for base_id in (verdict_seed.good, verdict_seed.bad))
    record_base_verdict(store, good, BaseVerification(good.base_id, True, "pg_verifybackup passed", 0.1))
    record_base_verdict(store, bad, BaseVerification(bad.base_id, True, "pg_verifybackup passed", 0.1))
    passing = store.get_bytes(verdict_key(bad))
    store.put_bytes(verdict_key(bad), passing[: passing.index(b'"ok"')])
    return replace(verdict_seed, folder=folder)


def assert_verdicts_sound(store: Storage, seed: VerdictSeed, where: str) -> None:
    """No base believed verified unless it passes; nothing deleted; after the next run, the truth exactly."""
    finished = "then the next command" in where
    sizes = {info.key: info.size for info in store.list("")}
    lost = sorted(key for key, size in seed.objects.items()
                  if sizes.get(key) != size and not key.endswith("/verified.json"))
    assert not lost, f"{where}: objects lost or changed: {lost}"
    records = {record.base_id: record for record in list_base_backups(store, DB)}
    assert set(records) == {seed.good, seed.bad}, f"{where}: listed {sorted(records)}"
    for base_id, record in records.items():
        state, truth = base_state(store, record), seed.truth(base_id)
        assert state in ("unverified", truth), f"{where}: base {base_id} is {state}, pg_verifybackup says {truth}"
        if finished:
            assert state == truth, f"{where}: the next verification left base {base_id} {state}, not {truth}"
    # retention: only verified full bases count for min_full_bases, so its reasons name what it believed
    cleanup = plan_continuous_cleanup(store, DB, POLICY, datetime.now(UTC))
    assert cleanup is not None
    believed = {d.name for d in cleanup.plan.decisions
                if d.kind == "base" and any(r.startswith("min_full_bases") for r in d.reasons)}
    assert seed.bad not in believed, f"{where}: retention counts the failing base {seed.bad} as verified"
    assert cleanup.plan.anchor != seed.bad, f"{where}: the failing base anchors the window"
    assert not cleanup.plan.deletions, f"{where}: retention would delete {cleanup.plan.deletions}"
    if finished:
        assert believed == {seed.good}, f"{where}: retention believes {believed}"
    # point-in-time restore passes over a base with a failed verdict: never the good one
    skipped: list[str] = []
    chains = usable_bases(store, DB, to_time=datetime.now(UTC) + timedelta(days=1), to_lsn=None, skipped=skipped)
    usable = {chain[-1].base_id for chain in chains}
    assert seed.good in usable, f"{where}: point-in-time restore passes over the good base: {skipped}"
    if finished:
        assert usable == {seed.good}, f"{where}: point-in-time restore would use {usable}"


@pytest.mark.parametrize("earlier", [False, True], ids=["first", "over-earlier-verdicts"])
@pytest.mark.parametrize("kind", ["filesystem", "s3"])
def test_the_base_verdict_writer_survives_every_fault(
        kind: str, earlier: bool, tmp_path: Path, request: pytest.FixtureRequest, identity: pyrage.x25519.Identity,
        verdict_seed: VerdictSeed, verdict_seed_with_earlier: VerdictSeed) -> None:
    maker = _maker(kind, tmp_path, request)
    seed = verdict_seed_with_earlier if earlier else verdict_seed

    def verify(store: Storage) -> None:
        """What ``dbprotect wal verify`` does for the bases (ops.continuous.verify_base_backups)."""
        for record in list_base_backups(store, DB):
            verify_and_record(store, record, identity)

    def check(store: Storage, where: str) -> None:
        assert_verdicts_sound(store, seed, where)

    calls = run_through_every_fault(maker, seed.folder, verify, check, verify, tmp_path)
    assert calls == [f"put_bytes {DB}/continuous/base/{base_id}/verified.json"
                     for base_id in sorted((seed.good, seed.bad))], calls


def test_a_verdict_written_before_its_check_completes_is_caught(
        tmp_path: Path, request: pytest.FixtureRequest, identity: pyrage.x25519.Identity,
        verdict_seed: VerdictSeed) -> None:
    """The counter-test: a writer that records "verified" first and the real verdict after the check.

    Failed at its last write, it leaves the failing base verified: the harness must say so.
    """
    maker = _maker("filesystem", tmp_path, request)

    def verify_too_early(store: Storage) -> None:
        for record in list_base_backups(store, DB):
            record_base_verdict(store, record, BaseVerification(record.base_id, True, "assumed", 0.0))
            verify_and_record(store, record, identity)

    def check(store: Storage, where: str) -> None:
        assert_verdicts_sound(store, verdict_seed, where)

    with pytest.raises(AssertionError, match=f"base {verdict_seed.bad} is verified, pg_verifybackup says failed"):
        run_through_every_fault(maker, verdict_seed.folder, verify_too_early, check, verify_too_early, tmp_path)


def test_torn_copied_and_malformed_verdicts_are_ignored(
        tmp_path: Path, identity: pyrage.x25519.Identity, verdict_seed: VerdictSeed) -> None:
    """A ``verified.json`` that is torn, not a verdict, or about other objects reads as unverified;
    one that reads as unverified or failed never stops the next verification from finishing the job."""
    store = FilesystemStorage(tmp_path / "store")
    shutil.copytree(verdict_seed.folder, store.root)
    good, bad = (BaseBackupRecord.from_store(store, DB, base_id) for base_id in (verdict_seed.good, verdict_seed.bad))
    record_base_verdict(store, good, BaseVerification(good.base_id, True, "pg_verifybackup passed", 0.1))
    honest = store.get_bytes(verdict_key(good))
    assert base_state(store, good) == "verified"
    claims_bad_verified = json.loads(honest)
    claims_bad_verified["base_id"] = bad.base_id
    wrong_types = {**json.loads(honest), "ok": "true"}
    forgeries = {
        **{f"torn at {n}": honest[:n] for n in (0, 1, len(honest) // 2, len(honest) - 1)},
        "a list": b"[]", "a string": b'"verified"', "not UTF-8": b"\xff\xfe{}",
        "ok as a string": json.dumps(wrong_types).encode(),
        "no SHA-256s": json.dumps({"base_id": good.base_id, "ok": True}).encode(),
        "oversized": honest[:-1] + b", \"pad\": \"" + b"x" * (2 << 20) + b"\"}",
        # the good base's verdict, renamed to the failing base: its SHA-256s are the good base's
        "copied to another base": json.dumps(claims_bad_verified).encode(),
    }
    for label, data in forgeries.items():
        target = bad if label == "copied to another base" else good
        store.put_bytes(verdict_key(target), data)
        assert base_state(store, target) == "unverified", f"{label}: believed"
        assert_verdicts_sound(store, verdict_seed, f"{label}")
        verify_and_record(store, target, identity)
        assert base_state(store, target) == verdict_seed.truth(target.base_id), label
        store.delete(verdict_key(target))


def test_a_forged_passing_verdict_for_a_failing_base_lasts_only_until_the_next_verification(
        tmp_path: Path, identity: pyrage.x25519.Identity, verdict_seed: VerdictSeed) -> None:
    """The limit of an unsigned record: a verdict written with the failing base's own SHA-256s by someone
    with store write access reads as verified (as any record would); the next verification never reads
    it to skip work, so it is replaced by the failure, and then nothing counts the base as verified."""
    store = FilesystemStorage(tmp_path / "store")
    shutil.copytree(verdict_seed.folder, store.root)
    bad = BaseBackupRecord.from_store(store, DB, verdict_seed.bad)
    record_base_verdict(store, bad, BaseVerification(bad.base_id, True, "pg_verifybackup passed", 0.1))
    assert base_state(store, bad) == "verified"
    verification = verify_and_record(store, bad, identity)
    assert not verification.ok
    assert base_state(store, bad) == "failed"
    good = BaseBackupRecord.from_store(store, DB, verdict_seed.good)
    verify_and_record(store, good, identity)
    assert_verdicts_sound(store, verdict_seed, "forged, then the next command")
