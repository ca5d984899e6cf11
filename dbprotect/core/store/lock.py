"""A per-database writer lock kept in the store itself, so every entry point (CLI, Dagster, sensors,
the demo, another host) sees the same one.

Why in the store: the store is what writers race on (a verification recording into a backup that a
cleanup is deleting; two copies replacing one object), and the store is the one thing all of them
share. Dagster pools serialise Dagster's own runs; this lock also covers a CLI run beside them.

Layout: ``_locks/<database>/<generation:012d>.json``, one object per *generation*, holding
``database``, ``owner`` (the actor: ``cli:<user>``, ``dagster:<job>``), ``host``, ``pid``,
``token`` (random, per holder), ``instance`` (this kernel's boot id and pid namespace), ``started``
(the process's start time, in clock ticks since boot), ``acquired_at``, ``renewed_at`` and
``lease_seconds``. Objects named ``clock-<token>`` beside the generations are short-lived probes
(see *lease*).

Rules:

- **acquire**: list the generations; if the newest is live (its object was written less than a
  lease ago, by the store's own clock: ``modified``), wait and look again; otherwise create the
  next generation with :meth:`~dbprotect.core.store.base.Storage.put_if_absent`. Exactly one
  writer can create a generation. The winner then lists again: a newer generation, or another
  live one, means its view was stale, so it deletes its own object and starts over. Dead older
  generations are deleted by the new holder.
- **lease**: a holder rewrites its object every third of the lease (a daemon thread), so a live
  lock never looks stale. A lock whose holder was SIGKILLed is broken only after its lease has
  run out (default :data:`DEFAULT_LEASE`), never earlier. No client clock is trusted for this:
  the holder's ``renewed_at`` is shown, not used, and the judge's own clock is not used either
  (a host running minutes ahead would otherwise break a live lock): the judge writes a probe
  object and takes the store's ``modified`` time of it as "now", so the lock's ``modified`` and
  "now" both come from the store's clock. One exception, with proof instead of time: a holder in
  *this* kernel and pid namespace (same host name, boot id and ``/proc/self/ns/pid``) whose
  process no longer exists, or whose pid now belongs to a process started at another time (a
  reused pid), is dead now, so the next command on the host (a restore after a killed restore)
  need not wait out the lease. A host name and pid alone prove nothing: containers share host
  names and every pid namespace has its own pid 42; a holder without an instance waits its lease.
- **commit**: a holder calls :meth:`DatabaseLock.ensure_held` (or :func:`ensure_lock_held`)
  immediately before every commit (a backup's manifest, a copy's rename and manifest, each
  backup a cleanup deletes, each check record): it checks that its generation is still the newest
  and still carries its token, and renews it, so a full lease separates the check from any
  breaker; a holder whose lock was broken aborts with a :class:`StorageError` and commits nothing.
- **release**: the holder deletes its generation (on exit, on error, on SIGTERM turned into an
  exception by the caller).
- **wait**: a second writer waits up to ``wait_seconds`` (default :data:`DEFAULT_WAIT_SECONDS`)
  and then fails with one line naming the holder (:class:`RefusedError`, ``DATABASE_LOCKED``).
- **re-entrant per thread of control**: an operation that holds the lock and calls another that
  takes it (a restore recording its safety backup's verification) does not wait for itself.
  Other threads and processes are other writers.
- Whoever acquires the lock first sweeps what killed writers of that database left behind
  (:meth:`~dbprotect.core.store.base.Storage.sweep_partial_writes`).

Limits: a holder frozen for longer than its lease (a suspended VM) can find its lock broken; its
next renewal notices (:attr:`DatabaseLock.lost`), and its writes are still write-once
(``put_if_absent``), so it cannot replace what the new holder wrote.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbprotect.core.errors import DbprotectError, Refusals, RefusedError, StorageError
from dbprotect.core.store.base import ObjectInfo, ObjectNotFound, Storage

LOCKS_PREFIX = "_locks/"
DEFAULT_LEASE = timedelta(minutes=5)
DEFAULT_WAIT_SECONDS = 15.0
_GENERATION = re.compile(r"^(\d{12})\.json$")

#: The locks this thread of control holds: (store uri, database) → the lock (re-entrancy).
_HELD: contextvars.ContextVar[dict[tuple[str, str], DatabaseLock] | None] = contextvars.ContextVar(
    "dbprotect_held_locks", default=None)


def lock_prefix(database: str) -> str:
    return f"{LOCKS_PREFIX}{database}/"


def lock_key(database: str, generation: int) -> str:
    return f"{lock_prefix(database)}{generation:012d}.json"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a generation, as read from the store: untrusted text, shown, not obeyed."""

    generation: int
    owner: str
    host: str
    pid: int | None
    acquired_at: str
    modified: datetime | None
    instance: str = ""
    started: int | None = None
    token: str | None = None

    def describe(self) -> str:
        pid = f" pid {self.pid}" if self.pid is not None else ""
        since = f" since {self.acquired_at}" if self.acquired_at else ""
        return f"{self.owner} on {self.host}{pid}{since}"


