"""The store is untrusted input (issue 10, point 2): edited manifests, manifests moved between
folders, folder names that do not parse, and configured names that collide with derived folders.

Someone with write access to the bucket must not thereby run SQL as the restore role, pass one
database's backup off as another's, or stop ``list``/``status``/``cleanup`` for every database.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from dbprotect.core.backup.content import _copy_query, digest_table
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.load import load_config
from dbprotect.core.copy import copy_backup
from dbprotect.core.errors import ConfigError, IntegrityError
from dbprotect.core.ops import database_status
from dbprotect.core.pg.scratch import ScratchServer, leftover_scratch_databases
from dbprotect.core.restore.staged import verify_restore
from dbprotect.core.retention.cleanup import execute_cleanup, plan_cleanup
from dbprotect.core.retention.policy import RetentionPolicy
from dbprotect.core.store import FilesystemStorage, Storage
from dbprotect.core.store.catalog import list_backups, load_manifest, newest_verified_backup
from dbprotect.core.store.manifest import Manifest, dump_key, manifest_key, parse_column_list
from dbprotect.core.verify.integrity import verify_backup
from dbprotect_tests.fixtures.backups import DB, write_backup
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.fixtures.fix_pg import psql

PAYLOAD = "id); DROP TABLE x; --"
NOW = datetime.now(UTC).replace(microsecond=0)


def _edit_manifest(storage: Storage, database: str, backup_id: str, edit) -> None:
    doc = json.loads(storage.get_bytes(manifest_key(database, backup_id)))
    edit(doc)
    storage.put_bytes(manifest_key(database, backup_id), json.dumps(doc).encode())


# --- identifiers: a column list is parsed into names, never pasted into SQL ---------------------

@pytest.mark.parametrize("text, names", [
    ("id", ("id",)),
    ('id, "Order Date", qty', ("id", "Order Date", "qty")),
    ('"a ""quoted"" name",b', ('a "quoted" name', "b")),
    ('"id); DROP TABLE x; --"', ("id); DROP TABLE x; --",)),  # a real (odd) column name, quoted by pg_dump
])
def test_a_column_list_parses_into_names(text: str, names: tuple[str, ...]) -> None:
    assert parse_column_list(text) == names


@pytest.mark.parametrize("text", [
    PAYLOAD, "id) TO PROGRAM 'touch /tmp/x'", "id, (SELECT 1)", "id;", "", " ", "id,", ",id", 'id, "open',
    "Id", "id name", 'id, "x"; DROP TABLE x', "id\x00",
])
def test_a_column_list_that_is_not_names_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a list of column names"):
        parse_column_list(text)


def test_copy_query_quotes_every_name_and_refuses_text_that_is_not_names() -> None:
    query = _copy_query("public", "t", ["id", "id); DROP TABLE x; --"]).as_string(None)
    assert query == 'COPY "public"."t" ("id", "id); DROP TABLE x; --") TO STDOUT'
    with pytest.raises(ValueError):
        _copy_query("public", "t", PAYLOAD)


def test_an_odd_real_column_name_digests_through_identifiers(make_db) -> None:
    """The quoting is not only safe but right: a column literally named like the payload digests."""
    dsn = make_db('CREATE TABLE x (keep int); CREATE TABLE t (id int, "id); DROP TABLE x; --" text);'
                  "INSERT INTO t VALUES (1, 'a'), (2, 'b');")
    with psycopg.connect(dsn) as conn:
        digest = digest_table(conn, "public", "t", '"id); DROP TABLE x; --"')
        assert digest.rows == 2
        assert conn.execute("SELECT to_regclass('public.x') IS NOT NULL").fetchone() == (True,)


@pytest.fixture
def scratch(pg) -> ScratchServer:
    return ScratchServer(pg.admin_dsn)


@pytest.mark.slow
def test_sql_in_a_manifests_columns_never_runs_and_the_backup_fails(make_db, tmp_path, age_keys, identity,
                                                                   scratch) -> None:
    """Edit columns to ``id) TO STDOUT; COPY (...) TO '<file>'; --``: refused as damaged, nothing runs."""
    dsn = make_db("CREATE TABLE x (keep int); INSERT INTO x VALUES (1);"
                  "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);")
    storage = FilesystemStorage(tmp_path / "store")
    backup_id = run_backup(database=DB, dsn=dsn, storage=storage, recipients=[age_keys[1]]).manifest.backup_id
    marker = tmp_path / "pwned"
    payload = f"id) TO STDOUT; COPY (SELECT 1) TO '{marker}'; DROP TABLE x; --"

    def edit(doc):
        doc["tables"]["public.t"]["columns"] = payload

    _edit_manifest(storage, DB, backup_id, edit)
    with pytest.raises(IntegrityError, match=r"manifest is malformed: tables\.public\.t\.columns"):
        load_manifest(storage, DB, backup_id)
    with pytest.raises(IntegrityError):
        verify_backup(storage, DB, backup_id, identity)
    # A caller that built the manifest without validation still never reaches SQL with the text.
    good = Manifest.from_json(storage.get_bytes(manifest_key(DB, backup_id)).replace(
        json.dumps(payload).encode(), b'"id"'), where="test")
    tampered = good.model_copy(deep=True)
    tampered.tables["public.t"] = tampered.tables["public.t"].model_copy(update={"columns": payload})
    result = verify_restore(storage, tampered, identity, scratch, record=False)
    assert not result.ok
    assert any("not a list of column names" in problem for problem in result.problems), result.problems
    assert not marker.exists()
    assert psql(dsn, "SELECT count(*) FROM x").strip() == "1"
    assert leftover_scratch_databases(scratch) == []


# --- a manifest names its own folder ------------------------------------------------------------

def test_a_manifest_copied_into_another_databases_folder_is_refused(tmp_path: Path) -> None:
    """Copy shop's manifest and dump under crm/: its own SHA-256 matches, yet it is refused, never restored."""
    storage = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(storage, NOW - timedelta(hours=2))
    for key in (manifest_key(DB, backup_id), dump_key(DB, backup_id)):
        storage.put_bytes(key.replace(f"{DB}/", "crm/", 1), storage.get_bytes(key))
    assert load_manifest(storage, DB, backup_id).database == DB
    with pytest.raises(IntegrityError, match=r"names backup .* of database 'shop', not .* of 'crm'.*refusing"):
        load_manifest(storage, "crm", backup_id)
    with pytest.raises(IntegrityError):
        verify_backup(storage, "crm", backup_id, None)


