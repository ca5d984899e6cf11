"""The one swap under faults (issue 10, point 1): killed or failing at every step, nothing is lost.

Each test runs the swap in a child process that SIGKILLs itself (or raises) right after step N
(:data:`dbprotect.core.pg.swap.SWAP_STEPS`), then runs what the next dbprotect command runs first
(:func:`dbprotect.core.pg.swap.recover_and_sweep`) and asserts: the target holds either its old
data or the new data, complete; it is marked, carries no swap record and accepts connections; no
staging, incoming or retired database is left; and a scratch sweep never dropped the old data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import psycopg
import pytest

from dbprotect.core.audit import AuditLog, read
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.load import load_config
from dbprotect.core.ops import backup_database, refresh_warm_copy, verify_database_backup, verify_warm_copy
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import MARKER_SETTING, database_settings, set_marker
from dbprotect.core.pg.scratch import (
    HOLDER_LOCK_CLASS,
    SCRATCH_PREFIX,
    SWAP_SETTING,
    ScratchServer,
    drop_leftover_scratch_databases,
    new_scratch_name,
    staging_database,
)
from dbprotect.core.pg.swap import RETIRED_PREFIX, SWAP_LOCK_CLASS, SWAP_STEPS, recover_and_sweep
from dbprotect.core.restore.oncall import RestoreTarget, restore
from dbprotect.core.store import FilesystemStorage
from dbprotect_tests.fixtures.fix_pg import psql

OLD_ROWS, NEW_ROWS = 100, 250
#: Steps after which the swap has committed: recovery finishes it (the target holds the new data).
COMMITTED = SWAP_STEPS[SWAP_STEPS.index("target_retired"):]

# Slow, so not in the fast lane: each test starts a child Python process that swaps real databases (about 1 s).
pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import os, signal, sys
    import psycopg
    from dbprotect.core.pg.scratch import staging_database
    from dbprotect.core.pg.swap import swap_in

    admin, target, fail_at, how = sys.argv[1:5]

    def hook(step):
        if step == fail_at:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected failure after " + step)

    with staging_database(admin) as staging:
        with psycopg.connect(staging.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v text NOT NULL)")
            conn.execute("INSERT INTO t SELECT 'new' FROM generate_series(1, NEW_ROWS)")
        swap_in(admin, staging.name, target, environment="production", replace=True, hooks=hook)
""").replace("NEW_ROWS", str(NEW_ROWS))


def _wait_for_locks_released(admin_dsn: str) -> None:
    """The server frees a killed client's session (and its advisory locks) when it sees the socket close."""
    deadline = time.monotonic() + 15
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid IN "
                                "(%s::bigint::oid, %s::bigint::oid)", (SWAP_LOCK_CLASS, HOLDER_LOCK_CLASS)).fetchone()
            if held and held[0] == 0:
                return
            time.sleep(0.05)
    raise AssertionError("the killed swap's session still holds its locks")


def _strays(admin_dsn: str) -> list[str]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return [name for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
            (SCRATCH_PREFIX + "%", RETIRED_PREFIX + "%"))]


@pytest.fixture
def old_target(pg, make_db):
    dsn = make_db(f"CREATE TABLE t (v text NOT NULL); INSERT INTO t SELECT 'old' FROM generate_series(1, {OLD_ROWS})",
                  prefix="prod")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, str(dbname_of(dsn)), "production")
    return str(dbname_of(dsn))


def _rows(pg, name: str) -> list[tuple[str, int]]:
    with psycopg.connect(pg.dsn(name)) as conn:
        return [(v, int(n)) for v, n in conn.execute("SELECT v, count(*) FROM t GROUP BY v ORDER BY v")]


def _run_child(pg, target: str, step: str, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, pg.admin_dsn, target, step, how], capture_output=True,
                          text=True, timeout=120, check=False)


def _assert_whole(pg, target: str, expect_new: bool) -> None:
    assert _rows(pg, target) == ([("new", NEW_ROWS)] if expect_new else [("old", OLD_ROWS)])
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        settings = database_settings(admin, target)[target]
        allowed = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (target,)).fetchone()
    assert settings.get(MARKER_SETTING) == "production"
    assert SWAP_SETTING not in settings
    assert allowed == (True,)
    assert _strays(pg.admin_dsn) == []


