"""The in-stream table digests equal what COPY gives on a restored copy, for awkward data.

The manifest's per-table checksums are computed by reading pg_dump's archive as it streams past
(``core/backup/archive.py``). Restore verification will recompute them over COPY on a restored
database (``core/backup/content.py``). These tests prove the two agree on types whose text form is easy
to get wrong, that physical row order does not matter, that one changed value does, and that the
archive reader gives the same answer whatever chunk sizes the pipe delivers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from dbprotect.core.backup.archive import ArchiveInspector, TableDigest, TruncatedArchive, UnsupportedArchive
from dbprotect.core.backup.content import DUMP_SESSION, digest_table, pin_session
from dbprotect.core.backup.stream import BackupResult, run_backup
from dbprotect.core.crypto import parse_identity
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import load_manifest
from dbprotect.core.store.manifest import Manifest
from dbprotect_tests.fixtures.fix_pg import PgServer, pg_bin, psql

TRICKY_SCHEMA = r"""
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_amount AS numeric(12, 2) CHECK (VALUE > 0);

CREATE TABLE public.tricky (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc         jsonb,
    tags        text[],
    f8          double precision,
    f4          real,
    amount      numeric,
    addr        inet,
    net         cidr,
    blob        bytea,
    at          timestamptz,
    span        interval,
    email       citext,
    feeling     mood,
    price       positive_amount,
    price_x2    numeric GENERATED ALWAYS AS (price * 2) STORED,
    note        text
);
INSERT INTO public.tricky (doc, tags, f8, f4, amount, addr, net, blob, at, span, email, feeling, price, note)
VALUES
  ('{"b": [1, 2.50, "x\ty"], "a": null, "nested": {"k": "line1\nline2"}}',
   ARRAY['tab	in', E'new\nline', E'back\\slash', 'quote"d', 'comma,s', NULL, ''],
   'NaN', 'Infinity', 1e-30, '192.168.0.1/24', '10.0.0.0/8', '\x00ff5c0a09'::bytea,
   '2026-03-29 01:30:00+01', '1 year 2 mons 3 days 04:05:06.789', 'Alice@Example.COM', 'happy', 19.99,
   E'multi\nline\ttext with \\ backslash and \r carriage return'),
  ('[]', '{}', '-Infinity', '-0', 123456789012345678901234567890.123456789, '::1', '2001:db8::/32',
   '', '1970-01-01 00:00:00+00', '-1 days +02:00', 'bob@example.com', 'sad', 0.01, ''),
  (NULL, NULL, -0.0, 3.4028235e38, 'NaN', NULL, NULL, NULL, 'infinity', '0', NULL, NULL, NULL, NULL),
  ('{"unicode": "\u00e9\u4e2d\ud83d\ude00", "esc": "\\\""}', ARRAY['héllo wörld', '中文'], 0.1, 0.1, -0.000,
   '255.255.255.255', '0.0.0.0/0', decode(repeat('ab', 5000), 'hex'), '2000-02-29 23:59:59.999999+14',
   '100 years', 'ÉMILE@example.fr', 'ok', 1e9, repeat('long text ', 500));

CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Order Lines" ("Line No" integer, "Item" text, qty smallint);
INSERT INTO "Sales Dept"."Order Lines"
  SELECT g, 'item ' || g, (g % 7)::smallint FROM generate_series(1, 500) g;

CREATE TABLE public.measurements (id bigint, region text, taken date, value float8) PARTITION BY LIST (region);
CREATE TABLE public.measurements_eu PARTITION OF public.measurements FOR VALUES IN ('eu');
CREATE TABLE public.measurements_us PARTITION OF public.measurements FOR VALUES IN ('us');
INSERT INTO public.measurements
  SELECT g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END, date '2026-01-01' + g % 365, g / 7.0
  FROM generate_series(1, 3000) g;

CREATE UNLOGGED TABLE public.scratchpad (k text PRIMARY KEY, v text);
INSERT INTO public.scratchpad SELECT 'k' || g, md5(g::text) FROM generate_series(1, 200) g;

CREATE TABLE public.empty_table (id serial, payload text);
CREATE SEQUENCE public.invoice_numbers START 1000;
SELECT setval('public.invoice_numbers', 4242);

