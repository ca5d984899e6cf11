"""Putting a database's own settings back after a restore: what ``pg_restore`` without ``--create`` never does.

An operator restoring production expects ``ALTER DATABASE shop SET search_path = app, public`` (and
``ALTER ROLE app IN DATABASE shop SET statement_timeout = '5s'``) to come back with the data: an
application connecting to a database without them sees other tables or other limits. The backup
records them (:class:`~dbprotect.core.store.manifest.DatabaseSettingsRecord`); the on-call restore
applies them to the staging database after the data, before it is swapped in, reads them back,
and names what it applied and what it did not.

The record comes from the store and is untrusted, and a database setting runs as every session
that connects. So only what any user could set for their own session is applied: settings of
context ``user`` and custom ``prefix.name`` settings. A superuser-only setting (a
``session_preload_libraries`` loads code into the server), ``role`` and ``session_authorization``,
a setting this server does not know, and a role that does not exist here are *not* applied: each
is named with why, for an operator to apply by hand once they have looked at it. Names reach SQL
only as identifiers, values only as parameters or literals; values are never printed (a setting
may hold something private).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dbprotect.core.pg.markers import owned_database_settings
from dbprotect.core.pg.tools import connect
from dbprotect.core.store.manifest import DatabaseSettingsRecord
from dbprotect.core.verify.compare import printable, settings_by_role

#: Never applied from a manifest, whatever their context: they change who a session is.
NEVER_APPLIED = frozenset({"role", "session_authorization"})
#: Settings whose value is a list of quoted names: set through ``set_config`` and ``FROM CURRENT``,
#: which parse and re-render the list as the server stored it (a literal would be one element).
_LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "local_preload_libraries"})


@dataclass
class AppliedSettings:
    """What a restore did with the backup's database settings, named for its output."""

    applied: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {"applied": self.applied, "not_applied": self.not_applied}


def _label(role: str, name: str) -> str:
    return f"{printable(name)} (role {printable(role)!r})" if role else printable(name)


def _why_not(conn: psycopg.Connection, role: str, name: str) -> str | None:
    if name.lower() in NEVER_APPLIED:
        return "changes who a session is; never applied from a backup"
    if role and conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        return "the role does not exist on this server"
    row = conn.execute("SELECT context FROM pg_settings WHERE lower(name) = lower(%s)", (name,)).fetchone()
    if row is None:
        return None if "." in name else "this server does not know the setting"
    return None if row[0] == "user" else f"a {row[0]}-level setting; apply it by hand after checking it"


def _apply_one(conn: psycopg.Connection, dbname: str, role: str, name: str, value: str) -> None:
    target = (sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), sql.Identifier(dbname)) if role
              else sql.SQL("ALTER DATABASE {}").format(sql.Identifier(dbname)))
    setting = sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))
    with conn.transaction():
        if name.lower() in _LIST_SETTINGS:
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            conn.execute(sql.SQL("{} SET {} FROM CURRENT").format(target, setting))
        else:
            conn.execute(sql.SQL("{} SET {} = {}").format(target, setting, sql.Literal(value)))


def apply_database_settings(admin_dsn: str, dbname: str, record: DatabaseSettingsRecord) -> AppliedSettings:
    """Apply ``record`` to database ``dbname`` on the server of ``admin_dsn``; read back what was applied.

    A setting the server refuses, or stores otherwise than recorded, is named in ``not_applied``.
    """
    done = AppliedSettings()
    with connect(admin_dsn, autocommit=True, application_name="dbprotect-restore") as conn:
        for role, settings in sorted(settings_by_role(record).items()):
            for name, value in sorted(settings.items()):
                why = _why_not(conn, role, name)
                if why is None:
                    try:
                        _apply_one(conn, dbname, role, name, value)
                    except psycopg.Error as exc:
                        why = f"the server refused it ({type(exc).__name__})"
                (done.not_applied.append(f"{_label(role, name)}: {why}") if why
                 else done.applied.append(_label(role, name)))
        stored = owned_database_settings(conn, dbname)
    expected = settings_by_role(record)
    for label in list(done.applied):
        role, name = next((r, n) for r, s in expected.items() for n in s if _label(r, n) == label)
        if stored.get(role, {}).get(name) != expected[role][name]:
            done.applied.remove(label)
            done.not_applied.append(f"{label}: the server stores it otherwise than the backup recorded")
    return done


__all__ = ["NEVER_APPLIED", "AppliedSettings", "apply_database_settings"]
