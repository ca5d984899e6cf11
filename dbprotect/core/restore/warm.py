"""The warm copy: a standby database on the backup server holding the newest verified backup.

Seed 000 keeps "a backup database" beside production. dbprotect fills it from the store, not from
production: :func:`refresh_warm_copy` takes the newest backup that passed integrity (rungs 1-2),
and when the warm copy does not hold it yet, restores it through the on-call restore
(:func:`dbprotect.core.restore.oncall.restore`: a staging database, every table's row count and content
checksum, the sequences, large objects and schema objects compared with the manifest, ANALYZE),
then swaps it in by renaming. Whoever is connected to the warm copy sees either the previous copy
or the new one, never a half-restored database, and a failed refresh leaves the previous copy.

Configuration (per database; the DSN names the warm copy, ``database`` overrides that name)::

    databases:
      shop:
        warm_copy: {dsn_env: SHOP_BACKUP_DSN}

Why a warm copy is replaced without a typed confirmation: dbprotect owns it. It carries the
environment marker ``backup`` (:mod:`dbprotect.core.pg.markers`; the direction policy in
:mod:`dbprotect.core.restore.guards` lets only production backups into it), and a refresh refuses any
database that is marked otherwise (``production``, ``development``, ``scratch``) or is unmarked
and not empty, so a DSN mistyped to point at a real database is refused before anything changes.
An unmarked *empty* database (one a DBA created for the purpose) is adopted.

What the warm copy holds is recorded in the database itself, as a database-level setting beside
the marker (``dbprotect.warm_copy_of = '<backup id>'``, read without connecting to it), so the
next refresh knows it has nothing to do, and :func:`verify_warm_copy` knows which manifest to
compare the live warm copy with. Refreshes and their failures go to the primary store's audit log.

No safety backup is taken before the swap (an on-call restore over an existing database takes
one): the previous warm copy is itself a restore of a backup that is still in the store.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
import pyrage
from psycopg import sql

from dbprotect.core.errors import (
    DatabaseError,
    DbprotectError,
    NotFoundError,
    Refusals,
    RefusedError,
)
from dbprotect.core.pg.dsn import dbname_of, mask_dsn, with_dbname
from dbprotect.core.pg.markers import MARKER_SETTING, database_settings, read_marker, read_setting
from dbprotect.core.pg.scratch import SWAP_SETTING, drop_database, is_held
from dbprotect.core.pg.swap import SwapDone, SwapHook, swap_in
from dbprotect.core.pg.tools import connect
from dbprotect.core.restore.oncall import (
    RestoreResult,
    RestoreTarget,
    prepare_server,
    restore,
    swap_intent_recorder,
)
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import load_manifest
from dbprotect.core.store.manifest import Manifest
from dbprotect.core.verify.compare import compare_database
from dbprotect.core.verify.integrity import summarize_problems

if TYPE_CHECKING:
    from dbprotect.core.audit import AuditLog

#: The environment marker of a warm copy (see :mod:`dbprotect.core.restore.guards`).
WARM_ENVIRONMENT = "backup"
#: The database-level setting naming the backup a warm copy holds.
HOLDS_SETTING = "dbprotect.warm_copy_of"
#: The database-level setting naming the warm copy an incoming database is for.
INCOMING_SETTING = "dbprotect.warm_incoming_for"
#: First key of the advisory lock a refresh holds while it owns its incoming database ('dbpi').
INCOMING_LOCK_CLASS = 0x64627069
MAINTENANCE_DB = "postgres"
APPLICATION = "dbprotect-warm-copy"

_USER_OBJECTS = """
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
           AND n.nspname NOT LIKE 'pg_temp%%')
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
"""


@dataclass(frozen=True)
class WarmCopyState:
    """The warm copy database as found on the backup server."""

    name: str
    exists: bool
    marker: str | None = None
    holds: str | None = None
    #: Relations and functions outside the system schemas (counted only for an unmarked database).
    user_objects: int = 0


@dataclass
class WarmCopyOutcome:
    """One refresh: what the warm copy held before and holds now, and (when it ran) how long each phase took."""

    database: str
    warm_database: str
    server: str
    backup_id: str
    previous: str | None
    refreshed: bool
    reason: str
    backup_snapshot_at: datetime
    tables: int = 0
    rows: int = 0
    objects: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    #: Housekeeping after the swap's commit point that failed (the refresh itself succeeded), and
    #: database settings of the backup that were not applied (why).
    warnings: list[str] = field(default_factory=list)
    #: The backup's database settings applied to the warm copy (``name`` or ``role: name``).
    settings_applied: list[str] = field(default_factory=list)

    def backup_age_hours(self, now: datetime | None = None) -> float:
        """How old the data in the warm copy is: hours since the backup's snapshot."""
        return round(((now or datetime.now(UTC)) - self.backup_snapshot_at).total_seconds() / 3600, 3)

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "warm_database": self.warm_database, "server": self.server,
                "backup_id": self.backup_id, "previous": self.previous, "refreshed": self.refreshed,
                "reason": self.reason, "backup_age_hours": self.backup_age_hours(), "tables": self.tables,
                "rows": self.rows, "objects": self.objects, "timings": self.timings, "warnings": self.warnings,
                "settings_applied": self.settings_applied}


