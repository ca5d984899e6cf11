"""A logical backup stores no more bytes than plain ``pg_dump -Fc`` (gzip) of the same database.

Why a test and not only the bench: the promise "stored <= plain pg_dump -Fc" failed for four sessions
unnoticed because only the bench measured it. These are the bench's own rows (hex digests, uuids,
names, e-mails, amounts, timestamps, jsonb) at a size a test can afford; the counter-test shows
zstd's own level-1 table breaks the promise on them, so this test can fail.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbprotect.core.backup import stream
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.store import FilesystemStorage
from dbprotect_tests.fixtures.fix_pg import pg_bin

UNITS = 2000  # the bench's users (each with 2 accounts, 20 transactions, 6 audit entries): about 9 MB on disk


def _bench_rows() -> list[str]:
    """The bench's own schema and inserts (bench/backup_bench.py), so the test has the bench's data shapes."""
    path = Path(__file__).parents[1] / "bench" / "backup_bench.py"
    spec = importlib.util.spec_from_file_location("backup_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, bench)  # its dataclasses look their module up while it loads
    spec.loader.exec_module(bench)
    return [bench.SCHEMA, "SELECT setseed(0.42)", *(insert.format(a=1, b=UNITS) for insert in bench.INSERTS)]


@pytest.fixture(scope="module")
def bench_like_dsn(pg) -> Iterator[str]:
    """One database of bench-shaped rows for the module (built once: a few seconds), dropped after it."""
    name = pg.create_database("bytes")
    dsn = pg.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in _bench_rows():
            conn.execute(statement)
    yield dsn
    with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _plain_pg_dump_bytes(dsn: str, tmp_path) -> int:
    out = tmp_path / "plain.dump"
    subprocess.run([str(pg_bin() / "pg_dump"), "--format=custom", "--no-password", f"--dbname={dsn}",
                    f"--file={out}"], check=True)
    return out.stat().st_size


def test_stored_bytes_are_at_most_plain_pg_dump(bench_like_dsn, tmp_path, age_keys):
    stored = run_backup(database="bytes", dsn=bench_like_dsn, storage=FilesystemStorage(tmp_path / "store"),
                        recipients=[age_keys[1]]).manifest.bytes["stored"]
    plain = _plain_pg_dump_bytes(bench_like_dsn, tmp_path)
    assert stored <= plain, f"stored {stored:,} B > plain pg_dump -Fc {plain:,} B"


def test_zstd_own_level_one_is_larger_than_plain_pg_dump(bench_like_dsn, tmp_path, age_keys, monkeypatch):
    """The counter-test: without the archive's parameters the promise fails on these rows."""
    monkeypatch.setattr(stream, "archive_zstd_params", lambda level, threads: None)
    stored = run_backup(database="bytes", dsn=bench_like_dsn, storage=FilesystemStorage(tmp_path / "store"),
                        recipients=[age_keys[1]]).manifest.bytes["stored"]
    assert stored > _plain_pg_dump_bytes(bench_like_dsn, tmp_path)
