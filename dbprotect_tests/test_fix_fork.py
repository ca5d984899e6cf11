"""The harness's wait for forked children (fixtures/fix_fork.py): a hung child fails its test, it does not hang
the run, and it does not outlive the wait."""

from __future__ import annotations

import os
import time

import pytest

from dbprotect_tests.fixtures.fix_fork import wait_status


def _fork(seconds: float, code: int = 0) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        time.sleep(seconds)
        os._exit(code)
    return pid


def test_a_child_that_ends_gives_its_status() -> None:
    assert os.waitstatus_to_exitcode(wait_status(_fork(0.1, 3), limit=30)) == 3


def test_a_hung_child_is_killed_and_fails_the_test() -> None:
    pid = _fork(60)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="still running after 1 s: killed"):
        wait_status(pid, limit=1)
    assert time.monotonic() - started < 10
    with pytest.raises(ChildProcessError):  # reaped: nothing left behind
        os.waitpid(pid, os.WNOHANG)
