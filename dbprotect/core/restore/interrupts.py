"""SIGTERM cleans up like Ctrl-C: a restore that is told to stop leaves no plaintext and no staging database.

Python turns SIGINT into :class:`KeyboardInterrupt`, so every ``finally`` of a restore runs: the
private plaintext folder (:mod:`dbprotect.core.restore.decrypt`) is removed, the staging database
dropped, a swap before its commit point rolled back. SIGTERM (``kill``, systemd, a container
stop) by default ends the process at once, with none of that. :func:`terminate_as_interrupt`
makes SIGTERM raise :class:`KeyboardInterrupt` too while a restore, drill or warm-copy refresh
runs, and ignores further SIGTERMs until the block is left, so the cleanup is not cut short.

It changes nothing when SIGTERM is already handled (a Dagster run worker turns it into its own
interrupt exception, which the same ``finally`` blocks see) or off the main thread (where Python
cannot install handlers). SIGKILL cannot be handled: its leftovers are swept by the next command
(:func:`dbprotect.core.restore.staged.prepare_server`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled as an interrupt, so the CLI exits 130 after cleaning up."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (once; later ones wait for the cleanup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
