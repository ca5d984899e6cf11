"""Reading table content over a connection with the exact text settings pg_dump used.

A table's checksum is only comparable between a dump and a restored database when both sides
render values to text the same way. pg_dump pins DateStyle, IntervalStyle and
extra_float_digits itself; dbprotect additionally pins TimeZone and bytea_output for pg_dump's
connection (through ``PGTZ``/``PGOPTIONS``) and records client_encoding and lc_monetary, and
every connection that digests content applies the same :data:`DUMP_SESSION` settings.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbprotect.core.archive import TableDigest

#: Session settings that change how values render as text; applied to pg_dump and to digests.
DUMP_SESSION: dict[str, str] = {
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "TimeZone": "UTC",
    "bytea_output": "hex",
}


def pin_session(conn: psycopg.Connection, settings: dict[str, str]) -> None:
    """Apply text-rendering settings to a connection (row_security off, as pg_dump does)."""
    with conn.cursor() as cur:
        for name, value in {**settings, "row_security": "off", "synchronize_seqscans": "off"}.items():
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))


def digest_table(conn: psycopg.Connection, schema: str, table: str, columns: str | None) -> TableDigest:
    """Row count and checksum of a table as COPY text, the same digest the archive reader computes."""
    target = sql.Identifier(schema, table)
    if columns:
        query = sql.SQL("COPY {} ({}) TO STDOUT").format(target, sql.SQL(columns))
    else:
        query = sql.SQL("COPY {} TO STDOUT").format(target)
    digest = TableDigest()
    with conn.cursor() as cur, cur.copy(query) as copy:
        for chunk in copy:
            digest.feed(bytes(chunk))
    return digest
