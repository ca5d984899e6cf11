"""Rung 3 of the verification ladder, *restored*, and the restore machinery it shares with on-call
restores and drills.

A backup is restored with ``pg_restore -j <cores>``, which needs a seekable file, so the stored
object is decrypted and decompressed into a private (0700) temporary folder first; the folder is
removed as soon as pg_restore is done with it, also on failure and on ``KeyboardInterrupt``. The
SHA-256 of the stored object is checked on the way in, so a restore never runs from an object
that differs from its manifest.

The restored database is then compared with what was captured at dump time:

- every table's row count and content checksum (:func:`dbprotect.core.backup.content.digest_table` over
  COPY, with the session settings recorded in the manifest);
- the set of schema objects: what the archive's table of contents (``pg_restore --list``) says
  exists against what the restored catalog holds (tables, views, materialized views, sequences,
  indexes, constraints, functions, triggers, policies, row-level security, types, domains,
  schemas), both ways;
- every sequence's value and ``is_called`` against ``manifest.sequences``, and the number of
  large objects.

Any difference fails, naming the table or object and what differs.

Reading every table back is most of the cost of verifying, so it overlaps the restore
(:class:`TableVerifier`): pg_restore runs with ``--verbose``, and each table is digested as soon
as pg_restore reports its TABLE DATA item finished (committed; nothing later in the archive
changes a table's rows), over one connection per job, largest table first, while pg_restore
goes on loading the other tables and building indexes. Large tables are read through ``psql``
in big buffers, and the largest in page ranges over all connections at once. The digest, the
session settings and the problems reported are those of the one-connection comparison.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pyrage
import zstandard
from psycopg import sql

from dbprotect.core.backup.archive import TableDigest
from dbprotect.core.backup.content import (
    DUMP_SESSION,
    digest_copy_psql,
    digest_table,
    digest_table_psql,
    pin_session,
)
from dbprotect.core.errors import CryptoError, DbprotectError, IntegrityError, ToolError
from dbprotect.core.pg.scratch import ScratchServer, scratch_database
from dbprotect.core.pg.tools import connect, require_tool_for_server, split_password, tool_env
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import record_verification
from dbprotect.core.store.manifest import Manifest, Verification, dump_key
from dbprotect.core.verify.integrity import HashingReader, check_identity_matches, summarize_problems

if TYPE_CHECKING:
    from dbprotect.core.audit import AuditLog

CHUNK = 1 << 20
POLL_SECONDS = 0.25

#: Called with the phase name (``decrypt``, ``restore``, ``verify``) when a phase starts and
#: repeatedly while pg_restore runs; raising from it (e.g. KeyboardInterrupt) aborts cleanly.
Progress = Callable[[str], None]

ObjectKey = tuple[str, str | None, str]  # (kind, schema or None, name)


def default_jobs() -> int:
    """pg_restore -j: as many jobs as cores."""
    return max(1, os.cpu_count() or 1)


# -- decrypting into a private, always-deleted file ------------------------------------------

@contextlib.contextmanager
def decrypted_archive(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                      work_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """The backup's plaintext archive as a file in a private folder, deleted when the block ends.

    Raises :class:`IntegrityError` when the object does not decrypt, decompress, or match the
    manifest's size and SHA-256; :class:`CryptoError` when the identity is not a recipient.
    """
    check_identity_matches(manifest, identity)
    folder = Path(tempfile.mkdtemp(prefix="dbprotect-restore-", dir=work_dir))  # mode 0700
    try:
        path = folder / "dump.pgdump"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, contextlib.closing(
                storage.open_reader(dump_key(manifest.database, manifest.backup_id))) as stream:
            reader = HashingReader(stream)
            writer = zstandard.ZstdDecompressor().stream_writer(out, write_size=CHUNK, closefd=False)
            try:
                pyrage.decrypt_io(reader, writer, [identity])
                writer.flush()
            except (pyrage.DecryptError, zstandard.ZstdError) as exc:
                raise IntegrityError(f"backup {manifest.backup_id} does not decrypt and decompress: "
                                     f"{' '.join(str(exc).split())}") from None
            while reader.read(CHUNK):
                pass
        if reader.bytes != manifest.stored_bytes or reader.hexdigest != manifest.sha256:
            raise IntegrityError(f"backup {manifest.backup_id}: stored object differs from its manifest "
                                 f"(size or SHA-256); not restored",
                                 hint=f"run 'dbprotect verify {manifest.backup_id}'")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- pg_restore --------------------------------------------------------------------------------

#: A ``pg_restore --verbose`` line saying a table's data is loaded and committed (parallel mode).
_DATA_DONE = re.compile(r"finished item (\d+) TABLE DATA ")
#: Its other progress lines (not errors, warnings, details or hints), left out of error reports.
_PROGRESS_LINE = re.compile(r"pg_restore: (?!error:|warning:|detail:|hint:)")


def run_pg_restore(archive: Path, dsn: str, *, server_major: int, jobs: int | None = None,
                   keep_owners: bool = False, pg_bin_dir: str | None = None,
                   progress: Progress | None = None,
                   on_table_data: Callable[[int], None] | None = None) -> None:
    """``pg_restore -j N --exit-on-error`` of ``archive`` into ``dsn``; kills it if interrupted.

    ``keep_owners=False`` adds ``--no-owner --no-acl``: a scratch server need not have the
    source's roles. The password travels in ``PGPASSWORD``, never on the command line.
    ``on_table_data`` is called (from another thread) with the TOC dump id of each TABLE DATA
    item as soon as pg_restore reports it finished, i.e. committed: from then on that table's
    content is final, so it can be verified while the rest of the archive is still restoring.
    pg_restore only reports finished items in parallel mode (``jobs`` > 1).
    """
    tool = require_tool_for_server("pg_restore", server_major, pg_bin_dir)
    target, password = split_password(dsn)
    args = [str(tool.path), "--exit-on-error", f"--jobs={jobs or default_jobs()}", "--no-password",
            f"--dbname={target}"]
    if not keep_owners:
        args += ["--no-owner", "--no-acl"]
    if on_table_data:
        args.append("--verbose")
    env = tool_env(password)
    if on_table_data:  # untranslated progress lines; a translated one would only delay the checks
        env["LC_MESSAGES"] = "C"
        if "LC_ALL" in env:
            env["LC_ALL"] = "C"
    proc = subprocess.Popen([*args, str(archive)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    errors: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def read_stderr() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            line = raw.decode("utf-8", errors="replace").strip()
            done = _DATA_DONE.search(line) if on_table_data else None
            if done:
                on_table_data(int(done.group(1)))  # type: ignore[misc]
            elif line and not (on_table_data and _PROGRESS_LINE.match(line)):
                tail.append(line)
                if "error" in line.lower() and len(errors) < 20:
                    errors.append(line)

    reader = threading.Thread(target=read_stderr, name="pg_restore-stderr", daemon=True)
    reader.start()
    try:
        while True:
            if progress:
                progress("restore")
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
        proc.stderr.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        reason = errors[-1] if errors else (tail[-1] if tail else "")
        raise ToolError(f"pg_restore failed (exit {proc.returncode}): {reason.removeprefix('pg_restore: ')}")


def list_archive(archive: Path, *, server_major: int, pg_bin_dir: str | None = None) -> str:
    """``pg_restore --list`` of the archive file: its table of contents as text."""
    tool = require_tool_for_server("pg_restore", server_major, pg_bin_dir)
    out = subprocess.run([str(tool.path), "--list", str(archive)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise IntegrityError(f"pg_restore --list cannot read the archive: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


class _TocDone(Exception):
    """pg_restore --list has read the table of contents and stopped reading: enough decrypted."""


class _ListingPipe:
    """Writes the decompressed archive into ``pg_restore --list`` until it stops reading."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def write(self, data: bytes) -> int:
        try:
            self._proc.stdin.write(data)  # type: ignore[union-attr]
        except OSError:
            raise _TocDone from None
        return len(data)

    def flush(self) -> None:
        pass


