"""The blocking checks on a sanitized copy, evaluated on the production side before it is stored.

``no_pii_leaked``
    1. Row by row (in the stream): no masked value equals its own source value.
    2. Value by value (:func:`production_fingerprints` before the stream, :func:`copy_findings`
       after it): keyed fingerprints of every normalized form of every value of every personal
       column of production (a rule other than ``keep``, ``date`` and ``number``; inside JSON
       documents the masked paths' leaves) are collected in an exact set; then every text-like
       value of every column of the copy, masked or ``keep``, resolved by base type (domains,
       arrays at any depth, composites, ``hstore``, JSON leaves, :mod:`.leaves`), is fingerprinted
       the same way. A hit names table, column and count. Only personal source columns feed the
       filter, so a postal code or a status word shared by chance with another table is no finding.
    3. Detectors in ``keep`` columns (same type-aware reading): e-mail addresses, phone numbers as
       people write them (separators, brackets) and payment card numbers (13-19 digits, Luhn;
       a ``+`` makes it a phone, never a card).
``constraints_hold``
    Every primary key, unique and foreign key constraint (and unique index) of the source exists,
    validated, in the copy: they were created after the data was loaded, so their presence means
    the masked data satisfies them. ``NOT VALID`` foreign keys and checks (recreated unchecked) are
    validated in both databases, rolled back: one the source satisfies and the copy breaks fails.
``row_counts_match``
    Every table holds exactly the rows of the source backup's manifest; a table missing from the
    copy or from the manifest fails.

A copy that fails any of them is never stored: encrypted to the development key, it would be
readable by exactly the people it must not reach.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Set
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from dbprotect.core.sanitize import parallel
from dbprotect.core.sanitize.copy_out import copy_rows
from dbprotect.core.sanitize.coverage import ColumnInfo
from dbprotect.core.sanitize.fingerprints import (
    NAME_PART_MIN,
    NAME_PART_SHARE,
    Added,
    Fingerprinter,
    FingerprintFilter,
    digit_forms,
    embedded_encoded_json,
    embedded_ipv4,
    embedded_name_spans,
    embedded_phone_runs,
    forms,
    json_leaves,
    json_text_leaves,
    looks_like_card,
    looks_like_email,
    looks_like_phone,
    may_hold_ipv4,
    may_hold_json_text,
    may_hold_name_spans,
    may_hold_phone_runs,
    one_word_part,
    production_value,
    value_fingerprints,
)
from dbprotect.core.sanitize.leaves import (
    TypeCatalog,
    base_type,
    copy_bytes_are_textsend,
    leaf_query,
    plain_text_columns,
    unique_columns,
)
from dbprotect.core.sanitize.rules import ColumnRule, RuleSet
from dbprotect.core.sanitize.stream import TableStats
from dbprotect.core.sanitize.transformers import SanitizeError, copy_unescape, json_path_rules, output_shape
from dbprotect.core.store.manifest import Manifest

NO_PII_LEAKED = "no_pii_leaked"
CONSTRAINTS_HOLD = "constraints_hold"
ROW_COUNTS_MATCH = "row_counts_match"
BLOCKING_CHECKS = (NO_PII_LEAKED, CONSTRAINTS_HOLD, ROW_COUNTS_MATCH)

@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "metrics": self.metrics}


#: Rules whose source values are not fingerprinted: ``keep`` (declared not personal) and the noise
#: transformers (dates and amounts collide by chance with every other date and amount).
NOT_FINGERPRINTED = frozenset({"keep", "date", "number"})
#: What each detector finds (its :class:`BatchFindings` count -> the words of a finding).
_DETECTED = {"emails": "an e-mail address", "phones": "a phone number", "cards": "a payment card number"}
#: False reports a clean build may expect (filter false-positive rate x lookups), printed with each check.
FALSE_REPORT_BUDGET = 1e-6


def _free_text(kind: str) -> bool:
    return kind == "text"


#: Rows fetched per round trip when reading values: the server-side cursor keeps memory bounded, and
#: fetching thousands of rows at once keeps the per-value cost in C (psycopg), not in a Python generator.
FETCH_ROWS = 20_000


def _fetched(conn: psycopg.Connection, query: sql.Composable) -> Iterator[list[tuple[Any, ...]]]:
    """``query``'s rows in batches of :data:`FETCH_ROWS` through a binary server-side cursor.

    Binary: a text value arrives as the bytes COPY would send (``textsend``), decoded here as
    UTF-8 with replacement whatever the database's encoding, as production's side is.
    """
    with conn.transaction(), conn.cursor(name="dbprotect_values", binary=True) as cursor:
        cursor.execute(query)
        while batch := cursor.fetchmany(FETCH_ROWS):
            yield batch


def _counted_batches(conn: psycopg.Connection, query: sql.Composable) -> Iterator[list[tuple[str, int]]]:
    """(leaf, occurrences) from a ``counted`` :func:`~.leaves.leaf_query`, a fetched batch at a time."""
    wrapped = sql.SQL("SELECT textsend(v), n FROM ({}) counted(v, n)").format(query)
    for batch in _fetched(conn, wrapped):
        yield [(raw.decode("utf-8", "replace"), count) for raw, count in batch]


def _line_batches(conn: psycopg.Connection, query: sql.Composable) -> Iterator[list[str]]:
    """:func:`_lines` a fetched batch at a time (for :meth:`.Fingerprinter.many`)."""
    wrapped = sql.SQL("SELECT textsend(v) FROM ({}) lines(v) WHERE v IS NOT NULL").format(query)
    for batch in _fetched(conn, wrapped):
        yield [raw.decode("utf-8", "replace") for (raw,) in batch]


def _lines(conn: psycopg.Connection, query: sql.Composable) -> Iterator[str]:
    """The single text column of ``query``'s rows (NULLs skipped)."""
    wrapped = sql.SQL("SELECT textsend(v) FROM ({}) lines(v) WHERE v IS NOT NULL").format(query)
    for batch in _fetched(conn, wrapped):
        for (raw,) in batch:
            yield raw.decode("utf-8", "replace")


