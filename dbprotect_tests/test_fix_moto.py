"""The S3 test endpoint's harness: a moto server that never prints its address, or dies first, fails the tests that
need it within a bounded time instead of hanging the run until CI's limit (the first line was read with no limit)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dbprotect_tests.fixtures import fix_storage


def _server(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_a_silent_server_is_killed_and_fails_the_test_in_time() -> None:
    server = _server("import time; time.sleep(120)")
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as raised:
        fix_storage._first_line(server, 1.0)
    assert time.monotonic() - started < 10
    assert "did not print its address within 1 s" in str(raised.value)
    assert server.poll() is not None  # killed, not left behind


def test_a_server_that_dies_first_fails_the_test_with_its_exit_status() -> None:
    with pytest.raises(pytest.fail.Exception) as raised:
        fix_storage._first_line(_server("raise SystemExit(3)"), 60.0)
    assert "(exit 3)" in str(raised.value)


def test_a_server_that_prints_its_address_gives_it() -> None:
    server = _server("print('127.0.0.1:5000', flush=True); import sys; sys.stdin.read()")
    try:
        assert fix_storage._first_line(server, 60.0) == "127.0.0.1:5000"
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
