"""Masked values checked as the stream writes them (issue 12, performance), on real PostgreSQL.

``no_pii_leaked`` reads a masked text column back from the copy only when it cannot prove the copy
holds what the stream wrote and checked. Each test here makes one part of that proof fail and
asserts the check still fails on the leak: a row changed after the stream (xmin), a row deleted
(count), a trigger rewriting rows during the COPY, a COPY outside the stream's transaction, and a
column whose written values are name parts (decided on distinct values, read back).
"""

from __future__ import annotations

import os

import psycopg
import pytest

from dbprotect.core.sanitize.checks import CheckResult, no_pii_leaked
from dbprotect.core.sanitize.coverage import source_columns, unique_keys
from dbprotect.core.sanitize.fingerprints import Fingerprinter, FingerprintFilter, WrittenCheck, forms
from dbprotect.core.sanitize.rules import parse_rules
from dbprotect.core.sanitize.stream import TableStats, sanitize_table
from dbprotect.core.sanitize.transformers import Masker

TABLE = "CREATE TABLE people (id int, email text, nick varchar(40));"
SOURCE = TABLE + ("INSERT INTO people SELECT i, 'person' || i || '@corp.example.com', 'nick' || i "
                  "FROM generate_series(1, 40) i;")
RULES = """
version: 1
tables:
  public.people: {id: keep, email: email, nick: {transformer: name, part: first}}
"""
#: A production value that no transformer writes: planted in the copy after the stream.
REAL = "real.person@corp.example.com"

KEY = os.urandom(32)


def _stream(src_dsn: str, dst_dsn: str, production: FingerprintFilter, *, autocommit: bool = False,
            ) -> tuple[TableStats, dict]:
    rules = parse_rules(RULES)
    with psycopg.connect(src_dsn) as src, psycopg.connect(dst_dsn, autocommit=autocommit) as dst:
        columns = source_columns(src)
        written = WrittenCheck(Fingerprinter(KEY), production, {})
        stats = sanitize_table(src, dst, "public.people", columns["public.people"], rules, Masker(KEY),
                               written=written)
        if not autocommit:
            dst.commit()
    return stats, columns


def _check(dst_dsn: str, columns: dict, stats: TableStats, production: FingerprintFilter) -> CheckResult:
    with psycopg.connect(dst_dsn, autocommit=True) as dst:
        return no_pii_leaked(dst, columns, parse_rules(RULES), [stats], Fingerprinter(KEY), production)


def _production(*values: str) -> FingerprintFilter:
    fingerprinter = Fingerprinter(KEY)
    found = FingerprintFilter(1000)
    for value in values:
        found.add(map(fingerprinter.of, forms(value)))
    return found


def test_clean_copy_is_checked_as_written_without_reading_masked_columns_back(make_db) -> None:
    src, dst = make_db(SOURCE), make_db(TABLE)
    production = _production(REAL)
    stats, columns = _stream(src, dst, production)
    assert stats.written == {"email": [0, 0, 0], "nick": [0, 0, 0]} and stats.writer_xid is not None
    check = _check(dst, columns, stats, production)
    assert check.ok, check.detail
    assert check.metrics["columns_checked_as_written"] == 2


def test_written_values_equal_to_production_fail_as_they_are_written(make_db) -> None:
    """Production holds exactly what the stream writes: every written value is a finding, counted in the stream."""
    src, scratch, dst = make_db(SOURCE), make_db(TABLE), make_db(TABLE)
    _stream(src, scratch, _production())
    with psycopg.connect(scratch) as conn:
        outputs = [row[0] for row in conn.execute("SELECT email FROM people")]
    production = _production(*outputs)
    stats, columns = _stream(src, dst, production)
    assert stats.written["email"] == [40, 0, 0]
    check = _check(dst, columns, stats, production)
    assert not check.ok and "public.people.email: 40 value(s) equal personal values of production" in check.detail


@pytest.mark.parametrize("tamper", [
    f"UPDATE people SET email = '{REAL}' WHERE id = 1",
    f"DELETE FROM people WHERE id = 2; INSERT INTO people VALUES (2, '{REAL}', 'x')",
    f"DELETE FROM people WHERE id = 2; INSERT INTO people VALUES (41, '{REAL}', 'x'); DELETE FROM people WHERE id = 3",
])
def test_copy_changed_after_the_stream_is_read_back(make_db, tamper: str) -> None:
    """Without the xmin/count proof the stream's clean verdict would pass a copy holding a real address."""
    src, dst = make_db(SOURCE), make_db(TABLE)
    production = _production(REAL)
    stats, columns = _stream(src, dst, production)
    assert stats.written["email"] == [0, 0, 0]
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute(tamper)
    check = _check(dst, columns, stats, production)
    assert not check.ok and "public.people.email: 1 value(s) equal personal values of production" in check.detail
    assert check.metrics["columns_checked_as_written"] == 0