@dataclass
class WarmCopyVerification:
    """The live warm copy compared with the manifest of the backup it says it holds."""

    database: str
    warm_database: str
    backup_id: str
    ok: bool
    problems: list[str]
    tables: int
    rows: int
    seconds: float
    backup_snapshot_at: datetime

    @property
    def detail(self) -> str:
        if self.ok:
            return (f"warm copy {self.warm_database!r} matches backup {self.backup_id}: {self.tables} tables, "
                    f"{self.rows} rows, sequences and large objects")
        return (f"warm copy {self.warm_database!r} differs from backup {self.backup_id}: "
                + summarize_problems(self.problems))

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "warm_database": self.warm_database, "backup_id": self.backup_id,
                "ok": self.ok, "detail": self.detail, "problems": self.problems, "tables": self.tables,
                "rows": self.rows, "seconds": self.seconds}


# -- where the warm copy is ----------------------------------------------------------------------


def inspect_warm_copy(dsn: str) -> WarmCopyState:
    """Whether the warm copy exists, its marker, the backup it holds, and (unmarked) how much is in it."""
    name = dbname_of(dsn) or ""
    with connect(with_dbname(dsn, MAINTENANCE_DB), autocommit=True, application_name=APPLICATION) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            return WarmCopyState(name, exists=False)
        marker = read_marker(admin, name)
        holds = read_setting(admin, name, HOLDS_SETTING)
    objects = 0
    if marker is None:
        with connect(dsn, autocommit=True, application_name=APPLICATION) as conn:
            row = conn.execute(_USER_OBJECTS).fetchone()
            objects = int(row[0]) if row else 0
    return WarmCopyState(name, True, marker, holds, objects)


def check_replaceable(state: WarmCopyState, server: str) -> None:
    """Refuse to replace a database that is not a warm copy dbprotect owns (see the module docstring)."""
    if not state.exists or state.marker == WARM_ENVIRONMENT or (state.marker is None and state.user_objects == 0):
        return
    if state.marker is None:
        raise RefusedError(
            f"refused: database {state.name!r} on {server} is not empty ({state.user_objects} objects) and carries "
            f"no environment marker, so it is not a warm copy; nothing was changed",
            hint=f"point the warm copy at another database, or if {state.name!r} really is the warm copy, mark it: "
            f"ALTER DATABASE \"{state.name}\" SET {MARKER_SETTING} = '{WARM_ENVIRONMENT}'",
            refusal=Refusals.NOT_A_WARM_COPY)
    raise RefusedError(
        f"refused: database {state.name!r} on {server} is marked {state.marker!r}, not {WARM_ENVIRONMENT!r}: a warm "
        "copy never overwrites it; nothing was changed",
        hint="check the warm copy DSN: it must name the backup server's warm copy database",
        refusal=Refusals.NOT_A_WARM_COPY)


# -- refresh -------------------------------------------------------------------------------------

def _incoming_name(name: str) -> str:
    """Where the next copy is restored before the swap (fixed, so a crash's leftover is found again).

    One name per warm copy: a name too long for the suffix is cut and followed by a checksum of
    the whole name, so two warm copies whose names share a prefix never share an incoming database.
    """
    if len(name) <= 50:
        return f"{name}__incoming"
    return f"{name[:40]}__incoming_{zlib.crc32(name.encode('utf-8')):08x}"


@contextlib.contextmanager
def _incoming_held(admin_dsn: str, incoming: str, server: str) -> Iterator[None]:
    """Hold the advisory lock on ``incoming`` for the block: one refresh at a time owns it.

    A second refresh of the same warm copy (the CLI beside a Dagster run, another configuration)
    is refused rather than dropping the incoming database the first one is restoring into.
    """
    key = zlib.crc32(incoming.encode("utf-8")) & 0x7FFFFFFF
    with connect(admin_dsn, autocommit=True, application_name=APPLICATION) as holder:
        row = holder.execute("SELECT pg_try_advisory_lock(%s, %s)", (INCOMING_LOCK_CLASS, key)).fetchone()
        if not row or not row[0]:
            raise RefusedError(f"refused: another refresh on {server} is restoring into {incoming!r}; nothing was "
                               "changed", hint="wait for it to finish, then run the refresh again",
                               refusal=Refusals.STAGING_NAME_TAKEN)
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                holder.execute("SELECT pg_advisory_unlock(%s, %s)", (INCOMING_LOCK_CLASS, key))