def _generations(storage: Storage, database: str) -> list[tuple[int, ObjectInfo]]:
    prefix = lock_prefix(database)
    found = []
    for info in storage.list(prefix):
        match = _GENERATION.match(info.key[len(prefix):])
        if match:
            found.append((int(match.group(1)), info))
    return sorted(found, key=lambda item: item[0])


def _read_holder(storage: Storage, generation: int, info: ObjectInfo) -> tuple[LockHolder, str | None, float]:
    """The holder, its token and its lease; an unreadable object is a holder named 'unknown'."""
    try:
        raw = json.loads(storage.get_bytes(info.key))
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        pid = raw.get("pid")
        started = raw.get("started")
        lease = float(raw.get("lease_seconds", DEFAULT_LEASE.total_seconds()))
        holder = LockHolder(generation, str(raw.get("owner", "unknown"))[:200], str(raw.get("host", "?"))[:200],
                            pid if isinstance(pid, int) else None, str(raw.get("acquired_at", ""))[:40],
                            info.modified, str(raw.get("instance", ""))[:200],
                            started if isinstance(started, int) and not isinstance(started, bool) else None,
                            raw.get("token") if isinstance(raw.get("token"), str) else None)
        token = raw.get("token")
        # a lease from the store is untrusted: bounded, so an edited object cannot pin the lock for ever
        return holder, token if isinstance(token, str) else None, min(max(lease, 1.0), 3600.0)
    except ObjectNotFound:
        raise
    except (ValueError, TypeError, UnicodeDecodeError):
        return (LockHolder(generation, "unknown (unreadable lock object)", "?", None, "", info.modified), None,
                DEFAULT_LEASE.total_seconds())


def _instance_id() -> str:
    """This kernel boot and pid namespace: pids are comparable only between processes sharing both.

    Empty when either cannot be read (not Linux): then no lock is ever judged dead by its pid.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}" if boot and namespace else ""


def _process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22); None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # after "pid (comm)": state is field 3, starttime 22
    except (IndexError, ValueError):
        return None


_INSTANCE = _instance_id()
_OWN_START: tuple[int, int | None] = (-1, None)


def _own_start() -> int | None:
    """This process's start time, read again after a fork (a forked child is another process)."""
    global _OWN_START
    pid = os.getpid()
    if _OWN_START[0] != pid:
        _OWN_START = (pid, _process_start(pid))
    return _OWN_START[1]


#: Tokens of the locks this process holds (acquired, not yet released): a generation that names
#: this very process but none of these tokens is one it failed to delete (a store hiccup at release).
_LIVE_TOKENS: set[str] = set()


def _process_gone(holder: LockHolder) -> bool:
    """The holder ran in this kernel and pid namespace and its process is gone (proof it died, not a guess).

    Host name and pid are not enough (containers share host names; each pid namespace reuses pids),
    so the holder must also name our boot id and pid namespace. Its pid is then gone, or now
    belongs to a process that started at another time than the holder recorded (a reused pid), or
    is this process, which no longer holds that generation (it failed to delete it at release:
    without this, its own next command would wait a whole lease for itself).
    """
    if holder.pid is None or holder.host != socket.gethostname():
        return False
    if not _INSTANCE or holder.instance != _INSTANCE:
        return False
    if holder.pid == os.getpid():  # this process: it knows which locks it holds
        return holder.started == _own_start() and holder.token not in _LIVE_TOKENS
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError, OverflowError):
        return False
    started = _process_start(holder.pid)
    return holder.started is not None and started is not None and started != holder.started


class StoreClock:
    """"Now" by the store's clock: the ``modified`` time of a probe object it has just written.

    A lock's age is its ``modified`` (stamped by the store) against this, so neither the judge's
    nor the holder's clock matters. The probe is written once, on first use (only when there is a
    lock to judge), and later readings add the local *monotonic* time elapsed since (immune to
    wall-clock steps). A store that keeps no times gives None: then no lock is judged stale.
    """

    def __init__(self, storage: Storage, database: str) -> None:
        self.storage = storage
        self.database = database
        self._base: tuple[datetime, float] | None = None
        self._probed = False

    def now(self) -> datetime | None:
        if not self._probed:
            self._probed = True
            key = f"{lock_prefix(self.database)}clock-{secrets.token_hex(8)}"
            self.storage.put_bytes(key, b"a probe of the store's clock; removed at once\n")
            try:
                modified = self.storage.stat(key).modified
            finally:
                with contextlib.suppress(DbprotectError):
                    self.storage.delete(key)
            if modified is not None:
                self._base = (modified, time.monotonic())
        if self._base is None:
            return None
        at, mark = self._base
        return at + timedelta(seconds=time.monotonic() - mark)


