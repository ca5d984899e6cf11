"""Watching for a new schema revision, so a backup can be taken before (or right after) it lands.

Seed 004 asks for a backup before every migration. Two change markers are observed, both cheap:

- **migration files**: every file under ``schema.migrations_dir`` (resolved against the
  configuration file's folder), by relative name and SHA-256. A deploy that ships
  ``0042_add_invoice_due.sql`` or ``versions/3c4d_add_due.py`` shows up *before* anybody runs it,
  which is what makes the backup a pre-change one.
- **Alembic's revision**: ``alembic_version.version_num`` on the production database (``None``
  when the table does not exist or is empty). It changes only *after* a migration ran, so a
  backup it triggers is the first one of the new schema: the baseline a later downgrade needs.

The state is kept as a JSON cursor; :func:`decide` compares it with the previous one. Nothing
here knows about Dagster (``defs/schema/watch.py`` wraps it in a sensor) and nothing here takes a
backup. Polling has a window: a migration applied between two observations runs before its
backup. For a guaranteed backup-before-change, wrap the command: ``dbprotect guard -d DB -e
production -- alembic upgrade head``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from dbprotect.core.errors import ConfigError
from dbprotect.core.pg.tools import connect

ALEMBIC_TABLE = "alembic_version"
#: Tag values stay readable in the UI's run list; the full list is in the skip/run log anyway.
MAX_REASON_CHARS = 200
#: Never migrations: byte-code caches, editor and VCS leftovers.
_IGNORED_PARTS = {"__pycache__", ".git", ".hg", ".svn"}
_IGNORED_SUFFIXES = (".pyc", ".pyo", "~", ".swp")


@dataclass(frozen=True)
class WatchState:
    """What was observed: migration files (relative name → SHA-256) and Alembic's revision."""

    migrations: dict[str, str] = field(default_factory=dict)
    alembic: str | None = None

    def to_cursor(self) -> str:
        """Stable JSON (sorted keys), so an unchanged state is an unchanged cursor."""
        return json.dumps({"migrations": self.migrations, "alembic": self.alembic}, sort_keys=True,
                          separators=(",", ":"))

    @classmethod
    def from_cursor(cls, cursor: str | None) -> WatchState | None:
        """The state a cursor recorded; ``None`` for no cursor or one this version cannot read
        (then the current state is recorded again rather than guessed against)."""
        if not cursor:
            return None
        try:
            data = json.loads(cursor)
            migrations = {str(k): str(v) for k, v in data["migrations"].items()}
            alembic = data["alembic"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(migrations=migrations, alembic=None if alembic is None else str(alembic))


@dataclass(frozen=True)
class WatchDecision:
    """Whether a backup is due, why (one sentence per change), and the cursor to store."""

    previous: WatchState | None
    current: WatchState
    changes: tuple[str, ...] = ()

    @property
    def triggered(self) -> bool:
        return bool(self.changes)

    @property
    def cursor(self) -> str:
        return self.current.to_cursor()

    @property
    def reason(self) -> str:
        """The changes as one tag value, e.g. ``new migration 0042_x.sql``."""
        text = "; ".join(self.changes)
        return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"

    def run_key(self, database: str) -> str:
        """Derived from the previous and the new state: the same change never starts two backups,
        however often it is evaluated, and the next change gets a new key."""
        before = self.previous.to_cursor() if self.previous else ""
        digest = hashlib.sha256(f"{before}\n{self.cursor}".encode()).hexdigest()[:16]
        return f"pre-migration-{database}-{digest}"

    def skip_reason(self, database: str) -> str:
        """A sentence for the sensor's tick history when no backup is requested."""
        files = len(self.current.migrations)
        seen = f"{files} migration file{'s' if files != 1 else ''}, Alembic revision {self.current.alembic or 'none'}"
        if self.previous is None:
            return f"recorded the current state of {database!r} ({seen}); a later change will trigger a backup"
        return f"no new migration or Alembic revision for {database!r} ({seen})"


def migration_files(directory: Path) -> dict[str, str]:
    """Every migration file under ``directory`` (recursively, as Alembic keeps ``versions/``):
    relative POSIX name → SHA-256 of its content."""
    if not directory.is_dir():
        raise ConfigError(f"migrations directory {directory} does not exist or is not a directory",
                          hint="fix schema.migrations_dir (relative paths start at the configuration file's folder)")
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if (not path.is_file() or _IGNORED_PARTS & set(relative.parts)
                or any(part.startswith(".") for part in relative.parts) or path.name.endswith(_IGNORED_SUFFIXES)):
            continue
        found[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def alembic_revision(dsn: str, table: str = ALEMBIC_TABLE) -> str | None:
    """``version_num`` of Alembic's table as found on the search path (several heads: sorted,
    comma-separated); ``None`` when there is no such table or it is empty (Alembic's *base*)."""
    with connect(dsn, autocommit=True, application_name="dbprotect-watch") as conn:
        row = conn.execute("SELECT to_regclass(%s)::text", [table]).fetchone()
        if row is None or row[0] is None:
            return None
        query = sql.SQL("SELECT version_num::text FROM {}").format(sql.SQL(row[0]))  # to_regclass quoted it
        revisions = sorted(str(value) for (value,) in conn.execute(query).fetchall())
    return ",".join(revisions) or None


def decide(previous_cursor: str | None, current: WatchState) -> WatchDecision:
    """Compare with the previous cursor: new or edited migration files and any change of
    Alembic's revision (up or down) are changes; a removed file is recorded, not a trigger.

    Without a readable previous cursor nothing triggers: the first evaluation records the state,
    or every existing migration would look new.
    """
    previous = WatchState.from_cursor(previous_cursor)
    if previous is None:
        return WatchDecision(previous=None, current=current)
    changes: list[str] = []
    added = sorted(set(current.migrations) - set(previous.migrations))
    edited = sorted(name for name in set(current.migrations) & set(previous.migrations)
                    if current.migrations[name] != previous.migrations[name])
    if added:
        changes.append(f"new migration{'s' if len(added) > 1 else ''} {', '.join(added)}")
    if edited:
        changes.append(f"changed migration{'s' if len(edited) > 1 else ''} {', '.join(edited)}")
    if current.alembic != previous.alembic:
        changes.append(f"alembic revision {previous.alembic or 'none'} -> {current.alembic or 'none'}")
    return WatchDecision(previous=previous, current=current, changes=tuple(changes))