def test_a_manifest_moved_to_another_backup_id_is_refused(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    old = write_backup(storage, NOW - timedelta(days=3), n=1)
    new = write_backup(storage, NOW - timedelta(hours=1), n=2)
    storage.put_bytes(manifest_key(DB, new), storage.get_bytes(manifest_key(DB, old)))
    with pytest.raises(IntegrityError, match=f"names backup '{old}'"):
        load_manifest(storage, DB, new)


@pytest.mark.parametrize("edit, where", [
    (lambda d: d.update(surprise=1), "unknown field"),
    (lambda d: d["tables"].update({"public.t": {"rows": 1, "checksum": "0" * 16, "evil": "x"}}), "unknown table field"),
    (lambda d: d["tables"].update({"public.t": {"rows": -1, "checksum": "0" * 16}}), "tables.public.t.rows"),
    (lambda d: d["tables"].update({"public.t": {"rows": 1, "checksum": "zz"}}), "tables.public.t.checksum"),
    (lambda d: d["tables"].update({"public.t": {"rows": 1, "checksum": "0" * 16, "schema": "a\x00b"}}), "not a name"),
    (lambda d: d["tables"].update({"public.t": {"rows": 1, "checksum": "0" * 16, "name": "n" * 300}}), "not a name"),
    (lambda d: d["sequences"].update({"public.s": {"value": "1; DROP", "is_called": True}}), "sequences"),
    (lambda d: d["object"].update(sha256="x"), "object"),
    (lambda d: d["object"].update(size=-5), "object"),
    (lambda d: d.update(backup_id="../../etc"), "backup_id"),
    (lambda d: d.update(database="a/b"), "database"),
    (lambda d: d.update(environment="production; DROP"), "environment"),
    (lambda d: d["verifications"].append({"rung": "bogus", "ok": True, "at": "2026-01-01T00:00:00Z"}),
     "verifications"),
])
def test_every_manifest_field_is_validated(tmp_path: Path, edit, where: str) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(storage, NOW - timedelta(hours=1))
    _edit_manifest(storage, DB, backup_id, edit)
    with pytest.raises(IntegrityError, match=f"manifest is malformed: .*{where}"):
        load_manifest(storage, DB, backup_id)


def test_a_sanitized_manifests_lineage_is_still_read(tmp_path: Path) -> None:
    """The one extra a manifest may carry today: a sanitized copy's lineage."""
    storage = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(storage, NOW - timedelta(hours=1))
    _edit_manifest(storage, DB, backup_id, lambda d: d.update(sanitized={"checks": {"no_pii_leaked": {"ok": True}}}))
    lineage = {"checks": {"no_pii_leaked": {"ok": True}}}
    assert load_manifest(storage, DB, backup_id).model_extra == {"sanitized": lineage}


# --- folder names that do not parse -------------------------------------------------------------

@pytest.fixture
def impossible(tmp_path: Path, write_config) -> tuple[FilesystemStorage, str, list[str]]:
    """A store with two good backups and a folder named with an impossible date (month 13, day 99)."""
    write_config(None, extra={"databases": {DB: {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                                                 "retention": "keep_last=1"}}})
    storage = FilesystemStorage(tmp_path / "store")
    good = [write_backup(storage, NOW - timedelta(hours=2 * d), n=d) for d in (1, 2)]
    bad_id = "20251399T020000Z-000000"
    source = good[0]
    for key in (manifest_key(DB, source), dump_key(DB, source)):
        storage.put_bytes(key.replace(source, bad_id), storage.get_bytes(key))
    return storage, bad_id, good


def test_an_impossible_folder_date_is_reported_and_skipped_by_the_catalog(impossible) -> None:
    storage, bad_id, good = impossible
    skipped: list[str] = []
    assert [e.backup_id for e in list_backups(storage, DB, skipped=skipped)] == good
    assert skipped == [f"{DB}/{bad_id}/: folder name is not a backup id with a real date"]


def test_an_impossible_folder_date_does_not_stop_list_status_or_cleanup(impossible, capsys) -> None:
    storage, bad_id, good = impossible
    code, listing, _err = run_json(capsys, "list", DB)
    assert code == 0 and [b["backup_id"] for b in listing["backups"]] == good
    assert listing["skipped_folders"] == [f"{DB}/{bad_id}/: folder name is not a backup id with a real date"]
    code, status, _err = run_json(capsys, "status")
    assert code == 0, status
    [row] = status["databases"]
    assert row["backups"] == 2 and row["skipped_folders"] == listing["skipped_folders"]
    plan = plan_cleanup(storage, DB, RetentionPolicy.parse("keep_last=1"), NOW)
    assert any(bad_id in warning for warning in plan.warnings)
    execute_cleanup(storage, plan)
    assert [e.backup_id for e in list_backups(storage, DB)] == good[:1]
    assert storage.get_bytes(manifest_key(DB, bad_id))  # never touched: an operator looks at it
    code, result, _err = run_json(capsys, "cleanup", DB)
    assert code == 0, result


def test_database_status_reports_skipped_folders(impossible) -> None:
    _storage, bad_id, _good = impossible
    config = load_config()
    status = database_status(config, DB, NOW)
    assert status.rpo.ok and any(bad_id in s for s in status.skipped)


# --- derived folders cannot collide with a configured database ----------------------------------

def _config_with(tmp_path: Path, age_keys, names: list[str]) -> Path:
    doc = {"deployment": "demo",
           "databases": {name: {"environments": {"production": {"dsn_env": "X_DSN"}}} for name in names},
           "storage": {"local": {"type": "filesystem", "path": "store"}},
           "keys": {"raw": {"recipients": [age_keys[1]], "identity_env": "X_ID"}}}
    path = tmp_path / "dbprotect.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("names, folder", [
    (["shop", "shop-safety"], "shop-safety"),
    (["shop", "shop-sanitized"], "shop-sanitized"),
    (["shop", "shop-development-safety"], "shop-development-safety"),
    (["shop", "shop-development"], "shop-development-safety"),  # both derive it
])
def test_a_database_named_like_another_databases_folder_is_refused(tmp_path, age_keys, names, folder) -> None:
    with pytest.raises(ConfigError, match=f"would share the store folder '{folder}'"):
        load_config(_config_with(tmp_path, age_keys, names))


