"""A restore told to stop (issue 10, point 8): SIGTERM cleans up like Ctrl-C; SIGKILL's leftovers are swept next.

A real ``dbprotect restore`` subprocess overwriting a marked production database is signalled
while it loads data into its staging database (the archive streamed: no plaintext file in the
work folder at any point). After SIGTERM: no staging database, the target unchanged. After
SIGKILL: the staging database is left, and the next restore on that server removes it before it starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.errors import EXIT_INTERRUPTED
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect_tests.fixtures.fix_pg import content

# Slow, so not in the fast lane: each test backs up a 30 MB database and restores it in a subprocess (5-10 s).
pytestmark = pytest.mark.slow

BIG_SQL = ("CREATE TABLE events AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS payload "
           "FROM generate_series(1, 300000) g")


@pytest.fixture
def overwrite_setup(make_db, pg, write_config, monkeypatch, tmp_path):
    """A verified backup of a 30 MB database, a marked production target, a private work folder."""
    source = make_db(BIG_SQL, prefix="big")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(source, database="shop", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN",
                                                             "work_dir": str(work)}})
    assert run(["backup", "shop"]) == 0
    assert run(["verify", "latest"]) == 0
    target = make_db("CREATE TABLE kept (x int); INSERT INTO kept SELECT g FROM generate_series(1, 77) g",
                     prefix="prod")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, str(dbname_of(target)), "production")
    return work, target, str(dbname_of(target))


def _start_restore(name: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dbprotect.cli.app", "restore", "shop", "--target",
                             f"production:{name}", "--confirm", name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy(), preexec_fn=_as_from_a_terminal)


def _as_from_a_terminal() -> None:
    """In the child: SIGINT and SIGTERM as an operator's shell leaves them (default, unblocked).

    A test runner started in the background of a non-interactive shell ignores SIGINT, and its workers
    may block signals; the child would inherit that and the test would signal a deaf process.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _wait_for_data_loading(pg, work: Path, proc: subprocess.Popen[str]) -> str:
    """Until the staging database holds the table being loaded (the restore is mid-way), or fail; its name.

    Meanwhile the work folder stays empty: the archive is streamed, never written in plaintext.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert list(work.iterdir()) == [], "a plaintext file appeared in the work folder"
        for name in _staging(pg):
            with contextlib.suppress(psycopg.Error), psycopg.connect(pg.dsn(name), connect_timeout=5) as conn:
                if conn.execute("SELECT to_regclass('public.events') IS NOT NULL").fetchone() == (True,):
                    return name
        if proc.poll() is not None:
            raise AssertionError(f"restore ended before it loaded data: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError("the restore never started loading data")


@contextlib.contextmanager
def _held_mid_restore(pg, staging: str) -> Iterator[None]:
    """Hold the restore mid-way: an ACCESS EXCLUSIVE lock on the table it loads, in its staging database.

    The 30 MB restore takes about a second; on a loaded machine (the suite runs in parallel) it could
    finish between "the table exists" and the signal, and the test would signal a process that already
    exited 0. With the lock held, the load or its verification waits on it, so the signal always lands
    while the restore runs. The restore's cleanup drops the staging database ``WITH (FORCE)``, which
    ends this connection: its errors on the way out are expected.
    """
    blocker = psycopg.connect(pg.dsn(staging))
    try:
        blocker.execute("SET lock_timeout = '60s'")
        blocker.execute("LOCK TABLE public.events IN ACCESS EXCLUSIVE MODE")
        if not _waits_on_the_lock(pg, staging):
            # The restore had loaded and verified the table before the lock was granted: it is past the
            # point this test holds. Not a pass: the run did not test the case, and says so.
            pytest.skip("the restore passed the loaded table before the test could hold it (timing)")
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            blocker.rollback()
        with contextlib.suppress(psycopg.Error):
            blocker.close()


def _waits_on_the_lock(pg, staging: str) -> bool:
    """Whether a session of the restore waits on a lock in its staging database within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error), psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            waiting = admin.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                                    "WHERE NOT l.granted AND d.datname = %s", (staging,)).fetchone()
            if waiting and waiting[0]:
                return True
        time.sleep(0.05)
    return False


def _staging(pg) -> list[str]:
    return leftover_scratch_databases(ScratchServer(pg.admin_dsn))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_restore_removes_its_plaintext_and_staging_and_leaves_the_target(overwrite_setup, pg, sig):
    work, target, name = overwrite_setup
    before = content(target)
    proc = _start_restore(name)
    staging = _wait_for_data_loading(pg, work, proc)
    with _held_mid_restore(pg, staging):
        assert _staging(pg)  # mid-restore: the staging database exists
        assert proc.poll() is None  # and the restore is still running when it is signalled
        proc.send_signal(sig)
        time.sleep(0.5)  # the signal is handled while the restore still waits on the lock
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert list(work.iterdir()) == []
    assert _staging(pg) == []
    assert content(target) == before


def test_a_killed_restore_leaves_what_the_next_restore_sweeps_first(overwrite_setup, pg):
    work, target, name = overwrite_setup
    before = content(target)
    proc = _start_restore(name)
    _wait_for_data_loading(pg, work, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert _staging(pg)  # SIGKILL cannot clean up; nothing was ever written in plaintext
    assert list(work.iterdir()) == []
    assert content(target) == before
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # until the server has seen the killed client go
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            if conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,):
                break
        time.sleep(0.05)
    new_name = "after_kill_restore"
    try:
        assert run(["restore", "shop", "--target", f"new:{new_name}"]) == 0
        assert list(work.iterdir()) == []
        assert _staging(pg) == []
    finally:
        pg.drop_database(new_name)
    assert content(target) == before
