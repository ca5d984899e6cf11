"""Drift across isolated deployments: production stores a schema snapshot per backup, development reads it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest

from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.load import load_config
from dbprotect.core.crypto import generate_keypair, parse_identity
from dbprotect.core.errors import DbprotectError, IntegrityError
from dbprotect.core.ops import backup_database
from dbprotect.core.ops.context import primary_store
from dbprotect.core.ops.schema import drift_from_production_snapshot
from dbprotect.core.schema.stored import read_schema_snapshot, schema_sha256, snapshot_key
from dbprotect_tests.fixtures.fix_pg import PgServer, psql

SCHEMA = "CREATE TABLE t (id int PRIMARY KEY, name text);"


@pytest.fixture
def deployments(make_db: Callable[..., str], write_config: Callable[..., Path], pg: PgServer,
                age_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """(development DSN, production DSN, development identity); the config knows keys.development."""
    dev_identity, dev_recipient = generate_keypair()
    dev, prod = make_db(SCHEMA, prefix="dev"), make_db(SCHEMA, prefix="prod")
    write_config(prod, database="shop", extra={
        "keys": {"raw": {"recipients": [age_keys[1]], "identity_env": "TEST_RAW_IDENTITY"},
                 "development": {"recipients": [dev_recipient], "identity_env": "TEST_DEV_IDENTITY"}},
        "scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    monkeypatch.setenv("TEST_SHOP_DEV_DSN", dev)
    monkeypatch.setenv("TEST_DEV_IDENTITY", dev_identity)
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    return dev, prod, dev_identity


def test_development_sees_a_production_column_without_a_production_dsn(
        deployments: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    dev, prod, _ = deployments
    backup_database(load_config(), "shop")  # production deployment: the backup writes the snapshot
    psql(prod, "ALTER TABLE t ADD COLUMN discount numeric(5,2)")
    newest = backup_database(load_config(), "shop").manifest.backup_id
    monkeypatch.delenv("TEST_SHOP_PROD_DSN")  # development deployment: no production DSN
    monkeypatch.delenv("TEST_RAW_IDENTITY")  # ... and no raw key
    config = load_config()
    with pytest.raises(DbprotectError):
        resolve_dsn(config, "shop", "production")
    report, snapshot = drift_from_production_snapshot(config, "shop")
    assert snapshot.backup_id == newest
    assert report.lines() == [f"column public.t.discount: only in production (snapshot {newest})"]
    psql(dev, "ALTER TABLE t ADD COLUMN discount numeric(5,2)")
    assert drift_from_production_snapshot(config, "shop")[0].ok


def test_a_forged_snapshot_is_refused_before_it_runs(deployments: tuple[str, str, str]) -> None:
    _, _, dev_identity = deployments
    backup_id = backup_database(load_config(), "shop").manifest.backup_id
    storage = primary_store(load_config(), "shop")
    identity = parse_identity(dev_identity, source="test")
    good = read_schema_snapshot(storage, database="shop", backup_id=backup_id, identity=identity)
    key = snapshot_key("shop", backup_id)
    # anyone holding the public recipient can encrypt: the content itself must be checked
    def forge(schema: str, **changes: str) -> None:
        doc = {"format": 1, "database": "shop", "backup_id": backup_id, "sha256": schema_sha256(schema),
               "server_version": good.server_version, "schema": schema, **changes}
        storage.delete(key)
        storage.put_bytes(key, pyrage.encrypt(json.dumps(doc).encode(), [identity.to_public()]))

    forge(good.dump + "\nCOPY t FROM PROGRAM 'touch /tmp/pwned';\n")
    with pytest.raises(IntegrityError, match="CopyStmt"):
        read_schema_snapshot(storage, database="shop", backup_id=backup_id, identity=identity)
    forge(good.dump + "\nDO $$ BEGIN PERFORM 1; END $$;\n")
    with pytest.raises(IntegrityError, match="DoStmt"):
        read_schema_snapshot(storage, database="shop", backup_id=backup_id, identity=identity)
    forge(good.dump + "\nCREATE FUNCTION f() RETURNS int LANGUAGE c AS 'x', 'y';\n")
    with pytest.raises(IntegrityError, match="language 'c'"):
        read_schema_snapshot(storage, database="shop", backup_id=backup_id, identity=identity)
    forge(good.dump, backup_id="20990101T000000Z")
    with pytest.raises(IntegrityError, match="moved between folders"):
        read_schema_snapshot(storage, database="shop", backup_id=backup_id, identity=identity)
    forge(good.dump, sha256="0" * 64)
    with pytest.raises(IntegrityError, match="does not match its recorded SHA-256"):
        read_schema_snapshot(storage, database="shop", backup_id=backup_id, identity=identity)