def _json_leaves(node: Any, parts: list[str]) -> Iterator[str]:
    """The scalar leaves under a dotted path of a JSON document (``*`` any key or item), as the json transformer
    walks it; under the path, every scalar leaf (not the keys: field names a masked subtree holds are no
    personal values), walked by :func:`~.fingerprints.json_leaves` (a stack, whatever the depth)."""
    if not parts:
        yield from json_leaves(node, keys=False)
        return
    head, rest = parts[0], parts[1:]
    if isinstance(node, dict):
        for key in (list(node) if head == "*" else [head] if head in node else []):
            yield from _json_leaves(node[key], rest)
    elif isinstance(node, list) and (head == "*" or head.isdigit()):
        for i in (range(len(node)) if head == "*" else [int(head)] if int(head) < len(node) else []):
            yield from _json_leaves(node[i], rest)


def masked_json_paths(rule: ColumnRule) -> list[list[str]]:
    """The parts of every path a json rule masks (a path whose transformer is ``keep`` is left as it is)."""
    return [parts for parts, path_rule in json_path_rules(rule.options().get("paths") or {})
            if path_rule.transformer != "keep"]


def _json_paths(rule: ColumnRule) -> list[tuple[list[str], str]]:
    """(path parts, transformer) of a json rule's paths whose values are fingerprinted."""
    return [(parts, path_rule.transformer) for parts, path_rule in json_path_rules(rule.options().get("paths") or {})
            if path_rule.transformer not in NOT_FINGERPRINTED]


def fingerprint_capacity(columns: dict[str, list[ColumnInfo]], rules: RuleSet, rows: dict[str, int]) -> int:
    """How many fingerprints the filter is sized for: per row of a personal column, 5 for a phone (4 forms:
    digits with and without prefix; its tail, :func:`~.fingerprints.phone_tails`), 16 per JSON document,
    2 otherwise (a folded form, a compact one).

    An e-mail, a name or an address has one form or two (measured: 1.5 per value over the bench's
    columns); sizing for 4 made the 2 M-user filter 173 MB. Exceeding the capacity only raises the
    false-positive rate (printed, computed from the entries held), which can only fail the check.
    """
    per_value = {"phone": 5, "json": 16}
    total = 0
    for table, infos in columns.items():
        for info in infos:
            rule = rules.rule(table, info.name)
            if rule is not None and rule.transformer not in NOT_FINGERPRINTED:
                total += rows.get(table, 1000) * per_value.get(rule.transformer, 2)
    return total


def production_fingerprints(src: psycopg.Connection, columns: dict[str, list[ColumnInfo]], rules: RuleSet,
                            fingerprinter: Fingerprinter, capacity: int) -> FingerprintFilter:
    """The fingerprints of every normalized form of every distinct value of every personal column of ``src``.

    Personal: a rule other than those in :data:`NOT_FINGERPRINTED`; for ``json`` rules, the leaves
    under the masked paths. Values are read by base type (:mod:`.leaves`): array elements, composite
    fields, hstore keys and values, JSON leaves one by one. A table's scalar personal columns (text
    and domains over it, and types that are not text-like, read as their text form) are read
    together in one ``COPY`` (:func:`_copied_fingerprints`).
    """
    catalog = TypeCatalog(src)
    found = FingerprintFilter(capacity, shapes=output_shapes(rules))
    utf8 = copy_bytes_are_textsend(src)
    for table, infos in sorted(columns.items()):
        schema, _, name = table.partition(".")
        plain = plain_text_columns(src, table) if utf8 else set()
        copied: list[tuple[str, ColumnRule]] = []
        for info in infos:
            rule = rules.rule(table, info.name)
            if rule is None or rule.transformer in NOT_FINGERPRINTED:
                continue
            if rule.transformer == "json":
                paths = _json_paths(rule)
                query = sql.SQL("SELECT DISTINCT {}::text FROM {}").format(sql.Identifier(info.name),
                                                                          sql.Identifier(schema, name))
                for text in _lines(src, query):
                    try:
                        doc = json.loads(text)
                        for parts, kind in paths:
                            for leaf in _json_leaves(doc, parts):
                                found.add_forms(fingerprinter, list(forms(leaf, free_text=_free_text(kind))))
                    except ValueError:
                        continue
                    except RecursionError:  # its leaves unread would weaken the check: the build stops instead
                        raise SanitizeError(f"{table}.{info.name}: a JSON document is nested too deeply to read its "
                                            "personal values; nothing was stored",
                                            hint="the json transformer cannot read it either: flatten such documents "
                                                 "or mask the column with another transformer") from None
                continue
            leaves = leaf_query(catalog, table, info.name)
            if utf8 and (info.name in plain or leaves is None):
                copied.append((info.name, rule))
                continue
            query = leaves or sql.SQL(
                "SELECT DISTINCT format('%s', {c}) COLLATE \"C\" FROM {t} WHERE {c} IS NOT NULL").format(
                c=sql.Identifier(info.name), t=sql.Identifier(schema, name))
            for texts in _line_batches(src, query):
                _add_values(found, fingerprinter, rule, texts)
        if copied:
            _copied_fingerprints(src, table, copied, fingerprinter, found)
    found.flush()
    return found


