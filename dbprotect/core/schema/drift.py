"""Schema drift between two live databases, as a readable list, computed by ``results``.

dbprotect does not diff schemas itself: ``results`` (the maintained successor of migra) inspects
both databases and says which objects were added, removed or modified per category; this module
only turns that into sentences a person can act on and applies the allow-list of changes that
are expected to be pending (``schema.pending`` in the configuration).

A drift item names its object as ``<kind> <schema>.<name>`` (``table public.invoice``,
``column public.invoice.total``, ``index public.ix_invoice_date``); allow-list entries are shell
patterns matched against that name (``column public.invoice.*``). Because ``results`` compares
catalog contents by name, the order in which objects were created is never drift.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dbprotect.core.errors import DatabaseError
from dbprotect.core.pg.dsn import mask_dsn

#: results' inspector categories, as the singular kind a person reads in a drift item.
_KINDS: dict[str, str] = {
    "schemas": "schema", "enums": "enum", "tables": "table", "views": "view",
    "materialized_views": "materialized view", "functions": "function", "sequences": "sequence",
    "constraints": "constraint", "indexes": "index", "extensions": "extension", "triggers": "trigger",
    "collations": "collation", "rlspolicies": "policy", "types": "type", "domains": "domain",
    "composite_types": "composite type",
}


@dataclass(frozen=True)
class DriftItem:
    """One difference: ``change`` is ``only in <side>`` or ``changed: <what>``."""

    kind: str
    name: str
    change: str

    @property
    def key(self) -> str:
        """What allow-list patterns match: ``<kind> <name>``."""
        return f"{self.kind} {self.name}"

    def __str__(self) -> str:
        return f"{self.key}: {self.change}"


@dataclass(frozen=True)
class DriftReport:
    """The differences between ``left`` and ``right`` (environment names), split by the allow-list."""

    left: str
    right: str
    items: tuple[DriftItem, ...]
    allowed: tuple[DriftItem, ...] = ()

    @property
    def ok(self) -> bool:
        """No difference outside the allow-list."""
        return not self.items

    def lines(self) -> list[str]:
        return [str(item) for item in self.items]

    def summary(self) -> str:
        if self.ok:
            extra = f" ({len(self.allowed)} allowed pending change(s))" if self.allowed else ""
            return f"{self.left} and {self.right} schemas match{extra}"
        return f"{len(self.items)} difference(s) between {self.left} and {self.right}: " + "; ".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {"left": self.left, "right": self.right, "ok": self.ok, "drift": self.lines(),
                "allowed": [str(item) for item in self.allowed]}


def _unquote(name: str) -> str:
    return name.replace('"', "")


def _inspect(dsn: str) -> Any:
    # results (SQLAlchemy underneath) is imported on first use: ~420 ms (python -X importtime) that
    # every CLI command would otherwise pay; only drift and sync need it. Likewise below.
    import results

    try:
        return results.db(dsn)
    except Exception as exc:  # results/psycopg raise their own types; report one line, DSN masked
        raise DatabaseError(f"cannot inspect the schema of {mask_dsn(dsn)}: {type(exc).__name__}: "
                            f"{mask_dsn(str(exc).splitlines()[0] if str(exc) else '')}") from None


def migration(from_dsn: str, to_dsn: str) -> Any:
    """A ``results`` migration taking the schema of ``from_dsn`` to that of ``to_dsn``, all changes added."""
    from results.dbdiff import Migration

    found = Migration(_inspect(from_dsn), _inspect(to_dsn))
    found.set_safety(False)  # we decide what is safe (lint, backups, confirmation), not results
    found.add_all_changes_ordered()
    return found


def _column_changes(before: Any, after: Any, table: str, left: str, right: str) -> list[DriftItem]:
    """Per column of a modified table: only on one side, or what changed (type, default, null)."""
    items: list[DriftItem] = []
    cols_a, cols_b = dict(before.columns), dict(after.columns)
    for name in sorted(set(cols_a) - set(cols_b)):
        items.append(DriftItem("column", f"{table}.{name}", f"only in {left}"))
    for name in sorted(set(cols_b) - set(cols_a)):
        items.append(DriftItem("column", f"{table}.{name}", f"only in {right}"))
    for name in sorted(set(cols_a) & set(cols_b)):
        a, b = cols_a[name], cols_b[name]
        what = []
        if a.dbtypestr != b.dbtypestr:
            what.append(f"type {a.dbtypestr} in {left}, {b.dbtypestr} in {right}")
        if a.default != b.default:
            what.append(f"default {a.default or 'none'} in {left}, {b.default or 'none'} in {right}")
        if a.not_null != b.not_null:
            what.append(f"{'NOT NULL' if a.not_null else 'nullable'} in {left}, "
                        f"{'NOT NULL' if b.not_null else 'nullable'} in {right}")
        if what:
            items.append(DriftItem("column", f"{table}.{name}", "changed: " + "; ".join(what)))
    return items


def drift_items(found: Any, *, left: str, right: str) -> list[DriftItem]:
    """Every difference a ``results`` migration saw, ``left`` being its from-side, ``right`` its target."""
    from results.dbdiff.util import differences

    a, b = found.changes.i_from, found.changes.i_target
    items: list[DriftItem] = []
    for category, kind in _KINDS.items():
        before, after = getattr(a, category, {}), getattr(b, category, {})
        added, removed, modified, _ = differences(before, after)
        for name in sorted(removed):
            items.append(DriftItem(kind, _unquote(name), f"only in {left}"))
        for name in sorted(added):
            items.append(DriftItem(kind, _unquote(name), f"only in {right}"))
        for name in sorted(modified):
            table = _unquote(name)
            if category == "tables" and hasattr(before[name], "columns"):
                columns = _column_changes(before[name], after[name], table, left, right)
                items.extend(columns)
                if columns:
                    continue
            items.append(DriftItem(kind, table, f"changed: definition differs between {left} and {right}"))
    if not items and found.sql.strip():  # results found a change our categories do not name
        items.append(DriftItem("schema", "*", "changed: " + " ".join(found.sql.split())[:200]))
    return items


def compare_schemas(left_dsn: str, right_dsn: str, *, left: str = "development", right: str = "production",
                    allowed: Sequence[str] = ()) -> DriftReport:
    """Every difference between two live schemas; items matching an ``allowed`` pattern are set apart."""
    return split_allowed(drift_items(migration(left_dsn, right_dsn), left=left, right=right), allowed,
                         left=left, right=right)


def split_allowed(items: Iterable[DriftItem], allowed: Sequence[str], *, left: str, right: str) -> DriftReport:
    """Set apart the items an allow-list pattern (``fnmatch``, against ``<kind> <name>``) covers."""
    drift: list[DriftItem] = []
    ok: list[DriftItem] = []
    for item in items:
        (ok if any(fnmatch.fnmatchcase(item.key, pattern) for pattern in allowed) else drift).append(item)
    return DriftReport(left, right, tuple(drift), tuple(ok))


__all__ = ["DriftItem", "DriftReport", "compare_schemas", "drift_items", "migration", "split_allowed"]
