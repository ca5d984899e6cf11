"""The swap's last holes (issue 10, point 1 and "Also"): each guard here has a test that makes it fail.

In-process, against the real embedded PostgreSQL: the swap never drops the only copy of anything
when it cannot rename back, drops only through :func:`dbprotect.core.pg.scratch.drop_database`,
reports a failed cleanup after its commit point as a warning (the restore is audited as succeeded),
and the recovery's "left alone" and "incoming gone" branches do what they say.
"""

from __future__ import annotations

import psycopg
import pytest

from dbprotect.core.audit import AuditLog, read
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.pg import swap as swap_module
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import MARKER_SETTING, database_settings, set_marker
from dbprotect.core.pg.scratch import SWAP_SETTING, staging_database
from dbprotect.core.pg.swap import (
    RETIRED_PREFIX,
    _lock_key,
    recover_and_sweep,
    swap_in,
)
from dbprotect.core.restore.oncall import RestoreTarget, restore
from dbprotect.core.store import FilesystemStorage

OLD_ROWS, NEW_ROWS = 10, 25


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


def _retired(pg) -> list[str]:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        return [name for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                  (RETIRED_PREFIX + "%",))]


def _fill(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v text NOT NULL)")
        conn.execute(f"INSERT INTO t SELECT 'new' FROM generate_series(1, {NEW_ROWS})")


def test_a_failed_rename_back_drops_nothing_and_the_recovery_finishes_the_swap(pg, old_target):
    """Interrupted between the renames, and the target's name taken meanwhile: nothing may be dropped."""
    kept: dict[str, str] = {}

    def hook(step: str) -> None:
        if step == "target_retired":
            with psycopg.connect(pg.admin_dsn, autocommit=True) as other:
                other.execute(f'CREATE DATABASE "{old_target}"')  # the rename back now fails
            raise RuntimeError("injected failure between the renames")

    with staging_database(pg.admin_dsn) as staging:
        _fill(staging.dsn)
        kept["incoming"] = staging.name
        with pytest.raises(RuntimeError, match="injected"):
            swap_in(pg.admin_dsn, staging.name, old_target, environment="production", replace=True, hooks=hook)
        # Still inside the staging block: the swap itself must not have dropped the new data.
        assert pg.has_database(staging.name) and _rows(pg, staging.name) == [("new", NEW_ROWS)]
    # The staging block's cleanup leaves it too: it carries the swap record, the recovery decides.
    assert pg.has_database(kept["incoming"])
    [retired] = _retired(pg)
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        kept_settings = database_settings(admin, retired)[retired]
    assert kept_settings[MARKER_SETTING] == "production" and old_target in kept_settings[SWAP_SETTING]
    # The recovery sees a stranger under the target's name: it keeps everything and says so.
    [outcome] = recover_and_sweep(pg.admin_dsn)
    assert outcome.action == "failed" and _retired(pg) == [retired] and pg.has_database(kept["incoming"])
    pg.drop_database(old_target)  # the operator removes the stranger
    [outcome] = recover_and_sweep(pg.admin_dsn)
    assert outcome.action == "finished"
    assert _rows(pg, old_target) == [("new", NEW_ROWS)]
    assert _retired(pg) == []
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        settings = database_settings(admin, old_target)[old_target]
    assert settings[MARKER_SETTING] == "production" and SWAP_SETTING not in settings


def test_every_drop_of_the_swap_and_its_recovery_goes_through_the_retried_drop(pg, old_target, monkeypatch):
    dropped: list[str] = []
    real = swap_module.drop_database

    def spy(admin_dsn: str, name: str) -> None:
        dropped.append(name)
        real(admin_dsn, name)

    monkeypatch.setattr(swap_module, "drop_database", spy)

    def fail_before_commit(step: str) -> None:
        if step == "target_closed":
            raise RuntimeError("injected")

    with staging_database(pg.admin_dsn) as staging:  # rolled back in-process: the incoming database dropped
        _fill(staging.dsn)
        with pytest.raises(RuntimeError):
            swap_in(pg.admin_dsn, staging.name, old_target, environment="production", replace=True,
                    hooks=fail_before_commit)
        assert dropped == [staging.name] and not pg.has_database(staging.name)
    with staging_database(pg.admin_dsn) as staging:  # committed: the retired database dropped
        _fill(staging.dsn)
        done = swap_in(pg.admin_dsn, staging.name, old_target, environment="production", replace=True)
    assert dropped[1:] == [done.intent.retired] and done.warning is None
    assert _rows(pg, old_target) == [("new", NEW_ROWS)]


