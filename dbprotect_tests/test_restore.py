"""Rung 3, *restored*: backups restore into a scratch database and match what was dumped."""

from __future__ import annotations

import pytest

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.errors import RefusedError
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.restore.staged import verify_restore
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest, recorded_verifications
from dbprotect.core.store.manifest import manifest_key
from dbprotect_tests.fixtures.fix_pg import psql

# Slow, so not in the fast lane: each test restores a real backup into a scratch database and verifies it (0.5-2 s).
pytestmark = pytest.mark.slow

#: Every kind of object the issue names: partitions, a materialized view, an enum, a domain, a
#: generated column, a large object, row-level security policies and sequences.
FEATURES_SQL = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE tenants (tenant_id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL UNIQUE);
CREATE TABLE accounts (
    id bigserial PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES tenants,
    balance numeric(12,2) NOT NULL CHECK (balance >= 0), qty posint, m mood,
    doubled numeric GENERATED ALWAYS AS (balance * 2) STORED);
CREATE INDEX accounts_tenant_idx ON accounts (tenant_id);
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON accounts
    USING (tenant_id = current_setting('app.current_tenant', true)::uuid);
CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, payload jsonb,
                     PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX events_payload_idx ON events USING gin (payload);
CREATE SEQUENCE invoice_no START 1000;
SELECT nextval('invoice_no'), nextval('invoice_no');
INSERT INTO tenants (name) SELECT 'tenant ' || g FROM generate_series(1, 20) g;
INSERT INTO accounts (tenant_id, balance, qty, m)
    SELECT tenant_id, (g * 37 % 1000)::numeric / 3, 1 + g % 5, 'ok' FROM tenants, generate_series(1, 10) g;
INSERT INTO events (at, payload)
    SELECT date '2025-06-01' + g, jsonb_build_object('n', g, 't', E'tab\there\nline') FROM generate_series(1, 400) g;
