"""The sanitizing stream: ``COPY table TO STDOUT`` → transformers → ``COPY table FROM STDIN``.

One table at a time, one pass, constant memory apart from what unique columns need: the rows
are read in COPY's text format, a batch at a time, split into fields, masked a column at a time
(:func:`_masked_rows`; only masked fields are unescaped and escaped again), and written in batches
to the sanitized database. The target holds only the schema's tables at this point (indexes and
constraints come after the data, as ``pg_restore`` does), which is what makes the load fast. A
large table's stateless columns are masked by a forked worker beside the stream (:class:`_StreamWorker`).

Unique columns: each output is remembered (per column, 64 bits each in an exact set: :class:`SeenOutputs`)
and a collision is resolved by asking the transformer again with the next attempt number, which
is deterministic; the chosen output is remembered on the (shared) transformer, so the same source
value in a table streamed later gets the same output. A batch gives the outputs one row at a time
would give (:meth:`_Column._retry`).
Tables with unique masked columns are streamed first for that reason.

Outputs that can be real data: a masked phone number is a random number with the source's
prefix, so among millions one equals another person's real number. ``avoid`` (the production
fingerprints, collected before the stream) is asked for every output of those transformers
(:data:`AVOIDING_KINDS`), and an output it knows is retried like a unique collision.
"""

from __future__ import annotations

import heapq
import re
import time
from collections import deque
from collections.abc import Callable, Set
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TypeVar
from zlib import adler32 as _adler32
from zlib import crc32 as _crc32

import psycopg
from psycopg import sql

from dbprotect.core.sanitize import parallel
from dbprotect.core.sanitize.copy_out import copy_rows
from dbprotect.core.sanitize.coverage import ColumnInfo
from dbprotect.core.sanitize.fingerprints import (
    IPV4_HOST,
    NAME_PART,
    PRODUCTION_VALUE,
    WrittenCheck,
    all_encoded_hold_digit_or_at,
)
from dbprotect.core.sanitize.keyset import KeySet
from dbprotect.core.sanitize.leaves import (
    copy_bytes_are_textsend,
    date_columns,
    inet_columns,
    iso_dates,
    plain_text_columns,
)
from dbprotect.core.sanitize.rules import RuleSet
from dbprotect.core.sanitize.transformers import (
    UNCHANGED_EXEMPT,
    Masker,
    MaskFunction,
    SanitizeError,
    copy_escape,
    copy_unescape,
)

T = TypeVar("T")

BATCH_BYTES = 1 << 19
MAX_ATTEMPTS = 1000
#: Transformers whose outputs are checked against production values (``avoid``) and retried on a hit.
AVOIDING_KINDS = frozenset({"phone"})
#: Per transformer: how many first-attempt outputs are remembered (bounded memory, ~100 B each).
CACHE_ENTRIES = 1 << 16
#: Outputs joined by newlines (and ended by one) that are all canonical IPv4 addresses: what an ``inet``
#: column stores and reads back as the very string written (:func:`.leaves.inet_columns`).
CANONICAL_IPV4 = re.compile(f"(?:{IPV4_HOST}\n)*".encode())
#: Outputs joined by newlines (and ended by one) that are all dates as ``YYYY-MM-DD``: what a ``date`` column
#: stores and reads back, in a session of DateStyle ISO, as the very string written (:func:`.leaves.date_columns`).
CANONICAL_ISO_DATE = re.compile(rb"(?:[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])\n)*")


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
    #: [values sharing a production fingerprint, values that are one production name part, values of a
    #: shape the column may store rewritten (an ``inet`` value that is not a canonical IPv4 address)].
    written: dict[str, list[int]] = field(default_factory=dict)
    #: The transaction that wrote the rows (32-bit xid, as ``xmin`` shows it) when ``written`` is set:
    #: the check trusts ``written`` only if every row of the copy still carries it.
    writer_xid: int | None = None
    #: Production set lookups the stream made for this table (the written check; not the phone retry test):
    #: part of the check's false-report budget (:func:`~.checks.no_pii_leaked`).
    lookups: int = 0
    #: CPU seconds the written check's decisions and the ``avoid`` tests of masked outputs took, in this process
    #: or in its worker (``checked_in_worker``: the decisions ran there).
    check_seconds: float = 0.0
    checked_in_worker: bool = False