def test_a_trigger_on_the_target_means_no_value_is_checked_as_written(make_db) -> None:
    """A trigger may rewrite what COPY writes: the stream then checks nothing itself, the copy is read."""
    src = make_db(SOURCE)
    dst = make_db(TABLE + f"""
        CREATE FUNCTION plant() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.id = 7 THEN NEW.email := '{REAL}'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER plant BEFORE INSERT ON people FOR EACH ROW EXECUTE FUNCTION plant();""")
    production = _production(REAL)
    stats, columns = _stream(src, dst, production)
    assert stats.written == {} and stats.writer_xid is None
    check = _check(dst, columns, stats, production)
    assert not check.ok and "public.people.email: 1 value(s) equal personal values of production" in check.detail


def test_a_copy_outside_the_streams_transaction_is_read_back(make_db) -> None:
    src, dst = make_db(SOURCE), make_db(TABLE)
    production = _production(REAL)
    stats, columns = _stream(src, dst, production, autocommit=True)
    assert stats.writer_xid is None
    check = _check(dst, columns, stats, production)
    assert check.ok and check.metrics["columns_checked_as_written"] == 0


def test_written_name_parts_are_decided_on_the_copys_distinct_values(make_db) -> None:
    """Name parts are a finding by share of distinct values, which the stream does not count: read back."""
    src, scratch, dst = make_db(SOURCE), make_db(TABLE), make_db(TABLE)
    _stream(src, scratch, _production())
    with psycopg.connect(scratch) as conn:
        nicks = [row[0] for row in conn.execute("SELECT nick FROM people")]
    fingerprinter = Fingerprinter(KEY)
    production = FingerprintFilter(1000)
    production.add(part for part in map(fingerprinter.part, nicks) if part is not None)
    stats, columns = _stream(src, dst, production)
    assert stats.written["nick"] == [0, 40, 0]
    check = _check(dst, columns, stats, production)
    assert not check.ok and "public.people.nick: 40 value(s) equal first or last names of production" in check.detail
    assert check.metrics["columns_checked_as_written"] == 1  # email only


def test_a_column_a_composite_key_may_rewrite_is_not_checked_as_written(make_db) -> None:
    """A multi-column key collision rewrites the key's last masked field after the stream's check of it:
    that column is read back from the copy, never trusted as written."""
    keyed = "CREATE TABLE people (id int, email text, nick varchar(40), UNIQUE (id, nick));"
    src = make_db(keyed + "INSERT INTO people SELECT i, 'p' || i || '@corp.example.com', 'nick' || i "
                  "FROM generate_series(1, 10) i;")
    dst = make_db(TABLE)
    rules = parse_rules(RULES)
    with psycopg.connect(src) as s, psycopg.connect(dst) as d:
        columns = source_columns(s)
        stats = sanitize_table(s, d, "public.people", columns["public.people"], rules, Masker(KEY),
                               unique_keys=unique_keys(s).get("public.people"),
                               written=WrittenCheck(Fingerprinter(KEY), _production(REAL), {}))
        d.commit()
    assert set(stats.written) == {"email"}


HOSTS = "CREATE TABLE hosts (id int, addr inet);"
HOSTS_SOURCE = HOSTS + "INSERT INTO hosts SELECT i, '10.1.0.0'::inet + i FROM generate_series(1, 40) i;"


def _stream_one(src_dsn: str, dst_dsn: str, production: FingerprintFilter, table: str, rules_yaml: str,
                options: str = "") -> tuple[TableStats, CheckResult]:
    """Stream ``public.<table>`` under ``rules_yaml`` (its columns' rules) and check the copy."""
    rules = parse_rules(f"version: 1\ntables:\n  public.{table}: {rules_yaml}\n")
    with psycopg.connect(src_dsn) as src, psycopg.connect(dst_dsn, options=options) as dst:
        columns = source_columns(src)
        written = WrittenCheck(Fingerprinter(KEY), production, {})
        stats = sanitize_table(src, dst, f"public.{table}", columns[f"public.{table}"], rules, Masker(KEY),
                               written=written)
        dst.commit()
    with psycopg.connect(dst_dsn, autocommit=True) as dst:
        check = no_pii_leaked(dst, columns, rules, [stats], Fingerprinter(KEY), production)
    return stats, check


def _stream_hosts(src_dsn: str, dst_dsn: str, production: FingerprintFilter, rule: str) -> tuple[TableStats, dict]:
    stats, check = _stream_one(src_dsn, dst_dsn, production, "hosts", f"{{id: keep, addr: {rule}}}")
    return stats, {"check": check}


def test_an_inet_column_of_canonical_ipv4_outputs_is_checked_as_written(make_db) -> None:
    """The ip transformer writes canonical IPv4 text, which ``inet`` stores and prints back unchanged: checked as
    written, and a written value equal to a production address still fails the check."""
    src, scratch, dst = make_db(HOSTS_SOURCE), make_db(HOSTS), make_db(HOSTS)
    stats, found = _stream_hosts(src, scratch, _production("10.9.9.9"), "ip")
    assert stats.written == {"addr": [0, 0, 0]}
    assert found["check"].ok and found["check"].metrics["columns_checked_as_written"] == 1
    with psycopg.connect(scratch) as conn:
        outputs = [row[0] for row in conn.execute("SELECT format('%s', addr) FROM hosts")]
    stats, found = _stream_hosts(src, dst, _production(*outputs), "ip")
    assert stats.written["addr"] == [40, 0, 0]
    assert not found["check"].ok
    assert "public.hosts.addr: 40 value(s) equal personal values of production" in found["check"].detail


