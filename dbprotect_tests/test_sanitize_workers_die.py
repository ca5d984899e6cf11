"""The build's worker processes die with it: a build killed with ``kill -9`` (or by the OOM killer) must
not leave forked workers waiting forever, each holding the production set it inherited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import time
from dbprotect.core.sanitize import parallel
pool = parallel.fork_pool(2)
futures = [pool.submit(time.sleep, 60) for _ in range(2)]
print("ready", flush=True)
time.sleep(60)
"""


def _alive(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_workers_die_when_the_build_is_killed() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        workers: list[str] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout.split()
            time.sleep(0.1)
        assert len(workers) == 2, workers
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "a worker outlived its killed parent"
    finally:
        child.kill()
        for pid in subprocess.run(["pgrep", "-f", "dbprotect.core.sanitize import parallel"],
                                  capture_output=True, text=True).stdout.split():
            if pid != str(os.getpid()):
                os.kill(int(pid), signal.SIGKILL)