def output_shapes(rules: RuleSet) -> set[str]:
    """The output shapes of every transformer the rules use (:func:`~.transformers.output_shape`): production
    takes their census as it is fingerprinted."""
    return {shape for columns in rules.tables.values() for rule in columns.values()
            if (shape := output_shape(rule)) is not None}


def _add_values(found: FingerprintFilter, fingerprinter: Fingerprinter, rule: ColumnRule, texts: list[str]) -> None:
    """Fingerprint a batch of one personal column's values (distinct or not) into ``found``."""
    found.add_pairs(*value_fingerprints(fingerprinter, texts, **_value_kind(rule), shapes=found.shapes))


def _value_kind(rule: ColumnRule) -> dict[str, bool]:
    """How :func:`~.fingerprints.value_fingerprints` treats the values of a column with this rule."""
    return {"free_text": _free_text(rule.transformer),
            "name_part": rule.transformer == "name" and rule.options().get("part") in ("first", "last")}


def copied_batch_fingerprints(fingerprinter: Fingerprinter, kinds: list[dict[str, bool]], data: bytes,
                              shapes: tuple[str, ...] = ()) -> Added:
    """The production fingerprints of a batch of COPY rows (``data``: whole rows, text format) of the
    columns whose :func:`_value_kind` are ``kinds``: split into fields by two C calls, each column's
    values made distinct in the batch (a name column repeats a few values millions of times), unescaped
    only when they hold a backslash, decoded in one call; with the census of the output ``shapes`` over
    their forms (:func:`~.fingerprints.shape_census`)."""
    width = len(kinds)
    fields = data.replace(b"\n", b"\t").split(b"\t")
    count = (len(fields) - 1) // width
    pairs: list[np.ndarray] = []
    tail_keys: list[int] = []
    lengths: set[int] = set()
    seen: set[str] = set()
    for index, kind in enumerate(kinds):
        values = dict.fromkeys(fields[index:count * width:width])
        values.pop(b"\\N", None)
        if values:
            # Decoded in one call: no PostgreSQL text holds a NUL, and a NUL ends any broken UTF-8
            # sequence before it, so each value decodes as it would alone.
            joined = b"\0".join(values)
            if b"\\" in joined:  # an escaped character somewhere: unescaped value by value
                joined = b"\0".join(copy_unescape(raw) if b"\\" in raw else raw for raw in values)
            some, keys, some_lengths, census = value_fingerprints(
                fingerprinter, joined.decode("utf-8", "replace").split("\0"), **kind, shapes=shapes)
            pairs.append(some)
            tail_keys += keys
            lengths |= some_lengths
            seen |= census[1] if census is not None else set()
    return ((np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.uint64)), tail_keys, lengths,
            (shapes, frozenset(seen)))


_worker_fingerprinter: Fingerprinter | None = None


def _worker_start(derived_key: bytes) -> None:
    global _worker_fingerprinter
    _worker_fingerprinter = Fingerprinter(b"", derived=derived_key)


def _worker_batch(kinds: list[dict[str, bool]], data: bytes, shapes: tuple[str, ...]) -> Added:
    assert _worker_fingerprinter is not None, "started by _worker_start"
    return copied_batch_fingerprints(_worker_fingerprinter, kinds, data, shapes)


def _copied_fingerprints(src: psycopg.Connection, table: str, copied: list[tuple[str, ColumnRule]],
                         fingerprinter: Fingerprinter, found: FingerprintFilter, workers: int | None = None) -> None:
    """One ``COPY`` of a table's scalar personal columns, fingerprinted :data:`FETCH_ROWS` rows at a time
    (:func:`copied_batch_fingerprints`), by ``workers`` processes (default :func:`.parallel.workers_for`).

    Why one COPY: a ``SELECT DISTINCT`` per column made the server sort every column (2 M e-mails:
    3.3 s; the four personal columns of the bench: 10.4 s, one COPY of them 2.6 s). COPY writes a
    value with its type's output function, as ``format('%s', …)`` does. Why workers: normalizing and
    hashing is Python work, one core's; the workers get the derived fingerprint key
    (:attr:`Fingerprinter.derived_key`), never the masking key, and return arrays in order.
    """
    schema, _, name = table.partition(".")
    query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
        sql.SQL(", ").join(sql.Identifier(column) for column, _ in copied), sql.Identifier(schema, name))
    kinds = [_value_kind(rule) for _, rule in copied]
    workers = parallel.workers_for(src, table) if workers is None else workers
    pool = (parallel.fork_pool(workers, initializer=_worker_start, initargs=(fingerprinter.derived_key,))
            if workers else None)
    pending: deque[Future[Added]] = deque()

    def settle(rows: list[bytes]) -> None:
        data = b"".join(rows)
        if pool is None:
            found.add_pairs(*copied_batch_fingerprints(fingerprinter, kinds, data, found.shapes))
            return
        pending.append(pool.submit(_worker_batch, kinds, data, found.shapes))
        while len(pending) > parallel.IN_FLIGHT:
            found.add_pairs(*parallel.collect(pending.popleft(), "fingerprinting production"))

    try:
        rows: list[bytes] = []
        with src.cursor().copy(query) as reader:
            for row in copy_rows(reader):
                rows.append(bytes(row))
                if len(rows) >= FETCH_ROWS:
                    settle(rows)
                    rows.clear()
        if rows:
            settle(rows)
        while pending:
            found.add_pairs(*parallel.collect(pending.popleft(), "fingerprinting production"))
    except BrokenProcessPool:  # raised by submit once a worker died
        raise parallel.died("fingerprinting production") from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def fixed_fingerprints(rules: RuleSet, fingerprinter: Fingerprinter) -> dict[tuple[str, str], set[int]]:
    """The rule file's own constants (``fixed`` values), per (table, column): public by declaration in
    the column whose rule writes them, never a finding there; anywhere else they are checked like any value."""
    found: dict[tuple[str, str], set[int]] = {}
    for table, columns in rules.tables.items():
        for column, rule in columns.items():
            value = rule.options().get("value")
            if rule.transformer == "fixed" and value is not None:
                found[(table, column)] = set(fingerprinter.all(str(value)))
    return found


