"""The sanitizing stream: ``COPY table TO STDOUT`` → transformers → ``COPY table FROM STDIN``.

One table at a time, one pass, constant memory apart from what unique columns need: the rows
are read in COPY's text format, split on tabs, only the masked fields are unescaped, transformed
and escaped again, and the rows are written in batches to the sanitized database. The target
holds only the schema's tables at this point (indexes and constraints come after the data, as
``pg_restore`` does), which is what makes the load fast.

Unique columns: each output is remembered (per column, in Bloom filters: :class:`SeenOutputs`)
and a collision is resolved by asking the transformer again with the next attempt number, which
is deterministic; the chosen output is remembered on the (shared) transformer, so the same source
value in a table streamed later gets the same output.
Tables with unique masked columns are streamed first for that reason.

Outputs that can be real data: a masked phone number is a random number with the source's
prefix, so among millions one equals another person's real number. ``avoid`` (the production
fingerprints, collected before the stream) is asked for every output of those transformers
(:data:`AVOIDING_KINDS`), and an output it knows is retried like a unique collision.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from zlib import adler32 as _adler32
from zlib import crc32 as _crc32

import psycopg
from psycopg import sql
from rbloom import Bloom

from dbprotect.core.sanitize.coverage import ColumnInfo
from dbprotect.core.sanitize.fingerprints import NAME_PART, PRODUCTION_VALUE, WrittenCheck
from dbprotect.core.sanitize.leaves import copy_bytes_are_textsend, plain_text_columns
from dbprotect.core.sanitize.rules import RuleSet
from dbprotect.core.sanitize.transformers import (
    UNCHANGED_EXEMPT,
    Masker,
    MaskFunction,
    SanitizeError,
    copy_escape,
    copy_unescape,
)

BATCH_BYTES = 1 << 19
#: False-positive rate of each filter of :class:`SeenOutputs` (a false positive costs one retry).
SEEN_FALSE_POSITIVE_RATE = 1e-9
MAX_ATTEMPTS = 1000
#: Transformers whose outputs are checked against production values (``avoid``) and retried on a hit.
AVOIDING_KINDS = frozenset({"phone"})
#: Per transformer: how many first-attempt outputs are remembered (bounded memory, ~100 B each).
CACHE_ENTRIES = 1 << 16


@dataclass
class TableStats:
    """What one table's stream did: rows, time, collisions resolved, masked values left unchanged."""

    table: str
    rows: int = 0
    seconds: float = 0.0
    masked_columns: int = 0
    retries: int = 0
    unchanged: dict[str, int] = field(default_factory=dict)
    #: Masked columns checked as they were written (:class:`~.fingerprints.WrittenCheck`): column ->
    #: [values sharing a production fingerprint, values that are one production name part].
    written: dict[str, list[int]] = field(default_factory=dict)
    #: The transaction that wrote the rows (32-bit xid, as ``xmin`` shows it) when ``written`` is set:
    #: the check trusts ``written`` only if every row of the copy still carries it.
    writer_xid: int | None = None
    #: Production set lookups the stream made for this table (the written check; not the phone retry test):
    #: part of the check's false-report budget (:func:`~.checks.no_pii_leaked`).
    lookups: int = 0


@dataclass
class _Plan:
    index: int
    column: str
    fn: MaskFunction
    unique: bool
    check_unchanged: bool
    avoid: Callable[[bytes], bool] | None = None
    check_written: bool = False


def table_plan(table: str, columns: list[ColumnInfo], rules: RuleSet, masker: Masker,
               avoid: Callable[[bytes], bool] | None = None) -> list[_Plan]:
    """The masked columns of one table (``keep`` columns pass through untouched)."""
    plans = []
    for index, column in enumerate(columns):
        rule = rules.rule(table, column.name)
        if rule is None:
            raise SanitizeError(f"{table}.{column.name} has no masking rule", hint="run the coverage gate first")
        if rule.transformer == "keep":
            continue
        plans.append(_Plan(index, column.name, masker.transformer(rule), column.unique,
                           rule.transformer not in UNCHANGED_EXEMPT,
                           avoid if rule.transformer in AVOIDING_KINDS else None))
    return plans


