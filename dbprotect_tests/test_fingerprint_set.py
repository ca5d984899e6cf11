"""The production fingerprints are an exact set (issue 12, performance): what goes in is found, what
did not is not, duplicates count once, adding after a lookup still works; and the fast ways of filling
it (one COPY per table, worker processes) give exactly the set the per-column queries give.

Each test here fails against a wrong implementation: a set that drops a fingerprint at a bucket edge,
a COPY path that decodes escapes or NULLs differently from ``textsend``, or workers that lose a batch.
"""

from __future__ import annotations

import os

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbprotect.core.sanitize import checks, parallel
from dbprotect.core.sanitize.checks import integer_text_ranges, production_fingerprints
from dbprotect.core.sanitize.coverage import source_columns
from dbprotect.core.sanitize.fingerprints import (
    Fingerprinter,
    FingerprintFilter,
    integer_shaped_lengths,
    tail_keys,
    value_fingerprints,
)
from dbprotect.core.sanitize.rules import parse_rules
from dbprotect.core.sanitize.transformers import SanitizeError

KEY = os.urandom(32)
FINGERPRINTER = Fingerprinter(KEY)


def _contents(found: FingerprintFilter) -> list[list[int]]:
    found.flush()
    return [keys.sorted().tolist() for keys in found._buckets]


def test_the_set_is_exact_across_buckets_and_after_more_adds() -> None:
    found = FingerprintFilter(1000)
    found.SPILL_ROWS = 5_000  # several spills, so buckets hold several parts before the first lookup
    added = [f"person{i}@example.org" for i in range(20_000)]
    others = [f"other{i}@example.org" for i in range(20_000)]
    found.add_forms(FINGERPRINTER, added)
    found.add_forms(FINGERPRINTER, added[:100])  # duplicates count once
    assert found.entries == 20_000
    assert found.hits(FINGERPRINTER.array_of_many(added)).all()
    assert not found.hits(FINGERPRINTER.array_of_many(others)).any()
    # Every bucket is used and sorted (a lookup is a binary search).
    assert all(len(values) and values == sorted(values) for values in _contents(found))
    # Added after lookups: found too, and the old entries still are.
    found.add_forms(FINGERPRINTER, others[:10])
    assert found.hits(FINGERPRINTER.array_of_many(others[:10])).all() and FINGERPRINTER.of(added[-1]) in found
    assert not found.any_of(FINGERPRINTER.array_of_many(others[10:]))
    assert found.false_positive_rate() == found.entries / 2.0**70


def test_ints_and_arrays_are_the_same_fingerprints() -> None:
    found = FingerprintFilter(1000)
    found.add(map(FINGERPRINTER.of, ["alice@example.org", "bob@example.org"]))
    assert FINGERPRINTER.of("alice@example.org") in found and FINGERPRINTER.of("carol@example.org") not in found
    assert found.hits(FINGERPRINTER.array_of_many(["bob@example.org", "carol@example.org"])).tolist() == [True, False]
    assert not found.hits(np.empty((0, 2), dtype=np.uint64)).size


TABLE = r"""
CREATE DOMAIN contact_email AS varchar(200);
CREATE TABLE people (id int, email contact_email, note text, code char(12), ip inet, first_name text,
                     phone text);
INSERT INTO people VALUES
  (1, 'Ann.Lee@Example.org', E'line one\nline two\twith tab and \\ backslash 12345678', 'AB-1234-XY  ', '10.1.2.3',
   'Zoë'),
  (2, NULL, NULL, NULL, NULL, NULL),
  (3, 'bob@example.org', E'caf\u00e9 au lait, rue de la Paix 12, Paris', 'CD 9876 ZZ', '2001:db8::1', 'Bob'),
  (4, 'bob@example.org', '\N is not null here: +44 20 7946 0018', 'AB-1234-XY', '10.1.2.3/32', 'Ann Marie');
UPDATE people SET phone = '+44 20 7946 0018' WHERE id = 4;
INSERT INTO people SELECT i, 'user' || i || '@example.org', 'note ' || i || ' at 1 Long Street', 'C' || i,
  ('10.0.0.0'::inet + i), (ARRAY['Anna', 'Ben', 'Chloé'])[1 + i % 3] FROM generate_series(5, 3000) i;
ANALYZE people;
"""
RULES = """
version: 1
tables:
  public.people:
    id: keep
    email: email
    note: text
    code: {transformer: hash}
    ip: ip
    first_name: {transformer: name, part: first}
    phone: phone
"""