def test_a_live_swap_is_left_alone_by_the_recovery(pg, old_target):
    """The "left alone" branch: a swap whose process holds its lock is not touched, whatever its records say."""
    seen: list[str] = []

    def hook(step: str) -> None:
        if step == "intent_on_target":  # mid-swap, still alive: another command's recovery runs now
            seen.extend(outcome.action for outcome in recover_and_sweep(pg.admin_dsn))

    with staging_database(pg.admin_dsn) as staging:
        _fill(staging.dsn)
        swap_in(pg.admin_dsn, staging.name, old_target, environment="production", replace=True, hooks=hook)
    assert seen == ["left alone"]
    assert _rows(pg, old_target) == [("new", NEW_ROWS)]


def test_recovery_renames_production_back_when_the_incoming_database_is_gone(pg, old_target):
    """The "incoming gone, rename back" branch: past the first rename, the new data lost: production returns."""
    with staging_database(pg.admin_dsn) as staging:
        _fill(staging.dsn)

        def stop_after_retire(step: str) -> None:
            if step == "target_retired":
                with psycopg.connect(pg.admin_dsn, autocommit=True) as other:
                    # The incoming database is lost (a DBA dropped it), and the target's name is taken for a
                    # moment so the in-process rename back fails: the swap leaves it to the recovery.
                    other.execute(f'DROP DATABASE "{staging.name}" WITH (FORCE)')
                    other.execute(f'CREATE DATABASE "{old_target}"')
                raise RuntimeError("injected")

        with pytest.raises(RuntimeError):
            swap_in(pg.admin_dsn, staging.name, old_target, environment="production", replace=True,
                    hooks=stop_after_retire)
    pg.drop_database(old_target)  # the stranger goes; production sits only in the retired database
    [retired] = _retired(pg)
    [outcome] = recover_and_sweep(pg.admin_dsn)
    assert outcome.action == "rolled back" and "incoming database is gone" in outcome.detail
    assert _retired(pg) == [] and not pg.has_database(retired)
    assert _rows(pg, old_target) == [("old", OLD_ROWS)]
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        settings = database_settings(admin, old_target)[old_target]
        allowed = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (old_target,)).fetchone()
    assert settings[MARKER_SETTING] == "production" and SWAP_SETTING not in settings and allowed == (True,)


def test_a_cleanup_failure_after_the_commit_is_a_warning_and_the_restore_is_audited_as_succeeded(
        pg, make_db, tmp_path, age_keys, identity, old_target):
    storage = FilesystemStorage(tmp_path / "store")
    source = make_db("CREATE TABLE t (v text NOT NULL); "
                     f"INSERT INTO t SELECT 'new' FROM generate_series(1, {NEW_ROWS})", prefix="src")
    manifest = run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]]).manifest
    retired: list[str] = []

    def hook(step: str) -> None:
        if step == "target_finished":  # a template database cannot be dropped, even by a superuser
            [name] = _retired(pg)
            retired.append(name)
            with psycopg.connect(pg.admin_dsn, autocommit=True) as other:
                other.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE true')

    try:
        result = restore(storage, manifest, identity, RestoreTarget(pg.dsn(old_target), "production", existing=True),
                         confirmation=old_target, recipients=[age_keys[1]], audit=AuditLog(storage, actor="test"),
                         swap_hooks=hook)
        assert _rows(pg, old_target) == [("new", NEW_ROWS)]
        assert result.leftovers == retired and retired[0] in result.warnings[0]
        [record] = [r for r in read(storage) if r.action == "restore" and r.database == "shop"]
        assert record.outcome == "ok" and "warning" in record.detail and retired[0] in record.detail
        assert record.data["leftovers"] == retired
    finally:
        for name in retired:
            with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
    [outcome] = recover_and_sweep(pg.admin_dsn)  # the next command finishes the housekeeping
    assert outcome.action == "finished" and _retired(pg) == []
    assert _rows(pg, old_target) == [("new", NEW_ROWS)]


