"""Sync plans that tell the truth: ``results``' DDL, corrected where it is wrong, and what it cannot say.

``results`` (migra's successor) plans most changes well; this thin layer fixes the cases where
its plan is wrong or silent, the way an upstream patch would, by editing its statement list:

- **domains**: a changed default, NOT NULL or CHECK of a domain is drift, but results plans
  nothing for it; we add ``ALTER DOMAIN`` statements. A changed base type or collation cannot be
  altered in place and is named as unplannable.
- **partitions**: ``CREATE TABLE … PARTITION OF`` creates the partition's copy of every index of
  its parent, so results' extra ``CREATE INDEX`` (fails: already exists) and ``ATTACH`` go.
- **foreign keys**: results drops and re-adds every foreign key that touches a table with any
  change (adding one column churned nine keys). A key is kept when its definition is unchanged
  and neither table's key columns nor the referenced unique keys change.
- **enums**: results renames, recreates and re-casts an enum even to add one value (and also
  emits a plain ``DROP TYPE`` that fails while a column uses it); appended or inserted values
  become ``ALTER TYPE … ADD VALUE``, other changes keep only the rename/recreate/recast path.
- **composite types**: results plans only their comments; appended or dropped attributes become
  ``ALTER TYPE … ADD/DROP ATTRIBUTE``, anything else is named as unplannable.
- **inheritance**: an ``ALTER COLUMN`` on a parent recurses to its children; results' extra copy
  for a child fails ("cannot alter inherited column") and goes.
- **sequences**: results' ``ALTER SEQUENCE`` ends in ``RESTART WITH <start>``, which would reset a
  production sequence below its used values; the restart goes.

Whatever drift remains possible but unplanned is listed in :attr:`MigrationPlan.unplannable`,
so a caller can never print "no changes" while the schemas differ; ``schema push`` refuses such a
plan, and proves every plan on a scratch copy first (:mod:`dbprotect.core.schema.proof`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dbprotect.core.pg.tools import connect
from dbprotect.core.schema.drift import drift_items, migration

#: results ends every ``ALTER SEQUENCE`` with this; see the module docstring.
_RESTART = re.compile(r"\s+restart with -?\d+(?=;\s*$)", re.IGNORECASE)


@dataclass(frozen=True)
class MigrationPlan:
    """The statements taking one schema to another, and the differences no statement covers."""

    statements: tuple[str, ...]
    unplannable: tuple[str, ...] = ()

    @property
    def sql(self) -> str:
        return "\n\n".join(s.strip() for s in self.statements) + "\n" if self.statements else ""

    @property
    def empty(self) -> bool:
        return not self.statements and not self.unplannable


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _remove(statements: list[str], unwanted: str) -> bool:
    """Remove the first statement equal (whitespace aside) to ``unwanted``; whether one was."""
    wanted = " ".join(unwanted.split())
    for position, statement in enumerate(statements):
        if " ".join(statement.split()) == wanted:
            del statements[position]
            return True
    return False


_DOMAIN_CHECKS = """
SELECT n.nspname, t.typname, r.conname, pg_catalog.pg_get_constraintdef(r.oid, true)
FROM pg_catalog.pg_constraint r
JOIN pg_catalog.pg_type t ON t.oid = r.contypid
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE r.contype = 'c' ORDER BY 1, 2
"""


def _domain_checks(dsn: str) -> dict[tuple[str, str], dict[str, str]]:
    """Each domain's CHECK constraints by name (results keeps one name and a joined text per domain)."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    with connect(dsn, autocommit=True, application_name="dbprotect-schema") as conn:
        for schema, domain, name, definition in conn.execute(_DOMAIN_CHECKS):
            found.setdefault((schema, domain), {})[name] = definition
    return found


