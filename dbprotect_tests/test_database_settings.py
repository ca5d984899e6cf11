"""Database-level settings (issue 11.1): captured in the backup's snapshot, compared, and brought back by a restore.

``pg_restore`` without ``--create`` never restores ``ALTER DATABASE … SET`` nor ``ALTER ROLE … IN
DATABASE … SET``. The backup records them in the manifest's ``catalog`` (strictly validated, never
dbprotect's own ``dbprotect.*``); the on-call restore applies them after the data and names them;
``compare`` names each setting changed, dropped or added. A forged record applies nothing a user
could not set for their own session, and runs no SQL.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pyrage
import pytest

from dbprotect.core.audit import AuditLog
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.errors import IntegrityError
from dbprotect.core.pg.markers import owned_database_settings, set_marker
from dbprotect.core.restore.oncall import RestoreResult, RestoreTarget, restore
from dbprotect.core.restore.settings import apply_database_settings
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.manifest import DatabaseSettingsRecord, Manifest
from dbprotect.core.verify.compare import compare_database
from dbprotect_tests.fixtures.fix_pg import psql

pytestmark = pytest.mark.slow

SUFFIX = secrets.token_hex(3)
APP_ROLE = f"settings_app_{SUFFIX}"


def _admin(pg: Any, *statements: str) -> None:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="module")
def settled(pg: Any, tmp_path_factory: pytest.TempPathFactory, age_keys: tuple[str, str]) -> Iterator[dict[str, Any]]:
    """A database with settings for every role and for one role, backed up and restored into a new database."""
    _admin(pg, f"CREATE ROLE {APP_ROLE}")
    source = pg.create_database("settings_source")
    psql(pg.dsn(source), "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50);")
    _admin(pg, f'ALTER DATABASE "{source}" SET search_path = app, public',
           f"ALTER DATABASE \"{source}\" SET statement_timeout = '5s'",
           f"ALTER DATABASE \"{source}\" SET app.tenant = 'acme'",
           f"ALTER ROLE {APP_ROLE} IN DATABASE \"{source}\" SET work_mem = '8MB'")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        set_marker(conn, source, "production")  # dbprotect's own: describes the place, never recorded
    base = tmp_path_factory.mktemp("settings")
    store = FilesystemStorage(base / "store")
    manifest = run_backup(database="shop", dsn=pg.dsn(source), storage=store, recipients=[age_keys[1]]).manifest
    name = f"settings_restored_{secrets.token_hex(3)}"
    result = restore(store, manifest, pyrage.x25519.Identity.from_str(age_keys[0]),
                     RestoreTarget(pg.dsn(name), "production"), recipients=[age_keys[1]],
                     audit=AuditLog(store, actor="test"), work_dir=base)
    assert isinstance(result, RestoreResult)
    yield {"manifest": manifest, "restored": name, "result": result, "source": source}
    for database in (source, name):
        pg.drop_database(database)
    _admin(pg, f"DROP ROLE IF EXISTS {APP_ROLE}")


def test_the_backup_records_the_databases_own_settings_and_not_dbprotects(settled: dict[str, Any]) -> None:
    catalog = settled["manifest"].catalog
    assert catalog is not None and catalog.database_settings is not None
    assert catalog.database_settings.all_roles == {"search_path": "app, public", "statement_timeout": "5s",
                                                   "app.tenant": "acme"}
    assert catalog.database_settings.roles == {APP_ROLE: {"work_mem": "8MB"}}


def test_a_restore_into_a_new_database_brings_them_back_and_names_them(pg: Any, settled: dict[str, Any]) -> None:
    settings = settled["result"].settings
    assert settings is not None and settings.not_applied == []
    assert sorted(settings.applied) == sorted(["app.tenant", "search_path", "statement_timeout",
                                               f"work_mem (role {APP_ROLE!r})"])
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        assert owned_database_settings(conn, settled["restored"]) == owned_database_settings(conn, settled["source"])
    comparison = compare_database(pg.dsn(settled["restored"]), settled["manifest"], settings=True)
    assert comparison.differences == [] and comparison.unchecked == []


def test_compare_names_each_setting_changed_dropped_or_added(pg: Any, settled: dict[str, Any]) -> None:
    name = settled["restored"]
    _admin(pg, f"ALTER DATABASE \"{name}\" SET statement_timeout = '9s'", f'ALTER DATABASE "{name}" RESET app.tenant',
           f'ALTER ROLE {APP_ROLE} IN DATABASE "{name}" RESET work_mem',
           f"ALTER DATABASE \"{name}\" SET lock_timeout = '1s'")
    try:
        comparison = compare_database(pg.dsn(name), settled["manifest"], settings=True)
        assert sorted(comparison.differences) == sorted([
            "database setting statement_timeout: value differs from the backup's",
            "database setting app.tenant: in the backup, missing here",
            f"database setting work_mem for role {APP_ROLE!r}: in the backup, missing here",
            "database setting lock_timeout: here, not in the backup"])
        assert not any("9s" in line or "acme" in line for line in comparison.differences)  # values never shown
        # rung 3 and drills restore into scratch databases that keep no settings: not compared there
        assert compare_database(pg.dsn(name), settled["manifest"]).differences == []
    finally:
        _admin(pg, f"ALTER DATABASE \"{name}\" SET statement_timeout = '5s'",
               f"ALTER DATABASE \"{name}\" SET app.tenant = 'acme'", f'ALTER DATABASE "{name}" RESET lock_timeout',
               f"ALTER ROLE {APP_ROLE} IN DATABASE \"{name}\" SET work_mem = '8MB'")


def test_a_forged_record_applies_only_what_a_user_could_set_and_runs_no_sql(pg: Any, make_db) -> None:
    dsn = make_db("CREATE TABLE t (id int);", prefix="forged")
    name = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    record = DatabaseSettingsRecord(
        all_roles={"session_preload_libraries": "evil", "role": "postgres", "log_min_duration_statement": "250",
                   "app.note": "x'; DROP TABLE t; --", "search_path": "app, public"},
        roles={"no_such_role_here": {"work_mem": "1MB"}})
    done = apply_database_settings(pg.admin_dsn, name, record)
    assert sorted(done.applied) == ["app.note", "search_path"]
    reasons = "\n".join(done.not_applied)
    assert "session_preload_libraries: a superuser-level setting" in reasons
    assert "role: changes who a session is" in reasons
    assert "log_min_duration_statement: a superuser-level setting" in reasons
    assert "work_mem (role 'no_such_role_here'): the role does not exist on this server" in reasons
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        assert owned_database_settings(conn, name)[""] == {"app.note": "x'; DROP TABLE t; --",
                                                          "search_path": "app, public"}
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM public.t").fetchone() == (0,)  # the table is still there


def test_an_edited_settings_record_is_a_malformed_manifest(settled: dict[str, Any]) -> None:
    raw = settled["manifest"].model_dump(mode="json")
    for forged in ({"all_roles": {"search_path; DROP TABLE t": "x"}, "roles": {}},
                   {"all_roles": {"work_mem": "1\x00MB"}, "roles": {}},
                   {"all_roles": {}, "roles": {"": {"work_mem": "1MB"}}},
                   {"all_roles": {}, "roles": {}, "connlimit": 5}):
        raw["catalog"]["database_settings"] = forged
        with pytest.raises(IntegrityError, match="database_settings"):
            Manifest.from_json(json.dumps(raw).encode(), where="test")
