"""Mark then sweep against real stores (a folder and the moto S3 endpoint), with synthetic backups.

Backups are written through the Storage API with the real key layout and a valid manifest whose
SHA-256 matches the dump object, so "listed and valid" is checked the way a restore would check it.
Storage failures are injected by wrapping our own Storage interface, not by mocking boto3 or os.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dbprotect.core.audit import AUDIT_PREFIX, AuditLog, read, verify_chain
from dbprotect.core.errors import RefusedError, StorageError
from dbprotect.core.retention.cleanup import execute_cleanup, plan_cleanup
from dbprotect.core.retention.compliance import retention_compliance
from dbprotect.core.retention.policy import RetentionPolicy
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store.catalog import list_backups
from dbprotect.core.store.manifest import manifest_key
from dbprotect_tests.fixtures.backups import DB, NOW, assert_listed_and_valid, write_backup


def seed(store: Storage) -> dict[str, list[str]]:
    """Eight daily backups (2 to 9 days old), an incomplete upload 30 h old and one 3 h old."""
    daily = [write_backup(store, NOW - timedelta(days=d, hours=10), n=d) for d in range(2, 10)]
    stale = write_backup(store, NOW - timedelta(hours=30), manifest=False, n=100)
    running = write_backup(store, NOW - timedelta(hours=3), manifest=False, n=101)
    return {"daily": daily, "stale": [stale], "running": [running]}


def all_keys(store: Storage) -> list[str]:
    return [info.key for info in store.list("")]


POLICY = RetentionPolicy.parse("keep_last=3")


def audit(store: Storage) -> AuditLog:
    return AuditLog(store, actor="test:cleanup", clock=lambda: NOW)


def test_dry_run_deletes_nothing_and_writes_nothing(store: Storage) -> None:
    made = seed(store)
    before = all_keys(store)
    plan = plan_cleanup(store, DB, POLICY, NOW)
    result = execute_cleanup(store, plan, dry_run=True, audit=audit(store))
    assert all_keys(store) == before
    assert result.dry_run and result.deleted_backups == sorted(made["daily"][3:])
    assert result.removed_incomplete == made["stale"]
    assert len(result.deleted_objects) == 5 * 4 + 1  # manifest, dump, two checks each; one dump
    assert not any(key.startswith(AUDIT_PREFIX) for key in all_keys(store))


class Recording:
    """Our Storage interface, recording deletions in order, optionally failing the Nth one."""

    def __init__(self, inner: Storage, fail_at: int | None = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.fail_at = fail_at
        self.deleted: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def delete(self, key: str) -> None:
        if self.fail_at is not None and len(self.deleted) + 1 == self.fail_at:
            raise StorageError(f"injected failure deleting {key}")
        self.inner.delete(key)
        self.deleted.append(key)


def test_a_run_deletes_exactly_the_plan_manifest_first_and_audits_each(store: Storage) -> None:
    made = seed(store)
    plan = plan_cleanup(store, DB, POLICY, NOW)
    doomed = sorted(made["daily"][3:])
    held = sum(info.size for info in store.list(f"{DB}/") if info.key.split("/")[1] in doomed + made["stale"])
    recording = Recording(store)
    result = execute_cleanup(recording, plan, audit=audit(store))  # type: ignore[arg-type]
    assert result.deleted_backups == doomed and result.removed_incomplete == made["stale"]
    assert assert_listed_and_valid(store) == made["daily"][:3]
    # the upload in progress is untouched; the stale one is gone
    assert [e.backup_id for e in list_backups(store, DB, include_incomplete=True) if not e.has_manifest] \
        == made["running"]
    for backup_id in doomed:  # manifest first, then the dump, then the checks
        mine = [k.rsplit(f"{backup_id}/", 1)[1] for k in recording.deleted if f"/{backup_id}/" in k]
        assert mine[:2] == ["manifest.json", "dump.zst.age"] and len(mine) == 4
        assert all(k.startswith("checks/") for k in mine[2:])
    assert not any(f"/{b}/" in k for b in doomed + made["stale"] for k in all_keys(store))
    assert result.bytes_freed == held and len(result.deleted_objects) == 21
    records = list(read(store))
    assert [(r.action, r.target, r.outcome) for r in records] == [("delete", b, "deleted")
                                                                   for b in doomed + made["stale"]]
    assert records[0].detail == "not kept by any rule of keep_last=3, min_verified=1"
    assert records[-1].data["kind"] == "delete-incomplete"
    assert verify_chain(store).ok
    again = plan_cleanup(store, DB, POLICY, NOW)
    assert again.deletions == [] and again.garbage == []


def test_storage_failing_mid_cleanup_leaves_every_listed_backup_valid_and_a_rerun_finishes(
        store: Storage) -> None:
    made = seed(store)
    plan = plan_cleanup(store, DB, POLICY, NOW)
    oldest = plan.deletions[0].backup_id
    failing = Recording(store, fail_at=2)  # the first manifest deletion succeeds, the dump's fails
    with pytest.raises(StorageError, match=f"cleanup of shop stopped at {oldest}: injected failure") as caught:
        execute_cleanup(failing, plan, audit=audit(store))  # type: ignore[arg-type]
    assert caught.value.hint == "every backup still listed is whole; run the cleanup again to finish"
    assert failing.deleted == [manifest_key(DB, oldest)]
    listed = assert_listed_and_valid(store)
    assert listed == [b for b in made["daily"] if b != oldest]  # invisible, not listed half-deleted
    assert [(r.target, r.outcome) for r in read(store)] == [(oldest, "failed")]
    # a second run (planned afresh, as the schedule would) finishes the job
    rerun = plan_cleanup(store, DB, POLICY, NOW)
    assert oldest in [d.backup_id for d in rerun.garbage]
    execute_cleanup(store, rerun, audit=audit(store))
    assert assert_listed_and_valid(store) == made["daily"][:3]
    assert not any(f"/{b}/" in k for b in made["daily"][3:] + made["stale"] for k in all_keys(store))
    assert verify_chain(store).ok


@pytest.mark.parametrize("fail_at", range(1, 22))
def test_failing_at_any_deletion_never_leaves_a_listed_backup_broken(tmp_path: Path, fail_at: int) -> None:
    store = FilesystemStorage(tmp_path / "store")
    made = seed(store)
    plan = plan_cleanup(store, DB, POLICY, NOW)
    failing = Recording(store, fail_at=fail_at)
    with pytest.raises(StorageError):
        execute_cleanup(failing, plan, audit=audit(store))  # type: ignore[arg-type]
    assert set(assert_listed_and_valid(store)) >= set(made["daily"][:3])
    execute_cleanup(store, plan_cleanup(store, DB, POLICY, NOW), audit=audit(store))
    assert assert_listed_and_valid(store) == made["daily"][:3]
    assert [e.backup_id for e in list_backups(store, DB, include_incomplete=True)] == made["running"] + \
        made["daily"][:3]


def test_a_refused_plan_deletes_nothing_and_is_audited(store: Storage) -> None:
    made = seed(store)
    before = all_keys(store)
    plan = plan_cleanup(store, DB, RetentionPolicy.parse("max_age=1d"), NOW)
    assert plan.refused
    with pytest.raises(RefusedError, match="would delete every verified backup") as caught:
        execute_cleanup(store, plan, audit=audit(store))
    assert caught.value.hint == "nothing was deleted; 'dbprotect cleanup --dry-run' shows the plan"
    assert [k for k in all_keys(store) if not k.startswith(AUDIT_PREFIX)] == before
    [record] = read(store)
    assert (record.action, record.outcome, record.database) == ("refused", "refused", DB)
    assert record.detail.startswith(f"max_age=1d would delete every verified backup: the newest one, "
                                    f"{made['daily'][0]}, is 2.4 d old.")


def test_retention_compliance_before_and_after_cleanup(store: Storage) -> None:
    seed(store)
    policy = RetentionPolicy.parse("max_age=5d, min_verified=2")
    before = retention_compliance(list_backups(store, DB, include_incomplete=True), policy, NOW)
    assert not before.ok and len(before.too_old) == 5
    assert before.problems == (f"5 backup(s) older than max_age=5d, oldest {before.too_old[-1]}",)
    execute_cleanup(store, plan_cleanup(store, DB, policy, NOW), audit=audit(store))
    after = retention_compliance(list_backups(store, DB, include_incomplete=True), policy, NOW)
    assert after.ok and after.verified == 3
    strict = retention_compliance(list_backups(store, DB), RetentionPolicy.parse("min_verified=5"), NOW)
    assert strict.problems == ("3 verified backup(s), the policy asks for at least 5",)
