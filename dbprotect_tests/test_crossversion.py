"""A PostgreSQL 15 server, backed up with pg_dump 18, restores into PostgreSQL 18 intact.

Production servers are often older than the client tools; pg_dump must be at least as new as the
server, and the archive it writes must restore into a newer server with the same rows. Runs
when Debian's PostgreSQL 15 is installed at /usr/lib/postgresql/15/bin (skipped otherwise). The
server runs as the ``postgres`` OS user when the tests run as root (PostgreSQL refuses root), on
a Unix socket only, and is stopped in teardown.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from dbprotect.core.backup.content import digest_table, pin_session
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import ToolError
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.verify.integrity import verify_backup
from dbprotect_tests.fixtures.fix_pg import fixture_sql, load_sql_file, pg_bin, table_counts
from dbprotect_tests.fixtures.other_pg import OtherServer

PG15_BIN = Path("/usr/lib/postgresql/15/bin")

# Slow, so not in the fast lane: starts a PostgreSQL 15 server beside the session's 18 (~3 s).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (PG15_BIN / "initdb").is_file(), reason="PostgreSQL 15 is not installed"),
]


@pytest.fixture(scope="module")
def pg15(pg15_server: OtherServer) -> str:
    """Admin DSN of the session's PostgreSQL 15 (``fixtures.other_pg``), on a private Unix socket."""
    return pg15_server.socket_dsn()


@pytest.fixture(scope="module")
def northwind15(pg15: str) -> str:
    with psycopg.connect(pg15, autocommit=True) as conn:
        conn.execute("CREATE DATABASE northwind")
    dsn = pg15.replace("/postgres?", "/northwind?")
    load_sql_file(dsn, fixture_sql("northwind"))
    return dsn


def test_pg15_backup_verifies_and_restores_into_pg18(northwind15: str, make_db: Callable[..., str],
                                                       tmp_path: Path, age_keys: tuple[str, str]) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    result = run_backup(database="northwind", dsn=northwind15, storage=storage, recipients=[age_keys[1]])
    manifest = result.manifest
    assert manifest.source["server_major"] == 15
    assert manifest.pg_dump["major"] == 18
    assert manifest.checksum["source"] == "archive-stream"
    assert manifest.tables["public.orders"].rows == 830
    assert manifest.tables["public.order_details"].rows == 2155

    report = verify_backup(storage, "northwind", manifest.backup_id, parse_identity(age_keys[0], source="test"))
    assert report.ok, report.summary()

    target = make_db(prefix="from15")
    archive = _decrypt(storage, manifest.database, manifest.backup_id, age_keys[0])
    restore = subprocess.run([str(pg_bin() / "pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={target}"],
                             input=archive, capture_output=True)
    assert restore.returncode == 0, restore.stderr.decode()
    assert table_counts(target) == {name: record.rows for name, record in manifest.tables.items()}
    # The content checksums taken from a 15 server's dump match COPY on the 18 copy too.
    with psycopg.connect(target) as conn:
        pin_session(conn, manifest.checksum["session"])
        for name, record in manifest.tables.items():
            extra = record.model_extra or {}
            digest = digest_table(conn, extra["schema"], extra["name"], record.columns)
            assert (digest.rows, digest.checksum) == (record.rows, record.checksum), name


def test_pg_dump_15_refuses_an_18_server(northwind_dsn: str, tmp_path: Path, age_keys: tuple[str, str]) -> None:
    """A real old pg_dump, pointed at a newer server, is refused before anything is written."""
    storage = FilesystemStorage(tmp_path / "store")
    with pytest.raises(ToolError) as err:
        run_backup(database="northwind", dsn=northwind_dsn, storage=storage, recipients=[age_keys[1]],
                   pg_bin_dir=str(PG15_BIN))
    assert "pg_dump 15." in str(err.value) and "older than the server (PostgreSQL 18)" in str(err.value)
    assert list(storage.list("")) == []


def _decrypt(storage: FilesystemStorage, database: str, backup_id: str, identity: str) -> bytes:
    import pyrage
    import zstandard

    encrypted = storage.get_bytes(f"{database}/{backup_id}/dump.zst.age")
    compressed = pyrage.decrypt(encrypted, [parse_identity(identity, source="test")])
    return zstandard.ZstdDecompressor().decompressobj().decompress(compressed)
