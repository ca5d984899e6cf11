"""The start-up checks of continuous protection: each unsafe server setting is a one-line refusal.

Why each one:

* ``wal_level`` must be ``replica`` or ``logical``: at ``minimal`` there is no WAL to stream.
* the role must be able to replicate (``REPLICATION`` or superuser): pg_basebackup and pg_receivewal
  open replication connections.
* ``summarize_wal`` must be on when base backups are incremental: ``pg_basebackup --incremental``
  reads the server's WAL summaries.
* ``max_slot_wal_keep_size`` must be set (not -1): a replication slot makes the server keep every WAL
  segment its receiver has not confirmed; with a dead receiver and no limit the server's disk fills and
  the *production* database stops. The limit makes the server drop the slot's claim instead (the slot
  becomes ``lost``, which the receiver detects as a gap) — losing the stream, never the database.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from dbprotect.core.errors import Refusals, RefusedError


@dataclass(frozen=True)
class ServerSetup:
    """What the checks read from the server."""

    wal_level: str
    summarize_wal: bool
    max_slot_wal_keep_size: str
    role: str
    can_replicate: bool
    server_major: int


def read_setup(conn: psycopg.Connection) -> ServerSetup:
    """The settings and role attributes the checks judge, read in one query."""
    row = conn.execute(
        "SELECT current_setting('wal_level'), current_setting('summarize_wal', true),"
        " current_setting('max_slot_wal_keep_size'), current_user,"
        " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    assert row is not None
    return ServerSetup(wal_level=row[0], summarize_wal=row[1] == "on", max_slot_wal_keep_size=row[2],
                       role=row[3], can_replicate=bool(row[4]), server_major=conn.info.server_version // 10000)


def check_setup(setup: ServerSetup, *, incremental: bool, label: str) -> None:
    """Refuse (one line, its own code) the first setting that makes continuous protection unsafe.

    ``label`` names the database in the message.
    """
    if setup.wal_level not in ("replica", "logical"):
        raise RefusedError(f"{label}: wal_level is {setup.wal_level}; continuous protection needs replica or logical",
                           refusal=Refusals.WAL_LEVEL_TOO_LOW,
                           hint="set wal_level = replica in postgresql.conf and restart the server")
    if not setup.can_replicate:
        raise RefusedError(f"{label}: role {setup.role} may not open replication connections",
                           refusal=Refusals.NO_REPLICATION_ROLE,
                           hint=f"ALTER ROLE {setup.role} REPLICATION (and allow it in pg_hba.conf's "
                                "'replication' lines), or use a role that has it")
    if incremental and not setup.summarize_wal:
        raise RefusedError(f"{label}: summarize_wal is off; incremental base backups need WAL summaries",
                           refusal=Refusals.WAL_SUMMARIES_OFF,
                           hint="ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); "
                                "or set continuous.incremental: false")
    if setup.max_slot_wal_keep_size.strip() in ("-1", ""):
        raise RefusedError(f"{label}: max_slot_wal_keep_size is unlimited (-1): if the WAL receiver dies, its "
                           "replication slot keeps every WAL segment until the server's disk is full",
                           refusal=Refusals.UNBOUNDED_SLOT,
                           hint="ALTER SYSTEM SET max_slot_wal_keep_size = '10GB' (what the disk can spare); "
                                "SELECT pg_reload_conf()")


def check_server(conn: psycopg.Connection, *, incremental: bool, label: str) -> ServerSetup:
    """Read and check the server behind ``conn``; the setup when it is safe."""
    setup = read_setup(conn)
    check_setup(setup, incremental=incremental, label=label)
    return setup