def _assert_state_after_kill(pg, target: str, step: str) -> None:
    """Exactly where the databases are after a kill at ``step`` (and a scratch sweep): nothing else.

    Before the first rename the target holds its old data, and from ``intent_on_incoming`` on the
    staging database (the incoming one) is kept by its swap record; after it the old data sits in
    the retired database until ``retired_dropped``; from ``incoming_renamed`` the target holds the new data.
    """
    strays = _strays(pg.admin_dsn)
    staging = [name for name in strays if name.startswith(SCRATCH_PREFIX)]
    retired = [name for name in strays if name.startswith(RETIRED_PREFIX)]
    at = SWAP_STEPS.index(step)
    # intent_audited: the record is not on the staging database yet, so the sweep drops it (no holder).
    assert len(staging) == (1 if SWAP_STEPS.index("intent_on_incoming") <= at < SWAP_STEPS.index("incoming_renamed")
                            else 0), strays
    assert len(retired) == (1 if SWAP_STEPS.index("target_retired") <= at < SWAP_STEPS.index("retired_dropped")
                            else 0), strays
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone() is not None
    if step == "target_retired":
        assert not exists
        return
    assert exists
    if at >= SWAP_STEPS.index("incoming_renamed"):
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{target}" WITH ALLOW_CONNECTIONS true')  # read it; recovery does too
        assert _rows(pg, target) == [("new", NEW_ROWS)]
    elif step not in ("target_closed",):
        assert _rows(pg, target) == [("old", OLD_ROWS)]


@pytest.mark.parametrize("step", SWAP_STEPS)
def test_swap_killed_after_every_step_is_finished_or_rolled_back_by_the_next_command(pg, old_target, step):
    done = _run_child(pg, old_target, step, "kill")
    assert done.returncode == -signal.SIGKILL, done.stderr
    _wait_for_locks_released(pg.admin_dsn)
    # A scratch sweep (by marker) runs before anything else could: it must not touch the swap's databases.
    drop_leftover_scratch_databases(ScratchServer(pg.admin_dsn), older_than=timedelta(0))
    _assert_state_after_kill(pg, old_target, step)
    recovered = recover_and_sweep(pg.admin_dsn)
    committed = step in COMMITTED
    if step in ("intent_audited", "done"):
        assert recovered == []  # nothing recorded on the server yet / nothing left to do
    else:
        assert [r.action for r in recovered] == ["finished" if committed else "rolled back"]
        assert old_target in recovered[0].detail
    _assert_whole(pg, old_target, expect_new=committed)
    assert recover_and_sweep(pg.admin_dsn) == []  # recovery is done once


@pytest.mark.parametrize("step", SWAP_STEPS)
def test_swap_failing_after_every_step_leaves_old_or_new_data_and_recovery_completes_it(pg, old_target, step):
    done = _run_child(pg, old_target, step, "raise")
    assert done.returncode == 1 and "injected failure" in done.stderr
    _wait_for_locks_released(pg.admin_dsn)
    recover_and_sweep(pg.admin_dsn)
    with psycopg.connect(pg.dsn(old_target)) as conn:
        assert conn.execute("SELECT count(DISTINCT v) FROM t").fetchone() == (1,)
    expect_new = _rows(pg, old_target)[0][0] == "new"
    # In-process, an exception rolls back until the incoming database has the target's name; from then
    # on the swap is complete but for housekeeping, which the recovery finishes.
    assert expect_new == (step in SWAP_STEPS[SWAP_STEPS.index("incoming_renamed"):])
    _assert_whole(pg, old_target, expect_new=expect_new)


def test_a_sweep_never_drops_by_name_the_retired_database_of_an_interrupted_swap(pg, old_target):
    """The defect: killed between the renames, production sat in a scratch-named database a sweep dropped."""
    done = _run_child(pg, old_target, "target_retired", "kill")
    assert done.returncode == -signal.SIGKILL
    _wait_for_locks_released(pg.admin_dsn)
    [retired] = [name for name in _strays(pg.admin_dsn) if name.startswith(RETIRED_PREFIX)]
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        settings = database_settings(admin, retired)[retired]
    assert settings[MARKER_SETTING] == "production" and old_target in settings[SWAP_SETTING]
    assert drop_leftover_scratch_databases(ScratchServer(pg.admin_dsn), older_than=timedelta(0)) == []
    assert retired in _strays(pg.admin_dsn)
    [outcome] = recover_and_sweep(pg.admin_dsn)
    assert outcome.action == "finished"
    _assert_whole(pg, old_target, expect_new=True)