@pytest.mark.parametrize("written", ["10.1.0.7/32", "0:0:0:0:0:ffff:a01:7"])
def test_an_inet_value_the_type_rewrites_is_read_back(make_db, written: str) -> None:
    """``10.1.0.7/32`` is stored and printed as ``10.1.0.7``, a production address the written string's forms do not
    hold (``fixed`` exempts only its own string): trusting the written text would pass this copy."""
    src, dst = make_db(HOSTS_SOURCE), make_db(HOSTS)
    with psycopg.connect(dst) as conn:
        stored = conn.execute("SELECT format('%%s', %s::inet)", (written,)).fetchone()[0]
    stats, found = _stream_hosts(src, dst, _production(stored), f"{{transformer: fixed, value: '{written}'}}")
    assert stats.written["addr"] == [0, 0, 40]
    assert not found["check"].ok and found["check"].metrics["columns_checked_as_written"] == 0
    assert "public.hosts.addr: 40 value(s) equal personal values of production" in found["check"].detail


def test_a_unique_columns_written_values_are_each_decided(make_db) -> None:
    """A unique column's outputs are decided without merging repeats: each written production value still
    counts, and the column still fails (the e-mails of a UNIQUE column, production holding all 40)."""
    unique_table = "CREATE TABLE people (id int, email text UNIQUE, nick varchar(40));"
    src = make_db(unique_table + SOURCE.removeprefix(TABLE))
    scratch, dst = make_db(unique_table), make_db(unique_table)
    _stream(src, scratch, _production())
    with psycopg.connect(scratch) as conn:
        outputs = [row[0] for row in conn.execute("SELECT email FROM people")]
    production = _production(*outputs[:25])
    stats, columns = _stream(src, dst, production)
    assert [c.unique for c in columns["public.people"] if c.name == "email"] == [True]
    assert stats.written["email"] == [25, 0, 0] and stats.retries == 0
    check = _check(dst, columns, stats, production)
    assert not check.ok and "public.people.email: 25 value(s) equal personal values of production" in check.detail


EVENTS = "CREATE TABLE events (id int, day date);"
EVENTS_SOURCE = EVENTS + "INSERT INTO events SELECT i, date '1980-01-01' + i * 40 FROM generate_series(1, 40) i;"


def _stream_events(src_dsn: str, dst_dsn: str, production: FingerprintFilter, rule: str,
                   datestyle: str = "ISO, MDY") -> tuple[TableStats, CheckResult]:
    return _stream_one(src_dsn, dst_dsn, production, "events", f"{{id: keep, day: {rule}}}",
                       f"-c DateStyle={datestyle.replace(' ', '')}")


def test_a_date_column_of_iso_outputs_is_checked_as_written(make_db) -> None:
    """The date transformer writes ``YYYY-MM-DD``, which ``date`` stores and prints back unchanged (DateStyle ISO):
    checked as written, and written days equal to production's personal values still fail the check."""
    src, scratch, dst = make_db(EVENTS_SOURCE), make_db(EVENTS), make_db(EVENTS)
    stats, check = _stream_events(src, scratch, _production("1901-01-01"), "date")
    assert stats.written == {"day": [0, 0, 0]}
    assert check.ok and check.metrics["columns_checked_as_written"] == 1
    with psycopg.connect(scratch) as conn:
        outputs = [row[0] for row in conn.execute("SELECT format('%s', day) FROM events")]
    stats, check = _stream_events(src, dst, _production(*outputs), "date")
    assert stats.written["day"] == [40, 0, 0]
    assert not check.ok and "public.events.day: 40 value(s) equal personal values of production" in check.detail


@pytest.mark.parametrize("written", ["1980-5-03", "1980-05-3", "May 3 1980", "19800503"])
def test_a_date_the_type_rewrites_or_a_session_not_in_iso_is_read_back(make_db, written: str) -> None:
    """``1980-5-03`` is stored and printed as ``1980-05-03``, a production value the written string's forms do not
    hold: trusting the written text would pass this copy. A session printing dates in another style cannot
    vouch for the written text either: the column is read back."""
    src, dst = make_db(EVENTS_SOURCE), make_db(EVENTS)
    stats, check = _stream_events(src, dst, _production("1980-05-03"), f"{{transformer: fixed, value: '{written}'}}")
    assert stats.written["day"] == [0, 0, 40]
    assert not check.ok and check.metrics["columns_checked_as_written"] == 0
    assert "public.events.day: 40 value(s) equal personal values of production" in check.detail
    other = make_db(EVENTS)
    stats, check = _stream_events(src, other, _production("1901-01-01"), "date", datestyle="German, DMY")
    assert "day" not in stats.written and check.ok and check.metrics["columns_checked_as_written"] == 0