def incoming_held(admin: psycopg.Connection, incoming: str) -> bool:
    """Whether a live refresh holds ``incoming`` (see :func:`_incoming_held`)."""
    return is_held(admin, INCOMING_LOCK_CLASS, zlib.crc32(incoming.encode("utf-8")) & 0x7FFFFFFF)


def _drop_leftover_incoming(dsn: str, incoming: str, server: str) -> None:
    """Drop an incoming database a crashed refresh of *this* warm copy left behind; refuse any other.

    Called with the incoming lock held (:func:`_incoming_held`). Dropped only when it is marked
    ``backup``, carries no swap record (an interrupted swap is the swap recovery's: it may hold the
    only copy of something) and, when it names the warm copy it is for, names this one.
    """
    name = dbname_of(dsn) or ""
    with connect(with_dbname(dsn, MAINTENANCE_DB), autocommit=True, application_name=APPLICATION) as admin:
        settings = database_settings(admin, incoming).get(incoming)
    if settings is None:
        return
    marker, meant_for = settings.get(MARKER_SETTING), settings.get(INCOMING_SETTING)
    problem = None
    if marker != WARM_ENVIRONMENT:
        problem = f"is not a leftover warm copy (marker {marker!r})"
    elif SWAP_SETTING in settings:
        problem = "belongs to an interrupted swap the recovery did not complete"
    elif meant_for is not None and meant_for != name:
        problem = f"is the incoming database of another warm copy ({meant_for[:63]!r})"
    if problem:
        raise RefusedError(f"refused: {incoming!r} on {server} exists and {problem}; nothing was changed",
                           hint=f"drop or rename {incoming!r} by hand", refusal=Refusals.STAGING_NAME_TAKEN)
    drop_database(with_dbname(dsn, MAINTENANCE_DB), incoming)


def _swap_in(dsn: str, incoming: str, backup_id: str, server: str, *, audit: AuditLog | None, database: str,
             hooks: SwapHook | None = None) -> SwapDone:
    """Record what ``incoming`` holds, then the one swap (:func:`dbprotect.core.pg.swap.swap_in`).

    The warm copy's marker is re-checked on the swap's own connection immediately before acting.
    """
    name = dbname_of(dsn) or ""
    admin_dsn = with_dbname(dsn, MAINTENANCE_DB)
    with connect(admin_dsn, autocommit=True, application_name=APPLICATION) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(incoming), sql.SQL(HOLDS_SETTING), sql.Literal(backup_id)))
        admin.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(incoming), sql.SQL(INCOMING_SETTING), sql.Literal(name)))
    exists = inspect_warm_copy(dsn).exists

    def still_replaceable(_admin: psycopg.Connection) -> None:
        state = inspect_warm_copy(dsn)  # immediately before acting: nothing replaced it meanwhile
        check_replaceable(state, server)
        if state.exists != exists:
            raise RefusedError(f"refused: warm copy {name!r} on {server} appeared or vanished during the refresh; "
                               "nothing was changed", hint="run the refresh again",
                               refusal=Refusals.NOT_A_WARM_COPY)

    return swap_in(admin_dsn, incoming, name, environment=WARM_ENVIRONMENT, replace=exists,
                   before_acting=still_replaceable, on_intent=swap_intent_recorder(audit, database), hooks=hooks)


# -- verification of the live warm copy ----------------------------------------------------------

def compare_warm_copy(dsn: str, manifest: Manifest) -> list[str]:
    """The live warm copy against ``manifest``: the one full comparison (:func:`compare_database`), owners
    and the database's own settings included (the refresh applies them, as the on-call restore does)."""
    return compare_database(dsn, manifest, owners=True, workers=1, settings=True).differences




# -- the refresh and the check, given a resolved store, key and DSN --------------------------------

