"""A manifest names its source server by a label, never by a DSN with its user (issue 10, "Also").

Backup manifests stored ``source.dsn``, a masked DSN that still carried the user name. They store
``source.server`` now (database and host:port, as audit records do); older manifests are read with
their DSN turned into that label and dropped.
"""

from __future__ import annotations

import json
import secrets

import psycopg

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import load_manifest
from dbprotect.core.store.manifest import Manifest, manifest_key


def test_a_new_manifest_names_the_server_and_never_the_user(pg, make_db, tmp_path, age_keys):
    user = f"mfuser_{secrets.token_hex(3)}"
    dsn = make_db("CREATE TABLE t (v text); INSERT INTO t VALUES ('x')", prefix="src")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{user}" LOGIN SUPERUSER')
    try:
        storage = FilesystemStorage(tmp_path / "store")
        manifest = run_backup(database="shop", dsn=dsn.replace("postgres:@", f"{user}:@"), storage=storage,
                              recipients=[age_keys[1]]).manifest
        raw = storage.get_bytes(manifest_key("shop", manifest.backup_id))
        assert user.encode() not in raw
        source = json.loads(raw)["source"]
        assert "dsn" not in source and source["server"].startswith(f"database '{manifest.source['dbname']}' on ")
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{user}"')


def test_an_old_manifest_with_a_masked_dsn_is_read_as_a_server_label(pg, make_db, tmp_path, age_keys):
    storage = FilesystemStorage(tmp_path / "store")
    manifest = run_backup(database="shop", dsn=make_db("CREATE TABLE t (v text)", prefix="src"), storage=storage,
                          recipients=[age_keys[1]]).manifest
    doc = json.loads(manifest.to_json())
    doc["source"].pop("server")
    doc["source"]["dsn"] = "postgresql://olduser:****@db.example:5433/shop"
    old = Manifest.from_json(json.dumps(doc).encode(), where="old manifest")
    assert "dsn" not in old.source and old.source["server"] == "database 'shop' on db.example:5433"
    assert b"olduser" not in old.to_json()
    assert load_manifest(storage, "shop", manifest.backup_id).source["server"] == manifest.source["server"]
