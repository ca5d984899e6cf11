"""Reading table content over a connection with the exact text settings pg_dump used.

A table's checksum is only comparable between a dump and a restored database when both sides
render values to text the same way. pg_dump pins DateStyle, IntervalStyle and
extra_float_digits itself; dbprotect additionally pins TimeZone and bytea_output for pg_dump's
connection (through ``PGTZ``/``PGOPTIONS``) and records client_encoding and lc_monetary, and
every connection that digests content applies the same :data:`DUMP_SESSION` settings.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

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
