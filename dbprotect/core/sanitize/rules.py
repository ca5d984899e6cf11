"""Masking rule files: for every column of every table, ``keep`` or a transformer with options.

``keep`` is an explicit statement that a column holds no personal data; there is no default,
so a column nobody classified stops the run (:mod:`dbprotect.core.sanitize.coverage`).

Format (YAML)::

    version: 1
    tables:
      public.users:                      # schema.table (a bare name means public.)
        id: keep
        email: email                     # a transformer without options
        phone_number: {transformer: phone}
        date_of_birth: {transformer: date, max_days: 180}
        last_login_ip: {transformer: ip, review: true}   # generated guess, not yet reviewed
        preferences: {transformer: json, paths: {contact.email: email, "tags.*": {transformer: fixed, value: x}}}
        support_email: {transformer: keep, waiver: "the shared support mailbox, published on the website"}
      public.events:                     # a partitioned table: its rules hold for every partition,
        payload: {transformer: json, paths: {"": {transformer: fixed, value: "{}"}}}   # "" = the whole document
      public.events_2024_01:             # a partition may override single columns of its parent's rules
        payload: "null"
    large_objects: "null"                # large objects: "null" (removed) or {transformer: fixed, value: ...}

Partitions inherit the rules of their parent (and its parent, for multi-level partitioning):
each new monthly partition is covered by the rules of the partitioned table, column by column;
a rule written for the partition itself overrides its parent's for that column
(:meth:`RuleSet.inherited`). A database holding large objects needs ``large_objects:``, or
nothing is built: their content is never copied as it is.

``waiver:`` (with ``keep`` only) is the explicit decision to copy a column that holds personal data
as it is: the ``no_pii_leaked`` findings on that column are reported as waived instead of failing
the build, the reason is recorded in the audit log and shown by ``sanitize check``.

Transformers: keep, email, phone, name (part: full|first|last), text, ip, date (max_days),
number (pct, min), json (paths), null, fixed (value), hash (format: hex|uuid, length).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dbprotect.core.errors import ConfigError

RULES_VERSION = 1

#: The transformer names a rule may use (``keep`` leaves the column as it is); :mod:`.transformers` implements each.
KINDS = ("keep", "email", "phone", "name", "text", "ip", "date", "number", "json", "null", "fixed", "hash")
#: The rules ``large_objects:`` may give: removed from the copy, or every one replaced by a constant.
LARGE_OBJECT_KINDS = ("null", "fixed")


@dataclass(frozen=True)
class ColumnRule:
    """One column's rule: ``transformer`` plus its options; ``review`` marks an unreviewed guess."""

    transformer: str
    review: bool = False
    params: tuple[tuple[str, Any], ...] = ()

    def options(self) -> dict[str, Any]:
        return dict(self.params)

    def spec(self) -> dict[str, Any]:
        """The rule as written in the file (without ``review``): what identifies a transformer."""
        return {"transformer": self.transformer, **self.options()}

    @classmethod
    def parse(cls, raw: Any, *, where: str) -> ColumnRule:
        if isinstance(raw, str):
            raw = {"transformer": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("transformer"), str):
            raise ConfigError(f"{where}: a rule is 'keep', a transformer name, or {{transformer: NAME, ...options}}")
        raw = dict(raw)
        kind = raw.pop("transformer")
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown transformer {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
        review = bool(raw.pop("review", False))
        if "waiver" in raw:
            waiver = raw["waiver"]
            if kind != "keep":
                raise ConfigError(f"{where}: a waiver only goes with keep (a masked column needs none)")
            if not isinstance(waiver, str) or len(waiver.strip()) < 10:
                raise ConfigError(f"{where}: waiver: needs the reason in words (at least 10 characters)",
                                  hint="say why copying this personal data to development is acceptable")
        return cls(kind, review, tuple(sorted(raw.items(), key=lambda item: item[0])))

    @property
    def waiver(self) -> str | None:
        """The reason a ``keep`` of personal data was accepted, when the rule gives one."""
        value = self.options().get("waiver")
        return str(value).strip() if value else None

    def to_yaml(self) -> Any:
        if not self.params and not self.review:
            return self.transformer
        return {"transformer": self.transformer, **self.options(), **({"review": True} if self.review else {})}


@dataclass
class RuleSet:
    """The rules of one database, by ``schema.table`` then column; ``sha256`` is the file's hash."""

    tables: dict[str, dict[str, ColumnRule]]
    sha256: str = ""
    source: str = "<memory>"
    problems: list[str] = field(default_factory=list)
    #: What becomes of large objects (``null``: removed; ``fixed``: every one holds ``value``); None: refused.
    large_objects: ColumnRule | None = None
    #: Partition -> its parent, for the tables whose rules were inherited (:meth:`inherited`).
    parents: dict[str, str] = field(default_factory=dict)

    def rule(self, table: str, column: str) -> ColumnRule | None:
        return self.tables.get(table, {}).get(column)

    def unreviewed(self) -> list[str]:
        """Columns whose rule is still a generated guess (``review: true``)."""
        return [f"{table}.{column}" for table, columns in sorted(self.tables.items())
                for column, rule in sorted(columns.items()) if rule.review]

    def waivers(self) -> dict[str, str]:
        """``schema.table.column`` -> reason, for every ``keep`` with a ``waiver:``."""
        return {f"{table}.{column}": rule.waiver for table, columns in sorted(self.tables.items())
                for column, rule in sorted(columns.items()) if rule.waiver}

    def inherited(self, parents: dict[str, str]) -> RuleSet:
        """These rules with every partition (``parents``: partition -> parent) given its ancestors' rules.

        Why: a partitioned table gains a partition every month; rules written once for the
        partitioned table must cover each new one, or every build stops until someone copies them.
        The nearest rule wins, column by column: the partition's own, then its parent's, up the
        chain (multi-level partitioning). A partition nobody wrote rules for gets exactly its
        root's rules; the coverage gate still names any column that no level classifies.
        """
        def chain(table: str) -> list[str]:
            found = [table]
            while found[-1] in parents and parents[found[-1]] not in found and len(found) < 64:
                found.append(parents[found[-1]])
            return found

        tables = {table: dict(columns) for table, columns in self.tables.items()}
        for table in parents:
            merged: dict[str, ColumnRule] = {}
            for level in reversed(chain(table)):
                merged.update(self.tables.get(level, {}))
            tables[table] = merged
        return RuleSet(tables, self.sha256, self.source, list(self.problems), self.large_objects, dict(parents))

    def to_yaml(self) -> str:
        doc: dict[str, Any] = {"version": RULES_VERSION,
                               "tables": {table: {column: rule.to_yaml() for column, rule in columns.items()}
                                          for table, columns in self.tables.items()}}
        if self.large_objects is not None:
            doc["large_objects"] = self.large_objects.to_yaml()
        return yaml.safe_dump(doc, sort_keys=False, width=120)


def qualify(table: str) -> str:
    return table if "." in table else f"public.{table}"


def parse_rules(text: str, *, source: str = "<memory>") -> RuleSet:
    """Validate a rule file's text; errors name the file and the table/column."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tables"), dict):
        raise ConfigError(f"{source}: a rule file is a mapping with 'version: 1' and 'tables:'")
    if raw.get("version", RULES_VERSION) != RULES_VERSION:
        raise ConfigError(f"{source}: rule file version {raw.get('version')!r} is not supported (expected 1)")
    unknown = sorted(str(key) for key in raw if key not in ("version", "tables", "large_objects"))
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s): {', '.join(unknown)}",
                          hint="a rule file has version:, tables: and optionally large_objects:")
    large_objects = None
    if "large_objects" in raw:
        spec = "null" if raw["large_objects"] is None else raw["large_objects"]  # YAML's bare null means removed
        large_objects = ColumnRule.parse(spec, where=f"{source}: large_objects")
        if large_objects.transformer not in LARGE_OBJECT_KINDS or (
                large_objects.transformer == "fixed" and not isinstance(large_objects.options().get("value"), str)):
            raise ConfigError(f"{source}: large_objects: is \"null\" (removed from the copy) or "
                              "{transformer: fixed, value: TEXT} (every large object holds TEXT)",
                              hint="large objects are never copied as they are")
    tables: dict[str, dict[str, ColumnRule]] = {}
    for table, columns in raw["tables"].items():
        if not isinstance(columns, dict):
            raise ConfigError(f"{source}: tables.{table}: expected a mapping of column: rule")
        tables[qualify(str(table))] = {str(column): ColumnRule.parse(rule, where=f"{source}: tables.{table}.{column}")
                                       for column, rule in columns.items()}
    return RuleSet(tables, hashlib.sha256(text.encode()).hexdigest(), source, large_objects=large_objects)


def load_rules(path: str | Path) -> RuleSet:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: masking rule file cannot be read: {exc.strerror}",
                          hint="write a starter file: 'dbprotect sanitize rules DATABASE --output FILE'") from None
    return parse_rules(text, source=str(file))
