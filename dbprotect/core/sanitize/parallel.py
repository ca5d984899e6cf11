"""Worker processes for the sanitizing build's Python work (fingerprints, verdicts, masking): when and how.

Normalizing and hashing values is Python work, one core's; a large table hands it to forked workers
a batch at a time while this process reads the next batch. Fork, not spawn: spawn re-imports the
main module of whatever started us (a script without a ``__main__`` guard would run again); a
forked worker inherits what it needs (the finished production set: its pages are shared, never
copied), runs only the function it is given, and leaves by ``os._exit``, so it never touches the
connections it inherited. Nothing secret is sent to a worker: what it needs of a key it inherits with
the process's memory (the fingerprint workers use the derived fingerprint key; the stream's worker masks,
so it uses the masking key). Workers return counts, fingerprints or masked values of the copy, never
production's values.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import psycopg

from dbprotect.core.sanitize.transformers import SanitizeError

T = TypeVar("T")

#: A table estimated at this many rows or more is worked on by worker processes.
PARALLEL_ROWS = 200_000
#: Batches handed to the workers and not yet collected, at most (bounds memory: a few MB each).
IN_FLIGHT = 4


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def workers_for(conn: psycopg.Connection, table: str) -> int:
    """How many workers a table gets: one per core (at most 2) when it is large, else 0 (in this process:
    starting workers costs more than a small table)."""
    schema, _, name = table.partition(".")
    row = conn.execute("SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    available = cores()
    return min(2, available) if row is not None and row[0] >= PARALLEL_ROWS and available > 1 else 0


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this worker when its parent dies (``PR_SET_PDEATHSIG``).

    Why: a worker waits for work on a pipe whose write end it inherited itself, so a build killed with
    ``kill -9`` (or by the OOM killer) left its workers waiting forever, each holding the production
    set it inherited (measured: both alive after the parent's kill). Linux only; elsewhere a no-op.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request: nobody would ever kill us
        os._exit(1)


def _start(parent: int, initializer: Callable[..., None] | None, args: tuple[object, ...]) -> None:
    _die_with_parent(parent)
    if initializer is not None:
        initializer(*args)


def fork_pool(workers: int, initializer: Callable[..., None] | None = None,
              initargs: tuple[object, ...] = ()) -> ProcessPoolExecutor:
    """A pool of forked workers (see the module docstring for why fork) that die with this process."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start,
                               initargs=(os.getpid(), initializer, initargs))


def died(what: str) -> SanitizeError:
    """The one line for a worker that died (killed, out of memory): the build stops and stores nothing,
    like any other failure of the build."""
    return SanitizeError(f"a worker process {what} died before it finished; nothing was stored",
                         hint="check the machine's memory and the kernel log (dmesg) for a killed process, "
                              "then run the build again")


def collect(future: Future[T], what: str) -> T:
    """A worker's result (:func:`died` when its worker died)."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise died(what) from None
