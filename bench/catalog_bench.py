"""Catalog at scale: 10,000 backup manifests across 50 databases, on a folder and on S3 (moto).

What it shows (issue 4, "Scale"):

- on the filesystem, ``status`` (every database: RPO, per-target holdings and next cleanup),
  ``list`` (every database) and the retention plan (every database) each finish in under 1 s;
- on S3 the same operations make a number of requests equal to the number of LIST pages
  (``ceil(keys under <db>/ / 1000)`` per database) and **no GET per backup**: everything they need
  is in the object keys and sizes (backup id = time, ``manifest.json`` present = complete, dump
  size = bytes, ``checks/<time>-<rung>-<ok|failed>.json`` = verification state).

The store is synthesized with the real layout: a real manifest JSON per backup (the model's own
serializer), a tiny dump object, and ``stored``/``readable`` check objects on 9 backups of 10.
Databases hold 20 to 380 backups (200 on average), so some need two LIST pages and the request
counts can be compared with the page arithmetic per database. S3 objects are put straight into
moto's in-process backend (seeding 36,000 objects over HTTP would take minutes); every measured
operation goes over HTTP through boto3, and requests are counted with botocore's event hooks.

Run: ``.venv/bin/python bench/catalog_bench.py`` (prints a table, PASS/FAIL lines, one JSON line).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dbprotect.core.config.load import parse_config  # noqa: E402
from dbprotect.core.config.model import Config  # noqa: E402
from dbprotect.core.ops import database_status, primary_store  # noqa: E402
from dbprotect.core.retention.cleanup import plan_cleanup  # noqa: E402
from dbprotect.core.retention.policy import RetentionPolicy  # noqa: E402
from dbprotect.core.store.catalog import list_backups  # noqa: E402
from dbprotect.core.store.manifest import Manifest, check_key, dump_key, manifest_key  # noqa: E402

DATABASES = 50
BACKUPS = 10_000
LIMIT_SECONDS = 1.0
POLICY = "keep_daily=14, keep_weekly=8, keep_monthly=12, max_age=400d"
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
NOW = datetime.now(UTC).replace(microsecond=0)


def sizes() -> dict[str, int]:
    """Backups per database: 20, 27, ... 380 (linear), summing to exactly 10,000."""
    counts = [round(20 + i * 360 / (DATABASES - 1)) for i in range(DATABASES)]
    counts[-1] += BACKUPS - sum(counts)
    return {f"db{i:02d}": n for i, n in enumerate(counts)}


def synthesize(databases: dict[str, int]) -> dict[str, bytes]:
    """Every object of the store, key -> bytes, in the real layout."""
    objects: dict[str, bytes] = {}
    for database, count in databases.items():
        for day in range(count):
            started = NOW - timedelta(days=day, hours=2)
            backup_id = f"{started:%Y%m%dT%H%M%SZ}-{day % 0xFFFFFF:06x}"
            dump = f"age-encryption.org/v1 {database} {backup_id}".encode()
            finished = started + timedelta(minutes=3)
            manifest = Manifest(
                tool_version="0.1.0", database=database, backup_id=backup_id,
                source={"dbname": database, "server_version": "18.0"}, pg_dump={"version": "18.0", "major": 18},
                started_at=started, snapshot_at=started, finished_at=finished, duration_seconds=180.0,
                bytes={"dump": 10 * len(dump), "compressed": len(dump), "stored": len(dump)},
                object={"key": "dump.zst.age", "size": len(dump), "sha256": hashlib.sha256(dump).hexdigest()},
                compression={"algorithm": "zstd", "level": 1}, encryption={"format": "age-v1", "recipients": []},
                checksum={"algorithm": "sha256"},
                tables={"public.accounts": {"rows": 1000 + day, "checksum": f"{day:032x}"}},
            )
            objects[dump_key(database, backup_id)] = dump
            objects[manifest_key(database, backup_id)] = manifest.to_json()
            if day % 10 != 9:  # 9 of 10 verified; the rest never were
                for rung in ("stored", "readable"):
                    objects[check_key(database, backup_id, finished, rung, True)] = b'{"ok": true}\n'
    return objects


def config_for(storage: dict[str, Any], databases: dict[str, int]) -> Config:
    doc = {
        "deployment": "production",
        "databases": {name: {"environments": {"production": {"dsn_env": f"{name.upper()}_DSN"}},
                             "retention": POLICY, "rpo_hours": 26} for name in databases},
        "storage": {"store": storage},
        "keys": {"raw": {"recipients": [RECIPIENT], "identity_env": "BENCH_IDENTITY"}},
    }
    return parse_config(yaml.safe_dump(doc))


#: The measured operations: what ``dbprotect status`` does (every database), what ``dbprotect list DB``
#: and ``dbprotect cleanup --dry-run DB`` do for the largest database (380 backups), and the last
#: two over all 50 databases for scale. The < 1 s limit applies to the first three.
OPERATIONS = ("status", "list", "retention plan", "list (all 50)", "retention plan (all 50)")
LIMITED = ("status", "list", "retention plan")


def operations(config: Config, databases: dict[str, int]) -> dict[str, Callable[[], Any]]:
    policy = RetentionPolicy.parse(POLICY)
    stores = {name: primary_store(config, name) for name in databases}
    largest = max(databases, key=lambda name: databases[name])
    return {
        "status": lambda: [database_status(config, name, NOW) for name in databases],
        "list": lambda: list_backups(stores[largest], largest),
        "retention plan": lambda: plan_cleanup(stores[largest], largest, policy, NOW),
        "list (all 50)": lambda: [list_backups(stores[name], name) for name in databases],
        "retention plan (all 50)": lambda: [plan_cleanup(stores[name], name, policy, NOW) for name in databases],
    }


def expected_pages(keys_per_db: Counter[str], databases: dict[str, int], operation: str) -> int:
    names = [max(databases, key=lambda name: databases[name])] if operation in ("list", "retention plan") \
        else list(databases)
    return sum(math.ceil(keys_per_db[name] / 1000) for name in names)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def bench_filesystem(objects: dict[str, bytes], databases: dict[str, int], work: Path) -> dict[str, Any]:
    root = work / "fs-store"
    for key, data in objects.items():  # written directly: the layout is the store's, fsync is not measured
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    config = config_for({"type": "filesystem", "path": str(root)}, databases)
    results: dict[str, Any] = {}
    for name, fn in operations(config, databases).items():
        fn()  # warm the page cache once: the measured run is the steady state
        seconds = min(timed(fn)[0] for _ in range(3))
        results[name] = {"seconds": round(seconds, 3), "ok": seconds < LIMIT_SECONDS or name not in LIMITED}
    statuses = operations(config, databases)["status"]()
    results["check"] = {
        "backups": sum(s.backups for s in statuses),
        "verified": sum(t.verified for s in statuses for t in s.targets),
        "next_cleanup_deletes": sum(len(t.plan.deletions) for s in statuses for t in s.targets if t.plan),
    }
    return results


def bench_s3(objects: dict[str, bytes], databases: dict[str, int]) -> dict[str, Any]:
    from moto.backends import get_backend
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket, prefix = "catalog-bench", "dbprotect"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        backend = get_backend("s3")[next(iter(get_backend("s3")))]["global"]
        for key, data in objects.items():
            backend.put_object(bucket, f"{prefix}/{key}", data)
        config = config_for({"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint,
                             "region": "us-east-1"}, databases)
        keys_per_db = Counter(key.split("/", 1)[0] for key in objects)
        results: dict[str, Any] = {"keys": len(objects)}
        for name in OPERATIONS:
            calls: Counter[str] = Counter()
            seconds, _value = _timed_with_hooks(config, databases, name, calls)
            get = calls.get("GetObject", 0) + calls.get("HeadObject", 0)
            pages = expected_pages(keys_per_db, databases, name)
            results[name] = {"seconds": round(seconds, 3), "requests": sum(calls.values()),
                             "list_requests": calls.get("ListObjectsV2", 0), "get_requests": get,
                             "expected_list_pages": pages,
                             "ok": get == 0 and calls.get("ListObjectsV2", 0) == pages == sum(calls.values())}
        return results
    finally:
        server.stop()


def _timed_with_hooks(config: Config, databases: dict[str, int], name: str,
                      calls: Counter[str]) -> tuple[float, Any]:
    """Run one operation counting, per API operation, the requests of every S3 client it creates."""
    import boto3

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    original = boto3.session.Session.client

    def client(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)
        made.meta.events.register("before-call.s3.*", count)
        return made

    boto3.session.Session.client = client  # type: ignore[method-assign]
    try:
        return timed(operations(config, databases)[name])
    finally:
        boto3.session.Session.client = original  # type: ignore[method-assign]


def main() -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    databases = sizes()
    started = time.perf_counter()
    objects = synthesize(databases)
    manifests = sum(1 for key in objects if key.endswith("/manifest.json"))
    print(f"synthesized {manifests:,} manifests, {len(objects):,} objects across {len(databases)} databases "
          f"(20..380 backups each) in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as work:
        fs = bench_filesystem(objects, databases, Path(work))
    s3 = bench_s3(objects, databases)

    print()
    print(f"{'operation':<26} {'filesystem s':>13} {'< 1 s':>6}   {'S3 s (moto)':>11} {'requests':>9} "
          f"{'LIST':>5} {'GET/HEAD':>9} {'LIST pages expected':>20}")
    for name in OPERATIONS:
        f, s = fs[name], s3[name]
        verdict = ("PASS" if f["ok"] else "FAIL") if name in LIMITED else "-"
        print(f"{name:<26} {f['seconds']:>13.3f} {verdict:>6}   {s['seconds']:>11.2f} "
              f"{s['requests']:>9} {s['list_requests']:>5} {s['get_requests']:>9} {s['expected_list_pages']:>20}")
    print()
    for name in OPERATIONS:
        if name in LIMITED:
            print(f"{'PASS' if fs[name]['ok'] else 'FAIL'}: filesystem {name} in {fs[name]['seconds']:.3f} s (< 1 s)")
        print(f"{'PASS' if s3[name]['ok'] else 'FAIL'}: S3 {name}: {s3[name]['requests']} request(s), all LIST, = "
              f"{s3[name]['expected_list_pages']} page(s) of ceil(keys/1000); {s3[name]['get_requests']} GET/HEAD "
              f"(one per backup would be {manifests:,})")
    print(f"store check: {fs['check']['backups']:,} backups listed, {fs['check']['verified']:,} verified, next "
          f"cleanup would delete {fs['check']['next_cleanup_deletes']:,} ({POLICY})")
    ok = all(fs[n]["ok"] and s3[n]["ok"] for n in OPERATIONS)
    print(json.dumps({"bench": "catalog", "manifests": manifests, "objects": len(objects), "databases": len(databases),
                      "filesystem": fs, "s3": s3, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
