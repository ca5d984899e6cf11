"""Cleanup: mark, then sweep — the only place that deletes backups.

:func:`plan_cleanup` lists the store and asks :func:`~dbprotect.core.retention.plan.plan_retention` what
to delete (the mark); :func:`execute_cleanup` deletes exactly that (the sweep). Between the two a
person or a Dagster run can look at the plan; the CLI's ``--dry-run`` prints it.

Delete order, per backup (pgBackRest's expire): **manifest.json first**. The manifest is what
makes a backup exist (it is written last by a backup), so once it is gone the backup is invisible
to listings, RPO and restore; then the dump object; then the check objects. Backups go oldest
first. If the store fails half-way, every backup still listed is whole (its manifest and its dump
are there), the one being deleted only lacks its manifest (an incomplete upload to the catalog),
and running the cleanup again finishes it: deletion is idempotent and a headless backup older than
a day is garbage. (A headless backup younger than a day waits a day, as an upload in progress.)

``dry_run`` is checked at every single deletion, not once at the top, so no code path can delete
in a dry run. A dry run writes nothing, not even to the audit log. A real run writes one audit
record per removed backup or incomplete upload (and one for a failure or a refusal).

Example::

    plan = plan_cleanup(store, "shop", RetentionPolicy.parse("keep_last=10"), now)
    print(plan.render())
    result = execute_cleanup(store, plan, audit=AuditLog(store, actor="schedule:cleanup"))
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo

from dbprotect.core.audit import AuditLog
from dbprotect.core.errors import DbprotectError, Refusals, RefusedError, StorageError
from dbprotect.core.retention.plan import Decision, RetentionPlan, plan_retention
from dbprotect.core.retention.policy import RetentionPolicy
from dbprotect.core.store import ObjectInfo, Storage
from dbprotect.core.store.catalog import CLOCK_SKEW_TOLERANCE, list_backups
from dbprotect.core.store.lock import ensure_lock_held
from dbprotect.core.store.manifest import DUMP_OBJECT, MANIFEST_OBJECT


def plan_cleanup(storage: Storage, database: str, policy: RetentionPolicy, now: datetime, *,
                 locked: Collection[str] = (), tz: tzinfo = UTC,
                 tolerance: timedelta = CLOCK_SKEW_TOLERANCE) -> RetentionPlan:
    """The mark: what a cleanup of ``database`` in ``storage`` would delete, and why. Deletes nothing.

    Folders whose names are not readable backup ids are never touched; each is named in the
    plan's warnings (an operator looks at them by hand).
    """
    skipped: list[str] = []
    entries = list_backups(storage, database, include_incomplete=True, now=now, tolerance=tolerance, skipped=skipped)
    plan = plan_retention(entries, policy, now, database=database, locked=locked, tz=tz, tolerance=tolerance)
    if skipped:
        plan = replace(plan, warnings=(*plan.warnings, *(f"skipped, not a backup: {reason}" for reason in skipped)))
    return plan


@dataclass
class CleanupResult:
    """What a sweep removed (or, in a dry run, would remove)."""

    database: str
    dry_run: bool
    deleted_backups: list[str] = field(default_factory=list)
    removed_incomplete: list[str] = field(default_factory=list)
    deleted_objects: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "dry_run": self.dry_run, "deleted_backups": self.deleted_backups,
                "removed_incomplete": self.removed_incomplete, "deleted_objects": len(self.deleted_objects),
                "bytes_freed": self.bytes_freed}


def _delete_order(objects: list[ObjectInfo]) -> list[ObjectInfo]:
    """manifest.json, then the dump, then everything else (checks): invalidate before removing."""
    rank = {MANIFEST_OBJECT: 0, DUMP_OBJECT: 1}
    return sorted(objects, key=lambda info: (rank.get(info.key.rsplit("/", 1)[-1], 2), info.key))


def _sweep_one(storage: Storage, database: str, decision: Decision, dry_run: bool, result: CleanupResult) -> int:
    """Delete every object of one backup folder in the safe order; returns the bytes it held."""
    objects = _delete_order(list(storage.list(f"{database}/{decision.backup_id}/")))
    freed = 0
    for info in objects:
        if not dry_run:  # checked at each deletion (pgBackRest's habit)
            storage.delete(info.key)
        result.deleted_objects.append(info.key)
        freed += info.size
    result.bytes_freed += freed
    return freed


def execute_cleanup(storage: Storage, plan: RetentionPlan, *, dry_run: bool = False,
                    audit: AuditLog | None = None) -> CleanupResult:
    """The sweep: delete what ``plan`` marked, manifest first, and record each deletion.

    Raises :class:`RefusedError` for a refused plan (after recording the refusal) and
    :class:`StorageError` when the store fails; what was deleted before the failure is recorded,
    and a second run finishes the job. ``audit`` defaults to the store's own log.
    """
    audit = audit or AuditLog(storage, actor="dbprotect cleanup")
    result = CleanupResult(plan.database, dry_run)
    if plan.refused:
        if not dry_run:
            audit.record("refused", database=plan.database, outcome="refused", detail=plan.refusal or "",
                         data={"policy": str(plan.policy)})
        raise RefusedError(f"cleanup of {plan.database}: {plan.refusal}",
                           hint="nothing was deleted; 'dbprotect cleanup --dry-run' shows the plan",
                           refusal=Refusals.RETENTION_REFUSED)
    work = [("delete", d, result.deleted_backups) for d in plan.deletions]
    work += [("delete-incomplete", d, result.removed_incomplete) for d in plan.garbage]
    for kind, decision, done in work:
        try:
            if not dry_run:  # a holder whose lock was broken deletes nothing more
                ensure_lock_held(storage, plan.lock_database or plan.database, f"the deletion of {decision.backup_id}")
            freed = _sweep_one(storage, plan.database, decision, dry_run, result)
        except DbprotectError as exc:
            if not dry_run:
                with contextlib.suppress(DbprotectError):
                    audit.record("delete", database=plan.database, target=decision.backup_id, outcome="failed",
                                 detail=exc.one_line())
            raise StorageError(
                f"cleanup of {plan.database} stopped at {decision.backup_id}: {exc.one_line()}",
                hint="every backup still listed is whole; run the cleanup again to finish") from exc
        done.append(decision.backup_id)
        if not dry_run:
            audit.record("delete", database=plan.database, target=decision.backup_id, outcome="deleted",
                         detail="; ".join(decision.reasons),
                         data={"kind": kind, "bytes": freed, "policy": str(plan.policy)})
    return result


__all__ = [
    "CleanupResult",
    "execute_cleanup",
    "plan_cleanup",
]