def _production(dsn: str, monkeypatch: pytest.MonkeyPatch, *, utf8: bool | None = None,
                workers: int | None = None) -> FingerprintFilter:
    if utf8 is not None:
        monkeypatch.setattr(checks, "copy_bytes_are_textsend", lambda conn: utf8)
    if workers is not None:
        monkeypatch.setattr(parallel, "workers_for", lambda src, table: workers)
    with psycopg.connect(dsn) as src:
        columns = source_columns(src)
        return production_fingerprints(src, columns, parse_rules(RULES), FINGERPRINTER, 100_000)


def test_one_copy_and_workers_give_the_set_the_per_column_queries_give(make_db, monkeypatch) -> None:
    """Escapes (newline, tab, backslash, a literal \\N), NULLs, accents, padded char(n), a domain over
    varchar, inet and a name-part column: one COPY in this process, and one COPY fingerprinted by two
    worker processes, hold exactly the fingerprints of the DISTINCT query per column."""
    dsn = make_db(TABLE)
    by_queries = _production(dsn, monkeypatch, utf8=False)
    in_process = _production(dsn, monkeypatch, utf8=True, workers=0)
    by_workers = _production(dsn, monkeypatch, utf8=True, workers=2)
    assert by_queries.entries > 3000 * 2
    assert _contents(in_process) == _contents(by_queries)
    assert _contents(by_workers) == _contents(by_queries)
    tail = tail_keys(FINGERPRINTER, ["079460018"])[0]
    assert int(tail) in by_workers.tails and int(tail) in by_queries.tails  # the phone's tail


def test_workers_are_used_for_a_large_table_only(make_db) -> None:
    dsn = make_db("CREATE TABLE small (v text); CREATE TABLE large (v text);"
                  "INSERT INTO large SELECT 'x' FROM generate_series(1, 250000); ANALYZE small; ANALYZE large;")
    with psycopg.connect(dsn) as src:
        assert parallel.workers_for(src, "public.small") == 0
        cores = len(os.sched_getaffinity(0))
        assert parallel.workers_for(src, "public.large") == (min(2, cores) if cores > 1 else 0)


COPY_TABLE = """
CREATE TABLE contacts (id bigint, note text);
INSERT INTO contacts SELECT i, 'ticket ' || i || ' closed by the team' FROM generate_series(1, 6000) i;
INSERT INTO contacts VALUES (6001, 'Jane.Roe@Example.org'), (6002, ' jane.roe@example.org'),
  (6003, 'JANE.ROE@EXAMPLE.ORG'),  (6004, 'someone@elsewhere.example.com'), (6005, '+44 20 7946 0018');
"""
COPY_RULES = "version: 1\ntables:\n  public.contacts: {id: keep, note: keep}\n"


def test_read_back_by_workers_finds_what_this_process_finds(make_db, monkeypatch) -> None:
    """A column past PARALLEL_VALUES is checked by forked workers, a batch each: the leak (one production
    e-mail written three ways), the detectors' counts and the lookups are the same as in this process;
    without the production value it passes."""
    dst = make_db(COPY_TABLE)
    production = FingerprintFilter(1000)
    production.add_forms(FINGERPRINTER, ["jane.roe@example.org"])
    rules = parse_rules(COPY_RULES)

    def run(parallel_values: int, found: FingerprintFilter) -> tuple[list[str], dict[str, float]]:
        monkeypatch.setattr(checks, "PARALLEL_VALUES", parallel_values)
        monkeypatch.setattr(checks, "FETCH_ROWS", 500)
        with psycopg.connect(dst, autocommit=True) as conn:
            return checks.copy_findings(conn, source_columns(conn), rules, FINGERPRINTER, found)

    here, by_workers = run(10**9, production), run(1000, production)
    assert by_workers == here
    findings = by_workers[0]
    assert "public.contacts.note (keep): 3 value(s) equal personal values of production" in findings
    assert "public.contacts.note (keep): 4 value(s) hold an e-mail address" in findings
    assert "public.contacts.note (keep): 1 value(s) hold a phone number" in findings
    assert not any("equal personal values" in f for f in run(1000, FingerprintFilter(1000))[0])


def _dies(*_: object) -> None:
    """A worker killed mid-batch (kill -9, the OOM killer): it leaves without a result."""
    os._exit(9)