CREATE TABLE public.documents (id serial PRIMARY KEY, content oid);
INSERT INTO public.documents (content) VALUES
  (lo_from_bytea(0, 'first large object')), (lo_from_bytea(0, decode(repeat('cd', 100000), 'hex')));
"""

LARGE_OBJECT_BYTES = len(b"first large object") + 100_000


def _restore(dump: bytes, target_dsn: str) -> None:
    proc = subprocess.run([str(pg_bin() / "pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={target_dsn}"],
                          input=dump, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def _decrypted_archive(storage: FilesystemStorage, manifest: Manifest, identity: str) -> bytes:
    import pyrage
    import zstandard

    encrypted = storage.get_bytes(f"{manifest.database}/{manifest.backup_id}/dump.zst.age")
    compressed = pyrage.decrypt(encrypted, [parse_identity(identity, source="test")])
    return zstandard.ZstdDecompressor().decompressobj().decompress(compressed)


def _digests(dsn: str, manifest: Manifest) -> dict[str, tuple[int, str]]:
    """COPY digests of every table the manifest lists, with the manifest's session settings."""
    found = {}
    with psycopg.connect(dsn) as conn:
        pin_session(conn, manifest.checksum["session"])
        for name, record in manifest.tables.items():
            extra = record.model_extra or {}
            digest = digest_table(conn, extra["schema"], extra["name"], record.columns)
            found[name] = (digest.rows, digest.checksum)
    return found


def _recorded(manifest: Manifest) -> dict[str, tuple[int, str]]:
    return {name: (record.rows, record.checksum) for name, record in manifest.tables.items()}


@pytest.fixture(scope="module")
def tricky_dsn(pg: PgServer) -> Iterator[str]:
    name = pg.create_database("tricky")
    dsn = pg.dsn(name)
    psql(dsn, TRICKY_SCHEMA)
    yield dsn
    pg.drop_database(name)


@pytest.fixture(scope="module")
def tricky_backup(tricky_dsn: str, tmp_path_factory: pytest.TempPathFactory,
                  age_keys: tuple[str, str]) -> tuple[FilesystemStorage, BackupResult, bytes]:
    storage = FilesystemStorage(tmp_path_factory.mktemp("archive-store"))
    result = run_backup(database="tricky", dsn=tricky_dsn, storage=storage, recipients=[age_keys[1]])
    archive = _decrypted_archive(storage, result.manifest, age_keys[0])
    return storage, result, archive


@pytest.fixture(scope="module")
def raw_archive(tricky_dsn: str) -> bytes:
    """The same database as plain ``pg_dump -Fc -Z0`` writes it, for feeding the inspector directly."""
    out = subprocess.run([str(pg_bin() / "pg_dump"), "--format=custom", "--compress=0", f"--dbname={tricky_dsn}"],
                         capture_output=True, check=True)
    return out.stdout


@pytest.fixture(scope="module")
def whole(raw_archive: bytes) -> dict[str, Any]:
    """What the inspector finds when the archive arrives in one piece."""
    return _inspect(raw_archive)


def _inspect(archive: bytes, sizes: list[int] | None = None) -> dict[str, Any]:
    inspector = ArchiveInspector()
    pos, i = 0, 0
    while pos < len(archive):
        step = sizes[i % len(sizes)] if sizes else len(archive)
        inspector.feed(archive[pos:pos + step])
        pos += step
        i += 1
    summary = inspector.finish()
    return {
        "tables": {name: (d.rows, d.checksum) for name, d in summary.tables.items()},
        "columns": dict(summary.table_columns),
        "toc": [(e.dump_id, e.desc, e.namespace, e.tag) for e in summary.toc],
        "large_objects": (summary.large_objects, summary.large_object_bytes),
        "sequences": summary.sequences(),
        "header": summary.header,
    }


