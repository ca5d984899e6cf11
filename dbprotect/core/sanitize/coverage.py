"""The coverage gate: every column of every table in the source has a rule, or nothing runs.

A column added in production that nobody classified is the classic leak (the copy would carry it
unmasked), so an unclassified column is an error that lists every such column, not a default.
The gate runs from a backup's manifest (its per-table column lists), so it needs no connection and
fails before anything is restored; :func:`source_columns` reads the same from a live database for
the starter rule generator and for the stream.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbprotect.core.errors import ConfigError
from dbprotect.core.sanitize.rules import ColumnRule, RuleSet
from dbprotect.core.sanitize.transformers import Masker, SanitizeError
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


def source_columns(conn: psycopg.Connection, *, roots: bool = False) -> dict[str, list[ColumnInfo]]:
    """Every ordinary table's stored columns, in order, with type and single-column uniqueness.

    The tables that hold rows: plain tables and leaf partitions (partitioned tables hold none).
    ``roots``: the tables a person writes rules for instead: plain tables and the top partitioned
    tables, no partitions (the starter file; partitions inherit, :meth:`RuleSet.inherited`).
    """
    kinds = "c.relkind IN ('r', 'p') AND NOT c.relispartition" if roots else "c.relkind = 'r'"
    rows = conn.execute(sql.SQL("""
        SELECT n.nspname || '.' || c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique
                       AND i.indnatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        WHERE {kinds} AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, a.attnum""").format(kinds=sql.SQL(kinds))).fetchall()
    tables: dict[str, list[ColumnInfo]] = {}
    for table, name, type_, not_null, unique in rows:
        tables.setdefault(table, []).append(ColumnInfo(table, name, type_, bool(unique), bool(not_null)))
    return tables


def unique_keys(conn: psycopg.Connection) -> dict[str, list[tuple[str, ...]]]:
    """Each table's multi-column unique keys (constraints and unique indexes on plain columns), by column name.

    Partial and expression indexes are left out: which masked rows they compare cannot be judged
    outside PostgreSQL (the post-data section still builds them, so a violation fails the build).
    """
    rows = conn.execute("""
        SELECT n.nspname || '.' || c.relname,
               array_agg(a.attname ORDER BY k.ord) FILTER (WHERE a.attname IS NOT NULL), count(*)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN LATERAL unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY k(attnum, ord)
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum AND k.attnum > 0
        WHERE i.indisunique AND i.indnkeyatts > 1 AND i.indpred IS NULL AND i.indexprs IS NULL
          AND c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        GROUP BY i.indexrelid, 1 ORDER BY 1, i.indexrelid""").fetchall()
    keys: dict[str, list[tuple[str, ...]]] = {}
    for table, names, count in rows:
        if names and len(names) == count:
            keys.setdefault(table, []).append(tuple(names))
    return keys


def partition_parents(conn: psycopg.Connection) -> dict[str, str]:
    """Every partition (leaf or intermediate) -> its parent partitioned table, as ``schema.table``."""
    rows = conn.execute("""
        SELECT cn.nspname || '.' || c.relname, pn.nspname || '.' || p.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE c.relispartition AND p.relkind = 'p'""").fetchall()
    return {child: parent for child, parent in rows}


def large_object_count(conn: psycopg.Connection) -> int:
    """How many large objects the database holds (their content lives outside every table)."""
    row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    return int(row[0]) if row else 0


def require_large_object_rule(rules: RuleSet, count: int, *, database: str) -> None:
    """Refuse a database holding large objects when the rule file says nothing about them.

    Why: a large object's content is outside every table, so no column rule masks it; copying it
    as it is would carry whatever documents production keeps there straight into development.
    """
    if count and rules.large_objects is None:
        raise CoverageError(
            f"{database}: {count} large object(s) in the source and no large_objects: rule in {rules.source}; "
            "large objects are never copied as they are, nothing was copied",
            hint='add \'large_objects: "null"\' (removed from the copy) or '
            "'large_objects: {transformer: fixed, value: TEXT}' to the rule file")


_QUOTED = re.compile(r'"[^"]*"')
#: Outputs per column tried against the column's type: enough to meet a too-long or malformed one.
FIT_SAMPLE = 20
#: Inputs used when a column has no value to sample, for the transformers whose output shape does not
#: depend on the input's form (the others can only be judged on real values).
_PROBE_KINDS = frozenset({"email", "name", "text", "ip", "hash", "fixed", "null"})
_PROBE = b"probe.value@example.org"
_FIT_ERRORS = (SanitizeError, ValueError, TypeError, ArithmeticError, KeyError, IndexError, RecursionError)


def _fit_problem(table: str, column: ColumnInfo, rule: ColumnRule, values: list[bytes], masker: Masker,
                 conn: psycopg.Connection) -> str | None:
    where = f"{table}.{column.name} (transformer {rule.transformer})"
    fn = masker.transformer(rule)
    outputs: list[str | None] = []
    for value in values:
        try:
            out = fn.fn(value, 0)
        except _FIT_ERRORS as exc:
            reason = exc.message if isinstance(exc, SanitizeError) else type(exc).__name__
            return f"{where}: a value could not be masked: {reason}"
        outputs.append(None if out is None else out.decode("utf-8", "replace"))
    if column.not_null and any(out is None for out in outputs):
        return f"{where}: the masked value could not be loaded: the column is NOT NULL and the transformer gives NULL"
    given = [out for out in outputs if out is not None]
    if not given:
        return None
    row = conn.execute("SELECT e.message FROM unnest(%s::text[]) v, pg_input_error_info(v, %s) e "
                       "WHERE e.message IS NOT NULL LIMIT 1", (given, column.type)).fetchone()
    if row is None:
        return None
    reason = _QUOTED.sub('"…"', str(row[0]).splitlines()[0])  # never a value, masked or not
    return f"{where}: the masked value could not be loaded: {reason}"


def rules_fit_problems(conn: psycopg.Connection, columns: dict[str, list[ColumnInfo]], rules: RuleSet,
                       *, sample: int = FIT_SAMPLE) -> list[str]:
    """Every masked column whose transformer's output cannot load into the column's type, one line each.

    Why before any data moves: a ``text`` rule on a ``jsonb`` column, a 32-digit hash for a
    ``varchar(8)``, a word into a domain with a CHECK or into an ``integer`` would otherwise fail
    the build half-way (or, worse, only on the rare row that triggers it). The transformer is run
    on a sample of the column's own values (a probe value when the column is empty) under a
    throwaway key (output shapes do not depend on the key), and PostgreSQL itself judges each
    output against the column's type as the catalog spells it (typmod, domain constraints, NOT
    NULL): ``pg_input_error_info``. Messages name table, column and transformer, never a value.
    """
    masker = Masker(secrets.token_bytes(32))
    problems = []
    for table, infos in sorted(columns.items()):
        schema, _, name = table.partition(".")
        for column in infos:
            rule = rules.rule(table, column.name)
            if rule is None or rule.transformer == "keep":
                continue
            with conn.cursor(binary=True) as cur:
                values = [bytes(v) for (v,) in cur.execute(
                    sql.SQL("SELECT convert_to({c}::text, 'UTF8') FROM {t} WHERE {c} IS NOT NULL LIMIT %s").format(
                        c=sql.Identifier(column.name), t=sql.Identifier(schema, name)), (sample,))]
            if not values and rule.transformer in _PROBE_KINDS:
                values = [_PROBE]
            problem = _fit_problem(table, column, rule, values, masker, conn)
            if problem:
                problems.append(problem)
    return problems


def require_rules_fit(conn: psycopg.Connection, columns: dict[str, list[ColumnInfo]], rules: RuleSet) -> None:
    """Raise one :class:`SanitizeError` line listing every column whose rule cannot load (see above)."""
    problems = rules_fit_problems(conn, columns, rules)
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise SanitizeError("; ".join(problems[:5]) + more + "; nothing was stored",
                            hint="choose for each column named a transformer whose output fits its type "
                            "(a json rule for json/jsonb, a hash length within varchar(n))")


@dataclass(frozen=True)
class Coverage:
    missing: list[str]
    stale: list[str]
    unreviewed: list[str]


def coverage(rules: RuleSet, columns: dict[str, list[str]]) -> Coverage:
    """Which source columns lack a rule (``missing``) and which rules name nothing (``stale``)."""
    missing = [f"{table}.{column}" for table, names in sorted(columns.items()) for column in names
               if rules.rule(table, column) is None]
    partitioned = set(rules.parents.values())  # rules of a partitioned table hold for its partitions
    stale = [f"{table}.{column}" for table, ruled in sorted(rules.tables.items()) for column in ruled
             if column not in columns.get(table, ()) and table not in partitioned]
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
