"""Retention plan: which backups to keep, which to delete, and why — decided by one pure function.

A :class:`~dbprotect.core.retention.policy.RetentionPolicy` says how much history to keep;
:func:`plan_retention` applies it to a catalog listing and a clock and returns a *plan* that names
every backup with a decision and all its reasons. The policy reports, it never deletes (Barman's
rule); :mod:`dbprotect.core.retention.cleanup` sweeps a plan. The clock is an argument, never read
here, so the same inputs always give the same plan.

Rules, strongest first (pgBackRest's "protect, then expire"; restic's bucket rules):

1. **Protected — never deleted, whatever the policy says.**
   - an upload in progress: no manifest yet and younger than :data:`INCOMPLETE_GRACE` (a day);
   - a backup the caller marks as in use (``locked``: being verified, restored, copied);
   - the newest backup that passed integrity (rungs *stored* and *readable*).
2. **min_verified** (default 1): the N newest verified backups are kept.
3. **max_age**: a backup older than this is deleted (data that must go after a time), and no keep
   rule below can save it. When max_age would delete a backup that rule 1 or 2 needs among the
   verified ones — the newest verified backup, or one of the ``min_verified`` newest — the plan
   **refuses** instead: it says why, and :func:`~dbprotect.core.retention.cleanup.execute_cleanup` deletes
   nothing. A locked or in-progress backup older than max_age is kept with a warning.
4. **keep_last / keep_daily / keep_weekly / keep_monthly / keep_yearly** (grandfather-father-son,
   as restic does): each keeps the newest backup of each of its N most recent periods that hold a
   backup. They count complete backups that have not failed verification (unverified ones count:
   verification may lag behind the backup) and are younger than max_age.
5. Everything else is deleted. With no keep rule set, every backup younger than max_age is kept
   (``max_age=30d`` alone means "keep 30 days"); an empty policy keeps everything.

Floors that no policy lowers (retention never empties a store):

- with no verified backup at all, the newest ``max(keep_last, 1)`` backups that have not failed
  are kept, even past max_age (with a warning): unverified is not the same as bad, and deleting
  every copy because none was verified yet loses everything;
- the newest verified backup is always kept (rule 1).

**Clock skew**: a backup dated more than ``tolerance`` (default
:data:`~dbprotect.core.store.catalog.CLOCK_SKEW_TOLERANCE`) after ``now`` was named by a wrong
clock. It is kept, flagged ``clock-skew``, and takes no part in any decision: it is not the
newest verified backup, it fills no keep_last slot, and it never makes another backup "older".
An operator moves or deletes it by hand once the clock is fixed.

**Kinds** (``kinds``: backup id -> the kind its manifest records). Safety backups, guard backups
and sanitized copies follow :class:`~dbprotect.core.retention.policy.KindRetention`, never the
policy above, and no kind counts toward another's quota (nor toward keep_last, the period rules or
min_verified of the scheduled and manual backups):

- **safety**: kept while younger than ``safety_min_age``, and, whatever its age or the clock, while
  it protects the newest restore over its target (``protects``: backup id -> the target it was
  taken of). Per target, the newest safety backup that has not failed is protected, and the newest
  one that passed integrity too (a restore whose safety backup failed never started, so the one
  before still protects the newest restore that happened). Protections: max_age only warns.
- **guard**: kept while younger than ``guard_min_age``, then deleted.
- **sanitized**: the ``sanitized_keep_last`` newest copies that did not fail are kept.

Rule 1 (locked, in progress, clock-skewed, and the newest verified backup, counted per kind) holds
for every kind. A backup without a kind (older than kinds) or with an unreadable manifest follows the
policy, as before kinds existed.

Special states: a backup whose verification failed (or whose dump object is missing) is never
counted by a keep rule; it is kept until a newer verified backup exists, then deleted. Incomplete
uploads older than a day are garbage (never restorable) and are deleted.

A backup kept by any rule is never deleted by another (keep wins), and the plan is idempotent:
re-planning on what it keeps, with the same clock, deletes nothing.

Example::

    >>> policy = RetentionPolicy.parse("keep_last=10, max_age=30d")
    >>> plan = plan_retention(list_backups(store, "shop", include_incomplete=True), policy, now)
    >>> print(plan.render())
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from dbprotect.core.retention.policy import KindRetention, RetentionPolicy, format_duration
from dbprotect.core.store.catalog import CLOCK_SKEW_TOLERANCE, BackupEntry, is_clock_skewed

#: How long a backup without a manifest counts as "being written" before it is garbage.
INCOMPLETE_GRACE = timedelta(days=1)


Action = Literal["keep", "delete"]

#: Kinds of backup that follow their own rules (:class:`KindRetention`), never the database's policy.
OWN_RULE_KINDS = frozenset({"safety", "guard", "sanitized"})


@dataclass(frozen=True, slots=True)
class Decision:
    """One backup's fate and every reason for it (all rules that keep it, or why it goes)."""

    backup_id: str
    started_at: datetime
    status: str
    action: Action
    reasons: tuple[str, ...]

    @property
    def garbage(self) -> bool:
        """An incomplete upload old enough to remove (not a backup: it never had a manifest)."""
        return self.status == "incomplete" and self.action == "delete"

    def to_dict(self) -> dict[str, object]:
        return {"backup_id": self.backup_id, "started_at": self.started_at.isoformat(), "status": self.status,
                "action": self.action, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class RetentionPlan:
    """What a cleanup would do. ``refusal`` set means: delete nothing, and tell someone why."""

    database: str
    policy: RetentionPolicy
    now: datetime
    decisions: tuple[Decision, ...]
    refusal: str | None = None
    warnings: tuple[str, ...] = ()
    #: The rules of safety, guard and sanitized backups, when the plan was made knowing kinds.
    kind_policy: KindRetention | None = None
    #: The configured database whose lock guards the sweep, when ``database`` is a folder derived
    #: from its name (``shop-safety``); None: ``database`` itself.
    lock_database: str | None = None

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "keep"]

    @property
    def deletions(self) -> list[Decision]:
        """Backups (with a manifest) the policy deletes, oldest first; empty when the plan refused."""
        if self.refused:
            return []
        return sorted((d for d in self.decisions if d.action == "delete" and not d.garbage),
                      key=lambda d: d.backup_id)

    @property
    def garbage(self) -> list[Decision]:
        """Incomplete uploads older than a day, oldest first; empty when the plan refused."""
        if self.refused:
            return []
        return sorted((d for d in self.decisions if d.garbage), key=lambda d: d.backup_id)

    def decision(self, backup_id: str) -> Decision:
        for d in self.decisions:
            if d.backup_id == backup_id:
                return d
        raise KeyError(backup_id)

    def render(self) -> str:
        """The plan as people read it: one line per backup, newest first."""
        lines = [f"retention plan for {self.database} at {self.now.isoformat()}: {self.policy}"
                 + (f"; kinds: {self.kind_policy}" if self.kind_policy else "")]
        if self.refusal:
            lines.append(f"REFUSED: {self.refusal}")
        lines += [f"warning: {w}" for w in self.warnings]
        for d in self.decisions:
            lines.append(f"{d.action:<6} {d.backup_id}  {d.status:<18} {'; '.join(d.reasons)}")
        lines.append(f"{len(self.kept)} kept, {len(self.deletions)} deleted, {len(self.garbage)} incomplete "
                     f"upload(s) removed" + (" (refused: nothing will be deleted)" if self.refused else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "policy": str(self.policy), "now": self.now.isoformat(),
                "refused": self.refused, "refusal": self.refusal, "warnings": list(self.warnings),
                "kept": len(self.kept), "deleted": len(self.deletions), "garbage": len(self.garbage),
                "decisions": [d.to_dict() for d in self.decisions]}


# --- the rules: one function each, each returning {backup_id: reason} for what it keeps ---------

_Buckets = tuple[str, Callable[[datetime], Hashable], Callable[[datetime], str]]

_PERIODS: dict[str, _Buckets] = {
    "keep_daily": ("day", lambda t: t.date(), lambda t: f"{t:%Y-%m-%d}"),
    "keep_weekly": ("week", lambda t: t.isocalendar()[:2], lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    "keep_monthly": ("month", lambda t: (t.year, t.month), lambda t: f"{t:%Y-%m}"),
    "keep_yearly": ("year", lambda t: t.year, lambda t: f"{t:%Y}"),
}


def _keep_last(candidates: list[BackupEntry], n: int) -> dict[str, str]:
    """The n newest candidates."""
    return {e.backup_id: f"keep_last ({i} of {n})" for i, e in enumerate(candidates[:n], 1)}


def _keep_periods(candidates: list[BackupEntry], rule: str, n: int, tz: tzinfo) -> dict[str, str]:
    """The newest candidate of each of the n most recent periods that hold one (restic's buckets).

    Candidates come newest first, so the first one seen in a period is that period's newest.
    Days 1, 1, 2, 4 with keep_daily=2 keep the later backup of day 4 and the one of day 2.
    """
    _name, bucket, label = _PERIODS[rule]
    kept: dict[str, str] = {}
    last: Hashable = object()
    for entry in candidates:
        if len(kept) == n:
            break
        local = entry.started_at.astimezone(tz)
        if bucket(local) != last:
            last = bucket(local)
            kept[entry.backup_id] = f"{rule} {label(local)} ({len(kept) + 1} of {n})"
    return kept


def _newest_first(entries: Iterable[BackupEntry]) -> list[BackupEntry]:
    return sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)


def _failed(entry: BackupEntry) -> bool:
    """Verification failed, or the manifest names an object that is not there."""
    return entry.has_manifest and (entry.dump_bytes is None or bool(entry.failed_rungs))


def _age_text(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours:.1f} h" if abs(hours) < 48 else f"{hours / 24:.1f} d"


@dataclass
class _Work:
    """Scratch state of one planning run: reasons collected per backup id."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add_keep(self, backup_id: str, reason: str) -> None:
        self.keep.setdefault(backup_id, []).append(reason)

    def add_delete(self, backup_id: str, reason: str) -> None:
        self.delete.setdefault(backup_id, []).append(reason)


def _refusal(verified: list[BackupEntry], policy: RetentionPolicy, now: datetime) -> str | None:
    """The sentence that stops a cleanup when max_age would take verified backups rules 1-2 need."""
    if policy.max_age is None or not verified:
        return None
    limit = format_duration(policy.max_age)
    newest = verified[0]
    if now - newest.started_at > policy.max_age:
        return (f"max_age={limit} would delete every verified backup: the newest one, {newest.backup_id}, is "
                f"{_age_text(now - newest.started_at)} old. Refusing to delete anything; take and verify a new "
                f"backup, or raise max_age")
    needed = verified[:policy.min_verified]
    too_old = [e for e in needed if now - e.started_at > policy.max_age]
    if too_old:
        young = sum(1 for e in verified if now - e.started_at <= policy.max_age)
        return (f"max_age={limit} conflicts with min_verified={policy.min_verified}: only {young} verified "
                f"backup(s) are younger than {limit}, and max_age would delete "
                f"{', '.join(e.backup_id for e in too_old)}. Refusing to delete anything; verify more backups, "
                f"or lower min_verified")
    return None


def plan_retention(entries: Iterable[BackupEntry], policy: RetentionPolicy, now: datetime, *,
                   database: str | None = None, locked: Collection[str] = (), tz: tzinfo = UTC,
                   tolerance: timedelta = CLOCK_SKEW_TOLERANCE, kinds: Mapping[str, str] | None = None,
                   protects: Mapping[str, str] | None = None,
                   kind_policy: KindRetention | None = None) -> RetentionPlan:
    """Decide, for every entry of a catalog listing, keep or delete, with the reasons.

    ``entries`` should come from ``list_backups(..., include_incomplete=True)`` so that uploads in
    progress and stale incomplete uploads are seen. ``locked`` names backups in use (being
    verified, restored or copied); ``tz`` is the zone whose days, weeks, months and years the
    period rules count in; a backup dated more than ``tolerance`` after ``now`` is clock-skewed
    (kept, and counted by no rule). ``kinds`` (backup id -> kind) sends safety, guard and
    sanitized backups to their own rules (``kind_policy``, default :class:`KindRetention`), with
    ``protects`` (backup id -> the target a safety backup was taken of; absent: an unknown target
    of its own). Pure: no storage access, no clock reading.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    everything = _newest_first(entries)
    database = database or (everything[0].database if everything else "?")
    locked = frozenset(locked)
    work = _Work()
    skewed = [e for e in everything if e.clock_skew or is_clock_skewed(e.started_at, now, tolerance)]
    for entry in skewed:
        work.add_keep(entry.backup_id, f"clock-skew: dated {_age_text(entry.started_at - now)} in the future; "
                                       "counted by no rule and never deleted by one")
    skewed_ids = {e.backup_id for e in skewed}
    entries = [e for e in everything if e.backup_id not in skewed_ids]
    kinds = kinds or {}
    own_rules = [e for e in entries if e.has_manifest and kinds.get(e.backup_id) in OWN_RULE_KINDS]
    own_rule_ids = {e.backup_id for e in own_rules}
    entries = [e for e in entries if e.backup_id not in own_rule_ids]
    complete = [e for e in entries if e.has_manifest]
    verified = [e for e in complete if e.integrity_ok]

    def too_old(entry: BackupEntry) -> bool:
        return policy.max_age is not None and now - entry.started_at > policy.max_age

    _protect(entries + own_rules, verified, locked, now, work)
    if own_rules or kind_policy is not None:
        kind_policy = kind_policy or KindRetention()
        _apply_kind_rules(own_rules, kinds, protects or {}, kind_policy, now, too_old, work)
    for i, entry in enumerate(verified[:policy.min_verified], 1):
        work.add_keep(entry.backup_id, f"min_verified ({i} of {policy.min_verified})")
    candidates = [e for e in complete if not _failed(e) and not too_old(e)]
    _apply_keep_rules(candidates, policy, tz, work)
    _apply_failed_rule([e for e in complete if not too_old(e)], verified, work)
    if not verified:
        floor = max(policy.keep_last, 1)
        usable = [e for e in complete if not _failed(e)]
        for i, entry in enumerate(usable[:floor], 1):
            work.add_keep(entry.backup_id, f"no verified backup exists: one of the {floor} newest kept ({i} of "
                                           f"{floor}) whatever the policy")
    for entry in entries + own_rules:
        if too_old(entry):
            assert policy.max_age is not None
            reason = f"older than max_age={format_duration(policy.max_age)} ({_age_text(now - entry.started_at)})"
            if entry.backup_id in work.keep:
                work.warnings.append(f"{entry.backup_id} is {reason} but protected: "
                                     f"{'; '.join(work.keep[entry.backup_id])}")
            work.add_delete(entry.backup_id, reason)
    decisions = tuple(_decide(entry, policy, work, "clock-skew" if entry.backup_id in skewed_ids else entry.status)
                      for entry in everything)
    return RetentionPlan(database, policy, now, decisions, _refusal(verified, policy, now), tuple(work.warnings),
                         kind_policy=kind_policy)


def _protect(entries: list[BackupEntry], verified: list[BackupEntry], locked: frozenset[str], now: datetime,
             work: _Work) -> None:
    """Rule 1: uploads in progress, backups in use and the newest verified backup."""
    for entry in entries:
        age = now - entry.started_at
        if entry.backup_id in locked:
            work.add_keep(entry.backup_id, "locked: in use")
        if not entry.has_manifest:
            if age < INCOMPLETE_GRACE:
                work.add_keep(entry.backup_id, f"in progress: no manifest yet, started {_age_text(age)} ago")
            else:
                work.add_delete(entry.backup_id, f"incomplete upload older than a day ({_age_text(age)})")
    if verified:
        work.add_keep(verified[0].backup_id, "newest verified backup (never deleted)")


def _apply_keep_rules(candidates: list[BackupEntry], policy: RetentionPolicy, tz: tzinfo, work: _Work) -> None:
    """Rules 4-5: the period rules, or with none set, everything younger than max_age."""
    if not policy.has_keep_rules:
        reason = "no keep rule set: kept until max_age" if policy.max_age else "policy sets no rule: kept"
        for entry in candidates:
            work.add_keep(entry.backup_id, reason)
        return
    found = [_keep_last(candidates, policy.keep_last)] if policy.keep_last else []
    for rule in _PERIODS:
        if getattr(policy, rule):
            found.append(_keep_periods(candidates, rule, getattr(policy, rule), tz))
    for kept in found:
        for backup_id, reason in kept.items():
            work.add_keep(backup_id, reason)


def _apply_kind_rules(own_rules: list[BackupEntry], kinds: Mapping[str, str], protects: Mapping[str, str],
                      kind_policy: KindRetention, now: datetime, too_old: Callable[[BackupEntry], bool],
                      work: _Work) -> None:
    """Safety, guard and sanitized backups, each kind by its own rule (never counted by another's).

    ``own_rules`` holds no clock-skewed entry (those are kept and counted by nothing), so the
    newest safety backup per target is the newest one dated by a sane clock; one dated in the
    future is kept anyway.
    """
    by_kind: dict[str, list[BackupEntry]] = {}
    for entry in own_rules:  # newest first, as given
        by_kind.setdefault(kinds[entry.backup_id], []).append(entry)
    for kind, of_kind in by_kind.items():  # rule 1, per kind: no kind's floor is another's
        newest = next((e for e in of_kind if e.integrity_ok), None)
        if newest is not None:
            work.add_keep(newest.backup_id, f"newest verified {kind} backup (never deleted)")
    safety = by_kind.get("safety", [])
    for entry in safety:
        if now - entry.started_at < kind_policy.safety_min_age:
            work.add_keep(entry.backup_id, f"safety backup younger than safety_min_age="
                                           f"{format_duration(kind_policy.safety_min_age)}")
    newest_usable: dict[str, BackupEntry] = {}
    newest_verified: dict[str, BackupEntry] = {}
    for entry in safety:
        target = protects.get(entry.backup_id) or f"an unknown target ({entry.backup_id})"
        if not _failed(entry):
            newest_usable.setdefault(target, entry)
        if entry.integrity_ok:
            newest_verified.setdefault(target, entry)
    for target, entry in [*newest_usable.items(), *newest_verified.items()]:
        reason = f"safety backup of the newest restore over {target}: kept until another restore replaces it"
        if reason not in work.keep.get(entry.backup_id, []):
            work.add_keep(entry.backup_id, reason)
    for entry in safety:
        if entry.backup_id not in work.keep:
            work.add_delete(entry.backup_id, f"safety backup older than safety_min_age="
                                             f"{format_duration(kind_policy.safety_min_age)}, and a newer restore "
                                             "over its target has its own")
    for entry in by_kind.get("guard", []):
        if now - entry.started_at < kind_policy.guard_min_age and not too_old(entry):
            work.add_keep(entry.backup_id, f"guard backup younger than guard_min_age="
                                           f"{format_duration(kind_policy.guard_min_age)}")
        else:
            work.add_delete(entry.backup_id, f"guard backup older than guard_min_age="
                                             f"{format_duration(kind_policy.guard_min_age)}")
    usable = [e for e in by_kind.get("sanitized", []) if not _failed(e) and not too_old(e)]
    n = kind_policy.sanitized_keep_last
    for i, entry in enumerate(usable[:n], 1):
        work.add_keep(entry.backup_id, f"sanitized_keep_last ({i} of {n})")
    for entry in by_kind.get("sanitized", []):
        if entry.backup_id not in work.keep:
            work.add_delete(entry.backup_id, f"not one of the {n} newest sanitized copies that did not fail")


def _apply_failed_rule(complete: list[BackupEntry], verified: list[BackupEntry], work: _Work) -> None:
    """A failed backup stays while no newer verified backup exists: it may still be the best we have.

    ``complete`` excludes backups older than max_age: a failed backup gets no reprieve from it.
    """
    newest_verified = verified[0].started_at if verified else None
    for entry in complete:
        if not _failed(entry):
            continue
        what = f"failed verification ({', '.join(entry.failed_rungs)})" if entry.failed_rungs else \
            "dump object missing"
        if newest_verified is None or entry.started_at >= newest_verified:
            work.add_keep(entry.backup_id, f"{what}; kept until a newer verified backup exists")
        else:
            work.add_delete(entry.backup_id, f"{what}; a newer verified backup exists")


def _decide(entry: BackupEntry, policy: RetentionPolicy, work: _Work, status: str) -> Decision:
    """Keep wins: any keep reason keeps the backup; otherwise it goes with its delete reasons."""
    keep = work.keep.get(entry.backup_id)
    if keep:
        return Decision(entry.backup_id, entry.started_at, status, "keep", tuple(keep))
    reasons = work.delete.get(entry.backup_id) or [f"not kept by any rule of {policy}"]
    return Decision(entry.backup_id, entry.started_at, status, "delete", tuple(reasons))


__all__ = ["INCOMPLETE_GRACE", "OWN_RULE_KINDS", "Action", "Decision", "RetentionPlan", "plan_retention"]
