"""Retention of a configured database: cleanup and compliance on every storage target, each with its own policy.

The config-level side of :mod:`dbprotect.core.retention`: it opens each target's store and lets
:func:`~dbprotect.core.retention.cleanup.plan_cleanup` / :func:`~dbprotect.core.retention.cleanup.execute_cleanup`
mark and sweep, and :func:`~dbprotect.core.retention.compliance.compliance_by_target` judge what is
held (incomplete uploads included: they hold data too). ``dbprotect cleanup``, the cleanup job and
the ``retention_compliant`` check report exactly this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.model import Config
from dbprotect.core.errors import (
    DbprotectError,
    RefusedError,
)
from dbprotect.core.ops.context import (
    DEFAULT_ACTOR,
    audit_log,
    retention_timezone,
    target_store,
)
from dbprotect.core.retention.chain_cleanup import ContinuousCleanup, plan_continuous_cleanup, sweep_continuous
from dbprotect.core.retention.chains import ChainPolicy
from dbprotect.core.retention.cleanup import CleanupResult, execute_cleanup, plan_cleanup
from dbprotect.core.retention.compliance import TargetsCompliance, compliance_by_target
from dbprotect.core.retention.kinds import plan_kind_cleanups, read_kinds
from dbprotect.core.retention.plan import RetentionPlan
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import BackupEntry, list_backups
from dbprotect.core.store.lock import StoreClock, database_lock


@dataclass(frozen=True)
class TargetCleanup:
    """One target's cleanup: the plan, and what the sweep did or why it stopped."""

    target: str
    uri: str
    plan: RetentionPlan
    result: CleanupResult | None
    error: DbprotectError | None
    #: ``<database>/continuous/`` by the chain plan (databases with ``continuous:`` only).
    continuous: ContinuousCleanup | None = None

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "uri": self.uri, "plan": self.plan.to_dict(),
                "result": self.result.to_dict() if self.result else None,
                "continuous": self.continuous.to_dict() if self.continuous else None,
                "error": {"code": self.error.code, "exit_code": self.error.exit_code,
                          "message": self.error.one_line(), "hint": self.error.hint} if self.error else None}


def cleanup_database(config: Config, database: str, *, target: str | None = None, dry_run: bool = False,
                     actor: str = DEFAULT_ACTOR, now: datetime | None = None,
                     environ: Mapping[str, str] | None = None) -> list[TargetCleanup]:
    """Plan and sweep retention on one target or every target of ``database`` (each with its policy).

    Every target is attempted even when one refuses or fails, so one broken bucket does not stop
    the others' cleanup; the caller reports ``error`` per target (:func:`first_cleanup_error`).
    Deletions, refusals and failures go to the primary store's audit log (not in a dry run).
    A database with ``continuous:`` also has ``<database>/continuous/`` marked and swept by the
    chain plan (:mod:`dbprotect.core.retention.chain_cleanup`), after the logical backups, under
    the same lock; its refusal or failure is the target's ``error``.
    """
    now = now or datetime.now(UTC)
    spec = config.database(database)
    names = [target] if target else config.storage_names(database)
    done: list[TargetCleanup] = []
    for name in names:
        storage = target_store(config, database, name, environ)
        # mark and sweep under the database's lock (a dry run changes nothing and takes none): no
        # backup, copy or verification of this database writes into the target meanwhile
        with contextlib.ExitStack() as held:
            try:
                if not dry_run:
                    held.enter_context(database_lock(storage, database, owner=actor))
            except DbprotectError as exc:
                plan = plan_cleanup(storage, database, spec.policy_for(name), now, tz=retention_timezone(config),
                                    tolerance=config.clock_skew_tolerance)
                done.append(TargetCleanup(name, storage.uri, plan, None, exc))
                continue
            # every folder of the database (safety, guard, sanitized too), each backup by its kind; the
            # database's own folder comes first, and <database>/continuous/ is swept with it
            plans = plan_kind_cleanups(storage, database, spec.policy_for(name), spec.kind_retention, now,
                                       tz=retention_timezone(config), tolerance=config.clock_skew_tolerance)
            audit = audit_log(config, database, actor=actor, target=name, environ=environ)
            for index, plan in enumerate(plans):
                try:
                    result = execute_cleanup(storage, plan, dry_run=dry_run, audit=audit)
                except DbprotectError as exc:
                    done.append(TargetCleanup(name, storage.uri, plan, None, exc))
                    continue
                continuous, error = (_continuous_cleanup(config, database, storage, now, dry_run, audit)
                                     if index == 0 else (None, None))
                done.append(TargetCleanup(name, storage.uri, plan, result, error, continuous))
    return done


def _continuous_cleanup(config: Config, database: str, storage: Storage, now: datetime, dry_run: bool,
                        audit: AuditLog) -> tuple[ContinuousCleanup | None, DbprotectError | None]:
    """Mark and sweep ``<database>/continuous/`` by the chain plan (under the lock the caller holds)."""
    spec = config.database(database).continuous
    if spec is None:
        return None, None
    policy = ChainPolicy(timedelta(days=spec.retention_days), spec.min_full_bases)
    continuous = None
    try:
        continuous = plan_continuous_cleanup(storage, database, policy, now, store_clock=StoreClock(storage, database))
        if continuous is not None:
            sweep_continuous(storage, continuous, dry_run=dry_run, audit=audit)
    except DbprotectError as exc:
        if isinstance(exc, RefusedError) and not dry_run:
            with contextlib.suppress(DbprotectError):
                audit.record("refused", database=database, outcome="refused", detail=exc.one_line())
        return continuous, exc
    return continuous, None


def first_cleanup_error(cleanups: list[TargetCleanup]) -> DbprotectError | None:
    """The error a cleanup run ends with: a store failure first (exit 6), else a refusal (exit 9)."""
    errors = [c.error for c in cleanups if c.error is not None]
    storage = [e for e in errors if not isinstance(e, RefusedError)]
    return (storage or errors or [None])[0]



def retention_compliance_by_target(config: Config, database: str, now: datetime | None = None, *,
                                   environ: Mapping[str, str] | None = None) -> TargetsCompliance:
    """Whether each storage target of ``database`` holds what its retention policy asks, primary first.

    A store that cannot be opened or listed is reported as a problem of that target, not raised.
    """
    spec = config.database(database)

    def listing(target: str) -> list[BackupEntry]:
        return list_backups(target_store(config, database, target, environ), database, include_incomplete=True)

    def kinds_of(target: str, entries: list[BackupEntry]) -> dict[str, str]:  # guard backups share the folder
        return read_kinds(target_store(config, database, target, environ), database, None, entries)[0]

    policies = [(target, spec.policy_for(target)) for target in config.storage_names(database)]
    return compliance_by_target(database, policies, listing, now or datetime.now(UTC), kinds_of=kinds_of)