def _domain_statements(i_from: Any, i_target: Any, from_dsn: str, to_dsn: str) -> tuple[list[str], list[str]]:
    """``ALTER DOMAIN`` statements for changed domains, and the changes that cannot be altered."""
    statements: list[str] = []
    unplannable: list[str] = []
    changed = [(key, i_from.domains[key], after) for key, after in i_target.domains.items()
               if key in i_from.domains and i_from.domains[key] != after]
    if not changed:
        return statements, unplannable
    checks_from, checks_to = _domain_checks(from_dsn), _domain_checks(to_dsn)
    for key, before, after in changed:
        name = after.signature
        if (before.data_type, before.collation) != (after.data_type, after.collation):
            unplannable.append(f"domain {key.replace(chr(34), '')}: base type or collation changed "
                               "(no ALTER DOMAIN form; recreate it and its columns by hand)")
            continue
        if before.default != after.default:
            statements.append(f"alter domain {name} set default {after.default};" if after.default
                              else f"alter domain {name} drop default;")
        if before.not_null != after.not_null:
            statements.append(f"alter domain {name} {'set' if after.not_null else 'drop'} not null;")
        old, new = checks_from.get((after.schema, after.name), {}), checks_to.get((after.schema, after.name), {})
        for constraint, definition in old.items():
            if new.get(constraint) != definition:
                statements.append(f'alter domain {name} drop constraint "{constraint}";')
        for constraint, definition in new.items():
            if old.get(constraint) != definition:
                statements.append(f'alter domain {name} add constraint "{constraint}" {definition};')
    return statements, unplannable


def _composite_type_statements(i_from: Any, i_target: Any) -> tuple[list[str], list[str]]:
    """``ALTER TYPE … ADD/DROP ATTRIBUTE`` for composite types (results plans only their comments)."""
    statements: list[str] = []
    unplannable: list[str] = []
    for key, after in i_target.types.items():
        before = i_from.types.get(key)
        if before is None or before.columns == after.columns:
            continue
        old, new = list(before.columns.items()), list(after.columns.items())
        if new[:len(old)] == old:
            statements += [f"alter type {after.signature} add attribute {_quoted(name)} {kind};"
                           for name, kind in new[len(old):]]
        elif [item for item in old if item in new] == new:
            statements += [f"alter type {after.signature} drop attribute {_quoted(name)};"
                           for name, kind in old if (name, kind) not in new]
        else:
            unplannable.append(f"composite type {key.replace(chr(34), '')}: attributes reordered or retyped "
                               "(no single ALTER TYPE form; change it by hand)")
    return statements, unplannable


def _drop_inherited_column_alters(statements: list[str], i_target: Any) -> None:
    """An ALTER COLUMN on a parent recurses to inheritance children: results' own copy for a child fails."""
    for key, table in i_target.tables.items():
        parent = getattr(table, "parent_table", None)
        if not parent or getattr(table, "partition_def", None):
            continue
        prefix = f"alter table {key} alter column "
        for statement in list(statements):
            if statement.startswith(prefix) and f"alter table {parent} alter column " + statement[len(prefix):] \
                    in statements:
                statements.remove(statement)


def _drop_inherited_partition_indexes(statements: list[str], i_from: Any, i_target: Any) -> None:
    """A new partition gets its parent's existing indexes from ``PARTITION OF``: no CREATE, no ATTACH."""
    for key, index in i_target.indexes.items():
        if key in i_from.indexes or not index.parent_index or index.parent_index not in i_from.indexes:
            continue
        table = i_target.tables.get(index.quoted_full_table_name)
        if table is None or index.quoted_full_table_name in i_from.tables or not table.partition_def:
            continue
        _remove(statements, index.create_statement)
        _remove(statements, index.attach_statement)


def _keep_unchanged_foreign_keys(statements: list[str], i_from: Any, i_target: Any) -> None:
    """Undo results' drop/re-add of foreign keys whose definition and key columns do not change."""
    structural: set[str] = set()
    for key, before in i_from.constraints.items():
        after = i_target.constraints.get(key)
        if before.constraint_type in ("PRIMARY KEY", "UNIQUE") and (after is None or after != before):
            structural.add(before.quoted_full_table_name)
    for key, before in i_from.indexes.items():
        if before.is_unique and (key not in i_target.indexes or i_target.indexes[key] != before):
            structural.add(before.quoted_full_table_name)
    changed_columns: set[tuple[str, str]] = set()
    for key, before in i_from.tables.items():
        after = i_target.tables.get(key)
        if after is None or before.drop_statement in statements:
            structural.add(key)
            continue
        for column, old in before.columns.items():
            new = after.columns.get(column)
            if new is None or new.dbtypestr != old.dbtypestr:
                changed_columns.add((key, column))
    for key, before in i_from.constraints.items():
        after = i_target.constraints.get(key)
        if not before.is_fk or after is None or after != before:
            continue
        tables = {before.quoted_full_table_name, before.quoted_full_foreign_table_name}
        columns = {(before.quoted_full_table_name, c) for c in before.fk_columns_local or ()} | \
            {(before.quoted_full_foreign_table_name, c) for c in before.fk_columns_foreign or ()}
        if tables & structural or columns & changed_columns:
            continue
        if _remove(statements, before.drop_statement):
            for create in after.safer_create_statements:
                _remove(statements, create)


