"""Leftovers and signals without a database: SIGTERM as an interrupt, and the sweep of private restore folders."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbprotect.core.restore.decrypt import FOLDER_PREFIX, HOLDER_FILE, sweep_restore_folders
from dbprotect.core.restore.interrupts import Terminated, terminate_as_interrupt


def test_sigterm_raises_an_interrupt_in_the_block_and_later_ones_wait_for_the_cleanup():
    outer = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh CLI process (Dagster tests map it)
    cleaned = False
    try:
        with pytest.raises(Terminated), terminate_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted before this ends
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM does not cut the cleanup short
                cleaned = True
        assert cleaned
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, outer)


def test_a_handler_someone_else_installed_is_left_alone():
    """A Dagster run worker maps SIGTERM to its own interrupt; ours must not replace it."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: calls.append(signum))
    try:
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def _folder(work: Path, name: str, holder: str | None, age_seconds: float = 0) -> Path:
    folder = work / f"{FOLDER_PREFIX}{name}"
    folder.mkdir(mode=0o700)
    (folder / "dump.pgdump").write_bytes(b"plaintext")
    if holder is not None:
        (folder / HOLDER_FILE).write_text(holder)
    stamp = time.time() - age_seconds
    os.utime(folder, (stamp, stamp))
    return folder


def test_private_restore_folders_are_swept_when_their_holder_died_or_long_after(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    host = socket.gethostname()
    died = _folder(tmp_path, "died", f"{dead} {host}")
    alive = _folder(tmp_path, "alive", f"{os.getpid()} {host}", age_seconds=3 * 86400)
    elsewhere = _folder(tmp_path, "elsewhere", f"{dead} another-host")
    unheld_young = _folder(tmp_path, "young", None)
    unheld_old = _folder(tmp_path, "old", None, age_seconds=2 * 3600)
    unrelated = tmp_path / "not-ours"
    unrelated.mkdir()
    removed = sweep_restore_folders(tmp_path)
    assert sorted(removed) == sorted([died, unheld_old])
    assert alive.exists() and elsewhere.exists() and unheld_young.exists() and unrelated.exists()