def copy_findings(dst: psycopg.Connection, columns: dict[str, list[ColumnInfo]], rules: RuleSet,
                  fingerprinter: Fingerprinter, production: FingerprintFilter,
                  waived: list[str] | None = None,
                  stats: list[TableStats] | None = None) -> tuple[list[str], dict[str, float]]:
    """Every text-like value of every column of the copy against the production fingerprints and the detectors.

    Returns the findings (table, column, count; never a value) and the metrics. Findings on a
    ``keep`` column with a ``waiver:`` go to ``waived`` (when given) instead.

    A masked column the stream checked as it wrote it (``stats``: :attr:`TableStats.written`) is not
    read back when its table is :func:`untouched_since_stream`, no written value was a production
    name part (that finding depends on the column's distinct values, counted here) and every written
    value had the shape its type stores unchanged (an ``inet`` column's: canonical IPv4); its hits count
    as they would here. Keep columns and every other column are always read from the copy.
    """
    catalog = TypeCatalog(dst)
    fixed_by_column = fixed_fingerprints(rules, fingerprinter)
    findings: list[str] = []
    scanned = columns_scanned = detector_findings = written_columns = lookups = 0
    by_table = {s.table: s for s in stats or []}
    for table, infos in sorted(columns.items()):
        table_stats = by_table.get(table)
        unique_in_copy = unique_columns(dst, table)
        decided: dict[str, list[int]] = {}
        if table_stats is not None and table_stats.written and untouched_since_stream(dst, table_stats):
            decided = {column: counts for column, counts in table_stats.written.items()
                       if not counts[1] and not counts[2]}
        for info in infos:
            json_rule = rules.rule(table, info.name)
            if json_rule is not None and json_rule.transformer == "json":  # checked as written or read back
                for count, what in _outside_json_paths(dst, table, info.name, json_rule):
                    detector_findings += 1
                    findings.append(f"{table}.{info.name}: {count} value(s) hold {what} outside the rule's JSON paths")
            if info.name in decided:
                hits = decided[info.name][0]
                columns_scanned += 1
                written_columns += 1
                if hits:
                    findings.append(f"{table}.{info.name}: {hits} value(s) equal personal values of production")
                continue
            rule = rules.rule(table, info.name)
            keep = rule is None or rule.transformer == "keep"
            # A composite's text fields can repeat between distinct (unique) composites: grouped.
            unique = info.name in unique_in_copy and getattr(base_type(catalog, table, info.name), "kind", "c") != "c"
            query = leaf_query(catalog, table, info.name, counted=True, unique=unique)
            if query is None:
                # Not text-like (inet, bigint, uuid, numeric, …): production fingerprints such columns
                # as their text form (production_fingerprints), so the copy is read the same way; a
                # keep inet column holding the real addresses of a masked one must not pass.
                schema, _, name = table.partition(".")
                query = sql.SQL("SELECT v COLLATE \"C\", {n} FROM (SELECT format('%s', {c}) AS v FROM {t} WHERE {w}) "
                                "leaves WHERE v IS NOT NULL {g}").format(
                    c=sql.Identifier(info.name), t=sql.Identifier(schema, name),
                    n=sql.SQL("1" if unique else "count(*)"), g=sql.SQL("" if unique else "GROUP BY 1"),
                    w=_integer_filter(catalog, table, info.name, production, keep))
            fixed = fixed_by_column.get((table, info.name), frozenset())
            columns_scanned += 1
            hits = emails = phones = cards = distinct = parts = part_rows = embedded = addresses = encoded = names = 0
            documents = 0
            for counts in _read_back(dst, query, fingerprinter, production, fixed, keep):
                distinct += counts.distinct
                lookups += counts.lookups
                hits += counts.hits
                parts += counts.parts
                part_rows += counts.part_rows
                emails += counts.emails
                phones += counts.phones
                cards += counts.cards
                embedded += counts.embedded
                addresses += counts.embedded_addresses
                encoded += counts.encoded
                names += counts.embedded_names
                documents += counts.json_text
            scanned += distinct
            where = f"{table}.{info.name}" + (" (keep)" if keep else "")
            target = findings
            if keep and rule is not None and rule.waiver and waived is not None:
                where, target = f"{table}.{info.name} (keep, waived: {rule.waiver})", waived
            if hits:
                target.append(f"{where}: {hits} value(s) equal personal values of production")
            if embedded:
                target.append(f"{where}: {embedded} value(s) hold a phone number of production inside longer text")
            if addresses:
                target.append(f"{where}: {addresses} value(s) hold an IP address of production inside longer text")
            if documents:
                target.append(f"{where}: {documents} value(s) hold personal values of production inside JSON text")
            if names:
                target.append(f"{where}: {names} value(s) hold a name of production inside longer text")
            if encoded:
                target.append(f"{where}: {encoded} value(s) hold personal values of production inside base64-encoded "
                              "JSON (a token's claims)")
            if parts >= max(NAME_PART_MIN, NAME_PART_SHARE * distinct):
                target.append(f"{where}: {part_rows} value(s) equal first or last names of production "
                                f"({parts} of {distinct} distinct values)")
            for count, what in ((emails, _DETECTED["emails"]), (phones, _DETECTED["phones"]),
                                (cards, _DETECTED["cards"])):
                if count:
                    detector_findings += 1
                    target.append(f"{where}: {count} value(s) hold {what}")
    return findings, {"scanned_values": scanned, "scanned_columns": columns_scanned, "fingerprint_lookups": lookups,
                      "keep_column_findings": detector_findings, "columns_checked_as_written": written_columns}


