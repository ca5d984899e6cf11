"""Retention compliance: does a store hold what its policy promises?

:func:`retention_compliance` judges one listing against one policy; :func:`compliance_by_target`
judges every storage target of a database, each against its own policy, and turns a store that
cannot be listed into a problem that names it (a check must go red, not crash). Both are pure
apart from the listing callable they are given: the config-level entry point that opens the stores
is :func:`dbprotect.core.ops.retention.retention_compliance_by_target`.

Only floors are checked: ``min_verified`` verified backups, nothing older than ``max_age``.
keep_last and the period rules are caps (what a cleanup may keep), so a store holding fewer is
not out of compliance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbprotect.core.errors import DbprotectError
from dbprotect.core.retention.policy import RetentionPolicy, format_duration
from dbprotect.core.store.catalog import CLOCK_SKEW_TOLERANCE, BackupEntry, is_clock_skewed


@dataclass(frozen=True)
class ComplianceReport:
    """Whether a store holds what its policy promises; ``problems`` say what is wrong, in sentences."""

    database: str
    ok: bool
    verified: int
    required: int
    too_old: tuple[str, ...]
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "ok": self.ok, "verified": self.verified, "required": self.required,
                "too_old": list(self.too_old), "problems": list(self.problems)}


def retention_compliance(entries: Iterable[BackupEntry], policy: RetentionPolicy, now: datetime, *,
                         database: str | None = None,
                         tolerance: timedelta = CLOCK_SKEW_TOLERANCE) -> ComplianceReport:
    """Fails when fewer than ``min_verified`` backups are verified, or anything is older than max_age.

    "Anything" includes incomplete uploads: they hold data too, and max_age is about data that
    must be gone. keep_last and the period rules are caps, not floors, so they are not checked.
    A verified backup dated more than ``tolerance`` in the future (clock-skew) is not counted.
    """
    entries = sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)  # newest first
    database = database or (entries[0].database if entries else "?")
    verified = sum(1 for e in entries if e.integrity_ok and not e.clock_skew
                   and not is_clock_skewed(e.started_at, now, tolerance))
    problems: list[str] = []
    if verified < policy.min_verified:
        problems.append(f"{verified} verified backup(s), the policy asks for at least {policy.min_verified}")
    too_old: list[str] = []
    if policy.max_age is not None:
        too_old = [e.backup_id for e in entries if now - e.started_at > policy.max_age]
        if too_old:
            problems.append(f"{len(too_old)} backup(s) older than max_age={format_duration(policy.max_age)}, "
                            f"oldest {too_old[-1]}")
    return ComplianceReport(database, not problems, verified, policy.min_verified, tuple(too_old), tuple(problems))


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
                         list_target: Callable[[str], Iterable[BackupEntry]], now: datetime) -> TargetsCompliance:
    """Judge each ``(target, policy)`` on what ``list_target(target)`` lists (incomplete uploads included).

    A :class:`~dbprotect.core.errors.DbprotectError` from the listing makes that target unreadable
    (a problem naming it) and the next target is still judged: one broken bucket must not hide
    the state of the others.
    """
    judged: list[TargetCompliance] = []
    for target, policy in policies:
        try:
            entries = list(list_target(target))
        except DbprotectError as exc:
            judged.append(TargetCompliance(target, policy, unreadable=exc.one_line()))
            continue
        judged.append(TargetCompliance(target, policy, retention_compliance(entries, policy, now, database=database)))
    return TargetsCompliance(database, tuple(judged))


__all__ = ["ComplianceReport", "TargetCompliance", "TargetsCompliance", "compliance_by_target",
           "retention_compliance"]