def test_lock_key_is_stable():
    assert _lock_key("x") == _lock_key("x")


def _killed_swap(pg, target: str, step: str = "target_retired") -> None:
    """A swap child SIGKILLed after ``step``: its records stay on the server for the next command."""
    import signal
    import subprocess
    import sys

    from dbprotect_tests.test_swap_faults import CHILD, _wait_for_locks_released

    done = subprocess.run([sys.executable, "-c", CHILD, pg.admin_dsn, target, step, "kill"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    _wait_for_locks_released(pg.admin_dsn)


def test_a_dry_run_reports_a_pending_interrupted_swap_and_changes_nothing(pg, make_db, tmp_path, age_keys, identity,
                                                                         old_target):
    storage = FilesystemStorage(tmp_path / "store")
    source = make_db("CREATE TABLE t (v text NOT NULL)", prefix="src")
    manifest = run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]]).manifest
    _killed_swap(pg, old_target)
    [retired] = _retired(pg)
    plan = restore(storage, manifest, identity, RestoreTarget(pg.dsn(f"new_{old_target}"), "production"),
                   recipients=[age_keys[1]], dry_run=True, audit=AuditLog(storage, actor="test"))
    [pending] = plan.pending_swaps
    assert old_target in pending and retired in pending and "PENDING" in plan.summary()
    assert plan.to_dict()["pending_swaps"] == [pending]
    assert _retired(pg) == [retired] and not pg.has_database(old_target)  # nothing recovered by a dry run
    assert [r for r in read(storage) if r.action == "swap"] == []
    [outcome] = recover_and_sweep(pg.admin_dsn)
    assert outcome.action == "finished"
    plan = restore(storage, manifest, identity, RestoreTarget(pg.dsn(f"new_{old_target}"), "production"),
                   recipients=[age_keys[1]], dry_run=True)
    assert plan.pending_swaps == []