_INTEGERS = frozenset({"int2", "int4", "int8"})
#: Digits of a payment card (looks_like_card): a keep integer column's values this long meet the detectors.
_CARD_LENGTHS = (13, 19)


def _outside_json_paths(dst: psycopg.Connection, table: str, column: str, rule: ColumnRule) -> list[tuple[int, str]]:
    """(values, what) the detectors find in a json rule's column outside the paths it masks.

    Why: those parts of each document are kept as they are, as a keep column is; a path the rule forgot
    (``$.contact.email`` beside a masked ``$.name``, or a key added since) holds personal data that no
    production fingerprint knows when no other column holds it too. The masked paths' outputs (the email
    transformer writes e-mail addresses) are left out, so only what the rule left is judged.
    """
    masked = masked_json_paths(rule)
    schema, _, name = table.partition(".")
    query = sql.SQL("SELECT {c}::text, count(*) FROM {t} WHERE {c} IS NOT NULL GROUP BY 1").format(
        c=sql.Identifier(column), t=sql.Identifier(schema, name))
    found = dict.fromkeys(_DETECTED, 0)
    for batch in _counted_batches(dst, query):
        for text, count in batch:
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than json parses: judged whole
                doc = text
            kinds = {kind for leaf in json_leaves(doc, masked) if (kind := detected_kind(leaf)) is not None}
            for kind in kinds:
                found[kind] += count
    return [(count, _DETECTED[kind]) for kind, count in found.items() if count]


def _integer_filter(catalog: TypeCatalog, table: str, column: str, production: FingerprintFilter,
                    keep: bool) -> sql.Composable:
    """For an integer column: a condition keeping the values that can be findings, the rest never leave the
    server (an ID or a count column of millions of rows was read back and hashed value by value).

    The text of an integer is ``-?[0-9]+``. Its forms are that text and, at nine digits or more, its digits:
    so it can equal only a production form of digits with at most a leading ``-``, of its length or one
    less (:attr:`~.fingerprints.FingerprintFilter.integer_lengths`, collected with every form). It is never
    a name part (it has digits). Of the keep detectors only the card number can match it (no ``@``, no
    ``+`` or separator for a phone), at 13 to 19 digits. When the set does not know its forms' lengths
    (fingerprints added without them), every value is read.

    The lengths become ranges of the column's values (:func:`integer_text_ranges`): a primary key or any
    index on the column answers them without reading the table (an ID column of 2 M rows: 0.5 s to 0).
    """
    found = base_type(catalog, table, column)
    if found is None or found.name not in _INTEGERS or found.schema != "pg_catalog":
        return sql.SQL("TRUE")
    if not production.integer_lengths_complete:
        return sql.SQL("TRUE")
    lengths = production.integer_lengths | {length + 1 for length in production.integer_lengths}
    if keep:
        lengths |= set(range(_CARD_LENGTHS[0], _CARD_LENGTHS[1] + 1))
    ranges = integer_text_ranges(lengths)
    if not ranges:
        return sql.SQL("FALSE")
    return sql.SQL("({})").format(sql.SQL(" OR ").join(
        sql.SQL("{} BETWEEN {} AND {}").format(sql.Identifier(column), sql.Literal(low), sql.Literal(high))
        for low, high in ranges))


_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1


def integer_text_ranges(lengths: Set[int]) -> list[tuple[int, int]]:
    """The bigint ranges whose values' text (``-?[0-9]+``, no leading zero) is one of ``lengths`` characters
    long, merged where they meet, in order."""
    ranges: list[tuple[int, int]] = []
    for length in sorted(lengths):
        if length < 1:
            continue
        ranges.append((0 if length == 1 else 10 ** (length - 1), 10 ** length - 1))  # no sign: ``length`` digits
        if length >= 2:  # "-" and length - 1 digits
            ranges.append((-(10 ** (length - 1) - 1), -1 if length == 2 else -(10 ** (length - 2))))
    merged: list[tuple[int, int]] = []
    for low, high in sorted((max(low, _INT8_MIN), min(high, _INT8_MAX)) for low, high in ranges
                            if low <= _INT8_MAX and high >= _INT8_MIN):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


@dataclass
class BatchFindings:
    """What one batch of a read-back column holds (:func:`batch_findings`): counts, never values."""

    distinct: int = 0
    lookups: int = 0
    hits: int = 0
    parts: int = 0
    part_rows: int = 0
    emails: int = 0
    phones: int = 0
    cards: int = 0
    #: Values holding a production phone number inside longer text (keep columns: embedded_phone_runs).
    embedded: int = 0
    #: Values holding a production IPv4 address inside longer text (keep columns: embedded_ipv4).
    embedded_addresses: int = 0
    #: Values holding a production value inside base64-encoded JSON (keep columns: embedded_encoded_json).
    encoded: int = 0
    #: Values holding a production name inside longer text (keep columns: embedded_name_spans).
    embedded_names: int = 0
    #: JSON documents written as text one of whose leaves or keys is a production value (json_text_leaves).
    json_text: int = 0


