"""One backup: ``pg_dump -Fc -Z0`` → zstd → age → SHA-256 → store, in one pass, then the manifest.

Order of operations, and why:

1. A control connection opens a REPEATABLE READ transaction and exports its snapshot. pg_dump
   runs with ``--snapshot`` so it reads exactly that state; the control connection stays open
   until the end so the snapshot stays valid and can serve the fallback digests.
2. pg_dump's output is read from a pipe. Each chunk passes the archive inspector (row counts and
   content checksums per table, :mod:`dbprotect.core.backup.archive`), then zstd (multi-threaded), then
   age encryption; the encrypted bytes are hashed with SHA-256 and written to the store. Memory
   is constant and no plaintext touches disk. The zstd → age → SHA-256 part is the one pipeline every
   writer shares (:func:`dbprotect.core.backup.pipeline.encrypt_to_store`).
3. The stored object is committed only if pg_dump exited 0 *and* the archive ended where a
   complete archive ends. Otherwise the write is aborted: no object, no manifest.
4. The manifest is written last, write-once (``put_if_absent``): a backup without a manifest does
   not exist for the catalog, and a manifest is never replaced. It records the audit log's head
   at that moment (``audit_head``), an anchor that makes a truncated log detectable.

The whole backup holds the database's writer lock in the store (:mod:`dbprotect.core.store.lock`),
whoever calls it (a backup, a restore's safety backup, a sanitized copy, a schema guard): a second
writer of the same database waits briefly, then fails naming the holder. Taking the lock first
sweeps what killed backups of that database left (``.partial-`` files, old multipart uploads).

The password is passed to pg_dump through ``PGPASSWORD``, never on its command line (where any
user of the machine could read it in the process list).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

import psycopg
import zstandard

import dbprotect
from dbprotect.core.audit import audit_head
from dbprotect.core.backup.archive import (
    CHECKSUM_ALGORITHM,
    ArchiveInspector,
    ArchiveSummary,
    TruncatedArchive,
    UnsupportedArchive,
    large_objects_digest,
)
from dbprotect.core.backup.content import (
    DUMP_SESSION,
    definition_records,
    digest_table,
    materialized_view_records,
    pin_session,
)
from dbprotect.core.backup.pipeline import READ_SIZE, StderrTail, encrypt_to_store, enlarge_pipe
from dbprotect.core.crypto import fingerprint, parse_recipients
from dbprotect.core.errors import StorageError, ToolError
from dbprotect.core.pg.dsn import mask_dsn, server_label
from dbprotect.core.pg.markers import owned_database_settings
from dbprotect.core.pg.tools import (
    ToolPlace,
    connect,
    require_tool_for_server,
    server_major,
    server_version_text,
    split_password,
    tool_env,
)
from dbprotect.core.store import Storage
from dbprotect.core.store.lock import database_lock, ensure_lock_held
from dbprotect.core.store.manifest import (
    CatalogRecord,
    DatabaseSettingsRecord,
    Manifest,
    TableRecord,
    dump_key,
    manifest_key,
    new_backup_id,
)

#: zstd level 1 keeps the backup within 1.8x of bare extraction on two cores; it stores about 2.6%
#: more than plain ``pg_dump -Fc``. Level 2 (``compression_level: 2``) compresses with
#: :data:`ARCHIVE_ZSTD_PARAMS` instead of zstd's own level-2 table and stores about 1% less than
#: plain ``pg_dump -Fc``, for about 1.7x the backup's CPU. Other levels keep zstd's own tables.
#: Figures in bench/README.md.
DEFAULT_ZSTD_LEVEL = 1
SMALLER_THAN_GZIP_LEVEL = 2

#: zstd parameters for level 2 on a ``pg_dump -Fc -Z0`` archive. Why level 1 cannot match plain
#: ``pg_dump -Fc``: the ``-Z0`` archive carries a 5-byte chunk header (sign byte and row length)
#: before every row, about 4.5 MB of nearly incompressible bytes on the 192 MB bench archive, while
#: plain ``pg_dump -Fc`` gzips each table's rows without them. On the *same* bytes zstd level 1 is
#: as good as gzip -6 (+0.3% with the headers, -0.7% with them stripped); the headers alone cost
#: level 1 about 2.3 MB there, the whole gap to plain (+2.6%). Stripping them would change the
#: stored archive (the stock-tools restore reads it as is), and the embedded pg_dump is built
#: without zstd and lz4, so pg_dump cannot compress inside the archive cheaply. What remains is
#: finding more matches elsewhere: ``greedy`` with a 128 K-entry hash table, a 2-step search and
#: 6-byte minimum matches is 1% smaller than gzip, for about 3-4x level 1's zstd CPU; ``lazy``
#: with the smallest search is no cheaper, ``dfast`` and larger ``fast`` tables stay above gzip.
#: No setting found beats gzip at level 1's CPU (the frontier is in bench/README.md).
ARCHIVE_ZSTD_PARAMS = {"strategy": zstandard.STRATEGY_GREEDY, "window_log": 19, "chain_log": 16, "hash_log": 17,
                       "search_log": 2, "min_match": 6, "target_length": 0}


def archive_zstd_params(level: int, threads: int) -> zstandard.ZstdCompressionParameters | None:
    """The logical archive's zstd parameters for ``level``; None means zstd's own for that level."""
    if level != SMALLER_THAN_GZIP_LEVEL:
        return None
    return zstandard.ZstdCompressionParameters(**ARCHIVE_ZSTD_PARAMS, threads=threads)


ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BackupResult:
    manifest: Manifest
    uri: str

    def metrics(self) -> dict[str, float]:
        """Numbers for Dagster metadata and ``--json`` output (plotted over history)."""
        m = self.manifest
        dump = m.bytes["dump"]
        return {
            "dump_bytes": dump,
            "compressed_bytes": m.bytes["compressed"],
            "stored_bytes": m.bytes["stored"],
            "compression_ratio": round(dump / m.bytes["stored"], 3) if m.bytes["stored"] else 0.0,
            "duration_seconds": round(m.duration_seconds, 3),
            "throughput_mb_per_s": round(dump / 1e6 / m.duration_seconds, 2) if m.duration_seconds else 0.0,
            "tables": len(m.tables),
            "total_rows": m.total_rows,
            "checksum_seconds": round(float(m.checksum.get("seconds", 0.0)), 3),
        }


class _DumpReader:
    """pg_dump's stdout, observed: counts bytes, feeds the inspector, reports progress."""

    def __init__(self, stream: BinaryIO, inspector: ArchiveInspector, progress: ProgressCallback | None,
                 estimate: int) -> None:
        self._stream = stream
        self._inspector = inspector
        self._progress = progress
        self._estimate = estimate
        self.bytes = 0
        self.inspect_seconds = 0.0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if size and size > 0 else READ_SIZE)
        if data:
            self.bytes += len(data)
            started = time.perf_counter()
            self._inspector.feed(data)
            self.inspect_seconds += time.perf_counter() - started
            if self._progress:
                self._progress(self.bytes, max(self._estimate, self.bytes))
        return data