def test_a_swap_recovered_by_a_verify_or_drill_scratch_sweep_is_audited(pg, make_db, write_config, monkeypatch,
                                                                      old_target):
    from dbprotect.core.config.load import load_config
    from dbprotect.core.ops import backup_database
    from dbprotect.core.ops.context import primary_store
    from dbprotect.core.ops.restores import restore_verify_database

    source = make_db("CREATE TABLE t (v text NOT NULL); INSERT INTO t VALUES ('x')", prefix="src")
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(source, extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    config = load_config()
    backup_database(config, "shop")
    _killed_swap(pg, old_target)
    assert restore_verify_database(config, "shop", by="test").ok
    [recovered] = [r for r in read(primary_store(config, "shop")) if r.action == "swap"]
    assert recovered.outcome == "finished" and old_target in recovered.detail and recovered.database == "shop"
    assert _rows(pg, old_target) == [("new", 250)] and _retired(pg) == []


def test_check_target_server_version_refuses_only_an_older_major():
    from dbprotect.core.errors import Refusals, RefusedError
    from dbprotect.core.restore.guards import check_target_server_version

    check_target_server_version(17, 17)
    check_target_server_version(16, 18)
    with pytest.raises(RefusedError) as refused:
        check_target_server_version(18, 17)
    assert refused.value.refusal == Refusals.OLDER_TARGET_SERVER and "17" in refused.value.one_line()


def test_a_restore_from_a_newer_server_is_refused_before_anything_changes(pg, make_db, tmp_path, age_keys, identity):
    """The guard wired in: a manifest from a newer major than the target's server is refused, no database made."""
    from dbprotect.core.errors import Refusals, RefusedError

    storage = FilesystemStorage(tmp_path / "store")
    manifest = run_backup(database="shop", dsn=make_db("CREATE TABLE t (v text)"), storage=storage,
                          recipients=[age_keys[1]]).manifest
    newer = manifest.model_copy(update={"source": {**manifest.source,
                                                   "server_major": int(manifest.source["server_major"]) + 1}})
    name = f"newer_{tmp_path.name[-8:]}".lower()
    with pytest.raises(RefusedError) as refused:
        restore(storage, newer, identity, RestoreTarget(pg.dsn(name), "production"), recipients=[age_keys[1]])
    assert refused.value.refusal == Refusals.OLDER_TARGET_SERVER and not pg.has_database(name)


def test_warm_incoming_name_taken_by_something_not_ours_is_refused(pg, old_target):
    """STAGING_NAME_TAKEN: a database under the incoming name is dropped only when it is this copy's leftover."""
    from dbprotect.core.errors import Refusals, RefusedError
    from dbprotect.core.restore.warm import INCOMING_SETTING, _drop_leftover_incoming, _incoming_held, _incoming_name

    warm = f"{old_target}_warm"
    incoming = _incoming_name(warm)
    dsn = pg.dsn(warm)
    try:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{incoming}"')
            set_marker(admin, incoming, "production")
        with pytest.raises(RefusedError) as refused:  # marked production: never ours
            _drop_leftover_incoming(dsn, incoming, "server")
        assert refused.value.refusal == Refusals.STAGING_NAME_TAKEN and pg.has_database(incoming)
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            set_marker(admin, incoming, "backup")
            admin.execute(f"ALTER DATABASE \"{incoming}\" SET {INCOMING_SETTING} = 'another_warm_copy'")
        with pytest.raises(RefusedError):  # another warm copy's incoming database
            _drop_leftover_incoming(dsn, incoming, "server")
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE \"{incoming}\" SET {INCOMING_SETTING} = '{warm}'")
            admin.execute(f"ALTER DATABASE \"{incoming}\" SET {SWAP_SETTING} = '{{\"swap_id\": \"x\"}}'")
        with pytest.raises(RefusedError):  # claimed by a swap: the recovery's
            _drop_leftover_incoming(dsn, incoming, "server")
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{incoming}" RESET {SWAP_SETTING}')
        with _incoming_held(pg.admin_dsn, incoming, "server"):  # a live refresh holds it: a second is refused
            with pytest.raises(RefusedError) as refused, _incoming_held(pg.admin_dsn, incoming, "server"):
                pass
            assert refused.value.refusal == Refusals.STAGING_NAME_TAKEN
            _drop_leftover_incoming(dsn, incoming, "server")  # this copy's leftover: dropped
        assert not pg.has_database(incoming)
    finally:
        pg.drop_database(incoming)


def test_two_long_warm_copy_names_with_one_prefix_get_different_incoming_names():
    from dbprotect.core.restore.warm import _incoming_name

    first, second = "w" * 55 + "_one", "w" * 55 + "_two"
    assert _incoming_name(first) != _incoming_name(second)
    assert all(len(_incoming_name(name)) <= 63 for name in (first, second, "short"))
    assert _incoming_name("short") == "short__incoming"


def _scratch_left(pg) -> list[str]:
    from dbprotect.core.pg.scratch import SCRATCH_PREFIX

    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        return [name for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                  (SCRATCH_PREFIX + "%",))]


def test_the_on_call_restore_rechecks_the_marker_just_before_the_swap(pg, make_db, tmp_path, age_keys, identity,
                                                                      old_target):
    """The target re-marked between staging and swap (a DBA, a mistyped failover): refused, nothing replaced."""
    from dbprotect.core.errors import Refusals, RefusedError

    storage = FilesystemStorage(tmp_path / "store")
    source = make_db("CREATE TABLE t (v text NOT NULL); INSERT INTO t VALUES ('new')", prefix="src")
    manifest = run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]]).manifest

    def remark(phase: str) -> None:
        if phase == "swap":  # verified staging is ready; the swap is next
            with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
                set_marker(admin, old_target, "development")

    with pytest.raises(RefusedError) as refused:
        restore(storage, manifest, identity, RestoreTarget(pg.dsn(old_target), "production", existing=True),
                confirmation=old_target, recipients=[age_keys[1]], progress=remark)
    assert refused.value.refusal == Refusals.MARKER_MISMATCH
    assert _rows(pg, old_target) == [("old", OLD_ROWS)] and _scratch_left(pg) == [] and _retired(pg) == []


