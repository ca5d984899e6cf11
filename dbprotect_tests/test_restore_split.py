"""The data router spreads a large table over several COPY connections (issue 11, the restore bench).

One decrypted stream feeds the restore, so two tables can only load at once where the stream
moves from one to the next; a large table would load on one connection alone. The router
therefore cuts a table's rows into blocks of whole rows and, past ``SPLIT_MIN_BYTES``, sends each
block to the least busy connection, each with its own COPY of that table. These tests force the
split with a small threshold and check that every row arrives once (whatever the chunking, also
for a row longer than a read), that the rows really went over two transactions (and did not with
the threshold out of reach: the counter-test), that a table is reported only once all its parts
committed, never when a part failed, and that a whole restore through the split is clean and
damage through it still exits 7 with the target unchanged.
"""

from __future__ import annotations

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.errors import IntegrityError
from dbprotect.core.pg import pg_restore
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.pg.pg_restore import _DataLoader
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.manifest import dump_key
from dbprotect_tests.fixtures.cli import backup_with_scratch, run_json
from dbprotect_tests.fixtures.fix_pg import content

ROWS = 3000


def _script(rows: list[bytes]) -> bytes:
    head = (b"SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n"
            b"--\n-- Data for Name: big; Type: TABLE DATA; Schema: public; Owner: x\n--\n\n"
            b"COPY public.big (id, v) FROM stdin;\n")
    tail = (b"\\.\n\n--\n-- Data for Name: small; Type: TABLE DATA; Schema: public; Owner: x\n--\n\n"
            b"COPY public.small (v) FROM stdin;\nonly\n\\.\n\n")
    return head + b"".join(rows) + tail


def _rows(count: int = ROWS) -> list[bytes]:
    return [b"%d\trow %d with some padding to make blocks\n" % (i, i) for i in range(1, count + 1)]


def _load(dsn: str, script: bytes, chunk: int, released: list[int]) -> _DataLoader:
    loader = _DataLoader(dsn, jobs=2, rejected=(), table_ids=[1, 2], on_table_data=released.append)
    try:
        for start in range(0, len(script), chunk):
            loader.feed(script[start:start + chunk])
        loader.finish()
    finally:
        loader.close()
    return loader


TABLES = "CREATE TABLE big (id int, v text); CREATE TABLE small (v text)"


@pytest.mark.parametrize(("chunk", "count"), [(7, ROWS), (1000, ROWS), (1 << 20, 80_000)])
def test_a_large_table_loads_over_both_connections_every_row_once(make_db, monkeypatch, chunk, count):
    monkeypatch.setattr(pg_restore, "SPLIT_MIN_BYTES", 2000)
    dsn = make_db(TABLES)
    released: list[int] = []
    loader = _load(dsn, _script(_rows(count)), chunk, released)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(id) FROM big").fetchone() == (
            count, count, count * (count + 1) // 2)
        assert conn.execute("SELECT count(*) FROM big WHERE v <> 'row ' || id || ' with some padding to make blocks'"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT count(DISTINCT xmin::text) FROM big").fetchone()[0] >= 2  # two transactions
        assert conn.execute("SELECT v FROM small").fetchall() == [("only",)]
    assert sorted(released) == [1, 2]
    assert loader.tables_split == 1


def test_counter_a_table_under_the_threshold_stays_on_one_connection(make_db):
    dsn = make_db(TABLES)
    released: list[int] = []
    loader = _load(dsn, _script(_rows()), 1000, released)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT xmin::text) FROM big").fetchone() == (ROWS, 1)
    assert loader.tables_split == 0 and sorted(released) == [1, 2]


def test_a_row_longer_than_a_read_stays_whole(make_db, monkeypatch):
    monkeypatch.setattr(pg_restore, "SPLIT_MIN_BYTES", 2000)
    dsn = make_db(TABLES)
    long_row = b"0\t" + b"x" * (3 * pg_restore.CHUNK) + b"\n"
    rows = _rows(500)
    released: list[int] = []
    _load(dsn, _script([*rows[:250], long_row, *rows[250:]]), 64 << 10, released)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), max(length(v)) FROM big").fetchone() == (501, 3 * pg_restore.CHUNK)
    assert sorted(released) == [1, 2]


def test_a_failed_part_fails_the_load_and_the_table_is_never_reported(make_db, monkeypatch):
    monkeypatch.setattr(pg_restore, "SPLIT_MIN_BYTES", 2000)
    dsn = make_db(TABLES)
    rows = _rows()
    rows[-10] = b"not-a-number\tbad\n"  # in a late block: other parts of the table may have committed
    released: list[int] = []
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        _load(dsn, _script(rows), 1000, released)
    assert 1 not in released


@pytest.fixture
def split_setup(make_db, pg, write_config, monkeypatch, tmp_path, capsys):
    """A backup of ``shop`` with a table of about 6 MB, and a threshold that splits it."""
    monkeypatch.setattr(pg_restore, "SPLIT_MIN_BYTES", 256 << 10)
    source = make_db("CREATE TABLE t (x int PRIMARY KEY, payload text); "
                     "INSERT INTO t SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 60000) g; "
                     "CREATE TABLE u (y text); INSERT INTO u VALUES ('a'), ('\\.')", prefix="src")
    backup = backup_with_scratch(capsys, monkeypatch, write_config, source, pg.admin_dsn, tmp_path / "work")
    return FilesystemStorage(tmp_path / "store"), str(backup["backup_id"]), source


@pytest.mark.slow
def test_a_restore_through_the_split_is_verified_clean(split_setup, pg, capsys):
    _store, backup_id, source = split_setup
    code, doc, _ = run_json(capsys, "restore", "shop", backup_id, "--target", "new:split_copy")
    try:
        assert code == 0, doc
        assert doc["metrics"]["restore_data_tables_split"] >= 1
        assert content(pg.dsn("split_copy")) == content(source)
    finally:
        pg.drop_database("split_copy")


@pytest.mark.slow
def test_damage_in_a_split_table_exits_7_and_the_target_is_unchanged(split_setup, pg, make_db, capsys):
    store, backup_id, _source = split_setup
    path = store.root / dump_key("shop", backup_id)
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x01
    path.write_bytes(bytes(data))
    target = make_db("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)", prefix="prod")
    name = str(dbname_of(target))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "production")
    capsys.readouterr()
    before = content(target)
    code = run(["restore", "shop", backup_id, "--target", f"production:{name}", "--confirm", name])
    err = capsys.readouterr().err
    assert code == IntegrityError.exit_code, err
    assert err.startswith("error[DBP007]: ") and "Traceback" not in err
    assert content(target) == before
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []
