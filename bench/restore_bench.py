"""Benchmark: ``dbprotect restore`` (with full verification) against plain ``pg_restore -j`` (issue 3).

Why ratios: the machines this runs on are small and shared, so an absolute figure says more
about the neighbours than about dbprotect. Both restores run in the same process tree against the
same server, interleaved, and the best run of each is compared, as well as the median of the
ratios from the same round.

What it does:

1. Starts its own embedded PostgreSQL and builds the backup benchmark's generated fintech
   database (``bench/backup_bench.py``'s builder: uuids, names, e-mails, amounts, jsonb) of at
   least ``--size-gb`` on disk.
2. Plain: ``pg_dump -Fc`` to a file (untimed), then times ``pg_restore -j <cores>`` of that file
   into a new, empty database: what an engineer does by hand today. It then times the ``ANALYZE``
   that pg_restore's documentation recommends after a restore, reported on its own: the target
   compares with pg_restore alone, which leaves the database without planner statistics.
3. dbprotect: takes a backup with ``dbprotect backup`` (untimed), then times the console script
   ``dbprotect restore bench <id> --target new:NAME --json`` end to end: reading the manifest,
   planning (the archive's table of contents), then the streaming restore: the stored object
   goes through SHA-256, age and zstd straight into pg_restore, pre-data, then the data section
   (one whole, checked pass; tables loaded ``<cores>`` at a time on their own connections, and a
   large table's rows spread in blocks over all of them), then
   post-data (each table's indexes and constraints built as soon as its data is in, 2 at a time,
   foreign keys and the rest after), into a staging database (no plaintext file at any point: a watcher checks the work
   folder and the temporary folder all along), comparing
   every table's row count and content checksum, the schema objects, sequences and large objects
   with the manifest, and renaming into place (a new database is left to autovacuum for its
   statistics, as plain pg_restore leaves it; ``--analyze`` would add an ANALYZE alongside the
   verification). Tables are read back while pg_restore still runs (each as soon as its data is
   committed), so those phases overlap (see ``dbprotect/core/verify/tables.py``, ``TableVerifier``).
4. Prints both times, the ratios (best runs, and the median of same-round ratios) against the
   target (<= 1.4x), the ratio against pg_restore + ANALYZE for comparison, and dbprotect's phase
   breakdown with each phase's share of the wall time (start-up, i.e. ``dbprotect --help`` timed
   just before the restore, on its own); where the data section's client CPU went (fetching,
   SHA-256, age and zstd; pg_restore writing the script; routing; psycopg's COPY writes); the CPU
   seconds of each side, client and server (the postmaster's ended children), and dbprotect's
   peak RSS (``wait4``); then one JSON line.

Run: ``.venv/bin/python bench/restore_bench.py [--size-gb 0.5] [--runs 2] [--workdir DIR --keep]``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import Server, build_database, pg_bin  # the backup benchmark's data builder

TARGET_RATIO = 1.4
#: Phases that run at the same time as another one, left out when adding phases up.
OVERLAPPING = frozenset({"analyze_seconds", "restore_pre_data_seconds", "restore_data_seconds",
                         "restore_post_data_seconds"})
#: How each overlapping phase is labelled in the breakdown.
WITHIN = {"analyze_seconds": "alongside verify", "restore_pre_data_seconds": "within restore",
          "restore_data_seconds": "within restore", "restore_post_data_seconds": "within restore"}
DATABASE = "bench_big"


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, float, float]:
    """Run ``argv``; its exit status, output, CPU seconds (itself and the children it waited for:
    pg_restore's ``-j`` workers, dbprotect's pg_restore and psql) and peak RSS in MB, from ``wait4``."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: out.__setitem__(n, s.read()), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return (proc.returncode, out["out"].decode(), out["err"].decode(), usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024)


def server_cpu(server: Server) -> float:
    """CPU seconds the server's processes have used and ended with (backends count once they exit:
    the postmaster's children times), read from ``/proc``; compared before and after a restore."""
    pid = (server.datadir / "postmaster.pid").read_text().split()[0]
    time.sleep(0.3)  # the last backends of the restore exit and are reaped
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def drop(server: Server, name: str) -> None:
    import psycopg

    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def time_plain_restore(server: Server, dump_file: Path, jobs: int) -> tuple[float, float, dict[str, float]]:
    """``createdb`` then ``pg_restore -j`` of a plain custom-format dump: seconds for both; then
    the seconds of the ``ANALYZE`` that pg_restore's documentation recommends after a restore
    (reported separately: the target compares with pg_restore alone); then the CPU seconds of
    pg_restore and of the server during the restore."""
    import psycopg

    drop(server, "plain_restore")
    server_before = server_cpu(server)
    started = time.perf_counter()
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute('CREATE DATABASE "plain_restore" TEMPLATE template0')
    code, _, err, client, _ = run_measured([str(pg_bin() / "pg_restore"), f"--jobs={jobs}", "--exit-on-error",
                                            "--no-password", f"--dbname={server.dsn('plain_restore')}",
                                            str(dump_file)])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"plain pg_restore failed (exit {code}): {err.strip()}")
    cpu = {"client": client, "server": server_cpu(server) - server_before}
    started = time.perf_counter()
    with psycopg.connect(server.dsn("plain_restore"), autocommit=True) as conn:
        conn.execute("ANALYZE")
    analyze = time.perf_counter() - started
    drop(server, "plain_restore")
    return seconds, analyze, cpu


def write_config(workdir: Path, recipient: str) -> Path:
    import yaml

    doc = {
        "deployment": "production",
        "databases": {"bench": {"environments": {"production": {"dsn_env": "BENCH_PROD_DSN"}}}},
        "storage": {"local": {"type": "filesystem", "path": str(workdir / "store")}},
        "keys": {"raw": {"recipients": [recipient], "identity_env": "BENCH_RAW_IDENTITY"}},
        "pg_bin_dir": str(pg_bin()),
        "scratch": {"work_dir": str(workdir / "work")},
    }
    path = workdir / "dbprotect.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def dbprotect(env: dict[str, str], *args: str, usage: dict[str, float] | None = None) -> dict[str, Any]:
    """Run the console script with ``--json``; its document. ``usage`` gets its CPU seconds and peak RSS."""
    script = Path(sys.executable).with_name("dbprotect")
    code, out, err, cpu, rss = run_measured([str(script), *args, "--json"], env=env)
    if code != 0:
        raise SystemExit(f"dbprotect {' '.join(args)} failed (exit {code}): {err.strip()}")
    if usage is not None:
        usage.update({"client": cpu, "peak_rss_mb": rss})
    return json.loads(out)


class PlaintextWatch:
    """Polls folders while a restore runs for any plaintext archive (``dbprotect-restore-*`` folders,
    ``*.pgdump`` files): the streaming restore must never write one. The restore runs with the
    work folder as its scratch ``work_dir`` and a private ``TMPDIR``, the two folders watched."""

    def __init__(self, *folders: Path) -> None:
        self.folders = folders
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for folder in self.folders:
                for pattern in ("dbprotect-restore-*", "**/*.pgdump"):
                    self.seen.update(str(p) for p in folder.glob(pattern))
            self._stop.wait(0.05)

    def __enter__(self) -> PlaintextWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def compile_bytecode() -> int:
    """Compile dbprotect's modules to bytecode, as installing the package does; the number compiled.

    Why: an editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (set on the shared machines
    this runs on) never keeps bytecode, so every ``dbprotect`` process compiled all of its modules
    from source again: about a third of the start-up's CPU that no installed copy pays.
    ``compileall`` writes the ``__pycache__`` files (ignored by git) whatever that variable says.
    """
    package = Path(__file__).resolve().parent.parent / "dbprotect"
    with contextlib.redirect_stdout(io.StringIO()):
        compileall.compile_dir(package, quiet=1)
    return sum(1 for _ in package.rglob("*.py"))


def time_startup(env: dict[str, str]) -> float:
    """Seconds for ``dbprotect --help``: the interpreter and the imports every command pays before it starts."""
    script = Path(sys.executable).with_name("dbprotect")
    started = time.perf_counter()
    subprocess.run([str(script), "--help"], env=env, capture_output=True, check=True)
    return time.perf_counter() - started