def test_a_restore_to_a_new_database_rechecks_that_it_is_still_absent_just_before_the_swap(
        pg, make_db, tmp_path, age_keys, identity):
    from dbprotect.core.errors import Refusals, RefusedError

    storage = FilesystemStorage(tmp_path / "store")
    source = make_db("CREATE TABLE t (v text NOT NULL); INSERT INTO t VALUES ('new')", prefix="src")
    manifest = run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]]).manifest
    name = f"appeared_{tmp_path.name[-8:]}".lower()

    def appear(phase: str) -> None:
        if phase == "swap":
            with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')

    try:
        with pytest.raises(RefusedError) as refused:
            restore(storage, manifest, identity, RestoreTarget(pg.dsn(name), "production"), recipients=[age_keys[1]],
                    progress=appear)
        assert refused.value.refusal == Refusals.TARGET_EXISTS
        with psycopg.connect(pg.dsn(name)) as conn:  # the database that appeared is untouched (still empty)
            assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 't'").fetchone() == (0,)
        assert _scratch_left(pg) == []
    finally:
        pg.drop_database(name)


def test_the_warm_refresh_rechecks_the_warm_copy_just_before_the_swap(pg, make_db, write_config, monkeypatch):
    """The warm copy re-marked production while the new copy was restored: the swap is refused, nothing replaced."""
    from dbprotect.core.config.load import load_config
    from dbprotect.core.errors import Refusals, RefusedError
    from dbprotect.core.ops import backup_database, refresh_warm_copy, verify_database_backup
    from dbprotect.core.ops.context import primary_store, raw_identity
    from dbprotect.core.ops.copies import warm_copy_dsn
    from dbprotect.core.restore.warm import _incoming_name, inspect_warm_copy, refresh_into
    from dbprotect.core.store.catalog import load_manifest

    source = make_db("CREATE TABLE t (v text NOT NULL); INSERT INTO t VALUES ('old')", prefix="wsrc")
    warm = f"{dbname_of(source)}_warm"
    monkeypatch.setenv("TEST_SHOP_WARM_DSN", pg.dsn(warm))
    write_config(source, extra={"databases": {"shop": {
        "environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
        "warm_copy": {"dsn_env": "TEST_SHOP_WARM_DSN"}}}})
    config = load_config()
    storage = primary_store(config, "shop")

    def verified() -> str:
        backup_id = backup_database(config, "shop").manifest.backup_id
        assert verify_database_backup(config, "shop", backup_id).ok
        return backup_id

    def remark(phase: str) -> None:
        if phase == "swap":  # the inner swap puts the verified copy under the incoming name; ours is next
            with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
                set_marker(admin, warm, "production")

    try:
        first = verified()
        refresh_warm_copy(config, "shop", actor="test")
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("UPDATE t SET v = 'new'")
        second = verified()
        with pytest.raises(RefusedError) as refused:
            refresh_into(storage, load_manifest(storage, "shop", second), raw_identity(config),
                         warm_copy_dsn(config, "shop"), recipients=config.keys.raw.recipients, pg_bin_dir=None,
                         work_dir=None, actor="test", progress=remark)
        assert refused.value.refusal == Refusals.NOT_A_WARM_COPY
        state = inspect_warm_copy(pg.dsn(warm))
        assert (state.marker, state.holds) == ("production", first)
        with psycopg.connect(pg.dsn(warm)) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [("old",)]
        assert not pg.has_database(_incoming_name(warm)) and _scratch_left(pg) == [] and _retired(pg) == []
    finally:
        for name in (warm, _incoming_name(warm)):
            pg.drop_database(name)