def _enum_recasts(i_from: Any, i_target: Any, enum: Any) -> list[str]:
    """results' statements re-casting every column of ``enum`` (and moving its default aside meanwhile)."""
    found: list[str] = []
    for key, table in i_target.tables.items():
        old_table = i_from.tables.get(key)
        if old_table is None:
            continue
        for name, column in table.columns.items():
            before = old_table.columns.get(name)
            if before is None or not (column.is_enum and before.is_enum) or column.dbtypestr != before.dbtypestr \
                    or column.enum.quoted_full_name != enum.quoted_full_name:
                continue
            found.append(column.change_enum_statement(table.quoted_full_name))
            if column.default and not column.is_generated:
                found += [before.drop_default_statement(key), before.add_default_statement(key)]
    return found


def _enum_changes(statements: list[str], i_from: Any, i_target: Any) -> None:
    """Added enum values by ``ADD VALUE``; results' stray plain DROP/CREATE of a changed enum removed."""
    for key, after in i_target.enums.items():
        before = i_from.enums.get(key)
        if before is None or before == after:
            continue
        _remove(statements, before.drop_statement)  # the plain drop fails while a column uses the type
        _remove(statements, after.create_statement)  # ... and its create (the rename path keeps its own)
        if not before.can_be_changed_to(after):
            continue
        doomed = f"{before.name}__old_version_to_be_dropped"
        rename = before.alter_rename_statement(doomed)
        position = next((i for i, s in enumerate(statements) if s.strip() == rename), len(statements))
        for unwanted in [rename, after.create_statement, before.drop_statement_with_rename(doomed),
                         *_enum_recasts(i_from, i_target, after)]:
            while _remove(statements, unwanted):
                pass
        position = min(position, len(statements))
        statements[position:position] = before.change_statements(after)


def _no_sequence_restart(statements: list[str]) -> None:
    for position, statement in enumerate(statements):
        if statement.lstrip().lower().startswith("alter sequence "):
            statements[position] = _RESTART.sub("", statement)


def refine(found: Any, from_dsn: str, to_dsn: str) -> MigrationPlan:
    """Correct a ``results`` migration (see the module docstring) and name what it leaves undone."""
    i_from, i_target = found.changes.i_from, found.changes.i_target
    statements = [str(s) for s in found.statements if str(s).strip()]
    _enum_changes(statements, i_from, i_target)
    _drop_inherited_partition_indexes(statements, i_from, i_target)
    _keep_unchanged_foreign_keys(statements, i_from, i_target)
    _drop_inherited_column_alters(statements, i_target)
    _no_sequence_restart(statements)
    domains, unplannable = _domain_statements(i_from, i_target, from_dsn, to_dsn)
    types, types_unplannable = _composite_type_statements(i_from, i_target)
    statements = domains + types + statements
    unplannable += types_unplannable
    if not statements and not unplannable:
        # drift that no statement covers: name every item rather than say "no changes"
        unplannable = [f"{item.key}: {item.change} (results plans no statement for it)"
                       for item in drift_items(found, left="target", right="source")]
    return MigrationPlan(tuple(statements), tuple(unplannable))


def plan_migration(from_dsn: str, to_dsn: str) -> MigrationPlan:
    """The refined plan taking ``from_dsn``'s schema to ``to_dsn``'s."""
    return refine(migration(from_dsn, to_dsn), from_dsn, to_dsn)


__all__ = ["MigrationPlan", "plan_migration", "refine"]
