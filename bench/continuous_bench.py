"""Benchmark: continuous protection against its plain baselines, side by side, in one run (issue 15).

Why ratios: the machines this runs on are small and shared; every pair is timed in the same run
against the same warm server, and the ratio is what is reported.

1. Starts its own embedded PostgreSQL (``max_slot_wal_keep_size`` set) and builds ``pitr`` of at
   least ``--size-gb`` with :mod:`backup_bench`'s realistic rows.
2. **(a) Base backup**: plain ``pg_basebackup -Ft -D - -X none > /dev/null`` against
   :func:`dbprotect.core.continuous.base.take_base_backup` (pg_basebackup → zstd → age → SHA-256 →
   filesystem store), interleaved ``--runs`` times, best of each. Target <= 1.5x. Beside them, in
   the same rounds, each stage alone, so the table shows where the time goes: stock ``zstd`` and
   ``zstd | age`` behind pg_basebackup, ``| cat`` (what any pipe reader costs), and our Python
   reading (into the pipeline's reused buffer, tar watcher only), reading and compressing (no age),
   reading and encrypting (no zstd). Each stage's CPU seconds (this process, its children and the
   server) beside its wall time; under the verdict, the ratio against stock
   ``pg_basebackup | zstd -T2 -1 | age -r`` (what an operator would otherwise run) and the CPU floor
   (ours' CPU over the cores, against plain's CPU): a wall ratio that only a heavy load makes look
   good is not a pass. ``--levels -5 -1 1 3`` first compares our base backup's zstd levels (wall,
   CPU, stored size); ``--base-only`` stops after the table.
3. **(b) Restore**: with the WAL receiver running, one base backup and one logical backup (verified),
   then a marker row; time the point-in-time restore to just after the marker into a new data
   directory, promoted, and checked (marker present, row counts equal the source's), against
   ``dbprotect restore`` of the logical backup (:func:`dbprotect.core.ops.restores.restore_database`,
   which checks each table as it commits). Both times and the ratio are printed.

Run: ``.venv/bin/python bench/continuous_bench.py [--size-gb 1.0] [--runs 2] [--base-only] [--workdir DIR --keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import Server, build_database, pg_bin

TARGET_BASE_RATIO = 1.5
DB = "pitr"
TABLES = ("users", "accounts", "transactions", "audit_log")


def counts(dsn: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
                for table in TABLES}


def basebackup_args(dsn: str) -> list[str]:
    return [str(pg_bin() / "pg_basebackup"), "--format=tar", "--pgdata=-", "--wal-method=none",
            "--checkpoint=fast", "--no-password", f"--dbname={dsn}"]


class CpuMeter:
    """CPU seconds spent by one stage in every process it involves: this process (our threads), its
    children (pg_basebackup, zstd, age, cat) and the server (the walsender, reaped by the postmaster,
    lands in its children's time). Why: on a shared 2-core machine wall times swing with the load,
    CPU seconds much less, and they bound the wall time from below: no stage can finish in less
    than its CPU seconds over the cores it has."""

    def __init__(self, pgdata: Path) -> None:
        self._postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        self.seconds: dict[str, list[float]] = {}

    def _now(self) -> float:
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        fields = Path(f"/proc/{self._postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        server = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
        return time.process_time() + children.ru_utime + children.ru_stime + server

    def measure(self, name: str, stage: Callable[[], float]) -> float:
        before = self._now()
        seconds = stage()
        time.sleep(0.2)  # the postmaster reaps the walsender, whose time then counts
        self.seconds.setdefault(name, []).append(self._now() - before)
        return seconds


def time_plain_basebackup(dsn: str) -> float:
    started = time.perf_counter()
    subprocess.run(basebackup_args(dsn), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def time_shell_pipeline(dsn: str, tail: str) -> float:
    """pg_basebackup piped into stock tools (``tail``), every stage's exit status checked."""
    command = f"set -o pipefail; {shlex.join(basebackup_args(dsn))} 2>/dev/null {tail} > /dev/null"
    started = time.perf_counter()
    subprocess.run(["bash", "-c", command], check=True)
    return time.perf_counter() - started


def time_python_stage(dsn: str, stage: str, recipient: str, zstd_level: int, zstd_threads: int) -> float:
    """pg_basebackup read by our own code, with one part of the pipeline: ``read`` (large reads through
    the tar watcher), ``zstd`` (and SHA-256, no age) or ``age`` (and SHA-256, no zstd)."""
    import hashlib

    import pyrage
    import zstandard

    from dbprotect.core.backup.pipeline import READ_SIZE, enlarge_pipe
    from dbprotect.core.continuous.base import TarWatcher, _ObservedStream

    class Digest:
        def __init__(self) -> None:
            self.hash = hashlib.sha256()

        def write(self, data: bytes) -> int:
            self.hash.update(data)
            return len(data)

        def flush(self) -> None:
            pass

    class Watched:
        def __init__(self, stream: Any) -> None:
            self.stream, self.watcher = stream, TarWatcher()

        def read(self, size: int = -1) -> bytes:
            data = self.stream.read(size if size > 0 else READ_SIZE)
            self.watcher.feed(data)
            return data

    started = time.perf_counter()
    proc = subprocess.Popen(basebackup_args(dsn), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    enlarge_pipe(proc.stdout)
    source, digest = Watched(proc.stdout), Digest()
    if stage == "read":  # as the pipeline reads: into one reused buffer, through the tar watcher
        observed, buffer = _ObservedStream(proc.stdout, source.watcher), memoryview(bytearray(READ_SIZE))
        while observed.readinto(buffer):
            pass
    elif stage == "zstd":
        compressor = zstandard.ZstdCompressor(level=zstd_level, threads=zstd_threads)
        compressor.copy_stream(source, digest, read_size=READ_SIZE, write_size=READ_SIZE)
    else:
        pyrage.encrypt_io(source, digest, [pyrage.x25519.Recipient.from_str(recipient)])
    assert proc.wait() == 0 and source.watcher.ended, f"pg_basebackup failed in stage {stage}"
    return time.perf_counter() - started


STOCK = "| zstd -T2 -1 | age"  # what an operator would otherwise run


def base_stage_table(dsn: str, recipient: str, runs: int, take_ours: Callable[[], float], meter: CpuMeter,
                     zstd_level: int = 1, zstd_threads: int = 2) -> dict[str, list[float]]:
    """Every stage alone and the whole stream, interleaved ``runs`` times against the same server.

    Wall seconds (best of the runs) and CPU seconds (median) per stage; the CPU column is what the
    cores must do, whatever the load, and sets the floor under the wall time on this machine."""
    import resource
    import statistics

    stages: dict[str, Callable[[], float]] = {
        "pg_basebackup > /dev/null": lambda: time_plain_basebackup(dsn),
        "| cat > /dev/null (the pipe alone)": lambda: time_shell_pipeline(dsn, "| cat"),
        f"| zstd -T{zstd_threads} -{zstd_level}": lambda: time_shell_pipeline(
            dsn, f"| zstd -q -T{zstd_threads} -{zstd_level}"),
        STOCK: lambda: time_shell_pipeline(dsn, f"| zstd -q -T2 -1 | age -r {recipient}"),
        "python: read + tar watcher": lambda: time_python_stage(dsn, "read", recipient, zstd_level, zstd_threads),
        "python: read + zstd + sha256 (no age)": lambda: time_python_stage(
            dsn, "zstd", recipient, zstd_level, zstd_threads),
        "python: read + age + sha256 (no zstd)": lambda: time_python_stage(
            dsn, "age", recipient, zstd_level, zstd_threads),
        "dbprotect take_base_backup": take_ours,
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    for run in range(runs):
        for name, stage in stages.items():
            times[name].append(meter.measure(name, stage))
        print(f"Run {run + 1}/{runs}: " + ", ".join(f"{name.split(':')[-1].strip()} {t[-1]:.2f} s"
                                                   for name, t in times.items()), flush=True)
    plain = min(times["pg_basebackup > /dev/null"])
    plain_cpu = statistics.median(meter.seconds["pg_basebackup > /dev/null"])
    print(f"\n  {'stage (wall: best of ' + str(runs) + ', cpu: median)':<42} {'seconds':>8} {'x plain':>8} "
          f"{'cpu s':>7} {'x plain':>8}")
    for name, values in times.items():
        cpu = statistics.median(meter.seconds[name])
        print(f"  {name:<42} {min(values):8.2f} {min(values) / plain:8.2f} {cpu:7.2f} {cpu / plain_cpu:8.2f}")
    print(f"  (peak RSS of this process, every stage included: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    return times


def level_table(levels: list[int], runs: int, take_ours: Callable[[int], float], stored: list[str],
                meter: CpuMeter) -> None:
    """Our base backup at each zstd level, interleaved: wall (best), CPU (median) and stored size."""
    import statistics

    walls: dict[int, list[float]] = {level: [] for level in levels}
    sizes: dict[int, str] = {}
    for _ in range(runs):
        for level in levels:
            walls[level].append(meter.measure(f"level {level}", lambda level=level: take_ours(level)))
            sizes[level] = stored[-1]
    print(f"\n  {'zstd level (best of ' + str(runs) + ')':<24} {'seconds':>8} {'cpu s':>7}  sizes")
    for level in levels:
        print(f"  {level:<24} {min(walls[level]):8.2f} {statistics.median(meter.seconds[f'level {level}']):7.2f}"
              f"  {sizes[level]}")
    print()


def write_config(work: Path, server: Server, recipient: str) -> Path:
    import yaml

    doc = {
        "deployment": "demo",
        "databases": {DB: {"environments": {"production": {"dsn_env": "BENCH_PITR_DSN"}},
                           "continuous": {"slot": "dbprotect_bench", "partial_upload_seconds": 5,
                                          "incremental": False}}},
        "storage": {"local": {"type": "filesystem", "path": str(work / "store")}},
        "keys": {"raw": {"recipients": [recipient], "identity_env": "BENCH_RAW_IDENTITY"}},
    }
    path = work / "dbprotect.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    os.environ["BENCH_PITR_DSN"] = server.dsn(DB)
    return path


def open_for_server(work: Path, store: Path) -> None:
    """Run as root, the restored server runs as 'postgres': let it reach the workdir and read the store
    (never the source server's data directory, which PostgreSQL refuses to use when others can read it)."""
    for folder in [work, *work.parents]:
        if str(folder) in ("/", "/tmp"):
            break
        folder.chmod(folder.stat().st_mode | 0o055)
    for item in [store, *store.rglob("*")]:
        item.chmod(item.stat().st_mode | 0o044 | (0o011 if item.is_dir() else 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the database on disk")
    parser.add_argument("--runs", type=int, default=2, help="timed base backups of each kind (best is kept)")
    parser.add_argument("--workdir", type=Path, help="folder for the server and outputs (default: a new temp dir)")
    parser.add_argument("--base-only", action="store_true", help="stop after the base backup's stage table")
    from dbprotect.core.continuous.base import DEFAULT_BASE_ZSTD_LEVEL

    parser.add_argument("--level", type=int, default=DEFAULT_BASE_ZSTD_LEVEL,
                        help="zstd level of our base backup (default: continuous.base_compression_level's)")
    parser.add_argument("--levels", type=int, nargs="*", default=[],
                        help="first compare our base backup at these zstd levels (e.g. -5 -1 1 3)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (its server is reused by --workdir)")
    args = parser.parse_args()

    import psycopg

    from dbprotect.core.config.load import load_config
    from dbprotect.core.continuous.base import take_base_backup
    from dbprotect.core.continuous.pitr import stop_restored
    from dbprotect.core.continuous.wal import stored_segments
    from dbprotect.core.crypto import generate_keypair
    from dbprotect.core.ops.backups import backup_database, verify_database_backup
    from dbprotect.core.ops.continuous import base_backup_database, receive_database_wal, restore_database_to_point
    from dbprotect.core.ops.restores import restore_database
    from dbprotect.core.store import FilesystemStorage

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dbprotect-cbench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"Working in {work}", flush=True)
    server = Server(work / "pgdata")
    server.start()
    identity, recipient = generate_keypair()
    os.environ["BENCH_RAW_IDENTITY"] = identity
    try:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'")
            conn.execute("SELECT pg_reload_conf()")
        size = build_database(server, DB, int(args.size_gb * 1e9))
        dsn = server.dsn(DB)
        source_counts = counts(dsn)

        # (a) base backup through the stream vs plain pg_basebackup to /dev/null, each stage alone, interleaved
        stored: list[str] = []

        def take_ours(level: int = args.level) -> float:
            scratch = work / "base-store"
            started = time.perf_counter()
            record = take_base_backup(database=DB, dsn=server.admin_dsn, storage=FilesystemStorage(scratch),
                                      recipients=[recipient], incremental=False, pg_bin_dir=pg_bin(),
                                      zstd_level=level)
            seconds = time.perf_counter() - started
            shutil.rmtree(scratch, ignore_errors=True)
            stored.append(f"{record.base['tar_bytes'] / 1e6:.0f} MB tar, {record.base['size'] / 1e6:.0f} MB stored")
            return seconds

        meter = CpuMeter(work / "pgdata")
        if args.levels:
            level_table(args.levels, args.runs, take_ours, stored, meter)
        stage_times = base_stage_table(server.admin_dsn, recipient, args.runs, take_ours, meter)
        plain, ours = stage_times["pg_basebackup > /dev/null"], stage_times["dbprotect take_base_backup"]
        print(f"  ({stored[-1]}, zstd level {args.level})")
        base_ratio = min(ours) / min(plain)
        stock_ratio = min(ours) / min(stage_times[STOCK])
        # Load-independent floor: ours cannot finish in less than its CPU seconds over the cores, and
        # plain, its pages cached, takes at most its own CPU seconds (its two processes run in turn at
        # worst); so on this machine, quiet, the ratio cannot be below this. Under a heavy load the wall
        # ratio can look better than that (plain's two processes get a smaller share of the cores than
        # our threads): a wall ratio under the target with a floor above it is not a pass.
        cores = os.cpu_count() or 1
        cpu_ours = statistics.median(meter.seconds["dbprotect take_base_backup"])
        cpu_plain = statistics.median(meter.seconds["pg_basebackup > /dev/null"])
        cpu_floor = cpu_ours / cores / cpu_plain
        verdict = "PASS" if base_ratio <= TARGET_BASE_RATIO and cpu_floor <= TARGET_BASE_RATIO else "FAIL"
        print(f"\n  {verdict}  base backup {min(ours):.2f} s vs pg_basebackup > /dev/null {min(plain):.2f} s: "
              f"{base_ratio:.2f}x (target <= {TARGET_BASE_RATIO}x), load average {os.getloadavg()[0]:.1f}")
        print(f"        vs stock pg_basebackup | zstd -T2 -1 | age -r {min(stage_times[STOCK]):.2f} s: "
              f"{stock_ratio:.2f}x")
        print(f"        CPU floor: ours {cpu_ours:.2f} CPU s over {cores} cores / plain's {cpu_plain:.2f} CPU s = "
              f"{cpu_floor:.2f}x: no quiet run of this machine can beat it"
              + (" (so the wall ratio above is a load artefact)" if base_ratio <= TARGET_BASE_RATIO < cpu_floor
                 else ""))
        if args.base_only:
            print(json.dumps({"database_bytes": size, "runs": args.runs, "statistic": "best", "zstd_level": args.level,
                              "stages_s": {name: [round(x, 3) for x in values] for name, values in stage_times.items()},
                              "stages_cpu_s": {name: [round(x, 3) for x in values]
                                               for name, values in meter.seconds.items()},
                              "base_ratio": round(base_ratio, 3), "stock_ratio": round(stock_ratio, 3),
                              "cpu_floor_ratio": round(cpu_floor, 3),
                              "load_average_1min": round(os.getloadavg()[0], 2)}))
            return

        # (b) PITR restore vs logical restore of the same data
        for leftover in ("store", "spool", "restored"):  # a --keep run's
            shutil.rmtree(work / leftover, ignore_errors=True)
        config = load_config(write_config(work, server, recipient))
        stop = threading.Event()
        receiver = threading.Thread(target=receive_database_wal, args=(config, DB),
                                    kwargs={"stop": stop, "log": lambda line: None, "spool": work / "spool"},
                                    daemon=True)
        receiver.start()
        try:
            time.sleep(3)
            base_backup_database(config, DB)
            logical = backup_database(config, DB)
            verify_database_backup(config, DB, logical.manifest.backup_id)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS bench_marker (note text)")
                conn.execute("INSERT INTO bench_marker VALUES ('before')")
                target = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                time.sleep(1.1)
                conn.execute("INSERT INTO bench_marker VALUES ('after')")
                last = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]  # type: ignore[index]
                conn.execute("SELECT pg_switch_wal()")
            storage = FilesystemStorage(work / "store")
            deadline = time.monotonic() + 300
            while last not in stored_segments(storage, DB).get(1, []):
                if time.monotonic() > deadline:
                    raise SystemExit(f"segment {last} was not shipped in 300 s")
                time.sleep(0.5)
        finally:
            stop.set()
            receiver.join(timeout=60)
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('dbprotect_bench')")
        open_for_server(work, work / "store")

        started = time.perf_counter()
        restored = restore_database_to_point(config, DB, data_dir=work / "restored", to_time=target)
        try:
            restored_dsn = restored.dsn(DB)
            with psycopg.connect(restored_dsn) as conn:
                marker = [row[0] for row in conn.execute("SELECT note FROM bench_marker").fetchall()]
            assert marker == ["before"], f"PITR restored the markers {marker}, not exactly 'before'"
            assert counts(restored_dsn) == source_counts, "PITR restore's row counts differ from the source"
            pitr_seconds = time.perf_counter() - started
        finally:
            stop_restored(restored)
        started = time.perf_counter()
        result = restore_database(config, DB, logical.manifest.backup_id, target_name="pitr_logical_restore")
        logical_seconds = time.perf_counter() - started
        assert counts(server.dsn(result.target_database)) == source_counts  # type: ignore[union-attr]
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{result.target_database}" WITH (FORCE)')  # type: ignore[union-attr]
        load = os.getloadavg()[0]
        figures: dict[str, Any] = {
            "database_bytes": size, "runs": args.runs, "statistic": "best",
            "pg_basebackup_s": round(min(plain), 3), "dbprotect_base_s": round(min(ours), 3),
            "pg_basebackup_all_s": [round(x, 3) for x in plain], "dbprotect_base_all_s": [round(x, 3) for x in ours],
            "stages_s": {name: [round(x, 3) for x in values] for name, values in stage_times.items()},
            "base_ratio": round(base_ratio, 3), "pitr_restore_s": round(pitr_seconds, 3),
            "logical_restore_s": round(logical_seconds, 3),
            "logical_over_pitr": round(logical_seconds / pitr_seconds, 3), "load_average_1min": round(load, 2),
            "stock_ratio": round(stock_ratio, 3), "cpu_floor_ratio": round(cpu_floor, 3),
            "pass": {f"base backup <= {TARGET_BASE_RATIO}x pg_basebackup": verdict == "PASS"},
        }
        print(f"\nDatabase {size / 1e6:.0f} MB, load average {load:.1f} (2 cores shared)")
        print(f"  {verdict}  base backup {min(ours):.2f} s vs pg_basebackup > /dev/null {min(plain):.2f} s: "
              f"{base_ratio:.2f}x (target <= {TARGET_BASE_RATIO}x; CPU floor {cpu_floor:.2f}x)")
        print(f"  PITR restore, promoted and checked: {pitr_seconds:.2f} s; logical restore: {logical_seconds:.2f} s; "
              f"logical / PITR = {logical_seconds / pitr_seconds:.2f}x")
        print(json.dumps(figures))
    finally:
        server.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