def _pg_dump_env(password: str | None) -> dict[str, str]:
    options = (os.environ.get("PGOPTIONS", "") + f" -c bytea_output={DUMP_SESSION['bytea_output']}").strip()
    return tool_env(password, PGTZ=DUMP_SESSION["TimeZone"], PGOPTIONS=options, PGAPPNAME="dbprotect-pg_dump")


@dataclass(frozen=True)
class _Snapshot:
    name: str
    taken_at: datetime
    dbname: str
    size_bytes: int
    encoding: str
    lc_monetary: str
    server_version: str
    server_major: int


def _export_snapshot(conn: psycopg.Connection) -> _Snapshot:
    pin_session(conn, DUMP_SESSION)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    row = conn.execute(
        "SELECT pg_export_snapshot(), now(), current_database(), pg_database_size(current_database()),"
        " current_setting('server_encoding'), current_setting('lc_monetary')"
    ).fetchone()
    assert row is not None
    return _Snapshot(row[0], row[1], row[2], int(row[3]), row[4], row[5], server_version_text(conn),
                     server_major(conn))


def run_backup(*, database: str, dsn: str, storage: Storage, recipients: list[str],
               environment: str = "production", pg_bin_dir: ToolPlace = None,
               zstd_level: int = DEFAULT_ZSTD_LEVEL, zstd_threads: int = 2,
               progress: ProgressCallback | None = None,
               exclude_table_data: Sequence[str] = (),
               now: Callable[[], datetime] = lambda: datetime.now(UTC),
               owner: str = "dbprotect backup",
               finish: Callable[[Manifest], Manifest] | None = None) -> BackupResult:
    """Take one backup of ``dsn`` into ``storage``; see the module docstring for the guarantees.

    ``exclude_table_data``: pg_dump table patterns whose rows are left out (their definitions are
    kept), for caches and logs nobody restores; they are absent from the manifest's tables.
    ``owner`` names the writer in the database's lock while the backup runs. ``finish`` may add
    to the manifest before it is written (a sanitized copy's lineage): it is written once, never
    rewritten afterwards.
    """
    with database_lock(storage, database, owner=owner):
        return _take_backup(database=database, dsn=dsn, storage=storage, recipients=recipients,
                            environment=environment, pg_bin_dir=pg_bin_dir, zstd_level=zstd_level,
                            zstd_threads=zstd_threads, progress=progress, exclude_table_data=exclude_table_data,
                            now=now, finish=finish)