def test_names_that_only_look_alike_load(tmp_path, age_keys) -> None:
    config = load_config(_config_with(tmp_path, age_keys, ["shop", "shop-safe", "safety", "shop_sanitized"]))
    assert sorted(config.databases) == ["safety", "shop", "shop-safe", "shop_sanitized"]


def test_a_garbage_manifest_on_the_newest_verified_backup_is_recorded_as_failed(tmp_path: Path) -> None:
    """Issue 10, point 9: the newest verified backup's manifest overwritten with garbage. Verifying it
    records a failed *stored* check, so the listing, the RPO and the default restore pass it over."""
    storage = FilesystemStorage(tmp_path / "store")
    older = write_backup(storage, NOW - timedelta(hours=5), n=1)
    newest = write_backup(storage, NOW - timedelta(hours=1), n=2)
    assert newest_verified_backup(storage, DB) == newest
    storage.put_bytes(manifest_key(DB, newest), b"\x00not json at all")
    with pytest.raises(IntegrityError):
        verify_backup(storage, DB, newest, None)
    entry = next(e for e in list_backups(storage, DB) if e.backup_id == newest)
    assert not entry.integrity_ok
    assert newest_verified_backup(storage, DB) == older
    verify_backup(storage, DB, older, None, record=False)  # the other backup is untouched by it


