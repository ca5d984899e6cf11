"""Subsetting: a percentage or a WHERE clause on root tables, with referential integrity kept.

Runs in the scratch *source* database (a private restore of the backup), before the stream, and
only decides which rows are copied: each table in the plan gets a temporary set of row ids
(``ctid``: stable here, since nothing writes to the scratch source), and the stream copies
``WHERE ctid IN (...)``. The tables fall in four kinds:

roots
    the configured tables: rows matching the WHERE clause, or a repeatable Bernoulli sample.
descendants
    tables with a foreign key path to a root: a row is kept when every foreign key it has into
    roots or descendants points at a kept row (or is NULL) — the transactions of kept accounts
    of kept users.
referenced
    tables that kept rows point at, and nothing else: only the referenced rows.
everything else
    copied whole (lookup tables unrelated to the roots).

Then the closure: every row a kept row references (through any foreign key) is kept too — "every
referenced row comes along" — which may admit more descendant rows, and so on until nothing
changes. The result always satisfies every foreign key, so the post-data section loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dbprotect.core.errors import ConfigError


@dataclass(frozen=True)
class ForeignKey:
    child: str
    child_columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]


@dataclass
class SubsetPlan:
    """Which tables are subset and how many rows each keeps (the expected row counts)."""

    keep_tables: dict[str, str] = field(default_factory=dict)  # table -> temp table of kept ctids
    rows: dict[str, int] = field(default_factory=dict)
    rounds: int = 0

    def where(self, table: str) -> sql.Composable | None:
        """The stream's filter for ``table``, or None when it is copied whole."""
        keep = self.keep_tables.get(table)
        if keep is None:
            return None
        return sql.SQL("ctid IN (SELECT id FROM {})").format(sql.Identifier(keep))


def foreign_keys(conn: psycopg.Connection) -> list[ForeignKey]:
    rows = conn.execute("""
        SELECT cn.nspname || '.' || c.relname, array_agg(ca.attname ORDER BY k.ord),
               pn.nspname || '.' || p.relname, array_agg(pa.attname ORDER BY k.ord)
        FROM pg_constraint f
        JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = f.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        CROSS JOIN LATERAL unnest(f.conkey, f.confkey) WITH ORDINALITY AS k(ck, pk, ord)
        JOIN pg_attribute ca ON ca.attrelid = f.conrelid AND ca.attnum = k.ck
        JOIN pg_attribute pa ON pa.attrelid = f.confrelid AND pa.attnum = k.pk
        WHERE f.contype = 'f'
        GROUP BY f.oid, cn.nspname, c.relname, pn.nspname, p.relname""").fetchall()
    return [ForeignKey(child, tuple(cc), parent, tuple(pc)) for child, cc, parent, pc in rows]


def _ident(table: str) -> sql.Identifier:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)


def _match(fk: ForeignKey, child_alias: str, parent_alias: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(child_alias, c), sql.Identifier(parent_alias, p))
        for c, p in zip(fk.child_columns, fk.parent_columns, strict=True))


def plan_subset(conn: psycopg.Connection, roots: dict[str, dict[str, object]], tables: list[str]) -> SubsetPlan:
    """Compute the kept rows of every table in temporary tables on ``conn`` (see the module docstring).

    ``roots``: ``{table: {"percent": 10}}`` or ``{table: {"where": "created_at > ..."}}``. The
    connection must stay open while the stream reads through :meth:`SubsetPlan.where`.
    """
    unknown = sorted(set(roots) - set(tables))
    if unknown:
        raise ConfigError(f"sanitize.subset names table(s) the source does not have: {', '.join(unknown)}")
    fks = [fk for fk in foreign_keys(conn) if fk.child in tables and fk.parent in tables]
    descendants: set[str] = set()
    changed = True
    while changed:  # tables with a foreign key path to a root
        changed = False
        for fk in fks:
            new = fk.child not in roots and fk.child not in descendants
            if new and (fk.parent in roots or fk.parent in descendants):
                descendants.add(fk.child)
                changed = True
    driven = set(roots) | descendants
    referenced: set[str] = set()
    changed = True
    while changed:  # tables reachable upward from the driven ones
        changed = False
        for fk in fks:
            if (fk.child in driven or fk.child in referenced) and fk.parent not in driven | referenced:
                referenced.add(fk.parent)
                changed = True
    plan = SubsetPlan()
    for i, table in enumerate(sorted(driven | referenced)):
        keep = f"dbprotect_keep_{i}"
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (id tid PRIMARY KEY)").format(sql.Identifier(keep)))
        plan.keep_tables[table] = keep
    for table, spec in roots.items():
        keep = sql.Identifier(plan.keep_tables[table])
        if "where" in spec:
            conn.execute(sql.SQL("INSERT INTO {} SELECT ctid FROM {} WHERE {}").format(
                keep, _ident(table), sql.SQL(str(spec["where"]))))  # the operator's own SQL, in the scratch copy
        else:
            conn.execute(sql.SQL("INSERT INTO {} SELECT ctid FROM {} TABLESAMPLE BERNOULLI (%s) REPEATABLE (0)").format(
                keep, _ident(table)), (float(spec["percent"]),))  # type: ignore[arg-type]
    while True:
        plan.rounds += 1
        added = 0
        for table in sorted(descendants):  # rows whose every driving foreign key points at a kept row
            conditions = [sql.SQL("({} OR EXISTS (SELECT 1 FROM {} p JOIN {} k ON k.id = p.ctid WHERE {}))").format(
                sql.SQL(" OR ").join(sql.SQL("c.{} IS NULL").format(sql.Identifier(col)) for col in fk.child_columns),
                _ident(fk.parent), sql.Identifier(plan.keep_tables[fk.parent]), _match(fk, "c", "p"))
                for fk in fks if fk.child == table and fk.parent in driven]
            added += conn.execute(sql.SQL(
                "INSERT INTO {keep} SELECT c.ctid FROM {t} c WHERE {cond} ON CONFLICT DO NOTHING").format(
                keep=sql.Identifier(plan.keep_tables[table]), t=_ident(table),
                cond=sql.SQL(" AND ").join(conditions))).rowcount
        for fk in fks:  # every referenced row comes along
            if fk.child not in plan.keep_tables:
                continue
            added += conn.execute(sql.SQL(
                "INSERT INTO {pk} SELECT p.ctid FROM {c} c JOIN {ck} k ON k.id = c.ctid JOIN {p} p ON {m} "
                "ON CONFLICT DO NOTHING").format(
                pk=sql.Identifier(plan.keep_tables[fk.parent]), c=_ident(fk.child),
                ck=sql.Identifier(plan.keep_tables[fk.child]), p=_ident(fk.parent), m=_match(fk, "c", "p"))).rowcount
        if not added:
            break
    for table, keep in plan.keep_tables.items():
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(keep))).fetchone()
        plan.rows[table] = int(row[0]) if row else 0
    return plan