def test_sweep_drops_only_scratch_marked_databases_whose_holder_died_or_that_are_old(pg):
    """By marker, holder and age: never a production-marked one, never a held one, never a young unheld one."""
    from datetime import UTC, datetime

    old = new_scratch_name(datetime.now(UTC) - timedelta(hours=13))
    old_production = new_scratch_name(datetime.now(UTC) - timedelta(hours=13))
    young_unheld = new_scratch_name()
    old_in_swap = new_scratch_name(datetime.now(UTC) - timedelta(hours=13))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        for name in (old, old_production, young_unheld, old_in_swap):
            admin.execute(f'CREATE DATABASE "{name}"')
        for name in (old, young_unheld, old_in_swap):
            set_marker(admin, name, "scratch")
        set_marker(admin, old_production, "production")
        admin.execute(f"ALTER DATABASE \"{old_in_swap}\" SET {SWAP_SETTING} = '{{\"swap_id\": \"x\"}}'")
    try:
        with staging_database(pg.admin_dsn) as held:
            dropped = drop_leftover_scratch_databases(ScratchServer(pg.admin_dsn))
            assert dropped == [old]
            assert all(pg.has_database(name) for name in (held.name, young_unheld, old_production, old_in_swap))
        assert not pg.has_database(held.name)
    finally:
        for name in (old, old_production, young_unheld, old_in_swap):
            pg.drop_database(name)


