"""Retention by kind: the folders where each kind of backup lives, and what their manifests say.

A database's backups sit in several store folders (:func:`dbprotect.core.config.model.derived_folders`):
its own (scheduled and manual backups, and guard backups of production), ``<name>-safety`` and
``<name>-development-safety`` (safety backups: the undo of an overwrite restore or a promotion),
``<name>.development`` (guard backups of development) and ``<name>-sanitized`` (sanitized copies).
Before kinds, the sweep listed only the first; here every folder is planned, each backup by the
rule of its kind (:func:`dbprotect.core.retention.plan.plan_retention`, which stays pure: this
module does the reading).

What is read: the manifests of the database's own folder (where scheduled, manual and guard
backups sit side by side, so only the manifest tells them apart) and of the safety folders (which
restore target each safety backup protects). Everything read is untrusted: a manifest that cannot
be read or does not validate is never guessed at, and the backup is kept, with a warning to look
at it by hand. In the own folder it is planned by the database's policy (as every backup was
before kinds) but never deleted by it: its kind is unknown, and a guard backup's rule may keep it
longer. In a safety folder it is a safety backup of an unknown target of its own, so it is always
"the newest" of that target and kept. A store that fails a manifest read (rather than returning
one that does not parse) keeps the whole folder this run: which backups the policy counts
depends on the kinds it could not learn, so no deletion of that folder can be trusted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo

from dbprotect.core.errors import DbprotectError, StorageError
from dbprotect.core.retention.compliance import UNREADABLE_KIND
from dbprotect.core.retention.plan import RetentionPlan, plan_retention
from dbprotect.core.retention.policy import KindRetention, RetentionPolicy
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import CLOCK_SKEW_TOLERANCE, BackupEntry, list_backups, load_manifest
from dbprotect.core.store.manifest import BACKUP_KINDS, Manifest

#: :func:`read_kinds`'s kind for an own-folder backup whose manifest read failed in the store
#: (not one that does not parse: that is :data:`~dbprotect.core.retention.compliance.UNREADABLE_KIND`).
STORE_FAILED_KIND = "store-read-failed"

#: The manifest field naming the restore a safety backup protects (written by the on-call restore).
PROTECTS_FIELD = "protects"


def kind_folders(database: str) -> list[tuple[str, str | None]]:
    """(folder, the kind of every backup in it) for ``database``; None: the manifests say (own folder)."""
    return [(database, None), (f"{database}-safety", "safety"), (f"{database}-development-safety", "safety"),
            (f"{database}.development", "guard"), (f"{database}-sanitized", "sanitized")]


def recorded_kind(manifest: Manifest) -> str | None:
    """The kind a manifest records; a sanitized copy by its lineage; None for one older than kinds."""
    extra = manifest.model_extra or {}
    kind = extra.get("kind")
    if isinstance(kind, str) and kind in BACKUP_KINDS:
        return kind
    return "sanitized" if "sanitized" in extra else None


def protected_target(manifest: Manifest) -> str | None:
    """The restore target a safety backup was taken of (``environment:database on host``), if recorded."""
    protects = (manifest.model_extra or {}).get(PROTECTS_FIELD)
    if isinstance(protects, dict) and isinstance(protects.get("target"), str):
        return str(protects["target"])
    return None


def read_kinds(storage: Storage, folder: str, folder_kind: str | None,
               entries: list[BackupEntry]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(kinds, protects, warnings) of ``entries`` of one folder: what :func:`plan_retention` needs.

    Reads a manifest only where the folder alone does not answer (see the module docstring).
    """
    kinds: dict[str, str] = {}
    protects: dict[str, str] = {}
    warnings: list[str] = []
    for entry in entries:
        if not entry.has_manifest:
            continue
        if folder_kind in ("guard", "sanitized"):
            kinds[entry.backup_id] = folder_kind
            continue
        try:
            manifest = load_manifest(storage, folder, entry.backup_id)
        except DbprotectError as exc:
            if folder_kind == "safety":
                kinds[entry.backup_id] = "safety"
                warnings.append(f"{folder}/{entry.backup_id}: manifest unreadable ({exc.one_line()}); kept as the "
                                "safety backup of an unknown target until someone looks at it")
            else:
                kinds[entry.backup_id] = STORE_FAILED_KIND if isinstance(exc, StorageError) else UNREADABLE_KIND
                warnings.append(f"{folder}/{entry.backup_id}: manifest unreadable ({exc.one_line()}); its kind is "
                                "unknown, so it is kept until someone looks at it")
            continue
        if folder_kind == "safety":
            kinds[entry.backup_id] = "safety"
            target = protected_target(manifest)
            if target is not None:
                protects[entry.backup_id] = target
            continue
        kind = recorded_kind(manifest)
        if kind is not None:
            kinds[entry.backup_id] = kind
    return kinds, protects, warnings


