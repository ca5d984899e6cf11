"""Environment markers: which environment a database belongs to, stored in the database itself.

Every destructive step checks the marker of its target before it acts, so a mistyped DSN cannot
turn a development refresh into a production overwrite (see ARCHITECTURE.md).

The marker is a database-level setting of a custom parameter::

    ALTER DATABASE shop SET dbprotect.environment = 'production';

Why a setting and not ``COMMENT ON DATABASE``: a comment is free text that people edit for other
reasons and that ``pg_dump --create`` carries to wherever a dump is restored; a database-level
setting lives in ``pg_db_role_setting`` (``setrole = 0``), which ``pg_dump`` without ``--create``
(how dbprotect dumps) never copies, so restoring a production backup somewhere never makes that
place look like production. It can be read from any database on the server, without connecting
to the target, and sessions in the database see it as ``current_setting('dbprotect.environment')``.
Setting it needs the database's owner or a superuser, which is the point.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbprotect.core.errors import Refusals, RefusedError

MARKER_SETTING = "dbprotect.environment"

#: Values a marker may hold. ``scratch`` marks the throwaway databases dbprotect creates itself;
#: ``backup`` the warm copy on the backup server (production data, replaced by dbprotect at will);
#: ``test`` a database test suites may use (``dbprotect check-target DSN --expect test``).
ENVIRONMENTS: tuple[str, ...] = ("production", "development", "scratch", "backup", "test")


def database_settings(conn: psycopg.Connection, dbname: str | None = None) -> dict[str, dict[str, str]]:
    """The database-level settings (``ALTER DATABASE ... SET``) of every database, or of ``dbname``.

    The one reader of markers, of the warm copy's and the swap's records and of the scratch holder:
    all are settings in ``pg_db_role_setting`` (``setrole = 0``), read from any database on the
    server without connecting to the one they describe. Databases without settings map to ``{}``.
    """
    rows = conn.execute(
        "SELECT d.datname, s.setconfig FROM pg_database d LEFT JOIN pg_db_role_setting s "
        "ON s.setdatabase = d.oid AND s.setrole = 0 WHERE %s::text IS NULL OR d.datname = %s",
        (dbname, dbname),
    ).fetchall()
    found: dict[str, dict[str, str]] = {}
    for name, config in rows:
        settings = found.setdefault(name, {})
        for item in config or []:
            key, _, value = item.partition("=")
            settings[key] = value
    return found


def owned_database_settings(conn: psycopg.Connection, dbname: str | None = None) -> dict[str, dict[str, str]]:
    """The settings of ``dbname`` (default: the connected database) that belong to its data: role
    (``""``: every role) -> ``{setting: value}``, for ``ALTER DATABASE … SET`` and ``ALTER ROLE … IN
    DATABASE … SET``. ``dbprotect.*`` (markers, swap and warm-copy records) describe the place and are
    left out. A per-role row whose role no longer exists is left out too (it applies to no one).
    """
    rows = conn.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN '' ELSE r.rolname::text END, s.setconfig "
        "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
        "LEFT JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE d.datname = coalesce(%s::text, current_database()) AND (s.setrole = 0 OR r.rolname IS NOT NULL)",
        (dbname,)).fetchall()
    found: dict[str, dict[str, str]] = {}
    for role, config in rows:
        for item in config or []:
            key, _, value = item.partition("=")
            if not key.lower().startswith("dbprotect."):
                found.setdefault(role, {})[key] = value
    return found


def read_setting(conn: psycopg.Connection, dbname: str, setting: str) -> str | None:
    """One database-level setting of ``dbname`` (see :func:`database_settings`), or None."""
    return database_settings(conn, dbname).get(dbname, {}).get(setting)


def read_marker(conn: psycopg.Connection, dbname: str) -> str | None:
    """The environment marker of ``dbname`` on the server ``conn`` is connected to, or None."""
    return read_setting(conn, dbname, MARKER_SETTING)


def set_marker(conn: psycopg.Connection, dbname: str, environment: str) -> None:
    """Mark ``dbname`` as belonging to ``environment`` (autocommit connection)."""
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r} (expected one of {', '.join(ENVIRONMENTS)})")
    conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
        sql.Identifier(dbname), sql.SQL(MARKER_SETTING), sql.Literal(environment)))


def require_marker(conn: psycopg.Connection, dbname: str, expected: str) -> None:
    """Refuse unless ``dbname`` carries the marker ``expected``; an unmarked database is refused too.

    An unmarked database is refused rather than trusted: a database dbprotect has never seen is
    exactly what a mistyped DSN points at.
    """
    found = read_marker(conn, dbname)
    if found == expected:
        return
    how_to_mark = (f"if {dbname!r} really is a {expected} database, mark it once: "
                   f"ALTER DATABASE \"{dbname}\" SET {MARKER_SETTING} = '{expected}'")
    if found is None:
        raise RefusedError(f"database {dbname!r} carries no environment marker; you named {expected!r}",
                           hint=how_to_mark,
                           refusal=Refusals.UNMARKED_DATABASE)
    raise RefusedError(
        f"database {dbname!r} is marked {found!r}, not {expected!r} as you named it; nothing was changed",
        hint=f"check the target: its {MARKER_SETTING} setting says {found}",
        refusal=Refusals.MARKER_MISMATCH,
    )
