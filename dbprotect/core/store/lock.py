"""A per-database writer lock kept in the store itself, so every entry point (CLI, Dagster, sensors,
the demo, another host) sees the same one.

Why in the store: the store is what writers race on (a verification recording into a backup that a
cleanup is deleting; two copies replacing one object), and the store is the one thing all of them
share. Dagster pools serialise Dagster's own runs; this lock also covers a CLI run beside them.

Layout: ``_locks/<database>/<generation:012d>.json``, one object per *generation*, holding
``database``, ``owner`` (the actor: ``cli:<user>``, ``dagster:<job>``), ``host``, ``pid``,
``token`` (random, per holder), ``acquired_at``, ``renewed_at`` and ``lease_seconds``.

Rules:

- **acquire**: list the generations; if the newest is live (its object was written less than a
  lease ago, by the store's own clock: ``modified``), wait and look again; otherwise create the
  next generation with :meth:`~dbprotect.core.store.base.Storage.put_if_absent`. Exactly one
  writer can create a generation. The winner then lists again: a newer generation, or another
  live one, means its view was stale, so it deletes its own object and starts over. Dead older
  generations are deleted by the new holder.
- **lease**: a holder rewrites its object every third of the lease (a daemon thread), so a live
  lock never looks stale. A lock whose holder was SIGKILLed is broken only after its lease has
  run out (default :data:`DEFAULT_LEASE`), never earlier; the holder's own clock is not trusted
  for this (its ``renewed_at`` is shown, not used), the store's ``modified`` time is. One
  exception, with proof instead of time: a holder on *this* host whose process no longer exists
  (``kill(pid, 0)`` fails with ESRCH) is dead now, so the next command on the host (a restore
  after a killed restore) need not wait out the lease. A reused pid only makes us wait.
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dbprotect.core.errors import DbprotectError, Refusals, RefusedError
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
        lease = float(raw.get("lease_seconds", DEFAULT_LEASE.total_seconds()))
        holder = LockHolder(generation, str(raw.get("owner", "unknown"))[:200], str(raw.get("host", "?"))[:200],
                            pid if isinstance(pid, int) else None, str(raw.get("acquired_at", ""))[:40],
                            info.modified)
        token = raw.get("token")
        # a lease from the store is untrusted: bounded, so an edited object cannot pin the lock for ever
        return holder, token if isinstance(token, str) else None, min(max(lease, 1.0), 3600.0)
    except ObjectNotFound:
        raise
    except (ValueError, TypeError, UnicodeDecodeError):
        return (LockHolder(generation, "unknown (unreadable lock object)", "?", None, "", info.modified), None,
                DEFAULT_LEASE.total_seconds())


def _process_gone(holder: LockHolder) -> bool:
    """The holder ran on this host and its process no longer exists (proof it died, not a guess)."""
    if holder.pid is None or holder.host != socket.gethostname() or holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError, OverflowError):
        return False
    return False


def _is_live(info: ObjectInfo, lease_seconds: float, now: datetime, holder: LockHolder | None = None) -> bool:
    """Live until a whole lease has passed since the holder last wrote it, by the store's clock
    (or until its process is provably gone from this host)."""
    if holder is not None and _process_gone(holder):
        return False
    if info.modified is None:
        return True  # no time to judge by: never break it
    return now - info.modified < timedelta(seconds=lease_seconds)


class DatabaseLock:
    """One writer's hold on ``database`` in ``storage``; use :func:`database_lock`."""

    def __init__(self, storage: Storage, database: str, *, owner: str, lease: timedelta = DEFAULT_LEASE,
                 wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
        self.storage = storage
        self.database = database
        self.owner = owner
        self.lease = lease
        self.wait_seconds = wait_seconds
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
            "token": self.token, "acquired_at": (self.acquired_at or now).isoformat(),
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
        self._renewer = threading.Thread(target=self._renew_loop, name=f"dbprotect-lock:{self.database}",
                                         daemon=True)
        self._renewer.start()
        self.swept = self.storage.sweep_partial_writes(f"{self.database}/")

    def _try_once(self) -> LockHolder | None:
        """Take the next generation, or return the live holder that stops us."""
        now = datetime.now(UTC)
        generations = _generations(self.storage, self.database)
        for generation, info in reversed(generations):
            try:
                holder, _token, lease = _read_holder(self.storage, generation, info)
            except ObjectNotFound:
                continue  # released while we looked
            if _is_live(info, lease, now, holder):
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
            if generation > mine or _is_live(info, lease, datetime.now(UTC), holder):
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

    def _renew_loop(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except DbprotectError:
                continue  # a store hiccup: try again at the next interval, well inside the lease

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        if self.generation is not None and self.still_held():
            with contextlib.suppress(DbprotectError):
                self.storage.delete(lock_key(self.database, self.generation))
        self.generation = None


def current_holder(storage: Storage, database: str) -> LockHolder | None:
    """The live holder of ``database``'s lock, if any (for status output and tests)."""
    now = datetime.now(UTC)
    for generation, info in reversed(_generations(storage, database)):
        try:
            holder, _token, lease = _read_holder(storage, generation, info)
        except ObjectNotFound:
            continue
        if _is_live(info, lease, now, holder):
            return holder
    return None


@contextlib.contextmanager
def database_lock(storage: Storage, database: str, *, owner: str, lease: timedelta = DEFAULT_LEASE,
                  wait_seconds: float = DEFAULT_WAIT_SECONDS) -> Iterator[DatabaseLock]:
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
    "current_holder",
    "database_lock",
    "lock_key",
    "lock_prefix",
]