def time_dbprotect_restore(server: Server, env: dict[str, str], backup_id: str, work: Path) -> dict[str, Any]:
    startup = time_startup(env)
    drop(server, "dbprotect_restore")
    private_tmp = work.parent / "tmp"
    private_tmp.mkdir(exist_ok=True)
    usage: dict[str, float] = {}
    server_before = server_cpu(server)
    with PlaintextWatch(work, private_tmp) as watch:
        started = time.perf_counter()
        doc = dbprotect({**env, "TMPDIR": str(private_tmp)}, "restore", "bench", backup_id,
                        "--target", "new:dbprotect_restore", usage=usage)
        seconds = time.perf_counter() - started
    drop(server, "dbprotect_restore")
    usage["server"] = server_cpu(server) - server_before
    return {"seconds": seconds, "metrics": doc["metrics"], "plaintext_files": sorted(watch.seen), "startup": startup,
            "cpu": usage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.5, help="size of the database on disk [0.5]")
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each restore; the best is kept [2]")
    parser.add_argument("--workdir", type=Path, help="folder for the server and files (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (a later --workdir run reuses it)")
    args = parser.parse_args()

    runtime = Path(tempfile.gettempdir()) / f"dbprotect-xdg-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pyrage

    jobs = os.cpu_count() or 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dbprotect-restore-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "work").mkdir(exist_ok=True)
    server = Server(workdir / "pgdata")
    print(f"Working in {workdir}; pg_restore -j {jobs}", flush=True)
    try:
        print(f"  {compile_bytecode()} modules of dbprotect compiled to bytecode, as an install does", flush=True)
        server.start()
        size = build_database(server, DATABASE, int(args.size_gb * 1024**3))
        identity = pyrage.x25519.Identity.generate()
        env = {**os.environ, "BENCH_PROD_DSN": server.dsn(DATABASE), "BENCH_RAW_IDENTITY": str(identity),
               "DBPROTECT_CONFIG": str(write_config(workdir, str(identity.to_public())))}
        dump_file = workdir / "plain.dump"
        subprocess.run([str(pg_bin() / "pg_dump"), "--format=custom", "--no-password",
                        f"--dbname={server.dsn(DATABASE)}", f"--file={dump_file}"], check=True)
        backup = dbprotect(env, "backup", "bench")
        print(f"  plain dump {dump_file.stat().st_size / 1e6:.0f} MB; dbprotect backup {backup['backup_id']} "
              f"{backup['stored_bytes'] / 1e6:.0f} MB stored, {backup['total_rows']:,} rows", flush=True)

        plain: list[float] = []
        plain_cpu: list[dict[str, float]] = []
        analyzed: list[float] = []
        ours: list[dict[str, Any]] = []
        for run in range(1, args.runs + 1):  # interleaved, so a noisy neighbour hurts both alike
            print(f"Run {run}/{args.runs}:", end=" ", flush=True)
            seconds, analyze, cpu = time_plain_restore(server, dump_file, jobs)
            plain.append(seconds)
            plain_cpu.append(cpu)
            analyzed.append(seconds + analyze)
            print(f"pg_restore -j {jobs} {seconds:.2f} s (then ANALYZE {analyze:.2f} s),", end=" ", flush=True)
            ours.append(time_dbprotect_restore(server, env, backup["backup_id"], workdir / "work"))
            print(f"dbprotect restore {ours[-1]['seconds']:.2f} s", flush=True)

        best_plain = min(plain)
        best_plain_cpu = plain_cpu[plain.index(best_plain)]
        best = min(ours, key=lambda r: r["seconds"])
        ratio = best["seconds"] / best_plain
        phases = {k: v for k, v in best["metrics"].items() if k.endswith("_seconds")}
        # ANALYZE runs alongside verification: its own duration overlaps verify_seconds, and only
        # analyze_wait_seconds (how long it ran on after verification) adds to the wall time.
        accounted = sum(v for k, v in phases.items() if k not in OVERLAPPING)
        print(f"\nDatabase {size / 1e6:.0f} MB on disk, {backup['total_rows']:,} rows in {backup['tables']} tables")
        print(f"Plain pg_restore -j {jobs} (createdb + restore):     {best_plain:.2f} s")
        print(f"dbprotect restore, new database, full verification: {best['seconds']:.2f} s")
        startup = min(best["startup"], best["seconds"] - accounted)  # measured just before, same load
        rest = best["seconds"] - accounted - startup
        print("  phases (share of the wall time): " + ", ".join(
            f"{k.removesuffix('_seconds')} {v:.2f} s ({100 * v / best['seconds']:.0f}%)"
            + (f" ({WITHIN[k]})" if k in WITHIN else "") for k, v in phases.items())
              + f"; start-up (interpreter and imports, 'dbprotect --help') {startup:.2f} s "
                f"({100 * startup / best['seconds']:.0f}%); planning and the rest {rest:.2f} s "
                f"({100 * rest / best['seconds']:.0f}%)")
        metrics, cpu = best["metrics"], best["cpu"]
        data = {k.removeprefix("restore_data_").removesuffix("_cpu"): v for k, v in metrics.items()
                if k.startswith("restore_data_") and k.endswith("_cpu")}
        if data:
            named = {"feed": "store + SHA-256 + age + zstd", "tool": "pg_restore writing the script",
                     "route": "Python routing of COPY blocks", "copy": "psycopg copy.write (all connections)"}
            print(f"  data section ({metrics.get('restore_data_seconds', 0):.2f} s wall), client CPU: " + ", ".join(
                f"{named.get(k, k)} {v:.2f} s" for k, v in data.items())
                  + f"; tables spread over several connections: {int(metrics.get('restore_data_tables_split', 0))}")
        print(f"  CPU seconds, client / server: plain pg_restore {best_plain_cpu['client']:.2f} / "
              f"{best_plain_cpu['server']:.2f}; dbprotect (with its pg_restore and psql) {cpu['client']:.2f} / "
              f"{cpu['server']:.2f}; dbprotect peak RSS {cpu['peak_rss_mb']:.0f} MB")
        early = best["metrics"].get("restore_post_data_groups_built_early")
        if early is not None:
            print(f"  tables whose indexes and constraints were built while other tables still loaded: {int(early)}")
        plaintext = sorted({path for run_ in ours for path in run_["plaintext_files"]})
        print(f"  plaintext files seen during the restores: {len(plaintext)}"
              + (f" ({', '.join(plaintext[:3])})" if plaintext else " (streamed)"))
        early = best["metrics"].get("tables_released_during_restore")
        if early is not None:
            print(f"  tables whose verification started while pg_restore was still running: {int(early)} of "
                  f"{backup['tables']}")
        verdict = "PASS" if ratio <= TARGET_RATIO and not plaintext else "FAIL"
        paired = sorted(r["seconds"] / p for p, r in zip(plain, ours, strict=True))
        median = statistics.median(paired)
        print(f"Target: {verdict}  dbprotect / plain pg_restore = {ratio:.2f} (<= {TARGET_RATIO}) on the best runs; "
              f"median of the same-round ratios {median:.2f} ({', '.join(f'{x:.2f}' for x in paired)})")
        with_analyze = statistics.median(r["seconds"] / p for p, r in zip(analyzed, ours, strict=True))
        print(f"For comparison (not the target): plain pg_restore followed by ANALYZE, "
              f"best {min(analyzed):.2f} s; dbprotect / that = {best['seconds'] / min(analyzed):.2f} on the best "
              f"runs, median of the same-round ratios {with_analyze:.2f}")
        print(f"1-minute load average now: {os.getloadavg()[0]:.2f} on {jobs} CPUs")
        print(json.dumps({"size_bytes": size, "rows": backup["total_rows"], "jobs": jobs,
                          "plain_pg_restore_s": round(best_plain, 3), "dbprotect_restore_s": round(best["seconds"], 3),
                          "ratio": round(ratio, 3), "median_paired_ratio": round(median, 3), "target": TARGET_RATIO,
                          "pass": ratio <= TARGET_RATIO and not plaintext,
                          "plain_pg_restore_analyze_s": round(min(analyzed), 3),
                          "median_paired_ratio_vs_restore_and_analyze": round(with_analyze, 3),
                          "phases": phases, "plaintext_files": plaintext,
                          "data_section_cpu": data, "cpu": {"plain": best_plain_cpu, "dbprotect": cpu},
                          "phase_shares": {**{k: round(v / best["seconds"], 3) for k, v in phases.items()},
                                           "startup_seconds": round(startup / best["seconds"], 3),
                                           "planning_and_rest_seconds": round(rest / best["seconds"], 3)},
                          "runs": {"plain": [round(p, 3) for p in plain],
                                                     "plain_analyze": [round(p, 3) for p in analyzed],
                                                     "dbprotect": [round(r["seconds"], 3) for r in ours]}},
                         separators=(",", ":")))
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
