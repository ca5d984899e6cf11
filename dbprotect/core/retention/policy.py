"""Retention policy: how much history to keep, per database and per storage target.

A *policy* is a handful of rules — ``keep_last``, ``keep_daily``, ``keep_weekly``, ``keep_monthly``,
``keep_yearly``, ``max_age`` and ``min_verified`` — written in ``dbprotect.yaml`` as text
(``"keep_last=10, max_age=30d"``) or as a mapping of the same rules. It only *says* what to keep:
:func:`~dbprotect.core.retention.plan.plan_retention` applies it to a catalog listing and a clock
(the rules, strongest first, are explained in :mod:`dbprotect.core.retention.plan`),
:mod:`~dbprotect.core.retention.compliance` checks a store against it, and
:mod:`~dbprotect.core.retention.cleanup` sweeps a plan.

Nothing here reads a store, not even the catalog: the configuration embeds policies
(:mod:`dbprotect.core.config.model`) and the store layer reads the configuration, so this module
must stay below both.

Example::

    >>> policy = RetentionPolicy.parse("keep_last=10, max_age=30d")
    >>> str(policy)
    'keep_last=10, max_age=30d, min_verified=1'
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1),
          "m": timedelta(minutes=1), "s": timedelta(seconds=1)}
_KEEP_RULES = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` → timedelta. A bare number is refused (which unit?)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: write a number and a unit (30d, 12h, 90m, 45s, 2w)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(value: timedelta) -> str:
    """The shortest exact form (``30d``, ``36h``): what :func:`parse_duration` reads back."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class RetentionPolicy(BaseModel):
    """How much history to keep; ready to embed in ``dbprotect.yaml`` (per database and target).

    Zero turns a keep rule off. ``min_verified`` is at least 1 because the newest verified backup
    is protected anyway. The text form (``str(policy)``) parses back to an equal policy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    keep_yearly: int = Field(default=0, ge=0)
    max_age: timedelta | None = None
    min_verified: int = Field(default=1, ge=1)

    @field_validator("max_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_duration(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"max_age {value!r} needs a unit (30d, 12h)")
        return value

    @field_validator("max_age")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and (value <= timedelta(0) or value.microseconds):
            raise ValueError("max_age must be a positive whole number of seconds")
        return value

    @property
    def has_keep_rules(self) -> bool:
        return any(getattr(self, name) for name in _KEEP_RULES)

    @property
    def empty(self) -> bool:
        return not self.has_keep_rules and self.max_age is None

    def __str__(self) -> str:
        parts = [f"{name}={getattr(self, name)}" for name in _KEEP_RULES if getattr(self, name)]
        if self.max_age is not None:
            parts.append(f"max_age={format_duration(self.max_age)}")
        parts.append(f"min_verified={self.min_verified}")
        return ", ".join(parts)

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """Read ``"keep_last=10, keep_daily=7, max_age=30d"`` (commas or spaces between rules)."""
        values: dict[str, str] = {}
        for item in re.split(r"[,\s]+", text.strip()):
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not sep or not value:
                raise ValueError(f"{item!r} in retention policy {text!r} is not name=value")
            if name in values:
                raise ValueError(f"{name} appears twice in retention policy {text!r}")
            values[name] = value
        return cls.model_validate(values)


def _duration_field(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{value!r} needs a unit (7d, 36h)")
    return value


class KindRetention(BaseModel):
    """How long the backups that are not the schedule's are kept: each kind by its own rule.

    Safety backups (taken before an overwrite restore or a promotion: its undo), guard backups
    (before a schema push or a guarded change) and sanitized copies live in their own folders
    and never count toward the database's policy, nor toward each other's:

    * ``safety_min_age`` (default 7 days): a safety backup is kept at least this long, and beyond
      it for as long as it protects the newest restore over its target (nothing newer replaced
      that database since). Both are protections: the database's ``max_age`` does not remove them
      (the plan warns instead), because deleting the one undo of the last restore is worse.
    * ``guard_min_age`` (default 7 days): a guard backup is kept this long, then deleted.
    * ``sanitized_keep_last`` (default 3): the newest N sanitized copies that did not fail are kept.

    Guard backups and sanitized copies older than the database's ``max_age`` go, as any backup does.
    Written in ``dbprotect.yaml`` as ``kind_retention: {safety_min_age: 7d, guard_min_age: 14d,
    sanitized_keep_last: 3}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    safety_min_age: timedelta = timedelta(days=7)
    guard_min_age: timedelta = timedelta(days=7)
    sanitized_keep_last: int = Field(default=3, ge=1)

    @field_validator("safety_min_age", "guard_min_age", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return _duration_field(value)

    @field_validator("safety_min_age", "guard_min_age")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0) or value.microseconds:
            raise ValueError("a minimum age is a whole, non-negative number of seconds")
        return value

    def __str__(self) -> str:
        return (f"safety_min_age={format_duration(self.safety_min_age)}, "
                f"guard_min_age={format_duration(self.guard_min_age)}, "
                f"sanitized_keep_last={self.sanitized_keep_last}")


__all__ = ["KindRetention", "RetentionPolicy", "format_duration", "parse_duration"]
