"""Reading table content over a connection with the exact text settings pg_dump used.

A table's checksum is only comparable between a dump and a restored database when both sides
render values to text the same way. pg_dump pins DateStyle, IntervalStyle and
extra_float_digits itself; dbprotect additionally pins TimeZone and bytea_output for pg_dump's
connection (through ``PGTZ``/``PGOPTIONS``) and records client_encoding and lc_monetary, and
every connection that digests content applies the same :data:`DUMP_SESSION` settings.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql

from dbprotect.core.backup.archive import TableDigest
from dbprotect.core.pg.tools import tool_env
from dbprotect.core.store.manifest import parse_column_list

#: A table's copied columns: pg_dump's column-list text (parsed strictly) or the names themselves.
Columns = str | Sequence[str] | None

#: Session settings that change how values render as text; applied to pg_dump and to digests.
DUMP_SESSION: dict[str, str] = {
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "TimeZone": "UTC",
    "bytea_output": "hex",
}


#: Read size for ``psql``'s COPY output.
_READ_SIZE = 1 << 20


def session_settings(settings: dict[str, str]) -> dict[str, str]:
    """Every setting a digesting session applies: ``settings`` plus row_security and synchronize_seqscans off."""
    return {**settings, "row_security": "off", "synchronize_seqscans": "off"}


def pin_session(conn: psycopg.Connection, settings: dict[str, str]) -> None:
    """Apply text-rendering settings to a connection (row_security off, as pg_dump does)."""
    with conn.cursor() as cur:
        for name, value in session_settings(settings).items():
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))


def digest_table(conn: psycopg.Connection, schema: str, table: str, columns: Columns) -> TableDigest:
    """Row count and checksum of a table as COPY text, the same digest the archive reader computes."""
    digest = TableDigest()
    with conn.cursor() as cur, cur.copy(_copy_query(schema, table, columns)) as copy:
        for chunk in copy:
            digest.feed(bytes(chunk))
    return digest


def column_identifiers(columns: str | Sequence[str]) -> sql.Composed:
    """``a, "B"`` as SQL built from identifiers only: a column list never reaches SQL as text.

    A text list comes from a manifest or an archive's TOC, both read from the store; it is parsed
    into names (:func:`~dbprotect.core.store.manifest.parse_column_list`, ValueError when it is not
    a list of names) and each name is quoted by ``sql.Identifier``.
    """
    names = parse_column_list(columns) if isinstance(columns, str) else tuple(columns)
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def _copy_query(schema: str, table: str, columns: Columns) -> sql.Composed:
    target = sql.Identifier(schema, table)
    if columns:
        return sql.SQL("COPY {} ({}) TO STDOUT").format(target, column_identifiers(columns))
    return sql.SQL("COPY {} TO STDOUT").format(target)


def digest_table_psql(psql: Path, target: str, password: str | None, settings: dict[str, str], schema: str,
                      table: str, columns: Columns, *,
                      started: Callable[[subprocess.Popen[bytes]], None] | None = None) -> TableDigest:
    """The same digest as :func:`digest_table`, reading ``psql``'s COPY output in large buffers.

    Why: libpq hands COPY data over one row at a time, so over psycopg every row costs a Python
    loop iteration (about 2 µs); psql writes the rows to a pipe in C and
    :meth:`TableDigest.feed_stream` digests a megabyte at a time, also letting the row handling
    run on another core. ``target`` is the DSN without its password, which travels in
    ``PGPASSWORD``; the session gets the same settings as :func:`pin_session` before the COPY.
    ``started`` receives the process, so that a caller can kill it when interrupted. Raises
    :class:`psycopg.Error` (``OperationalError``) with psql's message when psql fails.
    """
    return digest_copy_psql(psql, target, password, settings, _copy_query(schema, table, columns), started=started)


def digest_copy_psql(psql: Path, target: str, password: str | None, settings: dict[str, str],
                     copy: sql.Composable, *,
                     started: Callable[[subprocess.Popen[bytes]], None] | None = None) -> TableDigest:
    """:func:`digest_table_psql` of any ``COPY ... TO STDOUT`` statement (e.g. a part of a table)."""
    commands = [sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)).as_string(None)
                for name, value in session_settings(settings).items()]
    args = [str(psql), "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1", f"--dbname={target}"]
    for command in [*commands, copy.as_string(None)]:
        args += ["--command", command]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=tool_env(password))
    try:
        if started:
            started(proc)
        digest = TableDigest()
        read = proc.stdout.read1  # type: ignore[union-attr]
        while chunk := read(_READ_SIZE):
            digest.feed_stream(chunk)
        err = proc.stderr.read()  # type: ignore[union-attr]
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    if code != 0 or not digest.complete:
        lines = [line for line in err.decode("utf-8", errors="replace").splitlines() if line.strip()]
        reason = lines[-1].removeprefix("psql: ") if lines else f"psql exited with {code}"
        raise psycopg.OperationalError(reason)
    return digest


# -- definitions, materialized views: what a comparison needs beyond the archive's data -------------

#: TOC entries that carry data or describe the place a database lives, not its definition: data
#: is compared by digest (tables, sequences, large objects, materialized views); the database's
#: own entries (name, locale, encoding, ``ALTER DATABASE ... SET``) describe where it was dumped
#: and are not restored by ``pg_restore`` without ``--create`` (how dbprotect restores).
NOT_DEFINITIONS = frozenset({
    "TABLE DATA", "SEQUENCE SET", "BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT", "MATERIALIZED VIEW DATA",
    "DATABASE", "DATABASE PROPERTIES", "ENCODING", "STDSTRINGS", "SEARCHPATH",
})

#: Entries that name other objects in their tag (``COMMENT`` + ``TABLE t``): no owner of their own.
ATTACHED_DESCS = frozenset({"COMMENT", "ACL", "SECURITY LABEL"})

#: Privileges: compared only where the target keeps owners and privileges (a ``--no-acl`` restore has none).
PRIVILEGE_DESCS = frozenset({"ACL", "DEFAULT ACL"})


def definition_key(desc: str, namespace: str, tag: str) -> str:
    """How one archive entry is named in a manifest and in differences: ``TRIGGER public.orders audit``,
    ``COMMENT on COLUMN public.orders.note``, ``SCHEMA billing``."""
    if desc in ATTACHED_DESCS:
        kind, _, name = tag.partition(" ")
        return f"{desc} on {kind} {namespace}.{name}" if namespace else f"{desc} on {tag}"
    return f"{desc} {namespace}.{tag}" if namespace else f"{desc} {tag}"


def _about_the_database(desc: str, tag: str) -> bool:
    return desc in NOT_DEFINITIONS or (desc in ATTACHED_DESCS and tag.split(" ", 1)[0] in ("DATABASE", "LARGE"))


def definition_records(toc: Sequence[TocLike]) -> tuple[dict[str, str], dict[str, str]]:
    """``(definitions, owners)`` of an archive's table of contents.

    ``definitions``: every schema entry's key (:func:`definition_key`) → a 16-hex-digit BLAKE2b
    digest of pg_dump's own SQL for it, so any change pg_dump would write differently (a function
    body, a policy's ``USING``, ``DISABLE TRIGGER``, ``UNLOGGED``, a domain's CHECK, an index, a
    comment, a grant) changes the digest. pg_dump renders the definitions in the snapshot it
    dumps, so they are captured in the same snapshot as the data. ``owners``: each owned entry's
    owner role (kept apart: a ``--no-owner`` restore changes owners and nothing else).
    """
    texts: dict[str, list[str]] = {}
    owners: dict[str, str] = {}
    for entry in toc:
        if _about_the_database(entry.desc, entry.tag):
            continue
        key = definition_key(entry.desc, entry.namespace, entry.tag)
        texts.setdefault(key, []).append(entry.defn)
        if entry.owner and entry.desc not in ATTACHED_DESCS and entry.desc not in PRIVILEGE_DESCS:
            owners[key] = entry.owner
    definitions = {key: hashlib.blake2b("\x00".join(sorted(parts)).encode(), digest_size=8).hexdigest()
                   for key, parts in texts.items()}
    return definitions, owners


class TocLike(Protocol):
    """What :func:`definition_records` reads of an archive entry (:class:`~dbprotect.core.backup.archive.TocEntry`)."""

    desc: str
    namespace: str
    tag: str
    owner: str
    defn: str


_MATERIALIZED_VIEWS = """
SELECT n.nspname::text, c.relname::text, c.relispopulated
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'm'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                     AND d.deptype = 'e')
 ORDER BY 1, 2