def read_archive_listing(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, *,
                         pg_bin_dir: str | None = None) -> str:
    """``pg_restore --list`` of a stored backup, decrypting only as far as its table of contents.

    For restore plans (``--dry-run``): no file, no plaintext on disk, and on a large backup only
    the first megabytes are fetched, because the TOC comes first in the archive.
    """
    check_identity_matches(manifest, identity)
    tool = require_tool_for_server("pg_restore", int(manifest.source["server_major"]), pg_bin_dir)
    proc = subprocess.Popen([str(tool.path), "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]  # type: ignore[union-attr]
    for reader in readers:
        reader.start()
    try:
        with contextlib.closing(storage.open_reader(dump_key(manifest.database, manifest.backup_id))) as stream:
            writer = zstandard.ZstdDecompressor().stream_writer(_ListingPipe(proc), write_size=CHUNK, closefd=False)
            with contextlib.suppress(_TocDone):
                pyrage.decrypt_io(stream, writer, [identity])
                writer.flush()
    except (pyrage.DecryptError, zstandard.ZstdError) as exc:
        raise IntegrityError(f"backup {manifest.backup_id} does not decrypt: {' '.join(str(exc).split())}") from None
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        code = proc.wait()
        for reader in readers:
            reader.join()
    if code != 0:
        reason = b"".join(err).decode("utf-8", errors="replace").strip().splitlines()[-1:]
        raise IntegrityError(f"pg_restore --list cannot read backup {manifest.backup_id}: {' '.join(reason)}")
    return b"".join(out).decode("utf-8", errors="replace")


# -- the table of contents and the catalog, as comparable sets -------------------------------

#: Object kinds compared between the archive's TOC and the restored catalog.
COMPARED_KINDS = frozenset({
    "TABLE", "FOREIGN TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "INDEX", "CONSTRAINT",
    "FK CONSTRAINT", "FUNCTION", "PROCEDURE", "TRIGGER", "POLICY", "ROW SECURITY", "TYPE", "DOMAIN",
    "SCHEMA",
})

# Every TOC description that starts with the word of a compared kind, so the longest match wins
# ("TABLE DATA public t" is data, not a TABLE in a schema called DATA).
_DESCS = sorted(COMPARED_KINDS | {
    "TABLE DATA", "TABLE ATTACH", "INDEX ATTACH", "SEQUENCE SET", "SEQUENCE OWNED BY",
    "MATERIALIZED VIEW DATA", "FOREIGN DATA WRAPPER", "TYPE SHELL", "SHELL TYPE", "SCHEMA DATA",
}, key=len, reverse=True)


def parse_toc_listing(listing: str) -> set[ObjectKey]:
    """The compared objects in a ``pg_restore --list`` listing.

    A line is ``ID; TABLEOID OID DESC SCHEMA TAG OWNER``, all space-separated although
    descriptions, schema and tag may contain spaces; schemas are resolved against the SCHEMA
    entries of the same listing, so ``TABLE Odd Schema Mixed Case postgres`` parses right.
    """
    rows = []
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        text = parts[3]
        desc = next((d for d in _DESCS if text.startswith(d + " ")), None)
        if desc in COMPARED_KINDS:
            rest = text[len(desc) + 1:]  # type: ignore[arg-type]
            if not rest.endswith(" "):
                rest = rest.rsplit(" ", 1)[0]  # the owner
            rows.append((desc, rest.rstrip()))
    schemas = {rest.removeprefix("- ") for desc, rest in rows if desc == "SCHEMA"}
    known = sorted(schemas | {"public", "pg_catalog", "-"}, key=len, reverse=True)
    found: set[ObjectKey] = set()
    for desc, rest in rows:
        schema = next((s for s in known if rest.startswith(s + " ")), None)
        if schema is None:
            schema, _, tag = rest.partition(" ")
        else:
            tag = rest[len(schema) + 1:]
        key: ObjectKey = (desc, None if schema == "-" else schema, tag)
        if not (desc == "SCHEMA" and tag == "public"):
            found.add(key)
    return found


# Each row: kind, schema, name, strict (names as text: a UNION typed ``name`` would cut them at 63
# bytes). Each row: kind, schema, name, strict. A strict object must be in the archive; a non-strict one
# (CHECK constraints, dumped inline with their table unless NOT VALID) only satisfies the
# archive's entry if it lists one.
_CATALOG_OBJECTS = """
WITH ns AS (
  SELECT oid, nspname FROM pg_namespace
  WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%'
    AND nspname NOT LIKE 'pg\\_temp%'
), ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e')
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, ns.nspname::text, c.relname::text, true
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_class'::regclass AND ext.objid = c.oid)
UNION ALL
SELECT 'ROW SECURITY', ns.nspname, c.relname, true
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relrowsecurity
UNION ALL
SELECT 'INDEX', ns.nspname, c.relname, true
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
 WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                     AND k.contype IN ('p', 'u', 'x'))
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_class'::regclass AND ext.objid = i.indrelid)
UNION ALL
SELECT CASE k.contype WHEN 'f' THEN 'FK CONSTRAINT' ELSE 'CONSTRAINT' END, ns.nspname,
       coalesce(t.relname, ty.typname) || ' ' || k.conname,
       k.contype IN ('p', 'u', 'x') OR (k.contype = 'f' AND k.conparentid = 0)
  FROM pg_constraint k
  LEFT JOIN pg_class t ON t.oid = k.conrelid LEFT JOIN pg_type ty ON ty.oid = k.contypid
  JOIN ns ON ns.oid = coalesce(t.relnamespace, ty.typnamespace)
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, ns.nspname,
       p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')', true
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p', 'w')
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_proc'::regclass AND ext.objid = p.oid)
UNION ALL
SELECT 'TRIGGER', ns.nspname, c.relname || ' ' || tg.tgname, true
  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN ns ON ns.oid = c.relnamespace
 WHERE NOT tg.tgisinternal AND tg.tgparentid = 0
UNION ALL
SELECT 'POLICY', ns.nspname, c.relname || ' ' || pol.polname, true
  FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN ns ON ns.oid = c.relnamespace
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, ns.nspname, t.typname, true
  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
 WHERE (t.typtype IN ('e', 'r', 'd')
        OR (t.typtype = 'c' AND (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c'))
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_type'::regclass AND ext.objid = t.oid)
UNION ALL
SELECT 'SCHEMA', NULL, ns.nspname, true FROM ns
 WHERE ns.nspname <> 'public'
   AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_namespace'::regclass AND ext.objid = ns.oid)
"""


@dataclass(frozen=True)
class CatalogObjects:
    strict: set[ObjectKey]
    optional: set[ObjectKey]

    @property
    def all(self) -> set[ObjectKey]:
        return self.strict | self.optional


def catalog_objects(conn: psycopg.Connection) -> CatalogObjects:
    """The compared objects of the database ``conn`` is connected to, named as pg_dump names them.

    Function signatures are rendered with ``search_path`` set to pg_catalog only, as pg_dump does,
    so that types outside pg_catalog are schema-qualified on both sides.
    """
    strict: set[ObjectKey] = set()
    optional: set[ObjectKey] = set()
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        for kind, schema, name, is_strict in conn.execute(_CATALOG_OBJECTS):
            (strict if is_strict else optional).add((kind, schema, name))
    return CatalogObjects(strict, optional)


def describe_object(key: ObjectKey) -> str:
    kind, schema, name = key
    return f"{kind.lower()} {schema}.{name}" if schema else f"{kind.lower()} {name}"


# -- comparing a restored database with the manifest and the archive ---------------------------

def compare_tables(conn: psycopg.Connection, manifest: Manifest) -> list[str]:
    """Row count and content checksum of every table in the manifest, as restored."""
    pin_session(conn, {**DUMP_SESSION, **manifest.checksum.get("session", {})})
    problems = []
    for qualified, record in sorted(manifest.tables.items()):
        extra = record.model_extra or {}
        schema, name = extra.get("schema"), extra.get("name")
        if not schema or not name:
            schema, _, name = qualified.partition(".")
        try:
            digest = digest_table(conn, schema, name, record.columns)
        except psycopg.Error as exc:
            conn.rollback()
            problems.append(f"{qualified}: cannot be read after restore ({' '.join(str(exc).split())[:120]})")
            continue
        if digest.rows != record.rows:
            problems.append(f"{qualified}: {digest.rows} rows restored, manifest says {record.rows}")
        elif digest.checksum != record.checksum:
            problems.append(f"{qualified}: content checksum {digest.checksum} differs from the manifest's "
                            f"{record.checksum} ({record.rows} rows)")
    return problems


#: Tables with at least this many rows are digested through psql (a process start, about 20 ms,
#: against about 2 µs a row saved); smaller ones over the worker's own psycopg connection.
PSQL_MIN_ROWS = 20_000


#: Tables with at least this many rows are read in page ranges over all workers at once, so the
#: largest table (usually the last one loaded) does not leave one worker reading alone.
SPLIT_MIN_ROWS = 200_000

# Pages of a table, and the columns ``COPY table TO`` gives (not dropped, not generated).
_TABLE_PAGES = """
SELECT pg_relation_size(c.oid) / current_setting('block_size')::int,
       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'
"""


@dataclass
class _Split:
    """A table being read in parts: what the parts finished so far add up to."""

    remaining: int
    digest: TableDigest = field(default_factory=TableDigest)
    problem: str | None = None


@dataclass(frozen=True)
class _Part:
    copy: sql.Composable
    split: _Split


@dataclass(frozen=True, order=True)
class _TableJob:
    order: int  # minus the row count: the largest table first
    qualified: str
    schema: str = field(compare=False)
    name: str = field(compare=False)
    columns: str | None = field(compare=False)
    rows: int = field(compare=False)
    checksum: str = field(compare=False)


class TableVerifier:
    """Every manifest table's row count and checksum, digested over ``workers`` connections at once.

    Why: reading each table back with COPY is most of a restore's verification, and on one
    connection it leaves the other cores idle. Tables are *released* one by one, as soon as
    pg_restore reports their data committed (:meth:`release`, given the TOC dump ids via
    :meth:`expect`), so most of them are verified while pg_restore is still loading other tables
    and building indexes; :meth:`finish` releases the rest and returns the problems, in the same
    words and order as :func:`compare_tables`. The digest is the same (:func:`digest_table`'s, or
    :func:`digest_table_psql`'s for large tables), with the session settings from the manifest.
    Use as a context manager: leaving it early (a failed restore, an interrupt) cancels the
    digests in flight and waits for the workers, so no connection outlives the block.
    """

    def __init__(self, dsn: str, manifest: Manifest, *, workers: int | None = None,
                 server_major: int | None = None, pg_bin_dir: str | None = None) -> None:
        self._dsn = dsn
        self._settings = {**DUMP_SESSION, **manifest.checksum.get("session", {})}
        self._target, self._password = split_password(dsn)
        self._psql: Path | None = None
        with contextlib.suppress(ToolError):
            self._psql = require_tool_for_server("psql", server_major or 0, pg_bin_dir).path
        self._jobs: dict[str, _TableJob] = {}
        for qualified, record in manifest.tables.items():
            extra = record.model_extra or {}
            schema, name = extra.get("schema"), extra.get("name")
            if not schema or not name:
                schema, _, name = qualified.partition(".")
            self._jobs[qualified] = _TableJob(-record.rows, qualified, schema, name, record.columns,
                                              record.rows, record.checksum)
        self._workers = max(1, min(workers or default_jobs(), len(self._jobs) or 1))
        self._by_dump_id: dict[int, str] = {}
        self._released: set[str] = set()
        self._queue: queue.PriorityQueue[tuple[int, int, int, _TableJob | None, _Part | None]] = \
            queue.PriorityQueue()
        self._seq = itertools.count()
        self._problems: dict[str, str] = {}
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._busy: dict[int, psycopg.Connection | subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        #: Tables handed to the workers by :meth:`release`, i.e. while pg_restore was still running.
        self.released_early = 0

    def __enter__(self) -> TableVerifier:
        for number in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"dbprotect-verify-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, listing: str) -> None:
        """Learn each table's TOC dump id from ``pg_restore --list`` output.

        Left out, and so verified only by :meth:`finish` once the whole restore is done: a table
        whose TABLE DATA line can be read as more than one manifest table (names with spaces),
        and every attached partition (``TABLE ATTACH``), because data loaded through the
        partition root (``--load-via-partition-root``) may route rows into another partition.
        """
        names = {(job.schema, job.name): qualified for qualified, job in self._jobs.items()}
        found: dict[str, list[int]] = collections.defaultdict(list)
        for line in listing.splitlines():
            head, sep, text = line.partition("; ")
            parts = text.split(" ", 2)
            if not sep or not head.isdigit() or len(parts) < 3:
                continue
            desc = next((d for d in ("TABLE DATA ", "TABLE ATTACH ") if parts[2].startswith(d)), None)
            if desc is None:
                continue
            words = parts[2].removeprefix(desc).split(" ")
            matches = {names[key] for i in range(1, len(words)) for j in range(i + 1, len(words) + 1)
                       if (key := (" ".join(words[:i]), " ".join(words[i:j]))) in names}
            for qualified in matches:
                found[qualified] += [int(head)] if len(matches) == 1 and desc == "TABLE DATA " else [-1, -1]
        with self._lock:
            self._by_dump_id = {ids[0]: qualified for qualified, ids in found.items() if len(ids) == 1}

    def release(self, dump_id: int) -> None:
        """pg_restore finished the TABLE DATA item ``dump_id``: verify that table now."""
        with self._lock:
            qualified = self._by_dump_id.get(dump_id)
            if qualified is None or qualified in self._released:
                return
            self._released.add(qualified)
            self.released_early += 1
        self._put(self._jobs[qualified])

    def finish(self) -> list[str]:
        """Verify the tables not released yet, wait for all, and return the problems by table name."""
        with self._lock:
            rest = [job for qualified, job in self._jobs.items() if qualified not in self._released]
            self._released.update(self._jobs)
        for job in sorted(rest):
            self._put(job)
        self._stop_workers(cancel=False)
        if self._failure is not None:
            raise self._failure
        return [self._problems[qualified] for qualified in sorted(self._problems)]

    def close(self) -> None:
        """Cancel what is in flight and wait for the workers (a no-op after :meth:`finish`)."""
        self._stop_workers(cancel=True)

    def _stop_workers(self, *, cancel: bool) -> None:
        if not self._threads:
            return
        if cancel:
            self._stopping.set()
            with self._lock:
                busy = list(self._busy.values())
            for handle in busy:
                with contextlib.suppress(Exception):
                    if isinstance(handle, subprocess.Popen):
                        handle.kill()
                    else:
                        handle.cancel_safe(timeout=5)
        for _ in self._threads:
            self._queue.put((1, 0, next(self._seq), None, None))  # after every table already queued
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _put(self, job: _TableJob, part: _Part | None = None) -> None:
        self._queue.put((0, job.order, next(self._seq), job, part))

    def _work(self) -> None:
        conn: psycopg.Connection | None = None
        me = threading.get_ident()

        def connection() -> psycopg.Connection:
            nonlocal conn
            if conn is None:
                conn = connect(self._dsn, autocommit=True, application_name="dbprotect-verify")
                pin_session(conn, self._settings)
            return conn

        try:
            while True:
                _, _, _, job, part = self._queue.get()
                if job is None or self._stopping.is_set():
                    return
                if part is None and self._psql is not None and self._workers > 1 and job.rows >= SPLIT_MIN_ROWS:
                    parts = self._split(job, connection())
                    for other in parts[1:]:
                        self._put(job, other)
                    part = parts[0] if parts else None
                if part is not None:
                    outcome = self._digest_part(job, part)
                elif self._psql is not None and job.rows >= PSQL_MIN_ROWS:
                    outcome = self._digest(job, None)
                else:
                    outcome = self._digest(job, connection())
                if outcome:
                    with self._lock:
                        self._problems[job.qualified] = outcome
        except BaseException as exc:  # handed to the thread calling finish()
            if not self._stopping.is_set():
                self._failure = self._failure or exc
            self._stopping.set()
        finally:
            with self._lock:
                self._busy.pop(me, None)
            if conn is not None:
                conn.close()

    def _split(self, job: _TableJob, conn: psycopg.Connection) -> list[_Part]:
        """Page ranges of a large table, one per worker; none when it cannot or need not be split.

        Each part is ``COPY (SELECT <the columns COPY of the table gives> FROM ONLY t WHERE ctid
        in a page range) TO STDOUT``: the same rows, rendered by the same output functions, as
        ``COPY t TO STDOUT``, and every row in exactly one part (the last range is open). Needs
        PostgreSQL 14's TID range scans; on older servers each part would read the whole table.
        """
        if conn.info.server_version < 140000:
            return []
        try:
            row = conn.execute(_TABLE_PAGES, (job.schema, job.name)).fetchone()
        except psycopg.Error:
            conn.rollback()
            return []
        if row is None or not (job.columns or row[1]) or int(row[0]) < 2 * self._workers:
            return []
        pages, columns = int(row[0]), job.columns or row[1]
        split = _Split(self._workers)
        bounds = [pages * i // self._workers for i in range(self._workers)] + [None]
        target = sql.Identifier(job.schema, job.name)
        parts = []
        for lo, hi in itertools.pairwise(bounds):
            where = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({lo},0)"))
            if hi is not None:
                where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({hi},0)"))
            copy = sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT").format(sql.SQL(columns), target, where)
            parts.append(_Part(copy, split))
        return parts

    def _digest_part(self, job: _TableJob, part: _Part) -> str | None:
        """One part of a split table; the last part to finish judges the whole table."""
        me = threading.get_ident()

        def started(handle: subprocess.Popen[bytes]) -> None:
            with self._lock:
                self._busy[me] = handle
            if self._stopping.is_set():
                handle.kill()

        problem = None
        try:
            digest = digest_copy_psql(self._psql, self._target, self._password,  # type: ignore[arg-type]
                                      self._settings, part.copy, started=started)
        except psycopg.Error as exc:
            problem = f"{job.qualified}: cannot be read after restore ({' '.join(str(exc).split())[:120]})"
        finally:
            with self._lock:
                self._busy.pop(me, None)
        with self._lock:
            split = part.split
            if problem:
                split.problem = split.problem or problem
            else:
                split.digest.add(digest)
            split.remaining -= 1
            if split.remaining:
                return None
        return split.problem or _judge(job, split.digest)

    def _digest(self, job: _TableJob, conn: psycopg.Connection | None) -> str | None:
        me = threading.get_ident()

        def started(handle: psycopg.Connection | subprocess.Popen[bytes]) -> None:
            with self._lock:
                self._busy[me] = handle
            if self._stopping.is_set() and isinstance(handle, subprocess.Popen):
                handle.kill()

        try:
            if conn is None:
                digest = digest_table_psql(self._psql, self._target, self._password,  # type: ignore[arg-type]
                                           self._settings, job.schema, job.name, job.columns, started=started)
            else:
                started(conn)
                digest = digest_table(conn, job.schema, job.name, job.columns)
        except psycopg.Error as exc:
            if conn is not None:
                conn.rollback()
            return f"{job.qualified}: cannot be read after restore ({' '.join(str(exc).split())[:120]})"
        finally:
            with self._lock:
                self._busy.pop(me, None)
        return _judge(job, digest)


def _judge(job: _TableJob, digest: TableDigest) -> str | None:
    """The problem with a table's digest against the manifest, in :func:`compare_tables`' words."""
    if digest.rows != job.rows:
        return f"{job.qualified}: {digest.rows} rows restored, manifest says {job.rows}"
    if digest.checksum != job.checksum:
        return (f"{job.qualified}: content checksum {digest.checksum} differs from the manifest's "
                f"{job.checksum} ({job.rows} rows)")
    return None


def compare_objects(expected: set[ObjectKey], restored: CatalogObjects) -> list[str]:
    """Objects the archive lists that did not come back, and objects that came from nowhere."""
    missing = sorted(expected - restored.all, key=str)
    unexpected = sorted(restored.strict - expected, key=str)
    problems = [f"{describe_object(key)}: in the archive, missing after restore" for key in missing]
    problems += [f"{describe_object(key)}: in the restored database, not in the archive" for key in unexpected]
    return problems


def compare_sequences(conn: psycopg.Connection, manifest: Manifest) -> list[str]:
    problems = []
    for name, recorded in sorted(manifest.sequences.items()):
        row = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%s)", (name,)).fetchone()
        if row is None:
            problems.append(f"sequence {name}: missing after restore")
            continue
        value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(row[0], row[1]))).fetchone()  # type: ignore[misc]
        if int(value) != int(recorded["value"]) or bool(is_called) != bool(recorded["is_called"]):
            problems.append(f"sequence {name}: restored at {value} (is_called {is_called}), manifest says "
                            f"{recorded['value']} (is_called {recorded['is_called']})")
    return problems


def compare_large_objects(conn: psycopg.Connection, manifest: Manifest) -> list[str]:
    expected = int(manifest.large_objects.get("count", 0))
    row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    found = int(row[0]) if row else 0
    return [] if found == expected else [f"large objects: {found} restored, manifest says {expected}"]


def verify_restored_database(dsn: str, manifest: Manifest, expected_objects: set[ObjectKey], *,
                             tables: TableVerifier | None = None, workers: int | None = None,
                             server_major: int | None = None,
                             pg_bin_dir: str | None = None) -> tuple[list[str], int]:
    """Every comparison against the restored database; returns (problems, objects compared).

    ``tables`` is a running :class:`TableVerifier` that may already have verified tables during
    the restore; without one, the tables are verified here over ``workers`` connections. The
    schema, sequence and large-object comparisons run meanwhile on this thread.
    """
    with contextlib.ExitStack() as stack:
        if tables is None:
            tables = stack.enter_context(TableVerifier(dsn, manifest, workers=workers, server_major=server_major,
                                                       pg_bin_dir=pg_bin_dir))
        with connect(dsn, autocommit=True, application_name="dbprotect-verify") as conn:
            restored = catalog_objects(conn)
            problems = compare_objects(expected_objects, restored)
            problems += compare_sequences(conn, manifest)
            problems += compare_large_objects(conn, manifest)
        problems += tables.finish()
    return problems, len(expected_objects)


# -- rung 3 ------------------------------------------------------------------------------------

@dataclass
class RestoreVerification:
    """The outcome of restoring one backup into a scratch database and comparing it."""

    database: str
    backup_id: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tables: int = 0
    rows: int = 0
    objects: int = 0
    scratch_database: str = ""

    @property
    def detail(self) -> str:
        if self.ok:
            return (f"restored and verified: {self.tables} tables, {self.rows} rows, {self.objects} schema "
                    f"objects, sequences and large objects match the manifest")
        return "restore verification failed: " + summarize_problems(self.problems)

    def metrics(self) -> dict[str, float]:
        return {**self.timings, "tables": self.tables, "rows": self.rows, "objects": self.objects,
                "problems": len(self.problems)}

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "backup_id": self.backup_id, "ok": self.ok, "detail": self.detail,
                "problems": self.problems, "metrics": self.metrics(), "scratch_database": self.scratch_database}


