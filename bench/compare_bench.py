"""Benchmark: the full comparison against the comparison it replaced (issue 11: at most 10% more).

Why on its own: ``restore_bench.py`` measures the comparison inside a whole restore, where on a
shared 2-core machine pg_restore's variance (seconds) hides a difference of a tenth of a second.
Here both comparisons run against the same database, interleaved, several times:

- *before*: what rung 3 compared until issue 11: every table's rows and checksum
  (:class:`TableVerifier`), the schema objects by name, sequences, the large objects' count;
- *full*: :func:`dbprotect.core.verify.compare.compare_database` as rung 3 calls it (owners off),
  which adds the definitions (``pg_dump --schema-only`` beside the table reads), materialized
  views and the large objects' content.

The database is ``restore_bench.py``'s (same builder, same workdir); it is backed up once
(untimed) and compared with its own backup, so both comparisons find nothing.

Run: ``.venv/bin/python bench/compare_bench.py [--workdir DIR] [--size-gb 0.2] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import Server, build_database  # the backup benchmark's data builder

TARGET_OVERHEAD = 1.10
DATABASE = "bench_big"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.2, help="size of the database on disk [0.2]")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs of each comparison [5]")
    parser.add_argument("--workdir", type=Path, help="folder for the server (reused when it holds one)")
    args = parser.parse_args()

    from dbprotect.core.backup.stream import run_backup
    from dbprotect.core.crypto import generate_keypair
    from dbprotect.core.pg.tools import connect
    from dbprotect.core.store import FilesystemStorage
    from dbprotect.core.verify.compare import (
        catalog_objects,
        compare_database,
        compare_objects,
        compare_sequences,
        dump_definitions,
    )
    from dbprotect.core.verify.tables import TableVerifier

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dbprotect-compare-bench-"))
    server = Server(workdir / "pgdata")
    server.start()
    try:
        build_database(server, DATABASE, int(args.size_gb * 1024**3))
        dsn = server.dsn(DATABASE)
        _identity, recipient = generate_keypair()
        store = FilesystemStorage(Path(tempfile.mkdtemp(prefix="store-", dir=workdir)))
        manifest = run_backup(database="bench", dsn=dsn, storage=store, recipients=[recipient]).manifest
        with connect(dsn, autocommit=True) as conn:
            expected = catalog_objects(conn).all  # the archive's objects, as the catalog names them

        def before() -> list[str]:
            with TableVerifier(dsn, manifest) as tables, connect(dsn, autocommit=True) as conn:
                problems = compare_objects(expected, catalog_objects(conn))
                problems += compare_sequences(conn, manifest)
                row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
                assert row is not None
                problems += tables.finish()
            return problems

        def full() -> list[str]:
            return compare_database(dsn, manifest, expected_objects=expected, owners=False).differences

        times: dict[str, list[float]] = {"before": [], "full": []}
        for run in range(args.runs):
            for name, compare in (("before", before), ("full", full)) if run % 2 == 0 else (("full", full),
                                                                                            ("before", before)):
                started = time.perf_counter()
                problems = compare()
                times[name].append(round(time.perf_counter() - started, 3))
                assert not problems, problems
            print(f"run {run + 1}/{args.runs}: before {times['before'][-1]:.2f} s, full {times['full'][-1]:.2f} s",
                  flush=True)
        dumps = []
        for _ in range(args.runs):
            started = time.perf_counter()
            dump_definitions(dsn, manifest.source["server_major"])
            dumps.append(time.perf_counter() - started)
        best = min(times["full"]) / min(times["before"])
        paired = statistics.median(f / b for f, b in zip(times["full"], times["before"], strict=True))
        verdict = "PASS" if best <= TARGET_OVERHEAD else "FAIL"
        print(f"{manifest.total_rows:,} rows in {len(manifest.tables)} tables; "
              f"{len(manifest.catalog.definitions) if manifest.catalog else 0} schema entries")
        print(f"Target: {verdict}  full / before = {best:.3f} on the best runs (<= {TARGET_OVERHEAD}); "
              f"median of the paired ratios {paired:.3f}")
        print(f"pg_dump --schema-only alone (the definitions): best {min(dumps):.3f} s, median "
              f"{statistics.median(dumps):.3f} s; before's best {min(times['before']):.2f} s")
        print(f"1-minute load average now: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print(json.dumps({"before_s": times["before"], "full_s": times["full"],
                          "definitions_dump_s": [round(d, 3) for d in dumps], "ratio_best": round(best, 3),
                          "ratio_median_paired": round(paired, 3), "pass": verdict == "PASS"}))
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