def batch_findings(fingerprinter: Fingerprinter, production: FingerprintFilter, batch: list[tuple[str, int]],
                   fixed: Set[int], keep: bool) -> BatchFindings:
    """The findings of a batch of (value, occurrences) of one column of the copy: production values,
    production name parts, and (``keep``) the detectors. A pure function, so workers can run it."""
    counts = BatchFindings(distinct=len(batch))
    # Every form of the whole batch at once: when none is in the set (the usual case) no
    # value of the batch is a hit, and the per-value forms are never computed.
    fingerprints = fingerprinter.many([leaf for leaf, _ in batch])
    counts.lookups += len(fingerprints)
    maybe = production.any_of(fingerprints)
    undecided = []
    for leaf, count in batch:
        if maybe:
            hit, lookups = production_value(production, fingerprinter, leaf, fixed)
            counts.lookups += lookups
            if hit:
                counts.hits += count
                continue
        if (part := one_word_part(fingerprinter, leaf)) is not None:
            undecided.append((part, count))
    # Any column: a document written as text (a keep column of JSON, a json rule's text column) by its leaves.
    _count_embedded(fingerprinter, production, batch, fixed, counts, may_hold_json_text, json_text_leaves, "json_text")
    if undecided:  # the name-part test of the batch, in one lookup
        counts.lookups += len(undecided)
        for (_, count), hit in zip(undecided, production.hits([p for p, _ in undecided]).tolist(), strict=True):
            if hit:
                counts.parts += 1
                counts.part_rows += count
    if keep:
        detected = set()
        for row, (leaf, count) in enumerate(batch):
            kind = detected_kind(leaf)
            if kind is None:
                continue
            setattr(counts, kind, getattr(counts, kind) + count)
            detected.add(row)
        _embedded_phones(fingerprinter, production, batch, fixed, detected, counts)
        _count_embedded(fingerprinter, production, batch, fixed, counts, may_hold_ipv4, embedded_ipv4,
                        "embedded_addresses")
        _encoded_documents(fingerprinter, production, batch, fixed, detected, counts)
        _count_embedded(fingerprinter, production, batch, fixed, counts, may_hold_name_spans, embedded_name_spans,
                        "embedded_names")
    return counts


def _embedded(fingerprinter: Fingerprinter, production: FingerprintFilter, batch: list[tuple[str, int]],
              fixed: Set[int], counts: BatchFindings, parts_of: Callable[[str], list[str]],
              forms_of: Callable[[str], Iterable[str]]) -> Iterator[tuple[int, int, list[str], bool]]:
    """(row, occurrences, parts, whether a part is a production value) of each value of a keep column's batch that
    holds parts (``parts_of``: phone runs, addresses, an encoded object's leaves, name spans), each part looked up
    by its ``forms_of`` (not a rule constant); the lookups are counted.

    The batch's distinct parts are normalized once, their distinct forms hashed and looked up at once: a lookup
    costs ~100 µs of fixed numpy work, and parts repeat across a batch's values (a name, a greeting)."""
    holding = [(row, count, parts) for row, (leaf, count) in enumerate(batch) if (parts := parts_of(leaf))]
    if not holding:
        return
    distinct_parts = list(dict.fromkeys(part for _, _, parts in holding for part in parts))
    part_forms = [list(forms_of(part)) for part in distinct_parts]
    distinct_forms = list(dict.fromkeys(form for some in part_forms for form in some))
    fingerprints = fingerprinter.of_many(distinct_forms) if distinct_forms else []
    counts.lookups += len(fingerprints)
    known_forms = {form for form, fingerprint, hit in zip(distinct_forms, fingerprints,
                                                          production.hits(fingerprints).tolist(), strict=True)
                   if hit and fingerprint not in fixed}
    known_parts = {part for part, some in zip(distinct_parts, part_forms, strict=True)
                   if any(form in known_forms for form in some)}
    for row, count, parts in holding:
        yield row, count, parts, any(part in known_parts for part in parts)


def _encoded_leaves(leaf: str) -> list[str]:
    """The leaves and keys of the JSON objects ``leaf`` holds base64-encoded
    (:func:`~.fingerprints.embedded_encoded_json`)."""
    if "eyJ" not in leaf:
        return []
    return [part for doc in embedded_encoded_json(leaf) for part in json_leaves(doc)]


def _encoded_documents(fingerprinter: Fingerprinter, production: FingerprintFilter, batch: list[tuple[str, int]],
                       fixed: Set[int], detected: set[int], counts: BatchFindings) -> None:
    """The JSON objects a keep column's values hold base64-encoded (tokens, cookies): a value one of whose leaves
    or keys is a production value counts in ``encoded``, and one a detector calls personal counts as that (unless
    a detector already counted the value)."""
    if "eyJ" not in "\0".join(leaf for leaf, _ in batch):  # one C search: a batch without an encoded object
        return
    for row, count, inside, known in _embedded(fingerprinter, production, batch, fixed, counts, _encoded_leaves,
                                               forms):
        if known:
            counts.encoded += count
        if row not in detected:
            kinds = {kind for part in inside if (kind := detected_kind(part)) is not None}
            for kind in sorted(kinds)[:1]:  # a value counts once, as the first kind found
                setattr(counts, kind, getattr(counts, kind) + count)