def stream_order(columns: dict[str, list[ColumnInfo]], rules: RuleSet) -> list[str]:
    """Tables with unique masked columns first (their collision remaps then serve the others)."""
    def has_unique_masked(table: str) -> bool:
        return any(c.unique and (r := rules.rule(table, c.name)) is not None and r.transformer != "keep"
                   for c in columns[table])
    return sorted(columns, key=lambda table: (not has_unique_masked(table), table))


def sanitize_table(src: psycopg.Connection, dst: psycopg.Connection, table: str, columns: list[ColumnInfo],
                   rules: RuleSet, masker: Masker, where: sql.Composable | None = None,
                   avoid: Callable[[bytes], bool] | None = None,
                   unique_keys: list[tuple[str, ...]] | None = None, written: WrittenCheck | None = None,
                   ) -> TableStats:
    """Stream one table from ``src`` into the same (empty) table in ``dst`` through its rules.

    ``where`` restricts the rows read (subsetting, :mod:`.subset`); ``avoid`` says whether an
    output equals a production value (see the module docstring; ``written.known`` when ``written``
    is given); ``written``: check masked values as they are written (:func:`_written_columns`);
    ``unique_keys``: the table's multi-column unique keys (:func:`.coverage.unique_keys`), kept unique
    as :class:`_CompositeKey` says.
    """
    schema, _, name = table.partition(".")
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    target = sql.Identifier(schema, name)
    plans = table_plan(table, columns, rules, masker, written.known if written is not None else avoid)
    stats = TableStats(table, masked_columns=len(plans), unchanged={p.column: 0 for p in plans if p.check_unchanged})
    composite = _composite_keys(columns, plans, unique_keys) if plans else []
    if written is not None and plans:
        checked = _written_columns(dst, table)
        rewritten = {id(key.plan) for key in composite}  # a key collision rewrites the field after its check
        for plan in plans:
            if plan.column in checked and id(plan) not in rewritten:
                plan.check_written = True
                stats.written[plan.column] = [0, 0]
        if stats.written:
            stats.writer_xid = _transaction_xid(dst)
    started = time.perf_counter()
    out_sql = (sql.SQL("COPY {} ({}) TO STDOUT").format(target, names) if where is None else
               sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT").format(names, target, where))
    in_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(target, names)
    rows = 0
    lookups_before = written.lookups if written is not None else 0
    try:
        with src.cursor().copy(out_sql) as reader, dst.cursor().copy(in_sql) as writer:
            if not plans:  # nothing masked: pass the bytes through
                for chunk in reader:
                    writer.write(chunk)
                    rows += 1
            else:
                rows = _masked_rows(reader, writer, plans, stats, composite, written)
    except psycopg.Error as exc:
        raise load_failure(table, columns, rules, exc) from None
    stats.rows = rows
    stats.seconds = time.perf_counter() - started
    stats.lookups = written.lookups - lookups_before if written is not None else 0
    return stats


_TRIGGERS = """
    SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %s AND c.relname = %s
"""


def _written_columns(dst: psycopg.Connection, table: str) -> set[str]:
    """The columns whose stored values are provably what the stream writes, so a value can be checked as it
    is written instead of being read back from the copy.

    The rows enter through ``COPY FROM`` only (rules do not apply to COPY), so the stored value is the
    type's input function applied to the written string; it is that string (at most without trailing
    spaces) for :func:`~.leaves.plain_text_columns`, when no trigger can rewrite a row during the
    COPY (none exists on the table now: the pre-data section creates none) and the string is stored
    as the bytes written (client and server encoding UTF-8, the encoding the check decodes). That
    nothing changed the rows afterwards is proven by the check itself (every row's ``xmin`` is the
    stream's transaction, :data:`TableStats.writer_xid`); otherwise the column is read back.
    """
    schema, _, name = table.partition(".")
    if not copy_bytes_are_textsend(dst):
        return set()
    triggers = dst.execute(_TRIGGERS, (schema, name)).fetchone()
    if triggers is None or triggers[0]:
        return set()
    return plain_text_columns(dst, table)


def _transaction_xid(dst: psycopg.Connection) -> int | None:
    """The 32-bit id of ``dst``'s transaction (the one the COPY runs in); None in autocommit (the COPY
    would run in a transaction of its own, so no row could be proven to be the stream's)."""
    if dst.autocommit:
        return None
    row = dst.execute("SELECT pg_current_xact_id()::text::bigint % 4294967296").fetchone()
    return int(row[0]) if row else None


_QUOTED = re.compile(r'"[^"]*"')
_CONTEXT_COLUMN = re.compile(r"column ([^:\s]+):")


def load_failure(table: str, columns: list[ColumnInfo], rules: RuleSet, exc: psycopg.Error) -> SanitizeError:
    """One line for a COPY that PostgreSQL rejected: table, column and its rule; quoted values blanked."""
    diag = exc.diag
    reason = _QUOTED.sub('"…"', (diag.message_primary or type(exc).__name__).splitlines()[0])
    found = _CONTEXT_COLUMN.search(diag.context or "")
    column = found.group(1) if found else None
    if column is None or column not in {c.name for c in columns}:
        return SanitizeError(f"{table}: the sanitized rows could not be loaded: {reason}; nothing was stored",
                             hint="check the rules of this table against its column types")
    rule = rules.rule(table, column)
    kind = rule.transformer if rule is not None else "keep"
    return SanitizeError(f"{table}.{column} (transformer {kind}): the masked value could not be loaded: {reason}; "
                         "nothing was stored", hint=f"choose a transformer whose output fits the type of {column}")


def _transform_failure(table: str, column: str, kind: str, exc: Exception) -> SanitizeError:
    """One line for a transformer that raised: never the exception's text (it may quote the value)."""
    reason = exc.message if isinstance(exc, SanitizeError) else type(exc).__name__
    return SanitizeError(f"{table}.{column} (transformer {kind}): a value could not be masked: {reason}; "
                         "nothing was stored", hint=getattr(exc, "hint", None)
                         or f"check that the values of {column} are what the {kind} transformer expects")


_TRANSFORM_ERRORS = (SanitizeError, ValueError, TypeError, ArithmeticError, KeyError, IndexError, RecursionError)


class SeenOutputs:
    """The outputs of a unique masked column so far, in bounded memory: Bloom filters, not a set of values.

    A set held every output (2 M e-mails: ~170 MB). A Bloom filter has no false negatives, so a
    repeated output is always seen and retried (uniqueness holds); a false positive (rate
    :data:`SEEN_FALSE_POSITIVE_RATE`) only costs one extra, deterministic attempt. Outputs are
    hashed by :meth:`_key` (stable across processes, so the same rules and key give the same copy);
    when one filter is full a twice larger one is added (a scalable Bloom filter), so no table
    size needs to be known in advance.
    """

    def __init__(self, capacity: int = 1 << 20) -> None:
        self._capacity = capacity
        self._filters = [Bloom(capacity, SEEN_FALSE_POSITIVE_RATE)]
        self._room = capacity

    @staticmethod
    def _key(output: bytes) -> int:
        """64 bits of the output, the same in every process: CRC-32 and Adler-32 side by side (C, no
        object per call: a third of BLAKE2b's cost, measured). No collision resistance is needed: a
        repeated output always has the same key, so it is always seen (uniqueness holds whatever
        the hash); two outputs sharing a key only cost one deterministic retry, and the outputs
        come from keyed HMACs nobody can steer."""
        return _crc32(output) << 32 | _adler32(output)

    def __contains__(self, output: bytes) -> bool:
        key = self._key(output)
        return any(key in found for found in self._filters)

    def add(self, output: bytes) -> None:
        if not self._room:
            self._capacity *= 2
            self._filters.append(Bloom(self._capacity, SEEN_FALSE_POSITIVE_RATE))
            self._room = self._capacity
        self._filters[-1].add(self._key(output))
        self._room -= 1



class _CompositeKey:
    """A multi-column unique key with a masked column: masked tuples are kept unique as single columns are.

    Two distinct source tuples can mask to one tuple (two people of one household whose masked
    first names collide). A repeated tuple is resolved by asking the key's last masked column's
    transformer again with the next attempt, for that row only: the value's usual output (and
    every other row holding it) is left as it is, since the same value elsewhere is no collision.
    """

    __slots__ = ("fields", "plan", "seen")

    def __init__(self, fields: tuple[int, ...], plan: _Plan) -> None:
        self.fields = fields
        self.plan = plan
        self.seen: set[tuple[bytes, ...]] = set()

    def resolve(self, fields: list[bytes], original: list[bytes], stats: TableStats) -> None:
        key = tuple(fields[i] for i in self.fields)
        if b"\\N" in key:  # NULLs never collide in a unique key
            return
        attempt = 0
        plan = self.plan
        while key in self.seen:
            attempt += 1
            if attempt > MAX_ATTEMPTS:
                raise SanitizeError(f"no unique masked value for a multi-column unique key after {MAX_ATTEMPTS} "
                                    "attempts", hint="use a transformer with a larger output space (hash, email)")
            raw = original[plan.index]
            out = plan.fn.fn(copy_unescape(raw) if b"\\" in raw else raw, attempt)
            if out is not None and plan.avoid is not None and plan.avoid(out):
                continue
            fields[plan.index] = b"\\N" if out is None else out if plan.fn.safe else copy_escape(out)
            key = tuple(fields[i] for i in self.fields)
        stats.retries += attempt
        self.seen.add(key)


def _composite_keys(columns: list[ColumnInfo], plans: list[_Plan],
                    unique_keys: list[tuple[str, ...]] | None) -> list[_CompositeKey]:
    """The multi-column unique keys a masked column can break (a key holding a unique column cannot)."""
    index = {column.name: i for i, column in enumerate(columns)}
    by_index = {plan.index: plan for plan in plans}
    found = []
    for names in unique_keys or []:
        fields = tuple(index[name] for name in names if name in index)
        masked = [by_index[i] for i in fields if i in by_index]
        if len(fields) != len(names) or not masked or any(columns[i].unique for i in fields):
            continue
        found.append(_CompositeKey(fields, masked[-1]))
    return found


class _Written:
    """A column checked as written: its outputs wait in ``pending`` and are decided a batch at a time
    (:meth:`~.fingerprints.WrittenCheck.verdicts`) when the stream flushes a batch; ``verdicts`` caches
    the decisions of repeated outputs (a name column repeats a few outputs millions of times).
    ``cleared``: outputs the ``avoid`` loop just tested (no form in the production set), so only
    their name-part test remains."""

    __slots__ = ("cleared", "counts", "exempt", "pending", "unique", "verdicts", "written")

    def __init__(self, counts: list[int], written: WrittenCheck, exempt: Set[int], unique: bool = False) -> None:
        self.counts = counts
        self.written = written
        self.exempt = exempt
        #: A unique column's outputs never repeat: its decisions are not cached (65 k entries, ~10 MB, no hit).
        self.unique = unique
        self.pending: list[bytes] = []
        self.cleared: list[bytes] = []
        self.verdicts: dict[bytes, int] = {}

    def settle(self) -> None:
        """Decide every pending output and count the findings: [production values, name parts]."""
        known = self.verdicts
        decided: dict[bytes, int] = {}
        for outputs, cleared in ((self.pending, False), (self.cleared, True)):
            fresh = [output for output in dict.fromkeys(outputs) if output not in known and output not in decided]
            if fresh:
                decided.update(zip(fresh, self.written.verdicts(fresh, self.exempt, cleared=cleared), strict=True))
        counts = self.counts
        for output in self.pending + self.cleared:
            verdict = known.get(output)
            if verdict is None:
                verdict = decided[output]
            if verdict == PRODUCTION_VALUE:
                counts[0] += 1
            elif verdict == NAME_PART:
                counts[1] += 1
        if not self.unique and len(known) < CACHE_ENTRIES:
            known.update(list(decided.items())[:CACHE_ENTRIES - len(known)])
        self.pending.clear()
        self.cleared.clear()


def _masked_rows(reader: psycopg.Copy, writer: psycopg.Copy, plans: list[_Plan], stats: TableStats,
                 composite: list[_CompositeKey] | None = None, written: WrittenCheck | None = None) -> int:
    """The hot loop: kept as flat as Python allows (locals, no per-field function for kept columns).

    A transformer that raises becomes one line naming table, column and transformer (never the
    value): ``step`` is the column being masked when it raised. A column checked as written collects
    its outputs and decides them a batch at a time (:class:`_Written`) each time a batch is written.
    """
    steps = [(p.index, p.fn.fn, p.fn.remaps, p.fn.cache, p.fn.safe, SeenOutputs() if p.unique else None,
              p.column if p.check_unchanged else None, p.avoid,
              _Written(stats.written[p.column], written, written.exempt.get((stats.table, p.column), frozenset()),
                       p.unique)
              if p.check_written and written is not None else None) for p in plans]
    checks = [s[-1] for s in steps if s[-1] is not None]
    unchanged = stats.unchanged
    null = b"\\N"
    batch: list[bytes] = []
    size = 0
    rows = 0
    step = 0
    try:
        for chunk in reader:
            fields = bytes(chunk)[:-1].split(b"\t")
            original = fields.copy() if composite else fields
            for step, (index, fn, remaps, cache, safe, seen, column, avoid, check) in enumerate(steps):  # noqa: B007
                raw = fields[index]
                if raw == null:
                    continue
                value = copy_unescape(raw) if b"\\" in raw else raw
                out = remaps.get(value, null) if remaps else null
                cleared = False
                if out is null:
                    out = cache.get(value, null)
                    if out is null:
                        out = fn(value, 0)
                        if seen is None and len(cache) < CACHE_ENTRIES:  # a unique column's values never repeat
                            cache[value] = out
                    if seen is not None or avoid is not None:
                        attempt = 0
                        while out is not None and ((seen is not None and out in seen) or
                                                   (avoid is not None and avoid(out))):
                            attempt += 1
                            if attempt > MAX_ATTEMPTS:
                                raise SanitizeError(f"no unique masked value for a value of a unique column after "
                                                    f"{MAX_ATTEMPTS} attempts",
                                                    hint="use a transformer with a larger output space (hash, email)")
                            out = fn(value, attempt)
                        if attempt:
                            remaps[value] = out
                            stats.retries += attempt
                        cleared = avoid is not None
                if seen is not None and out is not None:
                    seen.add(out)
                if out is None:
                    fields[index] = null
                else:
                    if check is not None:
                        (check.cleared if cleared else check.pending).append(out)
                    if column is not None and out == value:
                        unchanged[column] += 1
                    fields[index] = out if safe else copy_escape(out)
            if composite:
                for key in composite:
                    step = plans.index(key.plan)
                    key.resolve(fields, original, stats)
            line = b"\t".join(fields) + b"\n"
            batch.append(line)
            size += len(line)
            rows += 1
            if size >= BATCH_BYTES:
                writer.write(b"".join(batch))
                batch.clear()
                size = 0
                for check in checks:
                    check.settle()
        if batch:
            writer.write(b"".join(batch))
        for check in checks:
            check.settle()
        return rows
    except _TRANSFORM_ERRORS as exc:
        plan = plans[step]
        raise _transform_failure(stats.table, plan.column, plan.fn.kind, exc) from None