class TestManifestDigestsMatchARestoredCopy:
    def test_every_table_is_recorded(self, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        _storage, result, _archive = tricky_backup
        manifest = result.manifest
        assert manifest.checksum["source"] == "archive-stream"
        rows = {name: record.rows for name, record in manifest.tables.items()}
        assert rows == {
            "public.tricky": 4, "Sales Dept.Order Lines": 500, "public.measurements_eu": 2000,
            "public.measurements_us": 1000, "public.scratchpad": 200, "public.empty_table": 0,
            "public.documents": 2,
        }
        assert manifest.tables["public.empty_table"].checksum == TableDigest().checksum
        order_lines = manifest.tables["Sales Dept.Order Lines"]
        assert order_lines.model_extra == {"schema": "Sales Dept", "name": "Order Lines"}
        assert order_lines.columns == '"Line No", "Item", qty'
        tricky_columns = manifest.tables["public.tricky"].columns or ""
        assert "price_x2" not in tricky_columns and "price" in tricky_columns  # generated column left out

    def test_large_objects_and_sequences_are_recorded(
            self, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        manifest = tricky_backup[1].manifest
        assert manifest.large_objects == {"count": 2, "bytes": LARGE_OBJECT_BYTES}
        assert manifest.sequences["public.invoice_numbers"] == {"value": 4242, "is_called": True}
        assert manifest.sequences["public.documents_id_seq"] == {"value": 2, "is_called": True}
        assert manifest.sequences["public.tricky_id_seq"] == {"value": 4, "is_called": True}
        assert manifest.sequences["public.empty_table_id_seq"]["is_called"] is False

    def test_manifest_reloads_identically_from_the_store(
            self, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        storage, result, _ = tricky_backup
        reloaded = load_manifest(storage, "tricky", result.manifest.backup_id)
        assert _recorded(reloaded) == _recorded(result.manifest)
        assert reloaded.large_objects == result.manifest.large_objects

    def test_source_copy_digests_equal_the_stream_digests(
            self, tricky_dsn: str, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        manifest = tricky_backup[1].manifest
        assert _digests(tricky_dsn, manifest) == _recorded(manifest)

    def test_restored_copy_digests_equal_the_manifest(
            self, make_db: Any, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        _storage, result, archive = tricky_backup
        target = make_db(prefix="restored")
        _restore(archive, target)
        assert _digests(target, result.manifest) == _recorded(result.manifest)
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (2,)

    def test_physical_row_order_does_not_change_the_checksum(
            self, make_db: Any, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        _storage, result, archive = tricky_backup
        manifest = result.manifest
        target = make_db(prefix="reordered")
        _restore(archive, target)
        with psycopg.connect(target, autocommit=True) as conn:
            before = _first_rows(conn, "Sales Dept", "Order Lines")
            # Rewrite every row of the first half (new tuples go to the end), then compact.
            conn.execute('UPDATE "Sales Dept"."Order Lines" SET qty = qty WHERE "Line No" <= 250')
            conn.execute('VACUUM FULL "Sales Dept"."Order Lines"')
            conn.execute("CREATE INDEX ON public.measurements_eu (value DESC)")
            conn.execute("CLUSTER public.measurements_eu USING measurements_eu_value_idx")
            conn.execute("UPDATE public.tricky SET note = note WHERE id = 1")
            conn.execute("VACUUM FULL public.tricky")
            after = _first_rows(conn, "Sales Dept", "Order Lines")
        assert before != after, "the rows should now come back in another physical order"
        assert _digests(target, manifest) == _recorded(manifest)

    @pytest.mark.parametrize("change", [
        "UPDATE public.tricky SET tags[2] = E'new\\nline ' WHERE id = 1",
        "UPDATE public.tricky SET f4 = 0 WHERE id = 2",  # was -0: same number, different text
        "UPDATE public.tricky SET email = lower(email::text) WHERE id = 1",  # equal as citext
        "UPDATE public.measurements_us SET value = value + 1e-9 WHERE id = 3",
        "UPDATE \"Sales Dept\".\"Order Lines\" SET \"Item\" = 'item 8' WHERE \"Line No\" = 7",
    ])
    def test_one_changed_value_changes_the_checksum(
            self, change: str, make_db: Any, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        _storage, result, archive = tricky_backup
        manifest = result.manifest
        target = make_db(prefix="changed")
        _restore(archive, target)
        psql(target, change)
        found, recorded = _digests(target, manifest), _recorded(manifest)
        differing = [name for name in recorded if found[name] != recorded[name]]
        assert len(differing) == 1, differing
        assert found[differing[0]][0] == recorded[differing[0]][0]  # same row count, different content


def _first_rows(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT * FROM {} LIMIT 5").format(sql.Identifier(schema, table))
    return conn.execute(query).fetchall()


class TestArchiveInspector:
    def test_stream_archive_and_plain_pg_dump_agree(
            self, raw_archive: bytes, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        """run_backup's archive (pinned session) and a plain pg_dump give the same digests here."""
        ours = _inspect(tricky_backup[2])
        assert ours["tables"] == _recorded(tricky_backup[1].manifest)
        plain = _inspect(raw_archive)
        assert plain["tables"]["public.measurements_eu"] == ours["tables"]["public.measurements_eu"]
        assert plain["large_objects"] == (2, LARGE_OBJECT_BYTES)
        assert set(plain["tables"]) == set(ours["tables"])

    @pytest.mark.slow
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=12))
    def test_chunk_sizes_do_not_matter(self, raw_archive: bytes, whole: dict[str, Any], sizes: list[int]) -> None:
        assert _inspect(raw_archive, sizes) == whole

    @pytest.mark.parametrize("sizes", [[1], [2, 3], [5], [4096]])
    def test_tiny_chunks(self, raw_archive: bytes, whole: dict[str, Any], sizes: list[int]) -> None:
        assert _inspect(raw_archive, sizes) == whole

    @pytest.mark.parametrize("fraction", [0.001, 0.3, 0.6, 0.95])
    def test_truncated_archive_is_detected(self, raw_archive: bytes, fraction: float) -> None:
        inspector = ArchiveInspector()
        inspector.feed(raw_archive[:int(len(raw_archive) * fraction)])
        with pytest.raises(TruncatedArchive):
            inspector.finish()

    def test_compressed_archive_is_refused_not_misread(self, tricky_dsn: str) -> None:
        out = subprocess.run([str(pg_bin() / "pg_dump"), "--format=custom", f"--dbname={tricky_dsn}"],
                             capture_output=True, check=True).stdout
        inspector = ArchiveInspector()
        inspector.feed(out)
        with pytest.raises(UnsupportedArchive, match="compressed"):
            inspector.finish()

    def test_not_an_archive(self) -> None:
        inspector = ArchiveInspector()
        inspector.feed(b"-- plain SQL dump\nCREATE TABLE t ();\n")
        with pytest.raises(UnsupportedArchive, match="not a pg_dump custom-format archive"):
            inspector.finish()


class TestTableDigest:
    @settings(max_examples=60, deadline=None)
    @given(rows=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"\\n")), max_size=30),
           cut=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=5),
           seed=st.randoms(use_true_random=False))
    def test_order_and_chunking_independent(self, rows: list[bytes], cut: list[int], seed: Any) -> None:
        stream = b"".join(row + b"\n" for row in rows) + b"\\.\n"
        shuffled = list(rows)
        seed.shuffle(shuffled)
        other = b"".join(row + b"\n" for row in shuffled) + b"\\.\n"
        whole, pieces = TableDigest(), TableDigest()
        whole.feed(stream)
        pos, i = 0, 0
        while pos < len(other):
            pieces.feed(other[pos:pos + cut[i % len(cut)]])
            pos += cut[i % len(cut)]
            i += 1
        assert (whole.rows, whole.checksum) == (pieces.rows, pieces.checksum) == (len(rows), whole.checksum)
        assert whole.complete and pieces.complete

    def test_data_after_the_terminator_is_ignored_and_a_cut_row_is_incomplete(self) -> None:
        digest = TableDigest()
        digest.feed(b"a\tb\n\\.\nnot data\n")
        assert digest.rows == 1
        cut = TableDigest()
        cut.feed(b"a\tb\nhalf a ro")
        assert cut.rows == 1 and not cut.complete

    def test_dump_session_is_what_the_manifest_records(
            self, tricky_backup: tuple[FilesystemStorage, BackupResult, bytes]) -> None:
        session = tricky_backup[1].manifest.checksum["session"]
        assert {k: session[k] for k in DUMP_SESSION} == DUMP_SESSION
        assert session["client_encoding"] == "UTF8"


def test_archive_fixture_is_a_real_pg_dump_archive(tmp_path: Path, raw_archive: bytes,
                                                   whole: dict[str, Any]) -> None:
    """The archive the inspector tests use is a real pg_dump 18 custom-format archive."""
    path = tmp_path / "dump.pgdump"
    path.write_bytes(raw_archive)
    listing = subprocess.run([str(pg_bin() / "pg_restore"), "--list", str(path)],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public tricky" in listing and "BLOBS" in listing
    assert whole["header"].version[:2] == (1, 16)
    assert len(whole["tables"]) == 7 and whole["large_objects"] == (2, LARGE_OBJECT_BYTES)
