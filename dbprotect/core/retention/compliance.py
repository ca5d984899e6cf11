"""Retention compliance: does a store hold what its policy promises?

:func:`retention_compliance` judges one listing against one policy; :func:`compliance_by_target`
judges every storage target of a database, each against its own policy, and turns a store that
cannot be listed into a problem that names it (a check must go red, not crash). Both are pure
apart from the listing callable they are given: the config-level entry point that opens the stores
is :func:`dbprotect.core.ops.retention.retention_compliance_by_target`.

Only floors are checked: ``min_verified`` verified backups, nothing older than ``max_age``.
keep_last and the period rules are caps (what a cleanup may keep), so a store holding fewer is
not out of compliance.

**Kinds.** The database's own folder holds guard backups beside the scheduled and manual ones.
Each kind is judged by its own rule (:class:`~dbprotect.core.retention.policy.KindRetention`, as
the cleanup plans it): a guard, safety or sanitized backup never counts toward ``min_verified``
(a store that holds one scheduled backup and five guard backups does not hold six of what the
policy promises), guard and sanitized backups older than ``max_age`` are out of compliance like
any backup, and a safety backup past ``max_age`` is not (it is kept while it protects the
newest restore over its target). A backup whose manifest could not be read to learn its kind is
counted by no rule: the check cannot vouch for what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbprotect.core.errors import DbprotectError
from dbprotect.core.retention.plan import OWN_RULE_KINDS
from dbprotect.core.retention.policy import RetentionPolicy, format_duration
from dbprotect.core.store.catalog import CLOCK_SKEW_TOLERANCE, BackupEntry, is_clock_skewed

#: The kinds the database's policy judges (a backup older than kinds, with no kind, too).
POLICY_KINDS = frozenset({"scheduled", "manual"})

#: The kind :func:`retention_compliance` is told for a backup whose manifest could not be read.
UNREADABLE_KIND = "unreadable"


@dataclass(frozen=True)
class ComplianceReport:
    """Whether a store holds what its policy promises; ``problems`` say what is wrong, in sentences."""

    database: str
    ok: bool
    verified: int
    required: int
    too_old: tuple[str, ...]
    problems: tuple[str, ...]
    #: Verified backups not counted toward min_verified: {kind: how many} (guard, safety, sanitized,
    #: ``unreadable`` for one whose manifest could not be read).
    not_counted: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "ok": self.ok, "verified": self.verified, "required": self.required,
                "too_old": list(self.too_old), "problems": list(self.problems),
                "not_counted": dict(self.not_counted or {})}


def retention_compliance(entries: Iterable[BackupEntry], policy: RetentionPolicy, now: datetime, *,
                         database: str | None = None,
                         tolerance: timedelta = CLOCK_SKEW_TOLERANCE,
                         kinds: Mapping[str, str] | None = None) -> ComplianceReport:
    """Fails when fewer than ``min_verified`` backups are verified, or anything is older than max_age.

    "Anything" includes incomplete uploads: they hold data too, and max_age is about data that
    must be gone. keep_last and the period rules are caps, not floors, so they are not checked.
    A verified backup dated more than ``tolerance`` in the future (clock-skew) is not counted.
    ``kinds`` (backup id -> its recorded kind, or ``unreadable``) judges each kind by its own
    rule (see the module docstring); without it every backup is counted as the policy's.
    """
    entries = sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)  # newest first
    database = database or (entries[0].database if entries else "?")
    kinds = kinds or {}
    not_counted: dict[str, int] = {}
    verified = 0
    for entry in entries:
        if not entry.integrity_ok or entry.clock_skew or is_clock_skewed(entry.started_at, now, tolerance):
            continue
        kind = kinds.get(entry.backup_id)
        if kind is not None and kind not in POLICY_KINDS:  # guard, safety, sanitized, or unknown
            label = kind if kind in OWN_RULE_KINDS else UNREADABLE_KIND
            not_counted[label] = not_counted.get(label, 0) + 1
        else:
            verified += 1
    problems: list[str] = []
    if verified < policy.min_verified:
        aside = ""
        if not_counted:
            aside = " (not counted, judged by their own kind's rule: " + ", ".join(
                f"{count} {kind}" for kind, count in sorted(not_counted.items())) + ")"
        problems.append(f"{verified} verified backup(s), the policy asks for at least {policy.min_verified}{aside}")
    too_old: list[str] = []
    if policy.max_age is not None:
        too_old = [e.backup_id for e in entries if now - e.started_at > policy.max_age
                   and kinds.get(e.backup_id) != "safety"]
        if too_old:
            problems.append(f"{len(too_old)} backup(s) older than max_age={format_duration(policy.max_age)}, "
                            f"oldest {too_old[-1]}")
    return ComplianceReport(database, not problems, verified, policy.min_verified, tuple(too_old), tuple(problems),
                            not_counted)


@dataclass(frozen=True)
class TargetCompliance:
    """One storage target judged against its own policy; ``unreadable`` when it could not be listed."""

    target: str
    policy: RetentionPolicy
    report: ComplianceReport | None = None
    #: The store error's one-line sentence (no listing, so no report).
    unreadable: str | None = None

    @property
    def ok(self) -> bool:
        return self.report is not None and self.report.ok

    @property
    def problems(self) -> tuple[str, ...]:
        """The target's problems, each prefixed with the target's name."""
        if self.report is None:
            return (f"{self.target}: store cannot be read: {self.unreadable}",)
        return tuple(f"{self.target}: {problem}" for problem in self.report.problems)

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "policy": str(self.policy), "ok": self.ok, "problems": list(self.problems),
                "report": self.report.to_dict() if self.report else None, "unreadable": self.unreadable}


@dataclass(frozen=True)
class TargetsCompliance:
    """Every storage target of a database, in configuration order (primary first)."""

    database: str
    targets: tuple[TargetCompliance, ...]

    @property
    def ok(self) -> bool:
        return all(target.ok for target in self.targets)

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(problem for target in self.targets for problem in target.problems)

    def summary(self) -> str:
        """One sentence: every problem, or that every target complies."""
        return "; ".join(self.problems) if self.problems else "every target holds what its retention policy asks"

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "ok": self.ok, "problems": list(self.problems),
                "targets": [target.to_dict() for target in self.targets]}


def compliance_by_target(database: str, policies: Iterable[tuple[str, RetentionPolicy]],
                         list_target: Callable[[str], Iterable[BackupEntry]], now: datetime, *,
                         kinds_of: Callable[[str, list[BackupEntry]], Mapping[str, str]] | None = None,
                         ) -> TargetsCompliance:
    """Judge each ``(target, policy)`` on what ``list_target(target)`` lists (incomplete uploads included).

    ``kinds_of(target, entries)`` says each listed backup's kind (read from its manifest; see
    :func:`retention_compliance`). A :class:`~dbprotect.core.errors.DbprotectError` from the
    listing makes that target unreadable (a problem naming it) and the next target is still
    judged: one broken bucket must not hide the state of the others.
    """
    judged: list[TargetCompliance] = []
    for target, policy in policies:
        try:
            entries = list(list_target(target))
            kinds = kinds_of(target, entries) if kinds_of else None
        except DbprotectError as exc:
            judged.append(TargetCompliance(target, policy, unreadable=exc.one_line()))
            continue
        judged.append(TargetCompliance(target, policy, retention_compliance(entries, policy, now, database=database,
                                                                            kinds=kinds)))
    return TargetsCompliance(database, tuple(judged))


__all__ = ["UNREADABLE_KIND", "ComplianceReport", "TargetCompliance", "TargetsCompliance", "compliance_by_target",
           "retention_compliance"]