def detected_kind(leaf: str) -> str | None:
    """What a detector calls one value: ``emails``, ``cards``, ``phones`` (the :class:`BatchFindings` count it
    goes to), or None."""
    if looks_like_email(leaf):
        return "emails"
    if len(leaf) < 8:  # a phone number has 8 digits or more, a card 13: ids, codes, words
        return None
    if looks_like_card(leaf):
        return "cards"
    if looks_like_phone(leaf):
        return "phones"
    return None


def _count_embedded(fingerprinter: Fingerprinter, production: FingerprintFilter, batch: list[tuple[str, int]],
                    fixed: Set[int], counts: BatchFindings, may_hold: Callable[[list[str]], bool],
                    parts_of: Callable[[str], list[str]], field: str) -> None:
    """Count in ``field`` the values of a keep column's batch that hold a production value inside them, as
    ``parts_of`` finds the parts (:func:`~.fingerprints.embedded_ipv4`: addresses in a log line;
    :func:`~.fingerprints.embedded_name_spans`: a name in prose), when ``may_hold`` lets the batch through."""
    if not may_hold([leaf for leaf, _ in batch]):
        return
    for _, count, _, known in _embedded(fingerprinter, production, batch, fixed, counts, parts_of, forms):
        if known:
            setattr(counts, field, getattr(counts, field) + count)


def _embedded_phones(fingerprinter: Fingerprinter, production: FingerprintFilter, batch: list[tuple[str, int]],
                     fixed: Set[int], detected: set[int], counts: BatchFindings) -> None:
    """The phone numbers inside a keep column's longer values (:func:`~.fingerprints.embedded_phone_runs`): a
    value holding a production phone number in any writing (its runs' digit forms) counts in ``embedded``; one
    holding a run the phone detector knows counts as a phone number (unless a detector already counted the
    value)."""
    if not may_hold_phone_runs([leaf for leaf, _ in batch]):
        return
    for row, count, runs, known in _embedded(fingerprinter, production, batch, fixed, counts, embedded_phone_runs,
                                             digit_forms):
        if known:
            counts.embedded += count
        if row not in detected and any(map(looks_like_phone, runs)):
            counts.phones += count


#: A read-back column is checked by worker processes once it has given this many distinct values.
PARALLEL_VALUES = 100_000
_reader_state: tuple[Fingerprinter, FingerprintFilter] | None = None


def _worker_findings(batch: list[tuple[str, int]], fixed: Set[int], keep: bool) -> BatchFindings:
    assert _reader_state is not None, "set before the fork (_read_back)"
    return batch_findings(*_reader_state, batch, fixed, keep)


def _read_back(dst: psycopg.Connection, query: sql.Composable, fingerprinter: Fingerprinter,
               production: FingerprintFilter, fixed: Set[int], keep: bool) -> Iterator[BatchFindings]:
    """:func:`batch_findings` of every fetched batch of ``query`` (a counted leaf query).

    The first :data:`PARALLEL_VALUES` values are checked here; a column with more is handed to forked
    worker processes (at most 2, one per core), a batch each, while this process fetches the next:
    the per-value work is Python's, one core's. The workers inherit the production set (forked after
    it is complete, so its pages are shared, never copied) and return counts only.
    """
    global _reader_state
    seen = 0
    pool: ProcessPoolExecutor | None = None
    pending: deque[Future[BatchFindings]] = deque()
    cores = parallel.cores()
    try:
        for batch in _counted_batches(dst, query):
            seen += len(batch)
            if pool is None and seen > PARALLEL_VALUES and cores > 1:
                production.flush()  # sorted before the fork: the workers only read it
                _reader_state = (fingerprinter, production)
                pool = parallel.fork_pool(min(2, cores))
            if pool is None:
                yield batch_findings(fingerprinter, production, batch, fixed, keep)
                continue
            pending.append(pool.submit(_worker_findings, batch, fixed, keep))
            while len(pending) > parallel.IN_FLIGHT:
                yield parallel.collect(pending.popleft(), "checking the copy")
        while pending:
            yield parallel.collect(pending.popleft(), "checking the copy")
    except BrokenProcessPool:  # raised by submit once a worker died
        raise parallel.died("checking the copy") from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        _reader_state = None


def untouched_since_stream(dst: psycopg.Connection, stats: TableStats) -> bool:
    """Whether the copy's table holds exactly the rows the stream wrote, none changed since.

    Every row version carries the id of the transaction that wrote it (``xmin``): an UPDATE, an
    INSERT or a rewrite by anyone (a trigger, the post-data restore, another session) writes rows
    with another id, a DELETE lowers the count. So all rows carrying the stream's transaction id,
    as many as it wrote, means the stored values are the ones checked as written.
    """
    if stats.writer_xid is None:
        return False
    schema, _, name = stats.table.partition(".")
    row = dst.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE xmin::text::bigint <> %s) FROM {}").format(
        sql.Identifier(schema, name)), (stats.writer_xid,)).fetchone()
    return row is not None and row[0] == stats.rows and row[1] == 0