@dataclass
class _Plan:
    index: int
    column: str
    fn: MaskFunction
    unique: bool
    check_unchanged: bool
    avoid: Callable[[bytes], bool] | None = None
    check_written: bool = False
    #: What every written value must be for the column to count as checked as written (None: anything).
    written_shape: re.Pattern[bytes] | None = None


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
            # A json rule's output is a document whose unmasked paths are the source's: judged leaf by leaf when
            # read back, never as one written value (a text column's document matched no production value whole).
            if plan.column in checked and id(plan) not in rewritten and plan.fn.kind != "json":
                plan.check_written = True
                plan.written_shape = checked[plan.column]
                stats.written[plan.column] = [0, 0, 0]
        if stats.written:
            stats.writer_xid = _transaction_xid(dst)
    started = time.perf_counter()
    out_sql = (sql.SQL("COPY {} ({}) TO STDOUT").format(target, names) if where is None else
               sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT").format(names, target, where))
    in_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(target, names)
    rows = 0
    lookups_before = written.lookups if written is not None else 0
    helper = bool(plans) and not composite and parallel.workers_for(src, table) > 0
    try:
        with src.cursor().copy(out_sql) as reader, dst.cursor().copy(in_sql) as writer:
            if not plans:  # nothing masked: pass the bytes through
                for chunk in copy_rows(reader):
                    writer.write(chunk)
                    rows += 1
            else:
                rows = _masked_rows(reader, writer, plans, stats, composite, written, len(columns), helper)
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


def _written_columns(dst: psycopg.Connection, table: str) -> dict[str, re.Pattern[bytes] | None]:
    """The columns whose stored values are provably what the stream writes, so a value can be checked as it
    is written instead of being read back from the copy.

    The rows enter through ``COPY FROM`` only (rules do not apply to COPY), so the stored value is the
    type's input function applied to the written string; it is that string (at most without trailing
    spaces) for :func:`~.leaves.plain_text_columns`, when no trigger can rewrite a row during the
    COPY (none exists on the table now: the pre-data section creates none) and the string is stored
    as the bytes written (client and server encoding UTF-8, the encoding the check decodes). That
    nothing changed the rows afterwards is proven by the check itself (every row's ``xmin`` is the
    stream's transaction, :data:`TableStats.writer_xid`); otherwise the column is read back.

    An ``inet`` column qualifies with a shape (:data:`CANONICAL_IPV4`): it counts as checked as written
    only if every value written had it, otherwise it is read back (:attr:`TableStats.written`). So does a
    ``date`` column (:data:`CANONICAL_ISO_DATE`) when this session prints dates in ISO form: a date that
    loaded is a real day, printed back zero-padded as it was written (one that does not exist fails the COPY).
    """
    schema, _, name = table.partition(".")
    if not copy_bytes_are_textsend(dst):
        return {}
    triggers = dst.execute(_TRIGGERS, (schema, name)).fetchone()
    if triggers is None or triggers[0]:
        return {}
    columns: dict[str, re.Pattern[bytes] | None] = dict.fromkeys(plain_text_columns(dst, table))
    columns.update(dict.fromkeys(inet_columns(dst, table), CANONICAL_IPV4))
    if iso_dates(dst):
        columns.update(dict.fromkeys(date_columns(dst, table), CANONICAL_ISO_DATE))
    return columns


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
    """The outputs of a unique masked column so far, in bounded memory: a 64-bit key of each in an exact
    :class:`~.keyset.KeySet` (8 bytes an output), asked a batch at a time.

    A set held every output (2 M e-mails: ~170 MB); a Bloom filter at 1e-9 cost a fifth of the stream
    (30 cache lines per insert and per test, py-spy). A repeated output always has the same key, so it
    is always seen (uniqueness holds); two outputs sharing a key by chance only cost one deterministic
    retry. Keys are :meth:`key` (stable across processes, so the same rules and key give the same copy).
    """

    def __init__(self) -> None:
        self._keys = KeySet()

    @staticmethod
    def key(output: bytes) -> int:
        """64 bits of the output, the same in every process: CRC-32 and Adler-32 side by side (C, no
        object per call: a third of BLAKE2b's cost, measured). No collision resistance is needed: a
        repeated output always has the same key; two outputs sharing a key only cost one deterministic
        retry, and the outputs come from keyed HMACs nobody can steer."""
        return _crc32(output) << 32 | _adler32(output)

    def known(self, keys: list[int]) -> list[bool]:
        """Per key, whether an output with it was added."""
        return self._keys.hits(keys).tolist() if keys else []

    def add_keys(self, keys: list[int]) -> None:
        self._keys.add(keys)

    def __contains__(self, output: bytes) -> bool:
        return self.key(output) in self._keys

    def add(self, output: bytes) -> None:
        self._keys.add([self.key(output)])


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


def _decide(written: WrittenCheck, known: dict[bytes, int], exempt: Set[int], unique: bool,
            pending: list[bytes], cleared: list[bytes], shape: re.Pattern[bytes] | None = None,
            clear: re.Pattern[bytes] | None = None) -> tuple[int, int, int]:
    """Decide one batch of a column's written outputs: (values sharing a production fingerprint, values that
    are one production name part, values not of ``shape`` when it is given). ``known`` caches the decisions
    of repeated outputs (a name column repeats a few outputs millions of times; a unique column's never
    repeat, so they are not cached).
    ``cleared``: outputs the ``avoid`` test just passed (no form in the production set): only their
    name-part test remains.
    ``clear``: outputs joined by newlines, each of the transformer's output shape, which no production form
    matches (:meth:`~.fingerprints.FingerprintFilter.shape_clear`): a batch that matches it, each output
    holding a digit or "@" (no name part), is decided by that regex alone."""
    outputs = pending + cleared
    joined = b"\n".join(outputs) + b"\n" if (shape is not None or clear is not None) and outputs else b""
    if clear is not None and outputs and clear.fullmatch(joined) and all_encoded_hold_digit_or_at(outputs):
        production = parts = 0  # each output is its own only form, of a shape no production form has
    elif not pending and all_encoded_hold_digit_or_at(cleared):
        # Every output passed avoid (no form is production's) and holds a digit or "@" (no name part): masked
        # phones, decided by one C pass over the batch, neither cached nor looked at one by one.
        production = parts = 0
    elif unique:  # every output decided once, as it comes: nothing repeats, so nothing to merge or cache
        verdicts = ((written.verdicts(pending, exempt) if pending else [])
                    + (written.verdicts(cleared, exempt, cleared=True) if cleared else []))
        production, parts = verdicts.count(PRODUCTION_VALUE), verdicts.count(NAME_PART)
    else:
        production, parts = _decide_repeated(written, known, exempt, pending, cleared)
    off_shape = 0
    if shape is not None and outputs and shape.fullmatch(joined) is None:
        off_shape = sum(1 for output in outputs if shape.fullmatch(output + b"\n") is None)
    return production, parts, off_shape


def _decide_repeated(written: WrittenCheck, known: dict[bytes, int], exempt: Set[int], pending: list[bytes],
                     cleared: list[bytes]) -> tuple[int, int]:
    """(production values, name parts) among the outputs of a column whose outputs repeat: each distinct output
    decided once, the first :data:`CACHE_ENTRIES` decisions kept in ``known`` for the next batches."""
    decided: dict[bytes, int] = {}
    for outputs, passed in ((pending, False), (cleared, True)):
        fresh = [output for output in dict.fromkeys(outputs) if output not in known and output not in decided]
        if fresh:
            decided.update(zip(fresh, written.verdicts(fresh, exempt, cleared=passed), strict=True))
    production = parts = 0
    for output in pending + cleared:
        verdict = known.get(output)
        if verdict is None:
            verdict = decided[output]
        if verdict == PRODUCTION_VALUE:
            production += 1
        elif verdict == NAME_PART:
            parts += 1
    if len(known) < CACHE_ENTRIES:
        known.update(list(decided.items())[:CACHE_ENTRIES - len(known)])
    return production, parts


#: In the stream's worker (inherited at the fork): the written check, each column's cache of decisions, and
#: the columns it masks (by field index).
_worker_check: WrittenCheck | None = None
_worker_known: dict[tuple[str, str], dict[bytes, int]] = {}
_worker_columns: dict[int, _Column] = {}


def _decide_in_worker(column: tuple[str, str], exempt: Set[int], unique: bool, pending: list[bytes],
                      cleared: list[bytes], shape: re.Pattern[bytes] | None,
                      clear: re.Pattern[bytes] | None) -> tuple[int, int, int, int, float]:
    """:func:`_decide` in the worker, with the lookups it made and the CPU seconds it took."""
    assert _worker_check is not None, "set before the fork (_StreamWorker)"
    started, lookups = time.process_time(), _worker_check.lookups
    production, parts, off_shape = _decide(_worker_check, _worker_known.setdefault(column, {}), exempt, unique,
                                           pending, cleared, shape, clear)
    return production, parts, off_shape, _worker_check.lookups - lookups, time.process_time() - started


#: What :func:`_mask_in_worker` returns.
_MaskedInWorker = tuple[list[bytes], int, int, int, int, int, float, int]


def _mask_in_worker(table: str, index: int, fields: list[bytes]) -> _MaskedInWorker:
    """:meth:`_Column.mask` of one column of a batch in the worker, and its written check there: the masked
    fields, the values left unchanged, the findings (production values, name parts, values off the column's
    shape), lookups, CPU seconds of the check (its ``avoid`` tests and decisions), retries."""
    column = _worker_columns[index]
    stats = TableStats(table, unchanged={column.unchanged: 0} if column.unchanged else {})
    try:
        masked = column.mask(fields, stats)
    except _TRANSFORM_ERRORS as exc:
        raise _transform_failure(table, column.name, column.kind, exc) from None
    check = column.check
    if check is None:
        return masked, sum(stats.unchanged.values()), 0, 0, 0, 0, stats.check_seconds, stats.retries
    started, lookups = time.process_time(), check.written.lookups
    production, parts, off_shape = _decide(check.written, check.verdicts, check.exempt, check.unique, check.pending,
                                           check.cleared, check.shape, check.clear)
    check.pending, check.cleared = [], []
    return (masked, sum(stats.unchanged.values()), production, parts, off_shape, check.written.lookups - lookups,
            time.process_time() - started + stats.check_seconds, stats.retries)


class _StreamWorker:
    """One forked worker beside a large table's stream: it masks the columns that need nothing of the
    stream's memory (:func:`_offloaded`) and decides the written values, while this process masks the rest.

    Why: the stream is this process's Python work, one core's, and the server's share of a COPY is small
    (measured: 5 s of the backends' CPU in a 37 s stream), so the other core was idle. The worker inherits
    the columns, their transformers and the finished production set (its pages are shared), and returns
    masked fields and counts; a worker that dies stops the build with one line (:func:`.parallel.died`).
    """

    def __init__(self, written: WrittenCheck | None, offloaded: list[_Column]) -> None:
        global _worker_check, _worker_columns
        if written is not None:
            written.production.flush()  # sorted before the fork: the worker only reads it
        _worker_check, _worker_columns = written, {column.index: column for column in offloaded}
        self.pool = parallel.fork_pool(1)

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        try:
            return self.pool.submit(fn, *args)
        except BrokenProcessPool:  # raised by submit once the worker died
            raise parallel.died("streaming beside this one") from None

    def close(self) -> None:
        global _worker_check, _worker_columns
        self.pool.shutdown(cancel_futures=True)
        _worker_check, _worker_columns = None, {}


class _Written:
    """A column checked as written: its outputs wait in ``pending`` (``cleared``: passed ``avoid``) and are
    decided a batch at a time (:func:`_decide`) each time the stream writes a batch, here or, for a large
    table, in the :class:`_StreamWorker` while the next batch is masked."""

    __slots__ = ("clear", "cleared", "column", "counts", "exempt", "futures", "pending", "pool", "shape", "stats",
                 "unique", "verdicts", "written")

    def __init__(self, stats: TableStats, column: str, written: WrittenCheck, exempt: Set[int], unique: bool = False,
                 pool: _StreamWorker | None = None, shape: re.Pattern[bytes] | None = None,
                 output_shape: str | None = None) -> None:
        self.stats = stats
        self.column = column
        self.counts = stats.written[column]
        self.written = written
        self.exempt = exempt
        #: A unique column's outputs never repeat: its decisions are not cached (65 k entries, ~10 MB, no hit).
        self.unique = unique
        self.pending: list[bytes] = []
        self.cleared: list[bytes] = []
        self.verdicts: dict[bytes, int] = {}
        self.pool = pool
        #: What every output must be for the column to count as checked as written (:data:`_Plan.written_shape`).
        self.shape = shape
        #: Outputs of the transformer's output shape, joined by newlines, when no production form has that shape.
        self.clear = (re.compile(f"(?:(?:{output_shape})\n)*".encode()) if written.production.shape_clear(output_shape)
                      else None)
        self.futures: deque[Future[tuple[int, int, int, int, float]]] = deque()

    def settle(self) -> None:
        """Decide every pending output (or hand them to the worker) and count the findings."""
        if not self.pending and not self.cleared:
            return
        if self.pool is None:
            started = time.process_time()
            self._count(*_decide(self.written, self.verdicts, self.exempt, self.unique, self.pending, self.cleared,
                                 self.shape, self.clear))
            self.stats.check_seconds += time.process_time() - started
            self.pending.clear()
            self.cleared.clear()
            return
        self.futures.append(self.pool.submit(_decide_in_worker, (self.stats.table, self.column), self.exempt,
                                             self.unique, self.pending, self.cleared, self.shape, self.clear))
        self.pending, self.cleared = [], []
        while len(self.futures) > parallel.IN_FLIGHT:
            self._collect()

    def finish(self) -> None:
        """Settle the last outputs and wait for every decision handed to the worker."""
        self.settle()
        while self.futures:
            self._collect()

    def _collect(self) -> None:
        production, parts, off_shape, lookups, seconds = parallel.collect(self.futures.popleft(),
                                                                          "streaming beside this one")
        self._count(production, parts, off_shape)
        self.written.lookups += lookups
        self.stats.check_seconds += seconds

    def _count(self, production: int, parts: int, off_shape: int) -> None:
        self.counts[0] += production
        self.counts[1] += parts
        self.counts[2] += off_shape


_MISSING = object()


class _Column:
    """One masked column as the stream runs it: its transformer's function and memory, its tests.

    ``seen``: the outputs so far of a unique column; ``avoid``: the production test of outputs that can be
    real data (a batch at a time); ``check``: the column is checked as written (:class:`_Written`);
    ``unchanged``: the column's name when "a masked value differs from its source" is counted.
    """

    __slots__ = ("avoid", "cache", "check", "fn", "index", "kind", "name", "remaps", "safe", "seen", "unchanged")

    def __init__(self, plan: _Plan, avoid: Callable[[list[bytes]], list[bool]] | None, check: _Written | None) -> None:
        self.index = plan.index
        self.name = plan.column
        self.kind = plan.fn.kind
        self.fn = plan.fn.fn
        self.remaps = plan.fn.remaps
        self.cache = plan.fn.cache
        self.safe = plan.fn.safe
        self.seen = SeenOutputs() if plan.unique else None
        self.avoid = avoid if plan.avoid is not None else None
        self.check = check
        self.unchanged = plan.column if plan.check_unchanged else None

    def mask(self, fields: list[bytes], stats: TableStats) -> list[bytes]:
        """The masked COPY fields of this column of one batch (``fields``: its COPY fields, in row order).

        Same outputs as masking the rows one at a time: a value's remap (an output chosen by an earlier
        retry) wins, else its cached or computed first output; outputs of a unique column or of an
        avoiding transformer are then tested a batch at a time (:meth:`_retry`), and the few that one at
        a time would have been retried are retried in row order.
        """
        null = b"\\N"
        if b"\\" in b"".join(fields):  # a NULL or an escaped character somewhere in this column's batch
            values = [field if b"\\" not in field else None if field == null else copy_unescape(field)
                      for field in fields]
        else:
            values = fields
        fn, cache, remaps = self.fn, self.cache, self.remaps
        missing = _MISSING
        if self.seen is not None:  # a unique column's values never repeat: nothing cached
            outputs = [None if value is None else fn(value, 0) for value in values]
        else:
            get_cached = cache.get
            outputs = [None if value is None else get_cached(value, missing) for value in values]
            computed: dict[bytes, bytes | None] = {}
            for row in [row for row, out in enumerate(outputs) if out is missing]:
                value = values[row]
                out = computed.get(value, missing)
                outputs[row] = computed[value] = fn(value, 0) if out is missing else out
            room = CACHE_ENTRIES - len(cache)
            if room > 0 and computed:
                cache.update(list(computed.items())[:room])
        # Rows whose output is a first attempt (no remap): the tests apply to them. A remap (an output an
        # earlier retry chose for the same value) wins over the first attempt.
        if remaps:
            fresh = []
            for row, value in enumerate(values):
                if value is not None:
                    out = remaps.get(value, missing)
                    if out is missing:
                        fresh.append(row)
                    else:
                        outputs[row] = out
        else:
            fresh = [row for row, value in enumerate(values) if value is not None]
        if self.seen is not None or self.avoid is not None:
            self._retry(values, outputs, fresh, stats)
        if self.unchanged is not None:
            stats.unchanged[self.unchanged] += sum(1 for out, value in zip(outputs, values, strict=True)
                                                   if out is not None and out == value)
        check = self.check
        if check is not None:
            if self.avoid is not None:  # the fresh outputs passed the avoid test: only the name-part test remains
                cleared = set(fresh)
                check.cleared.extend(out for row, out in enumerate(outputs) if out is not None and row in cleared)
                check.pending.extend(out for row, out in enumerate(outputs) if out is not None and row not in cleared)
            else:
                check.pending.extend(out for out in outputs if out is not None)
        if self.safe:
            return [null if out is None else out for out in outputs]
        return [null if out is None else copy_escape(out) for out in outputs]

    def _retry(self, values: list[bytes | None], outputs: list[bytes | None], fresh: list[int],
               stats: TableStats) -> None:
        """Retry, in row order, every fresh output one-at-a-time masking would have retried: one an earlier
        row (of an earlier batch, or of this one) already wrote in a unique column, or one ``avoid`` knows.

        The batch is tested at once; only the rows it flags are walked one at a time. A retried output
        can take the first output of a later row, which then is flagged in turn (one at a time, the later
        row would have met it), so the flagged rows are a heap walked in order.
        """
        seen, avoid = self.seen, self.avoid
        flagged: list[int] = []
        if avoid is not None:
            started = time.process_time()
            tested = [row for row in fresh if outputs[row] is not None]
            flagged = [row for row, hit in zip(tested, avoid([outputs[row] for row in tested]), strict=True) if hit]
            stats.check_seconds += time.process_time() - started
        keys: list[int | None] = []
        owner: dict[int, int] = {}  # key -> the row that wrote it (so far, in row order)
        if seen is not None:
            key = SeenOutputs.key
            keys = [None if out is None else key(out) for out in outputs]
            present = [k for k in keys if k is not None]
            earlier = iter(seen.known(present))
            fresh_rows = set(fresh)
            bad = set(flagged)
            for row, k in enumerate(keys):
                if k is None:
                    continue
                if next(earlier) or k in owner:  # written before this row: one at a time, it is retried
                    if row in fresh_rows:
                        bad.add(row)
                    elif k not in owner:
                        owner[k] = row
                elif row not in bad:
                    owner[k] = row
            flagged = sorted(bad)
        heapq.heapify(flagged)
        while flagged:
            row = heapq.heappop(flagged)
            value = values[row]
            assert value is not None
            remapped = self.remaps.get(value, _MISSING)
            if remapped is not _MISSING:  # an earlier row of this batch retried the same value
                out = remapped
            else:
                out, attempt = outputs[row], 0
                while out is not None and ((seen is not None and self._taken(out, row, owner)) or
                                           (avoid is not None and avoid([out])[0])):
                    attempt += 1
                    if attempt > MAX_ATTEMPTS:
                        raise SanitizeError(f"no unique masked value for a value of a unique column after "
                                            f"{MAX_ATTEMPTS} attempts",
                                            hint="use a transformer with a larger output space (hash, email)")
                    out = self.fn(value, attempt)
                if attempt:
                    self.remaps[value] = out
                    stats.retries += attempt
            outputs[row] = out
            if seen is not None and out is not None:
                keys[row] = k = SeenOutputs.key(out)
                later = owner.get(k)
                if later is not None and later > row:  # one at a time, that later row would meet this output
                    heapq.heappush(flagged, later)
                owner[k] = row
        if seen is not None:
            seen.add_keys([k for k in keys if k is not None])

    def _taken(self, out: bytes, row: int, owner: dict[int, int]) -> bool:
        """Whether a unique column's ``out`` was written before ``row``: by an earlier batch, or an earlier row."""
        assert self.seen is not None
        k = SeenOutputs.key(out)
        if self.seen.known([k])[0]:
            return True
        earlier = owner.get(k)
        return earlier is not None and earlier < row


def _masked_rows(reader: psycopg.Copy, writer: psycopg.Copy, plans: list[_Plan], stats: TableStats,
                 composite: list[_CompositeKey] | None = None, written: WrittenCheck | None = None,
                 width: int = 0, helper: bool = False) -> int:
    """The hot loop, a batch of rows at a time and a column at a time (:meth:`_Column.mask`).

    Why columns: masking row by row paid the interpreter for every field of every row (unpacking,
    tests, a call per field): two thirds of the stream's time (py-spy, 2 M users). A batch's COPY
    text is split into fields by two C calls (tabs and newlines are escaped inside values, so every
    raw tab or newline separates fields), a column is a slice of that list, and the rows are joined
    back by C calls too. A transformer that raises becomes one line naming table, column and
    transformer (never the value). A column checked as written collects its outputs and decides them
    a batch at a time (:class:`_Written`) each time a batch is written.
    """
    avoid_many = written.known_many if written is not None else None
    columns = [_Column(p, avoid_many if avoid_many is not None else _one_at_a_time(p.avoid),
                       _Written(stats, p.column, written, written.exempt.get((stats.table, p.column), frozenset()),
                                p.unique, shape=p.written_shape, output_shape=p.fn.shape)
                       if p.check_written and written is not None else None) for p in plans]
    offloaded = _offloaded(columns) if helper else []
    own = [(step, column) for step, column in enumerate(columns) if column not in offloaded]
    checks = [column.check for _, column in own if column.check is not None]
    worker = _StreamWorker(written, offloaded) if helper and (offloaded or checks) else None
    stats.checked_in_worker = worker is not None and bool(stats.written)
    for check in checks:
        check.pool = worker
    try:
        return _batches(reader, writer, plans, stats, composite, own, offloaded, checks, worker, width)
    finally:
        if worker is not None:
            worker.close()


def _offloaded(columns: list[_Column]) -> list[_Column]:
    """The columns the stream's worker can mask: their outputs never need this process's memory. No unique
    outputs to remember, and no unique column shares their transformer (whose remaps, the outputs retries
    chose, would then differ between this process and the worker's inherited copy).

    A column whose outputs ``avoid`` tests (masked phones) goes to the worker with its retries: the one
    worker masks every batch of it in order, so its remaps live there alone, as they would here, and the
    test's keyed hashes leave this process, which limits the stream.
    """
    unique = {id(column.fn) for column in columns if column.seen is not None}
    return [column for column in columns if column.seen is None and id(column.fn) not in unique]


def _batches(reader: psycopg.Copy, writer: psycopg.Copy, plans: list[_Plan], stats: TableStats,
             composite: list[_CompositeKey] | None, own: list[tuple[int, _Column]],
             offloaded: list[_Column], checks: list[_Written], worker: _StreamWorker | None, width: int) -> int:
    """The stream's batches (see :func:`_masked_rows`): ``own`` columns masked here, ``offloaded`` ones by
    ``worker`` at the same time.

    A batch is written one batch later: after this process masked its own columns of the next one, so
    the worker masks batch N while this process reads and masks batch N + 1 (measured: writing each batch
    at once left this process waiting on the worker 43% of the stream, and the worker idle 37%).
    """
    chunks: list[bytes] = []
    size = 0
    rows = 0
    waiting: list[tuple[list[bytes], list[bytes], int, list[tuple[_Column, Future[_MaskedInWorker]]]]] = []

    def split() -> None:
        nonlocal size
        data = b"".join(chunks)
        count = len(chunks)
        chunks.clear()
        size = 0
        fields = data.replace(b"\n", b"\t").split(b"\t")
        fields.pop()  # after the last newline
        if len(fields) != count * width:
            raise SanitizeError(f"the COPY rows of {stats.table} do not have {width} fields each",
                                hint="a column was added or dropped while the copy was built: build again")
        original = fields.copy() if composite else fields
        jobs = [(column, worker.submit(_mask_in_worker, stats.table, column.index, fields[column.index::width]))
                for column in offloaded] if worker is not None else []
        for step, column in own:
            try:
                fields[column.index::width] = column.mask(fields[column.index::width], stats)
            except _TRANSFORM_ERRORS as exc:
                plan = plans[step]
                raise _transform_failure(stats.table, plan.column, plan.fn.kind, exc) from None
        waiting.append((fields, original, count, jobs))

    def write() -> None:
        nonlocal rows
        fields, original, count, jobs = waiting.pop(0)
        for column, job in jobs:
            masked, unchanged, production, parts, off_shape, lookups, seconds, retries = parallel.collect(
                job, "streaming beside this one")
            stats.retries += retries
            stats.check_seconds += seconds
            fields[column.index::width] = masked
            if column.unchanged is not None:
                stats.unchanged[column.unchanged] += unchanged
            if column.check is not None:
                counts = stats.written[column.name]
                counts[0] += production
                counts[1] += parts
                counts[2] += off_shape
                column.check.written.lookups += lookups
        if composite:
            for start in range(0, len(fields), width):
                row, raw = fields[start:start + width], original[start:start + width]
                for key in composite:
                    try:
                        key.resolve(row, raw, stats)
                    except _TRANSFORM_ERRORS as exc:
                        raise _transform_failure(stats.table, key.plan.column, key.plan.fn.kind, exc) from None
                fields[start:start + width] = row
        writer.write(b"\n".join(map(b"\t".join, zip(*(fields[i::width] for i in range(width)), strict=True))) + b"\n")
        rows += count
        for check in checks:
            check.settle()

    for chunk in copy_rows(reader):
        chunks.append(chunk)
        size += len(chunk)
        if size >= BATCH_BYTES:
            split()
            if len(waiting) > 1 or worker is None:
                write()
    if chunks:
        split()
    while waiting:
        write()
    for check in checks:
        check.finish()
    return rows


def _one_at_a_time(avoid: Callable[[bytes], bool] | None) -> Callable[[list[bytes]], list[bool]] | None:
    """A single-value ``avoid`` asked for a batch."""
    if avoid is None:
        return None
    return lambda outputs: [avoid(output) for output in outputs]