def test_a_garbage_manifest_is_not_recorded_when_recording_is_off(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(storage, NOW - timedelta(hours=1))
    storage.put_bytes(manifest_key(DB, backup_id), b"{}")
    with pytest.raises(IntegrityError):
        verify_backup(storage, DB, backup_id, None, record=False)
    assert next(e for e in list_backups(storage, DB) if e.backup_id == backup_id).integrity_ok


@pytest.mark.parametrize("session", [
    {"role": "postgres"}, {"search_path": "evil"}, {"TimeZone": "UTC'; DROP TABLE x; --"}, "ISO", {"DateStyle": 1},
])
def test_a_manifests_session_settings_are_only_the_recorded_rendering_settings(tmp_path: Path, session) -> None:
    """checksum.session is applied to connections on restore: an edited one never sets e.g. role."""
    storage = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(storage, NOW - timedelta(hours=1))
    _edit_manifest(storage, DB, backup_id, lambda d: d["checksum"].update(session=session))
    with pytest.raises(IntegrityError, match="checksum"):
        load_manifest(storage, DB, backup_id)


def test_the_recorded_session_settings_still_load(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    backup_id = write_backup(storage, NOW - timedelta(hours=1))
    session = {"DateStyle": "ISO", "TimeZone": "UTC", "client_encoding": "UTF8", "lc_monetary": "en_US.UTF-8"}
    _edit_manifest(storage, DB, backup_id, lambda d: d["checksum"].update(session=session))
    assert load_manifest(storage, DB, backup_id).checksum["session"] == session


def test_a_copy_refuses_a_source_manifest_that_names_another_folder(tmp_path: Path) -> None:
    src, dst = FilesystemStorage(tmp_path / "src"), FilesystemStorage(tmp_path / "dst")
    backup_id = write_backup(src, NOW - timedelta(hours=2))
    for key in (manifest_key(DB, backup_id), dump_key(DB, backup_id)):
        src.put_bytes(key.replace(f"{DB}/", "crm/", 1), src.get_bytes(key))
    with pytest.raises(IntegrityError, match="refusing"):
        copy_backup(src, dst, "crm", backup_id)
    assert list_backups(dst, "crm") == []
    assert not [info.key for info in dst.list("crm/") if info.key.endswith(("dump.zst.age", "manifest.json"))]
