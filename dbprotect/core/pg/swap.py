"""The one swap: a verified database renamed into a target's place, crash-safe.

The on-call restore (:mod:`dbprotect.core.restore.oncall`) and the warm copy
(:mod:`dbprotect.core.restore.warm`) both end by renaming a verified *incoming* database to the
target's name, retiring the database that had that name. Two renames cannot be one transaction
(``ALTER DATABASE ... RENAME`` cannot run in a transaction block), so a process killed between
them used to leave production under a throwaway name that the next scratch sweep dropped.

Now the intent is recorded durably before the first rename, where the server alone can find it:
a database-level setting :data:`SWAP_SETTING` on the incoming database and on the target (which
becomes the *retired* database) naming the swap id, the target, incoming and retired names and the
role of that database (``incoming`` / ``outgoing``). Through ``on_intent`` the caller also records
it in the store's audit log before anything is renamed. The retired database keeps its
environment marker (``production``, ``backup``, ...) and the swap record: it is never marked
``scratch``, and a sweep never drops a database carrying a swap record.

Steps (:data:`SWAP_STEPS`; ``hooks`` is called after each, which is how tests kill the process at
every one of them)::

    intent_audited       the caller's on_intent (the store's audit log) has returned
    intent_on_incoming   the incoming database carries the record, the target's marker, no scratch holder
    intent_on_target     the target carries the record (role outgoing)
    target_closed        the target accepts no connections; its sessions are terminated
    target_retired       target renamed to the retired name          <- the commit point
    incoming_renamed     incoming renamed to the target's name
    target_finished      owner carried over
    retired_dropped      the retired database dropped
    done                 the record removed from the new target

Recovery (:func:`recover_interrupted_swaps`, run at the start of every restore, warm-copy refresh,
drill and scratch sweep on a server) reads the records and decides from where the databases are:
before the commit point (the target still has its name) it **rolls back** (drops the incoming
database, clears the record, lets connections in again); from it on, it **finishes** (renames the
incoming database in if it is not there yet, drops the retired one); if the incoming database is
gone, it rolls back by renaming the retired database to the target's name. A swap whose process is
alive holds an advisory lock keyed by its id and is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from dbprotect.core.errors import DatabaseError, DbprotectError
from dbprotect.core.pg.markers import database_settings, set_marker
from dbprotect.core.pg.scratch import (
    HOLDER_SETTING,
    SWAP_SETTING,
    drop_database,
    is_held,
    sweepable_scratch_databases,
)
from dbprotect.core.pg.tools import connect

log = logging.getLogger(__name__)

SWAP_STEPS: tuple[str, ...] = ("intent_audited", "intent_on_incoming", "intent_on_target", "target_closed",
                               "target_retired", "incoming_renamed", "target_finished", "retired_dropped", "done")
#: First key of the advisory lock a live swap holds ('dbpw').
SWAP_LOCK_CLASS = 0x64627077
RETIRED_PREFIX = "dbprotect_retired_"
APPLICATION = "dbprotect-swap"

#: Called after each step with its name (:data:`SWAP_STEPS`): tests raise or kill the process here.
SwapHook = Callable[[str], None]


@dataclass(frozen=True)
class SwapIntent:
    """What a swap is about to do, as recorded on both databases and in the audit log."""

    swap_id: str
    target: str
    incoming: str
    #: The name the replaced target gets until it is dropped; None when the target does not exist yet.
    retired: str | None
    environment: str
    owner: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def record(self, role: str) -> str:
        return json.dumps({**asdict(self), "role": role}, sort_keys=True)

    def describe(self) -> str:
        if self.retired is None:
            return f"swap {self.swap_id}: {self.incoming!r} becomes new database {self.target!r}"
        return (f"swap {self.swap_id}: {self.incoming!r} replaces {self.target!r} "
                f"(the replaced database is {self.retired!r} until dropped)")


@dataclass(frozen=True)
class SwapRecovery:
    """What the recovery did with one interrupted swap: ``action`` is finished, rolled back, left alone or failed."""

    intent: SwapIntent
    action: str
    detail: str


@dataclass(frozen=True)
class SwapDone:
    """A committed swap: the incoming database has the target's name.

    ``warning`` says what housekeeping after the commit point failed (say, the retired database
    could not be dropped), ``leftover`` names the database left behind: the swap itself succeeded,
    the swap records stay, and the next restore on the server finishes it.
    """

    intent: SwapIntent
    warning: str | None = None
    leftover: str | None = None


def new_swap_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


def _lock_key(swap_id: str) -> int:
    return zlib.crc32(swap_id.encode("utf-8")) & 0x7FFFFFFF


def _rename(admin: psycopg.Connection, old: str, new: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def _set(admin: psycopg.Connection, dbname: str, setting: str, value: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
        sql.Identifier(dbname), sql.SQL(setting), sql.Literal(value)))


def _reset(admin: psycopg.Connection, dbname: str, setting: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(sql.Identifier(dbname), sql.SQL(setting)))


def _allow_connections(admin: psycopg.Connection, dbname: str, allow: bool) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        sql.Identifier(dbname), sql.SQL("true" if allow else "false")))


def _exists(admin: psycopg.Connection, dbname: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def swap_in(admin_dsn: str, incoming: str, target: str, *, environment: str, replace: bool,
            on_intent: Callable[[SwapIntent], None] | None = None,
            before_acting: Callable[[psycopg.Connection], None] | None = None,
            hooks: SwapHook | None = None) -> SwapDone:
    """Put the verified database ``incoming`` in place as ``target`` (replacing it when ``replace``).

    ``environment`` is the marker the target carries afterwards. ``before_acting`` re-checks the
    target (its guards) on the admin connection immediately before the intent is recorded;
    ``on_intent`` records the intent elsewhere (the store's audit log) and must return before the
    first rename. An exception (SIGTERM, Ctrl-C, a failed statement) before the incoming database
    has the target's name rolls back here; one after it leaves the rest (owner, dropping the retired
    database) to :func:`recover_interrupted_swaps`. Only SIGKILL leaves a swap between the renames,
    and the recovery finishes it: production always has a name the recovery knows. If the target
    cannot even be renamed back in-process, nothing is dropped: both databases keep their records
    and the recovery decides. A failure of the housekeeping after the commit point (dropping the
    retired database) does not undo a swap that happened: it comes back as :attr:`SwapDone.warning`.
    """
    try:
        return _swap_in(admin_dsn, incoming, target, environment=environment, replace=replace, on_intent=on_intent,
                        before_acting=before_acting, step=hooks or (lambda _name: None))
    except psycopg.Error as exc:
        raise DatabaseError(f"putting {incoming!r} in place as {target!r} failed: {' '.join(str(exc).split())[:200]}; "
                            f"{target!r} holds either its previous data or the new, whole (the next restore on "
                            "this server completes an unfinished swap)",
                            hint="the DSN's role needs CREATEDB and to own the target database") from None


def _swap_in(admin_dsn: str, incoming: str, target: str, *, environment: str, replace: bool,
             on_intent: Callable[[SwapIntent], None] | None,
             before_acting: Callable[[psycopg.Connection], None] | None, step: SwapHook) -> SwapDone:
    swap_id = new_swap_id()
    with connect(admin_dsn, autocommit=True, application_name=APPLICATION) as admin:
        admin.execute("SELECT pg_advisory_lock(%s, %s)", (SWAP_LOCK_CLASS, _lock_key(swap_id)))
        if before_acting:
            before_acting(admin)
        owner = None
        if replace:
            row = admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                (target,)).fetchone()
            owner = row[0] if row else None
        intent = SwapIntent(swap_id, target, incoming, f"{RETIRED_PREFIX}{swap_id.replace('-', '_')}"
                            if replace else None, environment, owner)
        if on_intent:
            on_intent(intent)
        step("intent_audited")
        try:
            _set(admin, incoming, SWAP_SETTING, intent.record("incoming"))
            set_marker(admin, incoming, environment)
            _reset(admin, incoming, HOLDER_SETTING)
            step("intent_on_incoming")
            if replace:
                _set(admin, target, SWAP_SETTING, intent.record("outgoing"))
            step("intent_on_target")
            if replace:
                _allow_connections(admin, target, False)
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                              "AND pid <> pg_backend_pid()", (target,))
                step("target_closed")
                _rename(admin, target, intent.retired or "")
            else:
                step("target_closed")
        except BaseException:
            with contextlib.suppress(Exception):
                _roll_back_before_commit(admin, admin_dsn, intent)
            raise
        try:
            step("target_retired")
            _rename(admin, incoming, target)
        except BaseException:  # interrupted in-process between the renames: put the target back now
            _put_target_back(admin, admin_dsn, intent)
            raise
        step("incoming_renamed")
        try:
            _finish(admin, admin_dsn, intent, step)
        except (psycopg.Error, DbprotectError) as exc:  # the swap happened; only its housekeeping failed
            reason = exc.one_line() if isinstance(exc, DbprotectError) else " ".join(str(exc).split())[:200]
            leftover = intent.retired if intent.retired and _exists_quietly(admin_dsn, intent.retired) else None
            warning = (f"{intent.target!r} holds the new data, but finishing {intent.describe()} failed ({reason})"
                       + (f"; {leftover!r} is left behind" if leftover else "")
                       + "; the next restore on this server finishes it")
            log.warning("%s", warning)
            return SwapDone(intent, warning, leftover)
    return SwapDone(intent)


def _exists_quietly(admin_dsn: str, dbname: str) -> bool:
    """Whether ``dbname`` exists, on a fresh connection (the swap's own may be the one that broke); True if unknown."""
    try:
        with connect(admin_dsn, autocommit=True, application_name=APPLICATION) as admin:
            return _exists(admin, dbname)
    except (psycopg.Error, DbprotectError):
        return True


def _put_target_back(admin: psycopg.Connection, admin_dsn: str, intent: SwapIntent) -> None:
    """Interrupted in-process between the renames: rename the retired database back, then roll back.

    Only once the target has its name again is the incoming database dropped. If the rename back
    fails (the connection broke, the name was taken meanwhile), nothing is dropped: the retired
    database holds production and the incoming one the new data, both keep their swap records,
    and :func:`recover_interrupted_swaps` finishes or rolls back the swap from where they are.
    """
    if intent.retired:
        try:
            _rename(admin, intent.retired, intent.target)
        except Exception as exc:  # whatever broke, dropping anything now could lose data
            log.error("%s was interrupted between its renames and %r could not be renamed back to %r (%s); "
                      "both databases are kept with their swap records, the next restore on this server "
                      "completes the swap", intent.describe(), intent.retired, intent.target,
                      " ".join(str(exc).split())[:200])
            return
    with contextlib.suppress(Exception):
        _roll_back_before_commit(admin, admin_dsn, intent)


def _drop(admin: psycopg.Connection, admin_dsn: str, dbname: str) -> None:
    """Drop ``dbname`` through :func:`dbprotect.core.pg.scratch.drop_database` (retried), and say if it stayed."""
    drop_database(admin_dsn, dbname)
    if _exists(admin, dbname):
        raise DbprotectError(f"database {dbname!r} could not be dropped")


def _roll_back_before_commit(admin: psycopg.Connection, admin_dsn: str, intent: SwapIntent) -> None:
    """The target still has its name: clear its record and let connections in; drop the incoming database."""
    if intent.retired and read_swap(admin, intent.target, intent.swap_id):
        _reset(admin, intent.target, SWAP_SETTING)
        _allow_connections(admin, intent.target, True)
    if read_swap(admin, intent.incoming, intent.swap_id):
        _drop(admin, admin_dsn, intent.incoming)


def _finish(admin: psycopg.Connection, admin_dsn: str, intent: SwapIntent, step: SwapHook) -> None:
    """The incoming database has the target's name: carry the owner over, drop the retired one, clear."""
    if intent.owner:
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(intent.target),
                                                                       sql.Identifier(intent.owner)))
    _allow_connections(admin, intent.target, True)
    step("target_finished")
    if intent.retired and read_swap(admin, intent.retired, intent.swap_id):
        drop_database(admin_dsn, intent.retired)
        if _exists(admin, intent.retired):
            raise DbprotectError(f"the replaced database {intent.retired!r} could not be dropped")
    step("retired_dropped")
    _reset(admin, intent.target, SWAP_SETTING)
    step("done")


