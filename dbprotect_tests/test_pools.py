"""Dagster pools: every asset, check and op that works on one database is in that database's pool.

A deliberate, visible part of the definitions (issue 10, point 6): with a pool limit of 1, Dagster
runs one of them at a time per database across all runs. The store's lock covers the CLI beside
them (test_locks). The ``restore`` job's database is run config and a pool is fixed when an op is
defined, so the job routes the form (``restore_backup``, no pool: it touches nothing) to one op per
database in that database's pool.
"""

from __future__ import annotations

import dagster as dg
import pytest

from dbprotect.defs import load_definitions
from dbprotect.defs.names import database_pool

SECRET_DSN = "postgresql://backup:s3cret@db.example:5432/shop"
DATABASES = {
    "shop": {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"},
                              "development": {"dsn_env": "TEST_SHOP_DEV_DSN"}}},
    "ledger-db": {"environments": {"production": {"dsn_env": "TEST_LEDGER_PROD_DSN"}}},
}


def _database_of(name: str) -> str | None:
    for database in ("ledger_db", "shop"):
        if name.startswith(database):
            return {"ledger_db": "ledger-db", "shop": "shop"}[database]
    return None


def test_every_per_database_asset_check_and_op_is_in_its_databases_pool(write_config,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SHOP_PROD_DSN", SECRET_DSN)
    write_config(None, deployment="production", extra={"databases": DATABASES, "storage": {
        "local": {"type": "filesystem", "path": "store"}, "offsite": {"type": "filesystem", "path": "offsite"}}})
    defs = load_definitions()
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    for key in graph.get_all_asset_keys():
        database = _database_of(key.path[0])
        assert database is not None, key
        assert graph.get(key).pools == {database_pool(database)}, key
    pools_seen: dict[str, str | None] = {}
    for job in repo.get_all_jobs():
        if job.name.startswith("__"):
            continue
        for op in job.graph.iterate_op_defs():
            pools_seen[op.name] = op.pool
    checks_and_ops = {name: pool for name, pool in pools_seen.items() if name != "restore_backup"}
    assert checks_and_ops, pools_seen
    for name, pool in checks_and_ops.items():
        database = _database_of(name)
        if database is None:
            continue  # an op of several assets is named by Dagster; its assets were checked above
        assert pool == database_pool(database), (name, pool)
    assert {"shop_retention_cleanup", "shop_restore", "ledger_db_restore"} <= set(checks_and_ops)
    for check in ("backup_integrity_verified", "rpo_met"):
        assert any(name.startswith("shop") and name.endswith(check) for name in checks_and_ops), check
    assert checks_and_ops["ledger_db_restore"] == database_pool("ledger-db")
    # the router op only reads the form and tags the run; the work is in the per-database ops
    assert pools_seen.get("restore_backup") is None
    assert database_pool("ledger-db") == "dbprotect/ledger-db"
    dg.Definitions.validate_loadable(defs)
