"""Starter rule files: a guess for every column from its name, type and a sample of its values.

Every generated rule carries ``review: true``: a guess is not a classification, and the run
reports unreviewed rules until a person removes the flag. Guesses err toward masking: a text
column that matches nothing is ``text`` (masked), not ``keep``; identifiers, booleans,
foreign keys, amounts and enums are ``keep`` because masking them breaks joins or meaning.

``keep`` is never proposed for a column whose sampled values look personal (an e-mail address, a
phone number, a card number) or whose name does: it gets a transformer of the right type instead.
Types are read by their base type (a domain over ``text`` is text); ``json``/``jsonb`` columns get
a JSON-valid rule (every top-level member masked as text), arrays and ``hstore`` an empty value or
NULL: a suggestion always loads into its column.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from dbprotect.core.sanitize.coverage import ColumnInfo, large_object_count, source_columns
from dbprotect.core.sanitize.fingerprints import (
    embedded_phone_runs,
    looks_like_card,
    looks_like_email,
    looks_like_phone,
)
from dbprotect.core.sanitize.leaves import TypeCatalog, base_type, leaf_query
from dbprotect.core.sanitize.rules import ColumnRule, RuleSet

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ()./-]{6,18}$")

#: (name pattern, rule) for text columns, in order: the first match wins.
_BY_NAME: list[tuple[re.Pattern[str], ColumnRule]] = [
    (re.compile(r"e_?mail"), ColumnRule("email")),
    (re.compile(r"phone|mobile|fax|msisdn"), ColumnRule("phone")),
    (re.compile(r"(^|_)ip(_|$)|^ip_?addr"), ColumnRule("ip")),
    (re.compile(r"first_?name|given_?name"), ColumnRule("name", params=(("part", "first"),))),
    (re.compile(r"last_?name|surname|family_?name"), ColumnRule("name", params=(("part", "last"),))),
    (re.compile(r"^(full_?)?name$|contact_?name|customer_?name|ship_?name"), ColumnRule("name")),
    (re.compile(r"address|street|city|postal|zip|location|region"), ColumnRule("text")),
    (re.compile(r"password|secret|token|username|cognito|device|user_?agent|account_?number"), ColumnRule("hash")),
    (re.compile(r"bio|note|comment|description|message|picture|photo|url"), ColumnRule("text")),
]
_SENSITIVE_ID = re.compile(r"ssn|passport|tax_?id|national_?id|iban|card_?(number|no)")
_BIRTH = re.compile(r"birth|dob")
_PICTURE = re.compile(r"photo|picture|image|avatar|signature")
_TEXT_TYPES = re.compile(r"^(text|character|varchar|citext|json|jsonb)")


_PERSONAL_NAME = re.compile("|".join(p.pattern for p, _ in _BY_NAME[:6]) + "|" + _SENSITIVE_ID.pattern + "|"
                            + _BIRTH.pattern)


def personal_kind(samples: list[str]) -> str | None:
    """The transformer sampled leaf values call for, when any looks personal (e-mail, card, phone, or prose
    holding a phone number)."""
    if any(looks_like_email(v) for v in samples):
        return "email"
    if any(looks_like_card(v) for v in samples):
        return "hash"
    if any(looks_like_phone(v) for v in samples):
        return "phone"
    if any(looks_like_phone(run) for v in samples for run in embedded_phone_runs(v)):
        return "text"  # prose holding phone numbers (no_pii_leaked reads them there too)
    return None


def _structured(column: ColumnInfo, shape: str, samples: list[str]) -> ColumnRule:
    """JSON documents, arrays, hstore and composites: a rule that loads into the column's type."""
    personal = personal_kind(samples) is not None or bool(_PERSONAL_NAME.search(column.name.lower()))
    if not personal:
        return ColumnRule("keep", True)
    if shape == "json":
        return ColumnRule("json", True, (("paths", {"*": "text"}),))
    if not column.not_null:
        return ColumnRule("null", True)
    empty = {"array": "{}", "hstore": ""}.get(shape)
    return ColumnRule("fixed", True, (("value", empty),)) if empty is not None else ColumnRule("null", True)


def guess(column: ColumnInfo, samples: list[str], shape: str = "") -> ColumnRule:
    """A reviewed-later guess for one column (see the module docstring for the bias).

    ``shape``: ``json``, ``array``, ``hstore`` or ``composite`` for structured base types, ``text``
    for the string types behind any domain; ``samples`` are text leaves (JSON leaves, elements).
    """
    if shape in ("json", "array", "hstore", "composite"):
        return _structured(column, shape, samples)
    rule = _guess_scalar(column, samples, shape)
    if rule.transformer == "keep":
        kind = personal_kind([s for s in samples if s]) if shape == "text" or _TEXT_TYPES.search(column.type) else None
        rule = ColumnRule(kind, True) if kind else rule
    return _fitted(column, rule)