CREATE MATERIALIZED VIEW tenant_totals AS SELECT tenant_id, sum(balance) AS total FROM accounts GROUP BY tenant_id;
CREATE VIEW rich_accounts AS SELECT * FROM accounts WHERE balance > 500;
CREATE FUNCTION add_money(a numeric, b numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT a + b $$;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION touch();
SELECT lo_from_bytea(0, 'a large object'::bytea);
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed Case" (x int);
INSERT INTO "Odd Schema"."Mixed Case" VALUES (1), (2);
"""


@pytest.fixture
def scratch(pg) -> ScratchServer:
    return ScratchServer(pg.admin_dsn)


def _backup(dsn: str, storage, age_keys, database: str = "shop"):
    return run_backup(database=database, dsn=dsn, storage=storage, recipients=[age_keys[1]]).manifest


def _assert_clean(scratch: ScratchServer, work_dir) -> None:
    assert leftover_scratch_databases(scratch) == []
    assert list(work_dir.iterdir()) == []  # no plaintext archive left behind


@pytest.mark.parametrize("fixture", ["chinook_dsn", "northwind_dsn"])
def test_real_databases_restore_and_verify(fixture, request, tmp_path, age_keys, identity, scratch):
    storage = FilesystemStorage(tmp_path / "store")
    manifest = _backup(request.getfixturevalue(fixture), storage, age_keys)
    work = tmp_path / "work"
    work.mkdir()
    result = verify_restore(storage, manifest, identity, scratch, work_dir=work)
    assert result.ok, result.problems
    assert result.objects > 20 and result.tables == len(manifest.tables) >= 8
    assert {"decrypt_seconds", "restore_seconds", "verify_seconds", "total_seconds"} <= set(result.timings)
    assert list_backups(storage, "shop")[0].passed("restored")
    recorded = recorded_verifications(storage, "shop", manifest.backup_id)[-1]
    assert recorded.rung == "restored" and recorded.ok and recorded.metrics["restore_seconds"] >= 0
    _assert_clean(scratch, work)


def test_every_kind_of_object_restores_and_verifies(make_db, tmp_path, age_keys, identity, scratch):
    storage = FilesystemStorage(tmp_path / "store")
    manifest = _backup(make_db(FEATURES_SQL), storage, age_keys)
    assert manifest.large_objects["count"] == 1 and manifest.sequences["public.invoice_no"]["value"] == 1001
    result = verify_restore(storage, manifest, identity, scratch)
    assert result.ok, result.problems
    assert result.tables == 5 and result.rows == 2 + 200 + 400 + 20
    assert leftover_scratch_databases(scratch) == []


def test_manifest_from_another_database_state_fails_naming_table_and_sequence(
        make_db, tmp_path, age_keys, identity, scratch):
    storage = FilesystemStorage(tmp_path / "store")
    dsn = make_db(FEATURES_SQL)
    before = _backup(dsn, storage, age_keys)
    psql(dsn, "UPDATE tenants SET name = name || '!' WHERE name = 'tenant 7'; SELECT nextval('invoice_no');")
    after = _backup(dsn, storage, age_keys)
    # The archive of `after` with the checksums of `before`: same row counts, other content.
    after.tables["public.tenants"] = before.tables["public.tenants"]
    after.sequences["public.invoice_no"] = before.sequences["public.invoice_no"]
    storage.put_bytes(manifest_key("shop", after.backup_id), after.to_json())
    tampered = load_manifest(storage, "shop", after.backup_id)
    result = verify_restore(storage, tampered, identity, scratch)
    assert not result.ok
    assert any(p.startswith("public.tenants: content checksum") for p in result.problems), result.problems
    assert any(p.startswith("sequence public.invoice_no: restored at 1002") for p in result.problems)
    assert len(result.problems) == 2, result.problems
    assert "public.tenants" in result.detail
    assert list_backups(storage, "shop")[0].status == "failed:restored"
    assert leftover_scratch_databases(scratch) == []


def test_interrupted_restore_leaves_no_scratch_database_and_no_plaintext(
        chinook_dsn, tmp_path, age_keys, identity, scratch):
    storage = FilesystemStorage(tmp_path / "store")
    manifest = _backup(chinook_dsn, storage, age_keys)
    work = tmp_path / "work"
    work.mkdir()
    seen: list[str] = []

    def interrupt(phase: str) -> None:
        seen.append(phase)
        if phase == "restore" and seen.count("restore") == 2:  # pg_restore is running
            assert leftover_scratch_databases(scratch) != []
            assert list(work.iterdir()) == []  # streamed: no plaintext file, even mid-restore
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        verify_restore(storage, manifest, identity, scratch, work_dir=work, progress=interrupt)
    _assert_clean(scratch, work)
    assert list_backups(storage, "shop")[0].latest("restored") is None  # an interrupt is no verdict


def test_scratch_server_of_another_major_version_is_refused(chinook_dsn, tmp_path, age_keys, identity, scratch):
    storage = FilesystemStorage(tmp_path / "store")
    manifest = _backup(chinook_dsn, storage, age_keys)
    manifest.source["server_major"] = 15
    with pytest.raises(RefusedError, match="runs PostgreSQL 18, the backup comes from PostgreSQL 15"):
        verify_restore(storage, manifest, identity, scratch)
    assert leftover_scratch_databases(scratch) == []


#: A table large enough to be read in page ranges, with what makes ``COPY t`` differ from a naive
#: ``SELECT *``: a dropped column, a generated column, an inheriting child table (``FROM ONLY``),
#: NULLs, and text with tabs, newlines, carriage returns and backslashes.
SPLIT_SQL = r"""
CREATE TABLE wide (id int, dropme text, note text, doubled int GENERATED ALWAYS AS (id * 2) STORED);
ALTER TABLE wide DROP COLUMN dropme;
CREATE TABLE wide_child (extra text) INHERITS (wide);
INSERT INTO wide (id, note)
    SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE repeat(md5(g::text), 3) || E'\t\n\r\\' || g END
    FROM generate_series(1, 3000) g;
INSERT INTO wide_child (id, note, extra) VALUES (1, 'child row', 'x');
CREATE TABLE "has space" ("a b" int);
INSERT INTO "has space" VALUES (1), (NULL);
"""


@pytest.mark.parametrize("path", ["psycopg", "psql", "psql in page ranges"])
def test_every_digest_path_verifies_and_catches_a_changed_table(
        path, make_db, tmp_path, age_keys, identity, scratch, monkeypatch):
    import dbprotect.core.verify.tables as restore_module

    monkeypatch.setattr(restore_module, "PSQL_MIN_ROWS", 10**12 if path == "psycopg" else 0)
    monkeypatch.setattr(restore_module, "SPLIT_MIN_ROWS", 0 if path == "psql in page ranges" else 10**12)
    split_into: list[int] = []
    real_split = restore_module.TableVerifier._split
    monkeypatch.setattr(restore_module.TableVerifier, "_split",
                        lambda self, job, conn: split_into.append(len(parts := real_split(self, job, conn))) or parts)
    storage = FilesystemStorage(tmp_path / "store")
    dsn = make_db(FEATURES_SQL + SPLIT_SQL)
    manifest = _backup(dsn, storage, age_keys)
    result = verify_restore(storage, manifest, identity, scratch, jobs=2, record=False)
    assert result.ok, result.problems
    manifest.tables["public.wide"].checksum = "0" * 16
    result = verify_restore(storage, manifest, identity, scratch, jobs=3, record=False)
    assert result.problems == [f"public.wide: content checksum {manifest_checksum(dsn)} differs from the "
                               f"manifest's {'0' * 16} (3000 rows)"]
    assert (3 in split_into) == (path == "psql in page ranges")  # "wide" was read in 3 parts by 3 workers
    assert leftover_scratch_databases(scratch) == []


def manifest_checksum(dsn: str) -> str:
    """The checksum of ``public.wide`` as COPY over psycopg gives it (the reference digest)."""
    import psycopg

    from dbprotect.core.backup.content import DUMP_SESSION, digest_table, pin_session

    with psycopg.connect(dsn, autocommit=True) as conn:
        pin_session(conn, DUMP_SESSION)
        return digest_table(conn, "public", "wide", None).checksum


def test_tables_are_released_early_except_partitions_and_ambiguous_names(make_db, tmp_path, age_keys):
    from dbprotect.core.verify.tables import TableVerifier

    storage = FilesystemStorage(tmp_path / "store")
    manifest = _backup(make_db(FEATURES_SQL), storage, age_keys)
    odd = manifest.tables["public.tenants"].model_copy(deep=True)
    odd.model_extra.update(schema="public", name="events_2025 x")  # type: ignore[union-attr]
    manifest.tables["public.events_2025 x"] = odd
    listing = "\n".join([
        ";", "; Archive created at ...",
        "4001; 0 16500 TABLE DATA public tenants postgres",
        "4002; 0 16501 TABLE DATA public accounts postgres",
        "4003; 0 16502 TABLE DATA public events_2025 x postgres",
        "4004; 0 16503 TABLE DATA public events_2026 postgres",
        "4005; 0 0 TABLE ATTACH public events_2026 postgres",
        "4006; 0 16504 TABLE DATA Odd Schema Mixed Case postgres",
    ])
    verifier = TableVerifier("postgresql://unused/db", manifest, workers=1)
    verifier.expect(listing)
    assert verifier._by_dump_id == {4001: "public.tenants", 4002: "public.accounts", 4006: "Odd Schema.Mixed Case"}


def test_feed_stream_equals_feed_for_any_pieces():
    """The bulk path gives :meth:`TableDigest.feed`'s count, checksum and completeness, whatever the
    buffer boundaries, with bare CR, other line-break bytes, empty rows, a ``\\.`` end and a partial row."""
    import random

    from dbprotect.core.backup.archive import TableDigest

    rnd = random.Random(3)
    for _ in range(300):
        rows = [bytes(rnd.choice(b"ab\t\\\r.\x0b\x1c\x85xyz") for _ in range(rnd.randint(0, 12))) + b"\n"
                for _ in range(rnd.randint(0, 60))]
        if rnd.random() < 0.2:
            rows.insert(rnd.randint(0, len(rows)), b"\\.\n")
        data = b"".join(rows) + (b"partial" if rnd.random() < 0.2 else b"")
        reference, bulk = TableDigest(), TableDigest()
        for i in range(0, len(data), 7):
            reference.feed(data[i:i + 7])
        pos = 0
        while pos < len(data):
            size = rnd.randint(1, 40)
            bulk.feed_stream(data[pos:pos + size])
            pos += size
        assert (bulk.rows, bulk.checksum, bulk.complete) == (reference.rows, reference.checksum, reference.complete)


def test_backup_with_excluded_table_data_restores_and_verifies(chinook_dsn, tmp_path, age_keys, identity, scratch):
    """A table whose rows were excluded on purpose is restored empty, and that is not a difference."""
    storage = FilesystemStorage(tmp_path / "store")
    manifest = run_backup(database="chinook", dsn=chinook_dsn, storage=storage, recipients=[age_keys[1]],
                          exclude_table_data=["public.invoice_line"]).manifest
    result = verify_restore(storage, manifest, identity, scratch)
    assert result.ok, result.problems