def _take_backup(*, database: str, dsn: str, storage: Storage, recipients: list[str], environment: str,
                 pg_bin_dir: ToolPlace, zstd_level: int, zstd_threads: int, progress: ProgressCallback | None,
                 exclude_table_data: Sequence[str], now: Callable[[], datetime],
                 finish: Callable[[Manifest], Manifest] | None = None) -> BackupResult:
    age_recipients = parse_recipients(recipients)
    started_at = now()
    clock_start = time.perf_counter()
    backup_id = new_backup_id(started_at)
    control = connect(dsn, autocommit=True, application_name="dbprotect-backup")
    try:
        snapshot = _export_snapshot(control)
        pg_dump = require_tool_for_server("pg_dump", snapshot.server_major, pg_bin_dir, dsn=dsn)
        dsn_without_password, password = split_password(dsn)
        excluded = [f"--exclude-table-data={pattern}" for pattern in exclude_table_data]
        args = [str(pg_dump.path), "--format=custom", "--compress=0", f"--snapshot={snapshot.name}",
                "--no-password", *excluded, f"--dbname={dsn_without_password}"]
        inspector = ArchiveInspector()
        key = dump_key(database, backup_id)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=_pg_dump_env(password))
        assert proc.stdout is not None and proc.stderr is not None
        enlarge_pipe(proc.stdout)
        stderr = StderrTail(proc.stderr)
        try:
            with storage.open_writer(key) as writer:
                dump_reader = _DumpReader(proc.stdout, inspector, progress, snapshot.size_bytes)
                stored = encrypt_to_store(dump_reader, writer, age_recipients, storage=storage,
                                          zstd_level=zstd_level, zstd_threads=zstd_threads,
                                          zstd_params=archive_zstd_params(zstd_level, zstd_threads))
                returncode = proc.wait()
                stderr.join(timeout=5)
                if returncode != 0:
                    raise _pg_dump_failure(returncode, stderr.last_error(), dsn)
                summary = _finish_inspection(inspector, control)
                session = {**DUMP_SESSION, "client_encoding": snapshot.encoding, "lc_monetary": snapshot.lc_monetary}
                catalog = _capture_catalog(summary, control, session, pg_dump.major, complete=not inspector.failed)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        finished_at = now()
        manifest = Manifest(
            tool_version=dbprotect.__version__,
            database=database,
            backup_id=backup_id,
            environment=environment,
            source={
                "server": server_label(dsn), "dbname": snapshot.dbname, "server_version": snapshot.server_version,
                "server_major": snapshot.server_major, "encoding": snapshot.encoding,
                "size_bytes": snapshot.size_bytes,
            },
            pg_dump={
                "version": pg_dump.text, "major": pg_dump.major,
                "archive_version": ".".join(map(str, summary.header.version)) if summary.header else None,
                "args": ["--format=custom", "--compress=0", "--snapshot=<exported>", *excluded],
            },
            started_at=started_at,
            snapshot_at=snapshot.taken_at,
            finished_at=finished_at,
            duration_seconds=time.perf_counter() - clock_start,
            bytes={"dump": dump_reader.bytes, "compressed": stored.compressed_bytes, "stored": stored.stored_bytes},
            object={"key": key.rsplit("/", 1)[-1], "size": stored.stored_bytes, "sha256": stored.sha256},
            compression={"algorithm": "zstd", "level": zstd_level},
            encryption={
                "format": "age-v1", "recipients": [{"fingerprint": fingerprint(r), "recipient": r} for r in recipients],
            },
            checksum={
                "algorithm": CHECKSUM_ALGORITHM,
                "source": "archive-stream" if not inspector.failed else "copy-in-snapshot",
                "session": session,
                "seconds": round(dump_reader.inspect_seconds, 3),
            },
            tables={
                name: TableRecord(rows=digest.rows, checksum=digest.checksum,
                                  columns=summary.table_columns.get(name), **_schema_and_name(summary, name))
                for name, digest in sorted(summary.tables.items())
            },
            sequences=summary.sequences(),
            large_objects={"count": summary.large_objects, "bytes": summary.large_object_bytes},
            audit_head=audit_head(storage),
            catalog=catalog,
        )
        if finish is not None:
            manifest = finish(manifest)
        # the commit: only while the lock is still ours (a holder stalled past its lease could
        # otherwise commit beside a cleanup that already judged this folder an abandoned upload)
        ensure_lock_held(storage, database, f"backup {backup_id} of {database}")
        if not storage.put_if_absent(manifest_key(database, backup_id), manifest.to_json()):
            raise StorageError(f"{storage.uri}: backup {backup_id} of {database} already has a manifest: nothing "
                               "was replaced", hint="two writers chose one backup id; take the backup again")
        return BackupResult(manifest, storage.object_uri(key))
    finally:
        with contextlib.suppress(Exception):
            control.close()