def refresh_into(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, dsn: str, *,
                 recipients: list[str], pg_bin_dir: str | None, work_dir: str | None, actor: str,
                 force: bool = False, progress: Callable[[str], None] | None = None,
                 audit: AuditLog | None = None, swap_hooks: SwapHook | None = None) -> WarmCopyOutcome:
    """Put the backup ``manifest`` describes into the warm copy ``dsn`` names, unless it is there already.

    ``force`` restores even when the warm copy already holds that backup (to repair one that
    drifted). Raises :class:`RefusedError` for a target that is not a warm copy, and
    :class:`IntegrityError` when the restored data does not match the manifest (the previous warm
    copy is then untouched): it is restored under a new name, verified, then swapped in by the one
    crash-safe swap (``swap_hooks``: fault injection in tests), after an interrupted swap of a killed
    refresh on that server was finished or rolled back (audited in ``audit``).
    """
    backup_id = manifest.backup_id
    server = mask_dsn(with_dbname(dsn, MAINTENANCE_DB))
    prepare_server(with_dbname(dsn, MAINTENANCE_DB), audit=audit, database=manifest.database, work_dir=work_dir)
    state = inspect_warm_copy(dsn)
    check_replaceable(state, server)
    outcome = WarmCopyOutcome(manifest.database, state.name, server, backup_id, state.holds, refreshed=False,
                              reason="", backup_snapshot_at=manifest.snapshot_at,
                              tables=len(manifest.tables), rows=manifest.total_rows)
    if state.exists and state.marker == WARM_ENVIRONMENT and state.holds == backup_id and not force:
        outcome.reason = f"warm copy {state.name!r} already holds the newest verified backup {backup_id}"
        return outcome
    started = time.perf_counter()
    incoming = _incoming_name(state.name)
    with _incoming_held(with_dbname(dsn, MAINTENANCE_DB), incoming, server):
        _drop_leftover_incoming(dsn, incoming, server)
        result = restore(storage, manifest, identity,
                         RestoreTarget(with_dbname(dsn, incoming), WARM_ENVIRONMENT, existing=False),
                         recipients=recipients, pg_bin_dir=pg_bin_dir, work_dir=work_dir, by=actor,
                         progress=progress, analyze=True)  # a standby takes traffic the moment it is needed
        assert isinstance(result, RestoreResult)  # not a dry run
        swap_started = time.perf_counter()
        try:
            done = _swap_in(dsn, incoming, backup_id, server, audit=audit, database=manifest.database,
                            hooks=swap_hooks)
        except BaseException as exc:
            # Only an incoming database no swap claims: one the swap kept (it could not rename the
            # old copy back) is the recovery's, and may be the only copy of the new data.
            with contextlib.suppress(DbprotectError, psycopg.Error):
                _drop_leftover_incoming(dsn, incoming, server)
            if isinstance(exc, psycopg.Error):
                reason = " ".join(str(exc).split())[:160]
                raise DatabaseError(f"swapping the new warm copy into {state.name!r} on {server} failed: {reason}; "
                                    "the previous warm copy is in place",
                                    hint="the warm copy DSN's role needs CREATEDB and to own the warm copy") from None
            raise
    outcome.warnings = result.warnings + ([done.warning] if done.warning else [])
    if result.settings is not None:  # the backup's database settings, applied by the one restore (safe subset)
        outcome.settings_applied = list(result.settings.applied)
        outcome.warnings += [f"database setting not applied: {line}" for line in result.settings.not_applied]
    timings = dict(result.timings)
    timings["warm_swap_seconds"] = round(time.perf_counter() - swap_started, 3)
    timings["total_seconds"] = round(time.perf_counter() - started, 3)
    outcome.refreshed, outcome.timings = True, timings
    outcome.objects = result.objects
    outcome.reason = (f"restored backup {backup_id} into warm copy {state.name!r}"
                      + (f" (was {state.holds})" if state.holds else "") + "; verified against its manifest"
                      + "".join(f"; warning: {warning}" for warning in outcome.warnings))
    return outcome


def verify_live_warm_copy(storage: Storage, database: str, dsn: str) -> WarmCopyVerification:
    """Compare the live warm copy ``dsn`` names with the manifest of the backup it records holding.

    Raises :class:`NotFoundError` when there is no warm copy yet (or it records no backup), and
    :class:`RefusedError` when the database is not marked ``backup``: that is not a warm copy.
    """
    server = mask_dsn(with_dbname(dsn, MAINTENANCE_DB))
    state = inspect_warm_copy(dsn)
    if not state.exists or state.holds is None:
        raise NotFoundError(f"there is no warm copy of {database!r} on {server} yet"
                            + (f" ({state.name!r} records no backup)" if state.exists else ""),
                            hint=f"refresh it: 'dbprotect warm-copy {database}'")
    if state.marker != WARM_ENVIRONMENT:
        check_replaceable(state, server)
        raise RefusedError(f"database {state.name!r} on {server} is not marked {WARM_ENVIRONMENT!r}; not a warm copy",
                           hint=f"refresh it: 'dbprotect warm-copy {database}'",
                           refusal=Refusals.NOT_A_WARM_COPY)
    manifest = load_manifest(storage, database, state.holds)
    started = time.perf_counter()
    problems = compare_warm_copy(dsn, manifest)
    return WarmCopyVerification(database, state.name, state.holds, not problems, problems, len(manifest.tables),
                                manifest.total_rows, round(time.perf_counter() - started, 3), manifest.snapshot_at)