"""


def materialized_view_records(conn: psycopg.Connection) -> dict[str, dict[str, object]]:
    """Every materialized view: ``{"schema.name": {namespace, name, populated[, rows, checksum]}}``.

    Why digested here: an archive holds no materialized view's rows, only ``REFRESH`` (and only for
    a populated one), so a restore recomputes them from the restored tables; the digest of what the
    view held, read in the dump's snapshot, is what tells whether the restored view holds the same.
    ``conn`` must be pinned (:func:`pin_session`) and, at backup time, inside the exported snapshot.
    """
    found: dict[str, dict[str, object]] = {}
    for schema, name, populated in conn.execute(_MATERIALIZED_VIEWS).fetchall():
        record: dict[str, object] = {"namespace": schema, "name": name, "populated": bool(populated)}
        if populated:
            digest = digest_query(conn, sql.SQL("COPY (SELECT * FROM {}) TO STDOUT").format(
                sql.Identifier(schema, name)))
            record.update(rows=digest.rows, checksum=digest.checksum)
        found[f"{schema}.{name}"] = record
    return found


def digest_query(conn: psycopg.Connection, copy: sql.Composable) -> TableDigest:
    """The digest of any ``COPY ... TO STDOUT`` over ``conn`` (the rows as :func:`digest_table` reads them)."""
    digest = TableDigest()
    with conn.cursor() as cur, cur.copy(copy) as stream:
        for chunk in stream:
            digest.feed(bytes(chunk))
    return digest