def _capture_catalog(summary: ArchiveSummary, control: psycopg.Connection, session: dict[str, str],
                     pg_dump_major: int, *, complete: bool) -> CatalogRecord | None:
    """Definitions and owners from the archive's TOC, materialized views read in the exported snapshot.

    Why here: pg_dump rendered the definitions in this snapshot and the control connection still
    holds it, so every part of the record describes the same moment as the data. None when the
    archive could not be read (its TOC is then unknown; the comparison says what it cannot check).
    """
    if not complete:
        return None
    definitions, owners = definition_records(summary.toc)
    pin_session(control, session)
    return CatalogRecord(pg_dump_major=pg_dump_major, definitions=definitions, owners=owners,
                         materialized_views=materialized_view_records(control),
                         large_objects_digest=large_objects_digest(summary.large_object_terms),
                         database_settings=settings_record(control))


def settings_record(conn: psycopg.Connection) -> DatabaseSettingsRecord:
    """The connected database's own settings (:func:`dbprotect.core.pg.markers.owned_database_settings`).

    Why in the snapshot: ``pg_dump`` without ``--create`` never writes them, so a restore can only
    bring them back, and a comparison only check them, from what the backup recorded here.
    """
    found = owned_database_settings(conn)
    return DatabaseSettingsRecord(all_roles=found.pop("", {}), roles=found)


def _schema_and_name(summary: ArchiveSummary, qualified: str) -> dict[str, str]:
    for entry in summary.toc:
        if entry.desc == "TABLE DATA" and entry.qualified_name == qualified:
            return {"schema": entry.namespace, "name": entry.tag}
    schema, _, name = qualified.partition(".")
    return {"schema": schema, "name": name}


def _finish_inspection(inspector: ArchiveInspector, control: psycopg.Connection) -> ArchiveSummary:
    """The inspector's result; when it could not read this archive version, digest over COPY instead."""
    try:
        return inspector.finish()
    except TruncatedArchive as exc:
        raise ToolError(f"pg_dump's output ended early ({exc}); the backup was discarded") from None
    except UnsupportedArchive:
        summary = inspector.summary
        summary.tables.clear()
        for entry in summary.toc:
            if entry.desc == "TABLE DATA":
                name = entry.qualified_name
                summary.tables[name] = digest_table(control, entry.namespace, entry.tag, entry.copy_columns)
                summary.table_columns[name] = entry.copy_columns
        summary.complete = True
        return summary


def _pg_dump_failure(returncode: int, reason: str, dsn: str) -> ToolError:
    killed = returncode < 0
    detail = f"pg_dump was killed by signal {-returncode}" if killed else f"pg_dump failed (exit {returncode})"
    reason = reason.replace(dsn, mask_dsn(dsn))
    return ToolError(f"{detail}: {reason}" if reason else detail,
                     hint="the partial backup was discarded; the previous backups are untouched")
