"""Starter rule files: a guess for every column from its name, type and a sample of its values.

Every generated rule carries ``review: true``: a guess is not a classification, and the run
reports unreviewed rules until a person removes the flag. Guesses err toward masking: a text
column that matches nothing is ``text`` (masked), not ``keep``; identifiers, booleans,
foreign keys, amounts and enums are ``keep`` because masking them breaks joins or meaning.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from dbprotect.core.sanitize.coverage import ColumnInfo, source_columns
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


def guess(column: ColumnInfo, samples: list[str]) -> ColumnRule:
    """A reviewed-later guess for one column (see the module docstring for the bias)."""
    name = column.name.lower()
    textual = bool(_TEXT_TYPES.search(column.type))
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
    """Rules for every column of the database ``conn`` reads; existing rules are kept as they are."""
    tables: dict[str, dict[str, ColumnRule]] = {}
    for table, columns in source_columns(conn).items():
        schema, _, name = table.partition(".")
        ruled = tables[table] = {}
        for column in columns:
            kept = existing.rule(table, column.name) if existing else None
            if kept is not None:
                ruled[column.name] = kept
                continue
            rows = conn.execute(sql.SQL("SELECT {}::text FROM {} TABLESAMPLE SYSTEM (10) LIMIT %s").format(
                sql.Identifier(column.name), sql.Identifier(schema, name)), (sample,)).fetchall()
            if not rows:
                rows = conn.execute(sql.SQL("SELECT {}::text FROM {} LIMIT %s").format(
                    sql.Identifier(column.name), sql.Identifier(schema, name)), (sample,)).fetchall()
            ruled[column.name] = guess(column, [row[0] for row in rows])
    return RuleSet(tables, source="<generated>")