def read_swap(admin: psycopg.Connection, dbname: str, swap_id: str | None = None) -> dict[str, str] | None:
    """The swap record ``dbname`` carries (of ``swap_id``, if given), or None."""
    return _parse(database_settings(admin, dbname).get(dbname, {}).get(SWAP_SETTING), swap_id)


def _parse(value: str | None, swap_id: str | None = None) -> dict[str, str] | None:
    if not value:
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    if not isinstance(record, dict) or (swap_id is not None and record.get("swap_id") != swap_id):
        return None
    return record


def interrupted_swaps(admin: psycopg.Connection) -> dict[str, dict[str, dict[str, str]]]:
    """Swap records on the server: by swap id, ``{database name: record}`` of each database carrying it."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for name, settings in database_settings(admin).items():
        record = _parse(settings.get(SWAP_SETTING))
        if record and isinstance(record.get("swap_id"), str):
            found.setdefault(record["swap_id"], {})[name] = record
    return found


def _intent_of(swap_id: str, holders: dict[str, dict[str, str]]) -> SwapIntent:
    first = next(iter(holders.values()))
    return SwapIntent(swap_id, str(first.get("target", "")), str(first.get("incoming", "")),
                      first.get("retired") or None, str(first.get("environment", "")),
                      first.get("owner") or None, str(first.get("started_at", "")))


def pending_swaps(admin_dsn: str) -> list[str]:
    """Interrupted swaps on the server the next command would recover, described; changes nothing.

    What a ``--dry-run`` reports: a swap whose process is alive (it holds its lock) is not pending.
    """
    with connect(admin_dsn, autocommit=True, application_name=APPLICATION) as admin:
        return [f"interrupted {_intent_of(swap_id, holders).describe()} (databases: {', '.join(sorted(holders))})"
                for swap_id, holders in sorted(interrupted_swaps(admin).items())
                if not is_held(admin, SWAP_LOCK_CLASS, _lock_key(swap_id))]


def recover_interrupted_swaps(admin_dsn: str, *,
                              on_recovered: Callable[[SwapRecovery], None] | None = None) -> list[SwapRecovery]:
    """Finish or roll back every swap on the server whose process died (see the module docstring).

    ``on_recovered`` is called for each (the caller audits it); each is also logged. A swap whose
    process still holds its lock is reported ``left alone``, not touched; one the recovery cannot
    complete (say, another role's databases) is reported ``failed`` and its databases are kept, so
    an unrelated restore on the server still runs.
    """
    done: list[SwapRecovery] = []
    with connect(admin_dsn, autocommit=True, application_name=APPLICATION) as admin:
        for swap_id, holders in sorted(interrupted_swaps(admin).items()):
            intent = _intent_of(swap_id, holders)
            if is_held(admin, SWAP_LOCK_CLASS, _lock_key(swap_id)) or not admin.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (SWAP_LOCK_CLASS, _lock_key(swap_id))).fetchone()[0]:  # type: ignore[index]
                outcome = SwapRecovery(intent, "left alone", f"{intent.describe()} is still running")
            else:
                try:
                    outcome = _recover(admin, admin_dsn, intent, holders)
                except (psycopg.Error, DbprotectError) as exc:  # e.g. another role's databases: not ours to fix
                    reason = exc.one_line() if isinstance(exc, DbprotectError) else " ".join(str(exc).split())
                    outcome = SwapRecovery(intent, "failed", f"interrupted {intent.describe()} could not be "
                                                             f"recovered ({reason[:200]}); its databases are kept")
                finally:
                    admin.execute("SELECT pg_advisory_unlock(%s, %s)", (SWAP_LOCK_CLASS, _lock_key(swap_id)))
            log.warning("%s", outcome.detail)
            if on_recovered:
                on_recovered(outcome)
            done.append(outcome)
    return done


def _require_consistent(intent: SwapIntent, holders: dict[str, dict[str, str]]) -> None:
    """Refuse to act on swap records that disagree or name databases the swap never had.

    The records are database settings any owner of those databases can write: before recovery
    renames or drops anything, every record must name the same target, incoming and retired
    databases, the retired name must be one a swap makes, and each database must carry the role
    its name allows (incoming: the incoming or, after the commit point, the target's name;
    outgoing: the target's or the retired name). Otherwise the recovery fails and keeps everything.
    """
    problem = None
    if not intent.target or not intent.incoming or intent.target == intent.incoming:
        problem = "it names no target or incoming database"
    elif intent.retired is not None and not intent.retired.startswith(RETIRED_PREFIX):
        problem = f"its retired name {intent.retired[:80]!r} is not one a swap makes"
    for name, record in holders.items():
        if problem:
            break
        same = (str(record.get("target", "")), str(record.get("incoming", "")), record.get("retired") or None)
        allowed = {"incoming": {intent.incoming, intent.target}, "outgoing": {intent.target, intent.retired}}
        if same != (intent.target, intent.incoming, intent.retired):
            problem = f"the records on {name!r} and the other databases disagree"
        elif name not in allowed.get(str(record.get("role")), set()):
            problem = f"{name!r} carries the role {str(record.get('role'))[:20]!r}, which its name does not allow"
    if problem:
        raise DbprotectError(f"the records of {intent.describe()} cannot be trusted: {problem}")


def _recover(admin: psycopg.Connection, admin_dsn: str, intent: SwapIntent,
             holders: dict[str, dict[str, str]]) -> SwapRecovery:
    _require_consistent(intent, holders)
    roles = {record.get("role"): name for name, record in holders.items()}
    incoming_at, outgoing_at = roles.get("incoming"), roles.get("outgoing")
    never = lambda _name: None  # noqa: E731
    if incoming_at == intent.target:
        _finish(admin, admin_dsn, intent, never)
        return SwapRecovery(intent, "finished", f"interrupted {intent.describe()} was finished: {intent.target!r} "
                                                "holds the new data")
    if outgoing_at is not None and outgoing_at == intent.retired and _exists(admin, intent.target):
        # Past the commit point, yet another database took the target's name: acting on either
        # could lose the only copy of production (in the retired database) or of the new data.
        raise DbprotectError(f"{intent.target!r} exists but is not the swap's: production is in {intent.retired!r}")
    if outgoing_at is not None and outgoing_at == intent.retired:
        if incoming_at == intent.incoming:
            _rename(admin, intent.incoming, intent.target)
            _finish(admin, admin_dsn, intent, never)
            return SwapRecovery(intent, "finished", f"interrupted {intent.describe()} was finished: "
                                                    f"{intent.target!r} holds the new data")
        _rename(admin, intent.retired, intent.target)
        _reset(admin, intent.target, SWAP_SETTING)
        _allow_connections(admin, intent.target, True)
        return SwapRecovery(intent, "rolled back", f"interrupted {intent.describe()} was rolled back (the incoming "
                                                   f"database is gone): {intent.target!r} holds its previous data")
    # Before the commit point: the target (if any) still has its name.
    if outgoing_at == intent.target:
        _reset(admin, intent.target, SWAP_SETTING)
        _allow_connections(admin, intent.target, True)
    if incoming_at is not None and incoming_at == intent.incoming:  # only the recorded incoming database
        _drop(admin, admin_dsn, incoming_at)
    return SwapRecovery(intent, "rolled back", f"interrupted {intent.describe()} was rolled back: "
                                               f"{intent.target!r} is unchanged")


def recover_and_sweep(admin_dsn: str, *, on_recovered: Callable[[SwapRecovery], None] | None = None,
                      ) -> list[SwapRecovery]:
    """What every command that restores onto a server does first: recover swaps, then sweep abandoned staging.

    Staging and scratch databases whose holder died are dropped (by marker and lock, see
    :func:`dbprotect.core.pg.scratch.sweepable_scratch_databases`); swap recovery runs first so a
    database of an interrupted swap is never mistaken for a leftover.
    """
    from_swaps = recover_interrupted_swaps(admin_dsn, on_recovered=on_recovered)
    for name in sweepable_scratch_databases(admin_dsn):
        log.warning("dropping staging database %s left by a killed run", name)
        drop_database(admin_dsn, name)
    return from_swaps
