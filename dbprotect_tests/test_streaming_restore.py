"""The streaming restore (issue 11.5): store -> SHA-256 -> age -> zstd -> pg_restore, no plaintext on disk.

Damage anywhere in the stored object (a flipped byte early, in the middle, in the last bytes; a
truncated object) through an *overwrite* ``restore`` exits 7 with one line, is audited, and
leaves the target exactly as it was, with no staging database and nothing in the work folder,
although part of the data may already have been loaded into staging when the damage is met.
The data section's router is fed one byte at a time to prove that a COPY's end is found
wherever the chunks split it.
"""

from __future__ import annotations

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.audit import read
from dbprotect.core.errors import IntegrityError
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.pg.pg_restore import _DataLoader
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.manifest import dump_key
from dbprotect_tests.fixtures.cli import backup_with_scratch
from dbprotect_tests.fixtures.fix_pg import content

SOURCE_SQL = ("CREATE TABLE t (x int PRIMARY KEY, payload text); "
              "INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g; "
              "CREATE TABLE u (y text); INSERT INTO u VALUES ('a'), (E'back\\\\slash'), ('\\.');")


@pytest.fixture
def overwrite_setup(make_db, pg, write_config, monkeypatch, tmp_path, capsys):
    """A verified backup of ``shop``, a marked production target of other content, a private work folder."""
    source = make_db(SOURCE_SQL, prefix="src")
    work = tmp_path / "work"
    backup = backup_with_scratch(capsys, monkeypatch, write_config, source, pg.admin_dsn, work)
    assert run(["verify", backup["backup_id"]]) == 0
    target = make_db("CREATE TABLE kept (x int); INSERT INTO kept SELECT g FROM generate_series(1, 77) g",
                     prefix="prod")
    name = str(dbname_of(target))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "production")
    capsys.readouterr()
    return FilesystemStorage(tmp_path / "store"), str(backup["backup_id"]), work, target, name, source


@pytest.mark.slow
@pytest.mark.parametrize("where", ["early", "middle", "last-bytes", "truncated"])
def test_damage_anywhere_exits_7_audited_and_the_target_is_unchanged(overwrite_setup, pg, capsys, where):
    store, backup_id, work, target, name, _source = overwrite_setup
    path = store.root / dump_key("shop", backup_id)
    data = bytearray(path.read_bytes())
    if where == "truncated":
        del data[int(len(data) * 0.9):]
    else:
        data[{"early": 300, "middle": len(data) // 2, "last-bytes": len(data) - 5}[where]] ^= 0x01
    path.write_bytes(bytes(data))
    before = content(target)

    code = run(["restore", "shop", backup_id, "--target", f"production:{name}", "--confirm", name])
    err = capsys.readouterr().err
    assert code == IntegrityError.exit_code, err
    assert err.startswith("error[DBP007]: ") and "Traceback" not in err and "internal error" not in err
    assert len([line for line in err.splitlines() if line.startswith("error")]) == 1
    assert content(target) == before
    assert leftover_scratch_databases(ScratchServer(pg.admin_dsn)) == []
    assert list(work.iterdir()) == []
    assert any(r.action == "restore" and r.outcome == "failed" and r.target == backup_id for r in read(store))


@pytest.mark.slow
def test_a_streamed_restore_matches_the_source_and_writes_nothing_to_disk(overwrite_setup, pg, capsys):
    _store, backup_id, work, _target, _name, source = overwrite_setup
    code = run(["restore", "shop", backup_id, "--target", "new:streamed_copy"])
    assert code == 0, capsys.readouterr()
    try:
        assert content(pg.dsn("streamed_copy")) == content(source)
        assert list(work.iterdir()) == []
    finally:
        pg.drop_database("streamed_copy")


SCRIPT = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n"
          b"SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n"
          b"SELECT pg_catalog.set_config('search_path', '', false);\n\n"
          b"--\n-- Data for Name: a; Type: TABLE DATA; Schema: public; Owner: x\n--\n\n"
          b"COPY public.a (v) FROM stdin;\n\\\\.\nx\\\\.\n\\.\n\n"
          b"--\n-- Data for Name: b; Type: TABLE DATA; Schema: public; Owner: x\n--\n\n"
          b"COPY public.b (v) FROM stdin;\n\\.\n\n"
          b"--\n-- Data for Name: c; Type: TABLE DATA; Schema: public; Owner: x\n--\n\n"
          b"COPY public.c (v) FROM stdin;\none\ntwo\n\\N\n\\.\n\n"
          b"SELECT pg_catalog.setval('public.s', 42, true);\n\n\\unrestrict abc\n")


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 4096])
def test_the_data_router_finds_every_copy_end_wherever_the_stream_splits(make_db, chunk):
    dsn = make_db("CREATE TABLE a (v text); CREATE TABLE b (v text); CREATE TABLE c (v text); CREATE SEQUENCE s")
    released: list[int] = []
    loader = _DataLoader(dsn, jobs=2, rejected=(), table_ids=[11, 12, 13], on_table_data=released.append)
    for start in range(0, len(SCRIPT), chunk):
        loader.feed(SCRIPT[start:start + chunk])
    loader.finish()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT v FROM a ORDER BY v").fetchall() == [("\\.",), ("x\\.",)]
        assert conn.execute("SELECT count(*) FROM b").fetchone() == (0,)
        assert conn.execute("SELECT v FROM c ORDER BY v NULLS LAST").fetchall() == [("one",), ("two",), (None,)]
        assert conn.execute("SELECT last_value FROM s").fetchone() == (42,)
    assert sorted(released) == [11, 12, 13]


def test_a_script_that_ends_inside_a_copy_is_not_a_restore(make_db):
    dsn = make_db("CREATE TABLE a (v text)")
    loader = _DataLoader(dsn, jobs=1, rejected=(), table_ids=[1], on_table_data=None)
    loader.feed(b"COPY public.a (v) FROM stdin;\nx\n")
    with pytest.raises(IntegrityError, match="ended inside a COPY"):
        loader.finish()
