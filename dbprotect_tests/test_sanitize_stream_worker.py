"""The stream's worker (issue 12, performance): a large table's stateless columns are masked and its written
values decided in a forked worker beside the stream. The copy and every count must be exactly what the
stream gives alone, batch boundaries and retries included; a worker that dies stops the build in one line.
"""

from __future__ import annotations

import os
import signal

import psycopg
import pytest

from dbprotect.core.sanitize import parallel, stream
from dbprotect.core.sanitize.coverage import source_columns
from dbprotect.core.sanitize.fingerprints import Fingerprinter, FingerprintFilter, WrittenCheck, forms
from dbprotect.core.sanitize.rules import parse_rules
from dbprotect.core.sanitize.stream import TableStats, sanitize_table
from dbprotect.core.sanitize.transformers import Masker, SanitizeError

COLUMNS = "id int, login text{}, alias text, email text, phone text, nick text, note text, ip inet, born date"
TABLE = f"CREATE TABLE people ({COLUMNS.format('')});"
SOURCE = f"CREATE TABLE people ({COLUMNS.format(' UNIQUE')});" + r"""
INSERT INTO people SELECT i,
    'login' || i,
    CASE WHEN i % 2 = 0 THEN 'login' || i END,
    CASE WHEN i % 7 = 0 THEN NULL ELSE 'p' || (i % 150) || '@corp.example.com' END,
    CASE WHEN i % 11 = 0 THEN NULL ELSE '+4420794' || lpad(i::text, 5, '0') END,
    (ARRAY['Ann', E'Tab\there', E'Back\\slash', E'New\nline', 'Zoë'])[1 + i % 5],
    CASE WHEN i % 13 = 0 THEN '\N' ELSE 'note ' || i END,
    ('10.1.' || (i % 250) || '.' || (i % 200))::inet,
    date '1980-01-01' + i
FROM generate_series(1, 600) i;
"""
# login: unique, with a 3-hex-digit output space, so outputs collide within and across batches; alias shares its
# transformer (and so the remaps its retries choose), so it stays in this process and equals login where it is set;
# phone: avoid (retried when production knows the output's tail); the others are the worker's.
RULES = """
version: 1
tables:
  public.people:
    id: keep
    login: {transformer: hash, length: 3}
    alias: {transformer: hash, length: 3}
    email: email
    phone: phone
    nick: {transformer: name, part: first}
    note: text
    ip: ip
    born: {transformer: date, max_days: 30}
"""
KEY = os.urandom(32)


def _stream(src_dsn: str, dst_dsn: str, production: FingerprintFilter, helper: bool,
            monkeypatch: pytest.MonkeyPatch) -> tuple[TableStats, list[tuple], int]:
    monkeypatch.setattr(parallel, "workers_for", lambda src, table: 1 if helper else 0)
    monkeypatch.setattr(stream, "BATCH_BYTES", 2000)  # many batches: retries meet earlier batches' outputs
    written = WrittenCheck(Fingerprinter(KEY), production, {})
    with psycopg.connect(src_dsn) as src, psycopg.connect(dst_dsn) as dst:
        stats = sanitize_table(src, dst, "public.people", source_columns(src)["public.people"], parse_rules(RULES),
                               Masker(KEY), written=written)
        dst.commit()
        rows = dst.execute("SELECT * FROM people ORDER BY id").fetchall()
    return stats, rows, written.lookups


def test_the_worker_changes_nothing_in_the_copy_or_its_counts(make_db, monkeypatch) -> None:
    src = make_db(SOURCE)
    _, first, _ = _stream(src, make_db(TABLE), FingerprintFilter(1000), False, monkeypatch)
    # Production knows some masked outputs (findings) and the tails of some masked phones (retries).
    fingerprinter = Fingerprinter(KEY)
    production = FingerprintFilter(1000)
    known = [row[3] for row in first[::9] if row[3]] + [row[4] for row in first[::4] if row[4]]
    production.add_forms(fingerprinter, [form for value in known for form in forms(value)])
    alone, alone_rows, alone_lookups = _stream(src, make_db(TABLE), production, False, monkeypatch)
    beside, beside_rows, beside_lookups = _stream(src, make_db(TABLE), production, True, monkeypatch)
    assert not alone.checked_in_worker and beside.checked_in_worker
    assert beside_rows == alone_rows
    assert len({row[1] for row in beside_rows}) == 600  # the unique column stayed unique
    assert all(row[2] == row[1] for row in beside_rows if row[2] is not None)  # one value, one output
    assert alone.retries > 0 and alone.written["email"][0] > 0
    for name in ("rows", "retries", "unchanged", "written"):
        assert getattr(beside, name) == getattr(alone, name), name
    assert beside_lookups == alone_lookups


def _mask_then_die(*args: object) -> object:
    os.kill(os.getpid(), signal.SIGKILL)  # in the worker: the OOM killer's way out
    return None


def test_a_worker_that_dies_stops_the_stream_in_one_line(make_db, monkeypatch) -> None:
    src, dst = make_db(SOURCE), make_db(TABLE)
    monkeypatch.setattr(stream, "_mask_in_worker", _mask_then_die)
    with pytest.raises(SanitizeError) as raised:
        _stream(src, dst, FingerprintFilter(1000), True, monkeypatch)
    assert "died before it finished; nothing was stored" in str(raised.value)
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT count(*) FROM people").fetchone() == (0,)


def test_a_retry_that_takes_a_later_rows_output_makes_that_row_retry(make_db) -> None:
    """Unique outputs are tested a batch at a time; a retried output can be the first output of a later row of
    the same batch, which one at a time would then meet it and retry. 16 values into 16 possible outputs
    (one hex digit): every output must still be used once."""
    src = make_db("CREATE TABLE codes (id int, code text UNIQUE);"
                  "INSERT INTO codes SELECT i, 'code' || i FROM generate_series(1, 16) i;")
    dst = make_db("CREATE TABLE codes (id int, code text);")
    rules = parse_rules("version: 1\ntables:\n  public.codes: {id: keep, code: {transformer: hash, length: 1}}\n")
    with psycopg.connect(src) as s, psycopg.connect(dst) as d:
        stats = sanitize_table(s, d, "public.codes", source_columns(s)["public.codes"], rules, Masker(KEY))
        d.commit()
        codes = [row[0] for row in d.execute("SELECT code FROM codes")]
    assert sorted(codes) == sorted("0123456789abcdef") and stats.retries > 0


def test_a_value_the_worker_cannot_mask_is_one_line_naming_the_column(make_db, monkeypatch) -> None:
    """A transformer that raises in the worker (a date column holding no ISO date, masked there: it is
    stateless) stops the build with the same one line as in this process, never the value or a traceback."""
    src = make_db(SOURCE + "ALTER TABLE people ALTER COLUMN born TYPE text; UPDATE people SET born = 'day 7' "
                  "WHERE id = 450;")
    dst = make_db(TABLE.replace("born date", "born text"))
    with pytest.raises(SanitizeError) as raised:
        _stream(src, dst, FingerprintFilter(1000), True, monkeypatch)
    message = str(raised.value)
    assert message.startswith("public.people.born (transformer date): a value could not be masked"), message
    assert "day 7" not in message and "nothing was stored" in message
