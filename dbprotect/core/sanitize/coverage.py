"""The coverage gate: every column of every table in the source has a rule, or nothing runs.

A column added in production that nobody classified is the classic leak (the copy would carry it
unmasked), so an unclassified column is an error that lists every such column, not a default.
The gate runs from a backup's manifest (its per-table column lists), so it needs no connection and
fails before anything is restored; :func:`source_columns` reads the same from a live database for
the starter rule generator and for the stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg

from dbprotect.core.errors import ConfigError
from dbprotect.core.sanitize.rules import RuleSet
from dbprotect.core.store.manifest import Manifest


class CoverageError(ConfigError):
    """Columns without a masking rule: the run stops before anything is copied (exit 2: the rule file,
    part of the configuration, is incomplete)."""


@dataclass(frozen=True)
class ColumnInfo:
    """A column of the source: what the stream, the gate and the rule generator need to know."""

    table: str
    name: str
    type: str = "text"
    unique: bool = False
    not_null: bool = False


_IDENT = re.compile(r'\s*("(?:[^"]|"")*"|[^,]+)\s*(?:,|$)')


def split_column_list(text: str) -> list[str]:
    """``id, "timestamp", name`` (pg_dump's COPY column list) → ``['id', 'timestamp', 'name']``."""
    names = []
    for match in _IDENT.finditer(text):
        item = match.group(1).strip()
        if item:
            names.append(item[1:-1].replace('""', '"') if item.startswith('"') else item)
    return names


def columns_from_manifest(manifest: Manifest) -> dict[str, list[str]]:
    """Each table's copied columns as the backup recorded them (generated columns are not copied)."""
    return {table: split_column_list(record.columns or "") for table, record in manifest.tables.items()}


def source_columns(conn: psycopg.Connection) -> dict[str, list[ColumnInfo]]:
    """Every ordinary table's stored columns, in order, with type and single-column uniqueness."""
    rows = conn.execute("""
        SELECT n.nspname || '.' || c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique
                       AND i.indnatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, a.attnum""").fetchall()
    tables: dict[str, list[ColumnInfo]] = {}
    for table, name, type_, not_null, unique in rows:
        tables.setdefault(table, []).append(ColumnInfo(table, name, type_, bool(unique), bool(not_null)))
    return tables


@dataclass(frozen=True)
class Coverage:
    missing: list[str]
    stale: list[str]
    unreviewed: list[str]


def coverage(rules: RuleSet, columns: dict[str, list[str]]) -> Coverage:
    """Which source columns lack a rule (``missing``) and which rules name nothing (``stale``)."""
    missing = [f"{table}.{column}" for table, names in sorted(columns.items()) for column in names
               if rules.rule(table, column) is None]
    stale = [f"{table}.{column}" for table, ruled in sorted(rules.tables.items()) for column in ruled
             if column not in columns.get(table, ())]
    return Coverage(missing, stale, rules.unreviewed())


def require_coverage(rules: RuleSet, columns: dict[str, list[str]], *, database: str) -> Coverage:
    """Raise :class:`CoverageError` listing every unclassified column; return the coverage otherwise."""
    found = coverage(rules, columns)
    if found.missing:
        more = len(found.missing) - 20
        shown = ", ".join(found.missing[:20]) + (f" and {more} more" if more > 0 else "")
        raise CoverageError(
            f"{database}: {len(found.missing)} column(s) have no masking rule in {rules.source}: {shown}; "
            "nothing was copied",
            hint="classify each one as 'keep' (holds no personal data) or a transformer; "
            f"'dbprotect sanitize rules {database}' prints guesses for new columns",
        )
    return found
