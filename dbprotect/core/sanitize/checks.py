"""The blocking checks on a sanitized copy, evaluated on the production side before it is stored.

``no_pii_leaked``
    1. Row by row (in the stream): no masked value equals its own source value.
    2. Column by column, for transformers with disjoint output spaces (e-mail, name, text, IP,
       hash): no value in the copy equals ANY production value of that column. Both sides are
       compared through HMAC-SHA256 digests under the masking key, computed here on the production
       side, so raw values are never collected or shipped anywhere.
    3. Detectors in columns marked ``keep``: e-mail addresses, E.164 phone numbers and payment
       card numbers (Luhn-valid) are findings, because ``keep`` on such a column is the classic
       mistake.
``constraints_hold``
    Every primary key, unique and foreign key constraint (and unique index) of the source exists,
    validated, in the copy: they were created after the data was loaded, so their presence means
    the masked data satisfies them.
``row_counts_match``
    Every table holds exactly the rows of the source backup's manifest.

A copy that fails any of them is never stored: encrypted to the development key, it would be
readable by exactly the people it must not reach.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dbprotect.core.sanitize.coverage import ColumnInfo
from dbprotect.core.sanitize.rules import RuleSet
from dbprotect.core.sanitize.stream import TableStats
from dbprotect.core.sanitize.transformers import DISJOINT_KINDS
from dbprotect.core.store.manifest import Manifest

NO_PII_LEAKED = "no_pii_leaked"
CONSTRAINTS_HOLD = "constraints_hold"
ROW_COUNTS_MATCH = "row_counts_match"
BLOCKING_CHECKS = (NO_PII_LEAKED, CONSTRAINTS_HOLD, ROW_COUNTS_MATCH)

_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
_PHONE = r"\+[1-9][0-9]{7,14}"
_CARD = r"(^|[^0-9])([0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{1,7})([^0-9]|$)"
_TEXTUAL = re.compile(r"^(text|character|citext|json|jsonb)")


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "metrics": self.metrics}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _distinct_digests(conn: psycopg.Connection, table: str, column: str, key: bytes) -> set[bytes]:
    schema, _, name = table.partition(".")
    query = sql.SQL("COPY (SELECT DISTINCT {}::text FROM {} WHERE {} IS NOT NULL) TO STDOUT").format(
        sql.Identifier(column), sql.Identifier(schema, name), sql.Identifier(column))
    found: set[bytes] = set()
    with conn.cursor().copy(query) as copy:
        for chunk in copy:
            found.add(hmac.digest(key, b"leak\0" + bytes(chunk), "sha256")[:16])
    return found


def keep_column_findings(conn: psycopg.Connection, columns: dict[str, list[ColumnInfo]], rules: RuleSet) -> list[str]:
    """Personal data detected in ``keep`` columns of the copy: one finding per column and kind."""
    findings = []
    for table, infos in sorted(columns.items()):
        schema, _, name = table.partition(".")
        for info in infos:
            rule = rules.rule(table, info.name)
            if rule is None or rule.transformer != "keep" or not _TEXTUAL.match(info.type):
                continue
            col = sql.SQL("{}::text").format(sql.Identifier(info.name))
            emails, phones, cards = conn.execute(sql.SQL(
                "SELECT count(*) FILTER (WHERE {c} ~ %s), count(*) FILTER (WHERE {c} ~ %s), "
                "(array_agg(substring({c} from %s)) FILTER (WHERE {c} ~ %s))[1:1000] FROM {t}").format(
                c=col, t=sql.Identifier(schema, name)), (_EMAIL, _PHONE, _CARD, _CARD)).fetchone()  # type: ignore[misc]
            luhn = sum(1 for text in cards or [] if text and luhn_ok(re.sub(r"[^0-9]", "", text)))
            where = f"{table}.{info.name} (keep)"
            if emails:
                findings.append(f"{where}: {emails} value(s) hold an e-mail address")
            if phones:
                findings.append(f"{where}: {phones} value(s) hold a phone number")
            if luhn:
                findings.append(f"{where}: {luhn} value(s) hold a payment card number")
    return findings


def no_pii_leaked(src: psycopg.Connection, dst: psycopg.Connection, columns: dict[str, list[ColumnInfo]],
                  rules: RuleSet, stats: list[TableStats], key: bytes) -> CheckResult:
    """See the module docstring; ``key`` is the masking key (digests never leave this function)."""
    problems = [f"{s.table}.{column}: {count} masked value(s) equal their source value"
                for s in stats for column, count in s.unchanged.items() if count]
    compared = 0
    for table, infos in sorted(columns.items()):
        for info in infos:
            rule = rules.rule(table, info.name)
            if rule is None or rule.transformer not in DISJOINT_KINDS:
                continue
            production = _distinct_digests(src, table, info.name, key)
            copy = _distinct_digests(dst, table, info.name, key)
            compared += len(copy)
            shared = len(production & copy)
            if shared:
                problems.append(f"{table}.{info.name}: {shared} value(s) of the copy occur in production")
    findings = keep_column_findings(dst, columns, rules)
    problems += findings
    detail = "; ".join(problems) if problems else (
        f"no masked value equals its source; {compared} distinct masked values share none with production; "
        "no e-mail, phone or card number in keep columns")
    return CheckResult(NO_PII_LEAKED, not problems, detail,
                       {"problems": len(problems), "keep_column_findings": len(findings), "compared_values": compared})


_CONSTRAINTS = """
    SELECT format('%s %s (%s)', conrelid::regclass, conname, contype), convalidated FROM pg_constraint
    WHERE contype IN ('p', 'u', 'f')
      AND connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    UNION ALL
    SELECT format('%s unique index %s', indrelid::regclass, indexrelid::regclass), indisvalid FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.indisunique AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
"""


def constraints_hold(src: psycopg.Connection, dst: psycopg.Connection) -> CheckResult:
    expected = dict(src.execute(_CONSTRAINTS).fetchall())
    found = dict(dst.execute(_CONSTRAINTS).fetchall())
    missing = sorted(set(expected) - set(found))
    invalid = sorted(name for name, valid in found.items() if not valid and expected.get(name, False))
    problems = [f"missing {name}" for name in missing] + [f"not valid: {name}" for name in invalid]
    detail = "; ".join(problems[:10]) if problems else (
        f"{len(found)} primary key, unique and foreign key constraints and unique indexes hold")
    return CheckResult(CONSTRAINTS_HOLD, not problems, detail, {"constraints": len(found), "problems": len(problems)})


def row_counts_match(dst: psycopg.Connection, manifest: Manifest, expected_tables: list[str],
                     subset: dict[str, int] | None = None) -> CheckResult:
    """Every table holds the rows of the source backup, or of the subset plan for subset tables."""
    problems = []
    total = 0
    subset = subset or {}
    for table in expected_tables:
        schema, _, name = table.partition(".")
        (rows,) = dst.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()  # type: ignore[misc]
        total += rows
        record = manifest.tables.get(table)
        expected = subset.get(table, record.rows if record is not None else None)
        if expected is not None and expected != rows:
            source = "the subset plan" if table in subset else "the source backup"
            problems.append(f"{table}: {rows} rows, {source} has {expected}")
    where = f", {len(subset)} of them subset" if subset else ""
    detail = "; ".join(problems[:10]) if problems else (
        f"{len(expected_tables)} tables{where}, {total} rows, as planned from the source")
    return CheckResult(ROW_COUNTS_MATCH, not problems, detail, {"rows": total, "tables": len(expected_tables)})