_LENGTH = re.compile(r"^(?:character varying|character|varchar|bpchar)\((\d+)\)")


def _fitted(column: ColumnInfo, rule: ColumnRule) -> ColumnRule:
    """A hash or e-mail output that fits ``varchar(n)``/``char(n)`` (a 32-digit hash does not fit 20)."""
    limit = _LENGTH.match(column.type)
    if limit is None:
        return rule
    n = int(limit.group(1))
    if rule.transformer == "hash" and int(rule.options().get("length", 32)) > n:
        return ColumnRule("hash", rule.review, tuple(sorted({**rule.options(), "length": n}.items())))
    if rule.transformer == "email" and n < 33:  # u + 20 hex digits + @example.com
        return ColumnRule("hash", rule.review, (("length", n),))
    return rule


def _guess_scalar(column: ColumnInfo, samples: list[str], shape: str) -> ColumnRule:
    name = column.name.lower()
    textual = shape == "text" or bool(_TEXT_TYPES.search(column.type))
    if textual and _SENSITIVE_ID.search(name):
        return ColumnRule("hash", True)
    if name == "id" or name.endswith("_id"):
        return ColumnRule("keep", True)
    if column.type == "bytea":
        return ColumnRule("null" if _PICTURE.search(name) and not column.not_null else "keep", True)
    if column.type.startswith(("date", "timestamp")) and _BIRTH.search(name):
        return ColumnRule("date", True, (("max_days", 180),))
    if column.type in ("inet", "cidr"):
        return ColumnRule("ip", True)
    if not textual:
        return ColumnRule("keep", True)
    for pattern, rule in _BY_NAME:
        if pattern.search(name):
            return ColumnRule(rule.transformer, True, rule.params)
    values = [s for s in samples if s]
    if values and sum(bool(_EMAIL.match(v)) for v in values) * 2 > len(values):
        return ColumnRule("email", True)
    if values and sum(bool(_PHONE.match(v)) for v in values) * 2 > len(values):
        return ColumnRule("phone", True)
    if values and len(set(values)) <= max(3, len(values) // 10):  # few distinct values: a code or status
        return ColumnRule("keep", True)
    return ColumnRule("text", True)


def starter_rules(conn: psycopg.Connection, *, sample: int = 200, existing: RuleSet | None = None) -> RuleSet:
    """Rules for every column of the database ``conn`` reads; existing rules are kept as they are.

    Partitioned tables get one set of rules, sampled across all their partitions, and partitions
    none (they inherit it). Large objects, when there are any, are proposed removed (``null``).
    """
    tables: dict[str, dict[str, ColumnRule]] = {}
    catalog = TypeCatalog(conn)
    for table, columns in source_columns(conn, roots=True).items():
        schema, _, name = table.partition(".")
        ruled = tables[table] = {}
        for column in columns:
            kept = existing.rule(table, column.name) if existing else None
            if kept is not None:
                ruled[column.name] = kept
                continue
            # The same pages every run (REPEATABLE): a random sample made the guesses differ between two runs
            # (Chinook's track.composer was text or keep, by the pages drawn), so a reviewed file could not be
            # compared with a fresh one.
            sampled = sql.SQL("SELECT {}::text FROM {} TABLESAMPLE SYSTEM (10) REPEATABLE (0) LIMIT %s").format(
                sql.Identifier(column.name), sql.Identifier(schema, name))
            rows = conn.execute(sampled, (sample,)).fetchall()
            if not rows:
                rows = conn.execute(sql.SQL("SELECT {}::text FROM {} LIMIT %s").format(
                    sql.Identifier(column.name), sql.Identifier(schema, name)), (sample,)).fetchall()
            shape = _shape(catalog, table, column.name)
            samples = [row[0] for row in rows if row[0] is not None]
            if shape in ("json", "array", "hstore", "composite"):
                query = leaf_query(catalog, table, column.name)
                samples = [row[0] for row in conn.execute(sql.SQL("SELECT v FROM ({}) s LIMIT %s").format(query),
                                                          (sample * 5,)).fetchall()] if query is not None else []
            ruled[column.name] = guess(column, samples, shape)
    large_objects = existing.large_objects if existing else None
    if large_objects is None and large_object_count(conn):
        large_objects = ColumnRule("null", True)
    return RuleSet(tables, source="<generated>", large_objects=large_objects)


def _shape(catalog: TypeCatalog, table: str, column: str) -> str:
    t = base_type(catalog, table, column)
    if t is None:
        return ""
    if t.name in ("json", "jsonb") and t.schema == "pg_catalog":
        return "json"
    if t.category == "A" and t.element:
        return "array"
    if t.name == "hstore":
        return "hstore"
    if t.kind == "c":
        return "composite"
    return "text" if t.category == "S" else ""