def plan_folder_cleanup(storage: Storage, database: str, folder: str, folder_kind: str | None,
                        policy: RetentionPolicy, kind_policy: KindRetention, now: datetime, *,
                        locked: Collection[str] = (), tz: tzinfo = UTC,
                        tolerance: timedelta = CLOCK_SKEW_TOLERANCE) -> RetentionPlan:
    """The mark for one folder of ``database`` (see :func:`kind_folders`), every backup by its kind.

    The plan names the folder as its ``database`` (what the sweep deletes under) and ``database``
    as the lock that guards the sweep. Deletes nothing.
    """
    skipped: list[str] = []
    entries = list_backups(storage, folder, include_incomplete=True, now=now, tolerance=tolerance, skipped=skipped)
    kinds, protects, warnings = read_kinds(storage, folder, folder_kind, entries)
    plan = plan_retention(entries, policy, now, database=folder, locked=locked, tz=tz, tolerance=tolerance,
                          kinds=kinds, protects=protects, kind_policy=kind_policy)
    plan = keep_unknown_kinds(plan, kinds)
    warnings += [f"skipped, not a backup: {reason}" for reason in skipped]
    return replace(plan, warnings=(*plan.warnings, *warnings), lock_database=database)


def keep_unknown_kinds(plan: RetentionPlan, kinds: Mapping[str, str]) -> RetentionPlan:
    """Turn the deletions the policy planned into keeps where a manifest read failed (see the module docstring).

    A manifest that does not parse keeps its own backup; a store that failed a manifest read
    keeps every backup of the folder (the policy counted backups whose kind it could not know).
    The policy's own reasons stay first, so the plan still says what the policy alone would do.
    """
    unknown = {backup_id for backup_id, kind in kinds.items() if kind in (UNREADABLE_KIND, STORE_FAILED_KIND)}
    if not unknown:
        return plan
    store_failed = STORE_FAILED_KIND in kinds.values()
    decisions = []
    for decision in plan.decisions:
        if decision.backup_id in unknown:
            reason = "its manifest could not be read, so its kind is unknown: kept until someone looks at it"
        elif store_failed and decision.action == "delete":
            reason = "a manifest read of this folder failed in the store: nothing here is deleted this run"
        else:
            decisions.append(decision)
            continue
        kept = decision.reasons if decision.action == "keep" else ()
        decisions.append(replace(decision, action="keep", reasons=(*kept, reason)))
    return replace(plan, decisions=tuple(decisions))


def plan_kind_cleanups(storage: Storage, database: str, policy: RetentionPolicy, kind_policy: KindRetention,
                       now: datetime, *, tz: tzinfo = UTC,
                       tolerance: timedelta = CLOCK_SKEW_TOLERANCE) -> list[RetentionPlan]:
    """The marks for every folder of ``database``: its own folder always, each derived one that holds a backup."""
    plans = []
    for folder, folder_kind in kind_folders(database):
        plan = plan_folder_cleanup(storage, database, folder, folder_kind, policy, kind_policy, now, tz=tz,
                                   tolerance=tolerance)
        if folder == database or plan.decisions or plan.warnings:
            plans.append(plan)
    return plans


__all__ = ["PROTECTS_FIELD", "STORE_FAILED_KIND", "keep_unknown_kinds", "kind_folders", "plan_folder_cleanup",
           "plan_kind_cleanups", "protected_target", "read_kinds", "recorded_kind"]