def _is_live(info: ObjectInfo, lease_seconds: float, now: Callable[[], datetime | None],
             holder: LockHolder | None = None) -> bool:
    """Live until a whole lease has passed since the holder last wrote it, both times by the store's
    clock (or until its process is provably gone, see :func:`_process_gone`)."""
    if holder is not None and _process_gone(holder):
        return False
    if info.modified is None:
        return True  # no time to judge by: never break it
    current = now()
    if current is None:
        return True
    return current - info.modified < timedelta(seconds=lease_seconds)


class DatabaseLock:
    """One writer's hold on ``database`` in ``storage``; use :func:`database_lock`."""

    def __init__(self, storage: Storage, database: str, *, owner: str, lease: timedelta = DEFAULT_LEASE,
                 wait_seconds: float | None = None) -> None:
        self.storage = storage
        self.database = database
        self.owner = owner
        self.lease = lease
        # the module's default is read per lock, not bound at import: a test shortens it for one test
        self.wait_seconds = DEFAULT_WAIT_SECONDS if wait_seconds is None else wait_seconds
        self.token = secrets.token_hex(16)
        self.generation: int | None = None
        self.acquired_at: datetime | None = None
        self.lost = False
        self.swept: list[str] = []
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        now = datetime.now(UTC)
        return json.dumps({
            "database": self.database, "owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
            "token": self.token, "instance": _INSTANCE, "started": _own_start(),
            "acquired_at": (self.acquired_at or now).isoformat(),
            "renewed_at": now.isoformat(), "lease_seconds": self.lease.total_seconds(),
        }, indent=2).encode() + b"\n"

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            holder = self._try_once()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise RefusedError(
                    f"database {self.database!r} is locked in {self.storage.uri} by {holder.describe()} "
                    f"(lock generation {holder.generation})",
                    hint="another dbprotect writer (backup, cleanup, copy, restore, verify) is working on it: wait "
                    f"and run again; a lock whose holder died is broken {int(self.lease.total_seconds())} s after "
                    "its last renewal",
                    refusal=Refusals.DATABASE_LOCKED)
            time.sleep(0.2 + random.random() * 0.3)
        _LIVE_TOKENS.add(self.token)
        self._renewer = threading.Thread(target=self._renew_loop, name=f"dbprotect-lock:{self.database}",
                                         daemon=True)
        self._renewer.start()
        try:
            self.swept = self.storage.sweep_partial_writes(f"{self.database}/")
        except BaseException:
            self.release()  # else the renewer would keep an abandoned lock alive as long as the process
            raise

    def _try_once(self) -> LockHolder | None:
        """Take the next generation, or return the live holder that stops us."""
        clock = StoreClock(self.storage, self.database)
        now = datetime.now(UTC)
        generations = _generations(self.storage, self.database)
        for generation, info in reversed(generations):
            try:
                holder, _token, lease = _read_holder(self.storage, generation, info)
            except ObjectNotFound:
                continue  # released while we looked
            if _is_live(info, lease, clock.now, holder):
                return holder
        mine = (generations[-1][0] if generations else 0) + 1
        self.acquired_at = now
        if not self.storage.put_if_absent(lock_key(self.database, mine), self._body()):
            return self._newest_holder() or LockHolder(mine, "another writer", "?", None, "", None)
        # Our view may have been stale (a newer generation, or a live one we missed): look again.
        again = _generations(self.storage, self.database)
        rival = None
        for generation, info in again:
            if generation == mine:
                continue
            try:
                holder, token, lease = _read_holder(self.storage, generation, info)
            except ObjectNotFound:
                continue
            if generation > mine or _is_live(info, lease, clock.now, holder):
                rival = holder
                break
        try:
            _holder, token, _lease = _read_holder(self.storage, mine, self.storage.stat(lock_key(self.database, mine)))
        except ObjectNotFound:
            token = None
        if rival is not None or token != self.token:  # token: an endpoint that ignored If-None-Match
            if token == self.token:
                self.storage.delete(lock_key(self.database, mine))
            return rival or LockHolder(mine, "another writer", "?", None, "", None)
        self.generation = mine
        for generation, _info in again:
            if generation < mine:
                with contextlib.suppress(DbprotectError):
                    self.storage.delete(lock_key(self.database, generation))  # dead: we checked
        return None

    def _newest_holder(self) -> LockHolder | None:
        generations = _generations(self.storage, self.database)
        if not generations:
            return None
        generation, info = generations[-1]
        try:
            return _read_holder(self.storage, generation, info)[0]
        except ObjectNotFound:
            return None

    def still_held(self) -> bool:
        """Our generation is the newest and still carries our token."""
        if self.generation is None:
            return False
        generations = _generations(self.storage, self.database)
        if not generations or generations[-1][0] != self.generation:
            return False
        try:
            _holder, token, _lease = _read_holder(self.storage, self.generation, generations[-1][1])
        except ObjectNotFound:
            return False
        return token == self.token

    def renew(self) -> bool:
        """Rewrite our generation so its lease starts again; False (and :attr:`lost`) if it was broken."""
        if self.generation is None:
            return False
        if not self.still_held():
            self.lost = True
            return False
        self.storage.put_bytes(lock_key(self.database, self.generation), self._body())
        return True

    def ensure_held(self, what: str) -> None:
        """Just before a commit: still ours (newest generation, our token), renewed; else abort.

        Renewing restarts the lease, so no other writer can break the lock for a whole lease after
        the check: the commit that follows happens under the lock. Raises :class:`StorageError`
        (nothing committed) when the lock was broken, e.g. after this process stalled past its lease.
        """
        # renewed, then looked at again: a breaker that slipped in between the renewal's check and
        # its write holds a newer generation, which the second look sees
        if not self.lost and self.renew() and self.still_held():
            return
        self.lost = True
        raise StorageError(
            f"lost the lock on database {self.database!r} in {self.storage.uri} (another writer broke it after "
            f"its lease ran out): {what} was not committed",
            hint="this process stalled for longer than the lock's lease, or the store's clock jumped; nothing was "
            "committed: run the command again")

    def _renew_loop(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except DbprotectError:
                continue  # a store hiccup: try again at the next interval, well inside the lease

    def release(self) -> None:
        """Stop renewing and delete our generation. A store that fails the delete leaves a generation
        that no live holder claims: this process judges it dead at once (:func:`_process_gone`),
        others after its lease or when this process is gone."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        _LIVE_TOKENS.discard(self.token)
        with contextlib.suppress(DbprotectError):
            if self.generation is not None and self.still_held():
                self.storage.delete(lock_key(self.database, self.generation))
        self.generation = None


def current_holder(storage: Storage, database: str,
                   now: Callable[[], datetime | None] | None = None) -> LockHolder | None:
    """The live holder of ``database``'s lock, if any (for status output and tests).

    Judged by the local clock unless ``now`` is given: status output must not write to the store,
    and what it shows is not obeyed (acquiring judges by :class:`StoreClock`).
    """
    clock = now or (lambda: datetime.now(UTC))
    for generation, info in reversed(_generations(storage, database)):
        try:
            holder, _token, lease = _read_holder(storage, generation, info)
        except ObjectNotFound:
            continue
        if _is_live(info, lease, clock, holder):
            return holder
    return None


def held_lock(storage: Storage, database: str) -> DatabaseLock | None:
    """The lock this thread of control holds on ``database`` in ``storage``, if any."""
    return (_HELD.get() or {}).get((storage.uri, database))


def ensure_lock_held(storage: Storage, database: str, what: str) -> None:
    """Before committing ``what``: if this thread of control holds the database's lock, make sure it
    still does (:meth:`DatabaseLock.ensure_held`). Writers called outside a lock (tests, tools that
    write a fresh store) are not checked: the lock is taken by the ``core.ops`` entry points."""
    lock = held_lock(storage, database)
    if lock is not None:
        lock.ensure_held(what)


@contextlib.contextmanager
def database_lock(storage: Storage, database: str, *, owner: str, lease: timedelta = DEFAULT_LEASE,
                  wait_seconds: float | None = None) -> Iterator[DatabaseLock]:
    """Hold ``database``'s writer lock in ``storage`` for the ``with`` block (re-entrant, see module doc)."""
    held = _HELD.get() or {}
    slot = (storage.uri, database)
    if slot in held:
        yield held[slot]
        return
    lock = DatabaseLock(storage, database, owner=owner, lease=lease, wait_seconds=wait_seconds)
    lock.acquire()
    marker = _HELD.set({**held, slot: lock})
    try:
        yield lock
    finally:
        _HELD.reset(marker)
        lock.release()


__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_WAIT_SECONDS",
    "LOCKS_PREFIX",
    "DatabaseLock",
    "LockHolder",
    "StoreClock",
    "current_holder",
    "database_lock",
    "ensure_lock_held",
    "held_lock",
    "lock_key",
    "lock_prefix",
]