class _Clock:
    """Per-phase wall-clock timings: ``with clock('restore'): ...`` adds ``restore_seconds``."""

    def __init__(self, progress: Progress | None) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self._progress:
            self._progress(phase)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[f"{phase}_seconds"] = round(time.perf_counter() - started, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def verify_restore(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                   server: ScratchServer, *, pg_bin_dir: str | None = None, jobs: int | None = None,
                   work_dir: str | os.PathLike[str] | None = None, by: str = "dbprotect",
                   record: bool = True, progress: Progress | None = None,
                   audit: AuditLog | None = None) -> RestoreVerification:
    """Restore ``manifest``'s backup into a new scratch database, compare it, drop it, record the result.

    Refuses (:class:`RefusedError`) a scratch server of another major version, and raises
    :class:`CryptoError` for a wrong identity; neither is recorded, since the backup may be fine.
    A backup that does not decrypt, restore or compare is a failed ``restored`` rung.
    """
    server.require_major(int(manifest.source["server_major"]))
    result = RestoreVerification(manifest.database, manifest.backup_id, ok=False)
    clock = _Clock(progress)
    try:
        _restore_and_compare(storage, manifest, identity, server, clock, result,
                             pg_bin_dir=pg_bin_dir, jobs=jobs, work_dir=work_dir, progress=progress)
    except CryptoError:
        raise
    except DbprotectError as exc:
        result.problems.append(exc.one_line())
    result.ok = not result.problems
    result.timings = {**clock.timings, "total_seconds": clock.total()}
    if record:
        record_verification(storage, manifest, Verification(
            rung="restored", ok=result.ok, at=datetime.now(UTC), detail=result.detail, by=by,
            metrics=result.metrics()))
    if audit:
        audit.record("verify", database=manifest.database, outcome="ok" if result.ok else "failed",
                     target=manifest.backup_id, detail=result.detail,
                     data={"rung": "restored", "metrics": result.metrics()})
    return result


def _restore_and_compare(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                         server: ScratchServer, clock: _Clock, result: RestoreVerification, *,
                         pg_bin_dir: str | None, jobs: int | None, work_dir: str | os.PathLike[str] | None,
                         progress: Progress | None) -> None:
    major = int(manifest.source["server_major"])
    with scratch_database(server, encoding=manifest.source.get("encoding")) as scratch:
        result.scratch_database = scratch.name
        with TableVerifier(scratch.dsn, manifest, workers=jobs, server_major=major, pg_bin_dir=pg_bin_dir) as tables:
            with contextlib.ExitStack() as plaintext:
                with clock("decrypt"):
                    archive = plaintext.enter_context(decrypted_archive(storage, manifest, identity, work_dir))
                    listing = list_archive(archive, server_major=major, pg_bin_dir=pg_bin_dir)
                    expected = parse_toc_listing(listing)
                    tables.expect(listing)
                with clock("restore"):
                    run_pg_restore(archive, scratch.dsn, server_major=major, jobs=jobs, pg_bin_dir=pg_bin_dir,
                                   progress=progress, on_table_data=tables.release)
            clock.timings["tables_released_during_restore"] = tables.released_early
            with clock("verify"):
                problems, result.objects = verify_restored_database(scratch.dsn, manifest, expected, tables=tables)
        result.problems.extend(problems)
        result.tables = len(manifest.tables)
        result.rows = manifest.total_rows