def no_pii_leaked(dst: psycopg.Connection, columns: dict[str, list[ColumnInfo]], rules: RuleSet,
                  stats: list[TableStats], fingerprinter: Fingerprinter, production: FingerprintFilter) -> CheckResult:
    """See the module docstring; ``production`` holds the fingerprints :func:`production_fingerprints` collected."""
    problems = [f"{s.table}.{column}: {count} masked value(s) equal their source value"
                for s in stats for column, count in s.unchanged.items() if count]
    waived: list[str] = []
    findings, metrics = copy_findings(dst, columns, rules, fingerprinter, production, waived, stats)
    problems += findings
    rate = production.false_positive_rate()
    # The question a false positive answers wrongly is "did this build leak?": a false report fails a clean
    # build (or retries a clean phone), so what matters is rate x every lookup of the build (read back and
    # in the stream), printed, budget at most FALSE_REPORT_BUDGET.
    in_stream = sum(s.lookups for s in stats)
    expected = rate * (metrics["fingerprint_lookups"] + in_stream)
    detail = "; ".join(problems + waived) if problems else (
        f"no masked value equals its source; {metrics['scanned_values']:,} distinct text values in "
        f"{metrics['scanned_columns']} columns of the copy ({metrics['columns_checked_as_written']} of them "
        "checked as the stream wrote them) share no fingerprint with "
        f"{production.entries:,} production fingerprints (exact set, 70 bits each, false-positive rate "
        f"{rate:.1e} per "
        f"lookup; {metrics['fingerprint_lookups']:,} lookups read back and {in_stream:,} in the stream: "
        f"{expected:.1e} false reports expected, budget {FALSE_REPORT_BUDGET:.0e}); "
        "no e-mail, phone or card number in keep columns" + "".join(f"; {w}" for w in waived))
    return CheckResult(NO_PII_LEAKED, not problems, detail,
                       {"problems": len(problems), "waived_findings": len(waived), **metrics,
                        "production_fingerprints": production.entries,
                        "filter_false_positive_rate": rate, "expected_false_reports": expected,
                        "in_stream_lookups": in_stream,
                        "filter_bytes": production.bytes})

_CONSTRAINTS = """
    SELECT format('%s %s (%s)', conrelid::regclass, conname, contype), convalidated FROM pg_constraint
    WHERE contype IN ('p', 'u', 'f')
      AND connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    UNION ALL
    SELECT format('%s unique index %s', indrelid::regclass, indexrelid::regclass), indisvalid FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.indisunique AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
"""


_NOT_VALID = """
    SELECT format('%s %s (%s)', conrelid::regclass, conname, contype), conrelid::regclass::text, conname
    FROM pg_constraint WHERE contype IN ('f', 'c') AND NOT convalidated
      AND connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
"""


def _validates(conn: psycopg.Connection, table: str, name: str) -> bool:
    """Whether ``VALIDATE CONSTRAINT`` succeeds; always rolled back (the scratch databases stay as they were)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                sql.SQL(table), sql.Identifier(name)))  # table: regclass text, quoted by PostgreSQL
        return True
    except psycopg.errors.IntegrityError:
        return False


def constraints_hold(src: psycopg.Connection, dst: psycopg.Connection) -> CheckResult:
    """Every constraint of the source is in the copy, as valid as there; and masking broke no NOT VALID one.

    The post-data restore stops at a violated constraint, so a *validated* one that arrived holds.
    A ``NOT VALID`` foreign key or check is recreated ``NOT VALID``: PostgreSQL checks no existing
    row against it, so masking could break it unseen. Each is validated in both databases (rolled
    back): one the source satisfies and the copy does not is a failure.
    """
    expected = dict(src.execute(_CONSTRAINTS).fetchall())
    found = dict(dst.execute(_CONSTRAINTS).fetchall())
    missing = sorted(set(expected) - set(found))
    invalid = sorted(name for name, valid in found.items() if not valid and expected.get(name, False))
    broken = sorted(label for label, table, name in dst.execute(_NOT_VALID).fetchall()
                    if not _validates(dst, table, name) and _validates(src, table, name))
    problems = ([f"missing {name}" for name in missing] + [f"not valid: {name}" for name in invalid]
                + [f"violated by the masked data (NOT VALID, the source satisfies it): {name}" for name in broken])
    detail = "; ".join(problems[:10]) if problems else (
        f"{len(found)} primary key, unique and foreign key constraints and unique indexes hold")
    return CheckResult(CONSTRAINTS_HOLD, not problems, detail, {"constraints": len(found), "problems": len(problems)})


def row_counts_match(dst: psycopg.Connection, manifest: Manifest, expected_tables: list[str],
                     subset: dict[str, int] | None = None) -> CheckResult:
    """Every table holds the rows of the source backup, or of the subset plan for subset tables.

    A table the copy lacks, or one the source backup's manifest does not list (so nothing says how
    many rows it should hold), is a failure: "as planned" must never mean "not looked at".
    """
    problems = []
    total = 0
    subset = subset or {}
    present = {f"{schema}.{name}" for schema, name in dst.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p')").fetchall()}
    for table in expected_tables:
        if table not in present:
            problems.append(f"{table}: missing from the copy")
            continue
        schema, _, name = table.partition(".")
        (rows,) = dst.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()  # type: ignore[misc]
        total += rows
        record = manifest.tables.get(table)
        expected = subset.get(table, record.rows if record is not None else None)
        if expected is None:
            problems.append(f"{table}: {rows} rows, the source backup's manifest does not list it")
        elif expected != rows:
            source = "the subset plan" if table in subset else "the source backup"
            problems.append(f"{table}: {rows} rows, {source} has {expected}")
    where = f", {len(subset)} of them subset" if subset else ""
    detail = "; ".join(problems[:10]) if problems else (
        f"{len(expected_tables)} tables{where}, {total} rows, as planned from the source")
    return CheckResult(ROW_COUNTS_MATCH, not problems, detail, {"rows": total, "tables": len(expected_tables)})