def test_a_worker_that_dies_is_one_line_and_the_build_stops(make_db, monkeypatch) -> None:
    """A dead fingerprinting worker or read-back worker stops the check with a SanitizeError (the sanitize
    family's exit code, one line), never a traceback and never a partial set taken as complete."""
    dsn = make_db(TABLE)
    monkeypatch.setattr(checks, "_worker_batch", _dies)
    with pytest.raises(SanitizeError, match="fingerprinting production died before it finished; nothing was stored"):
        _production(dsn, monkeypatch, utf8=True, workers=2)
    dst = make_db(COPY_TABLE)
    monkeypatch.setattr(checks, "_worker_findings", _dies)
    monkeypatch.setattr(checks, "PARALLEL_VALUES", 1000)
    monkeypatch.setattr(checks, "FETCH_ROWS", 500)
    with psycopg.connect(dst, autocommit=True) as conn, pytest.raises(SanitizeError, match="checking the copy died"):
        checks.copy_findings(conn, source_columns(conn), parse_rules(COPY_RULES), FINGERPRINTER,
                             FingerprintFilter(1000))


def test_a_latin1_database_read_by_a_utf8_client_finds_the_same_either_way(pg, monkeypatch) -> None:
    """A LATIN1 database read by a UTF-8 client (the sessions COPY is not used for): the per-column
    queries find a kept accented name equal to a production name, and COPY, forced on, gives the same
    set (COPY and ``textsend`` both convert to the client encoding), so the guard costs speed only."""
    name = f"latin_{os.urandom(4).hex()}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        dsn = pg.dsn(name)
        with psycopg.connect(dsn, autocommit=True, client_encoding="UTF8") as conn:
            conn.execute("CREATE TABLE people (name text, nick text);"
                         "INSERT INTO people VALUES ('Zoë Müller-Ørsted', 'Zoë Müller-Ørsted')")
            assert not checks.copy_bytes_are_textsend(conn)
        rules = parse_rules("version: 1\ntables:\n  public.people: {name: name, nick: keep}\n")

        def check() -> tuple[list[list[int]], list[str]]:
            with psycopg.connect(dsn, client_encoding="UTF8") as conn:
                columns = source_columns(conn)
                production = production_fingerprints(conn, columns, rules, FINGERPRINTER, 1000)
                conn.commit()
                return _contents(production), checks.copy_findings(conn, columns, rules, FINGERPRINTER, production)[0]

        by_queries = check()
        assert "public.people.nick (keep): 1 value(s) equal personal values of production" in by_queries[1]
        monkeypatch.setattr(checks, "copy_bytes_are_textsend", lambda conn: True)
        assert check() == by_queries
    finally:
        pg.drop_database(name)


def test_the_set_knows_the_lengths_of_its_integer_shaped_forms_until_forms_are_unknown() -> None:
    """The copy's integer columns are read back only at these lengths (checks._integer_filter): every form added
    with its text must leave its length when it is digits with at most a leading "-"; fingerprints added
    without their forms make the lengths unknown, and then every integer is read."""
    found = FingerprintFilter(1000)
    found.add_forms(FINGERPRINTER, ["1234567", "-12345678", "abc123", "+441234567890", "441234567890"])
    assert found.integer_lengths == {7, 9, 12} and found.integer_lengths_complete
    pairs, keys, lengths, _census = value_fingerprints(FINGERPRINTER, ["+44 20 7946 0018", "Jane Doe", "00123456"])
    assert lengths == {8, 12, 11, 10, 9}  # "00123456" folded; the phone's digits, without a 1-3 digit prefix
    found.add_pairs(pairs, keys, lengths)
    assert found.integer_lengths == {7, 8, 9, 10, 11, 12}
    found.add([FINGERPRINTER.of("anything")])
    assert not found.integer_lengths_complete
    # A negative integer's form first in its batch (the batch is searched joined: its start counts too).
    assert integer_shaped_lengths(["-123456789", "x"]) == {10} and integer_shaped_lengths(["x", "-12"]) == {3}


@settings(max_examples=500, deadline=None)
@given(value=st.integers(-(2**63), 2**63 - 1) | st.integers(-10**6, 10**6)
       | st.sampled_from([0, -(2**63), 2**63 - 1])
       | st.builds(lambda k, sign, less: sign * (10**k - less), st.integers(0, 18), st.sampled_from([1, -1]),
                   st.integers(0, 1)),  # the edges: ±10^k and ±(10^k - 1)
       lengths=st.sets(st.integers(0, 22), max_size=8))
def test_integer_text_ranges_hold_exactly_the_integers_of_those_lengths(value: int, lengths: set[int]) -> None:
    """The integer read-back filter's ranges: a value is in one exactly when its text has one of the lengths
    (an integer column is then read back where it can meet production, and only there)."""
    inside = any(low <= value <= high for low, high in integer_text_ranges(lengths))
    assert inside == (len(str(value)) in lengths)