def test_staging_of_a_killed_process_is_swept_at_once_by_marker(pg):
    code = ("import os, signal, sys\nfrom dbprotect.core.pg.scratch import staging_database\n"
            "with staging_database(sys.argv[1]) as s:\n    print(s.name, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, pg.admin_dsn], capture_output=True, text=True, check=False)
    name = done.stdout.strip()
    assert done.returncode == -signal.SIGKILL and pg.has_database(name)
    _wait_for_locks_released(pg.admin_dsn)
    recover_and_sweep(pg.admin_dsn)
    assert not pg.has_database(name)


RESTORE_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import pyrage
    from dbprotect.core.audit import AuditLog
    from dbprotect.core.restore.oncall import RestoreTarget, restore
    from dbprotect.core.store import FilesystemStorage
    from dbprotect.core.store.catalog import load_manifest

    store_root, backup_id, target_dsn, target_name, secret, recipient, kill_at = sys.argv[1:8]
    storage = FilesystemStorage(store_root)
    manifest = load_manifest(storage, "shop", backup_id)

    def hook(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    restore(storage, manifest, pyrage.x25519.Identity.from_str(secret),
            RestoreTarget(target_dsn, "production", existing=True), confirmation=target_name,
            recipients=[recipient], audit=AuditLog(storage, actor="test"), swap_hooks=hook)
""")


@pytest.mark.parametrize("step", ["intent_on_target", "target_retired", "incoming_renamed"])
def test_an_on_call_restore_killed_in_its_swap_is_completed_by_the_next_restore_and_audited(
        pg, make_db, tmp_path, age_keys, identity, old_target, step):
    storage = FilesystemStorage(tmp_path / "store")
    source = make_db("CREATE TABLE t (v text NOT NULL); "
                     f"INSERT INTO t SELECT 'new' FROM generate_series(1, {NEW_ROWS})", prefix="src")
    manifest = run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]]).manifest
    done = subprocess.run([sys.executable, "-c", RESTORE_CHILD, str(storage.root), manifest.backup_id,
                           pg.dsn(old_target), old_target, age_keys[0], age_keys[1], step],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    _wait_for_locks_released(pg.admin_dsn)
    # The next restore on that server (here: a new database) first finishes or rolls back the swap.
    other = f"other_{os.getpid()}"
    try:
        restore(storage, manifest, identity, RestoreTarget(pg.dsn(other), "production"), recipients=[age_keys[1]],
                audit=AuditLog(storage, actor="test"))
    finally:
        pg.drop_database(other)
    committed = step in COMMITTED
    _assert_whole(pg, old_target, expect_new=committed)
    swaps = [r for r in read(storage) if r.action == "swap"]
    killed = swaps[0]  # the intent, audited before the first rename
    assert killed.outcome == "started" and killed.data["swap_target"] == old_target
    [recovered] = [r for r in swaps[1:] if r.target == killed.target]
    assert recovered.outcome == ("finished" if committed else "rolled_back")
    assert old_target in recovered.detail


WARM_CHILD = textwrap.dedent("""
    import os, signal, sys
    from dbprotect.core.audit import AuditLog
    from dbprotect.core.config.load import load_config
    from dbprotect.core.ops.context import primary_store, raw_identity
    from dbprotect.core.ops.copies import warm_copy_dsn
    from dbprotect.core.restore.warm import refresh_into
    from dbprotect.core.store.catalog import load_manifest, newest_verified_backup

    kill_at = sys.argv[1]
    config = load_config()
    storage = primary_store(config, "shop")
    manifest = load_manifest(storage, "shop", newest_verified_backup(storage, "shop"))

    def hook(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    refresh_into(storage, manifest, raw_identity(config), warm_copy_dsn(config, "shop"),
                 recipients=config.keys.raw.recipients, pg_bin_dir=None, work_dir=None, actor="test",
                 audit=AuditLog(storage, actor="test"), swap_hooks=hook)
""")


@pytest.mark.parametrize("step", ["intent_on_target", "target_retired", "incoming_renamed"])
def test_a_warm_copy_refresh_killed_in_its_swap_is_completed_by_the_next_refresh(pg, make_db, write_config,
                                                                                 monkeypatch, tmp_path, step):
    source = make_db("CREATE TABLE t (v text NOT NULL); "
                     f"INSERT INTO t SELECT 'old' FROM generate_series(1, {OLD_ROWS})", prefix="wsrc")
    warm = f"{dbname_of(source)}_warm"
    monkeypatch.setenv("TEST_SHOP_WARM_DSN", pg.dsn(warm))
    write_config(source, extra={"databases": {"shop": {
        "environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
        "warm_copy": {"dsn_env": "TEST_SHOP_WARM_DSN"}}}})
    config = load_config()
    storage = FilesystemStorage(tmp_path / "store")

    def verified_backup() -> str:
        backup_id = backup_database(config, "shop").manifest.backup_id
        assert verify_database_backup(config, "shop", backup_id).ok
        return backup_id

    try:
        first = verified_backup()
        assert refresh_warm_copy(config, "shop", actor="test").backup_id == first
        psql(source, f"TRUNCATE t; INSERT INTO t SELECT 'new' FROM generate_series(1, {NEW_ROWS})")
        second = verified_backup()
        done = subprocess.run([sys.executable, "-c", WARM_CHILD, step], capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        _wait_for_locks_released(pg.admin_dsn)
        outcome = refresh_warm_copy(config, "shop", actor="test")  # recovers first, then refreshes if needed
        assert outcome.backup_id == second
        assert outcome.refreshed == (step not in COMMITTED)  # rolled back: this refresh does the work again
        assert _rows(pg, warm) == [("new", NEW_ROWS)]
        assert verify_warm_copy(config, "shop", actor="test").ok
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            settings = database_settings(admin, warm)[warm]
        assert settings[MARKER_SETTING] == "backup" and SWAP_SETTING not in settings
        assert _strays(pg.admin_dsn) == [] and not pg.has_database(f"{warm}__incoming")
        swaps = [r for r in read(storage) if r.action == "swap"]
        # The first swap that replaced the warm copy is the killed one (the first refresh created it).
        killed = next(r for r in swaps
                      if r.outcome == "started" and r.data["swap_target"] == warm and r.data["retired"])
        [recovered] = [r for r in swaps if r.target == killed.target and r.outcome != "started"]
        assert recovered.outcome == ("finished" if step in COMMITTED else "rolled_back")
    finally:
        for name in (warm, f"{warm}__incoming"):
            pg.drop_database(name)


def test_a_swap_the_recovery_cannot_complete_is_reported_failed_and_its_databases_kept(pg, make_db):
    """Say the old owner's role was dropped: the recovery reports it, keeps everything, and does not block others."""
    name = str(dbname_of(make_db("CREATE TABLE t (v text)", prefix="stuck")))
    record = json.dumps({"swap_id": "stuck-1", "role": "incoming", "target": name, "incoming": "gone",
                         "retired": None, "environment": "production", "owner": "no_such_role_anywhere"})
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{name}\" SET {SWAP_SETTING} = '{record}'")
    try:
        [outcome] = recover_and_sweep(pg.admin_dsn)
        assert outcome.action == "failed" and "no_such_role_anywhere" in outcome.detail
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            assert SWAP_SETTING in database_settings(admin, name)[name]
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" RESET {SWAP_SETTING}')


@pytest.mark.parametrize("forged", [
    # a record naming itself "incoming" of a swap whose incoming database is another one
    lambda name: {"swap_id": "forged-1", "target": "elsewhere", "incoming": "other_incoming", "retired": None,
                  "role": "incoming"},
    # a record whose retired name is not one a swap makes
    lambda name: {"swap_id": "forged-2", "target": "elsewhere", "incoming": name, "retired": "payroll",
                  "role": "incoming"},
])
def test_recovery_never_drops_a_database_on_a_forged_or_inconsistent_swap_record(pg, old_target, forged):
    """Swap records are settings any database owner can write: recovery refuses to act on one that
    does not hang together, reports it failed and keeps every database."""
    admin_dsn = pg.dsn("postgres")
    record = json.dumps(forged(old_target)).replace("'", "''")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{old_target}\" SET {SWAP_SETTING} = '{record}'")
    before = _rows(pg, old_target)
    outcomes = recover_and_sweep(admin_dsn)
    assert [o.action for o in outcomes] == ["failed"]
    assert "cannot be trusted" in outcomes[0].detail
    assert _rows(pg, old_target) == before  # still there, data intact
