"""Secrets never reach an output: odd DSN forms against every channel (issue 10, point 7).

A real role that must log in with a password (scram, via a temporary first line in pg_hba.conf)
is reached through DSNs that pattern masking got wrong: a URI with an unencoded ``#`` and ``%``
in the password (libpq refuses it and echoes the password in its error), a URI with an unencoded
``#`` (libpq accepts it; ``urlsplit`` took the rest for a fragment), a keyword DSN with an
unbalanced quote. Each is run through the CLI (stderr, ``--json``), the audit log and everything
else written to the store, and a real Dagster run (its event log and every file of its instance,
compute logs included). A distinctive random fragment of the password must appear nowhere: not
whole, not in part.

And a password supplied only through ``PGPASSWORD`` works for pg_dump (it used to be stripped).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.audit import AuditLog, read
from dbprotect.core.crypto import generate_keypair, load_identity
from dbprotect.core.errors import DatabaseError
from dbprotect.core.pg.dsn import dbname_of, dsn_passwords, mask_dsn, scrub_text, server_label, with_dbname
from dbprotect.core.pg.tools import split_password, tool_env
from dbprotect.core.redact import REDACTED, forget_all, redact, register
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.core.store.s3 import s3_credentials_from_env
from dbprotect.defs import load_definitions
from dbprotect.defs.helpers import core_errors_as_failures
from dbprotect_tests.fixtures.fix_pg import PgServer, psql


@dataclass(frozen=True)
class Role:
    name: str
    password: str
    #: A random part of the password that nothing legitimate contains: found anywhere, it leaked.
    marker: str
    dbname: str
    socket_dir: str

    def uri(self, password: str | None = None) -> str:
        return f"postgresql://{self.name}:{password or self.password}@/{self.dbname}?host={self.socket_dir}"


@pytest.fixture(scope="module")
def role(pg: PgServer) -> Iterator[Role]:
    """A database and a superuser role that must log in with a password holding ``#`` and ``%``."""
    marker = secrets.token_hex(8)
    name, password = f"dbp_sec_{secrets.token_hex(3)}", f"Pw#{marker}%zz"
    dbname = pg.create_database("secrets")
    psql(pg.dsn(dbname), "CREATE TABLE customers (id int PRIMARY KEY, name text); "
                         "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 50) g")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        conn.execute(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'")
        original = hba.read_text()
        hba.write_text(f"local all {name} scram-sha-256\n{original}")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield Role(name, password, marker, dbname, pg.socket_dir)
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            hba.write_text(original)
            conn.execute("SELECT pg_reload_conf()")
        pg.drop_database(dbname)
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {name}")


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Each test starts with no registered secret, so none passes thanks to an earlier one."""
    forget_all()
    yield
    forget_all()


def _forms(role: Role) -> dict[str, tuple[str, bool]]:
    """name → (DSN, whether the backup succeeds)."""
    sock = role.socket_dir
    return {
        # libpq: 'invalid percent-encoded token: "<password>"': the password in libpq's own error
        "uri-hash-percent": (role.uri(), False),
        # a valid DSN for libpq; urlsplit read "#..." as a fragment and mask_dsn showed it
        "uri-hash": (role.uri(f"Ok#{role.marker}"), False),
        # the unbalanced quote: the keyword pattern masked only up to the first space
        "keyword-unbalanced-quote": (f"host={sock} dbname={role.dbname} user={role.name} "
                                     f"password='Pw {role.marker} x", False),
    }


def _assert_clean(text: str | bytes, role: Role, where: str) -> None:
    data = text if isinstance(text, bytes) else text.encode()
    assert role.marker.encode() not in data, f"the password leaked into {where}"


def _assert_tree_clean(root: Path, role: Role, where: str) -> None:
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files, f"nothing written under {root}"
    for path in files:
        _assert_clean(path.read_bytes(), role, f"{where}: {path.relative_to(root)}")


# -- the registry and the parsers ----------------------------------------------------------------

def test_passwords_are_found_in_every_dsn_form() -> None:
    secret = "Pw#ab%zz/q@r"
    assert secret in dsn_passwords(f"postgresql://u:{secret}@h/db")
    assert "s3cr#t" in dsn_passwords("postgresql://u:s3cr#t@h/db")  # libpq's own reading
    assert "p@ss:w" in dsn_passwords("postgresql://u:p%40ss:w@h/db")
    assert "se cret" in dsn_passwords("host=h user=u password='se cret")  # unbalanced quote
    assert "it's" in dsn_passwords(r"host=h password='it\'s' user=u")
    assert "hunter22" in dsn_passwords("postgresql://u@h/db?sslmode=require&password=hunter22")
    assert dsn_passwords("postgresql://u@h/db") == set()


@pytest.mark.parametrize("dsn", [
    "postgresql://app:Pw#SECRETPART%zz@db.example.com:5432/shop",
    "postgresql://app:Ok#SECRETPART@db.example.com/shop",
    "host=db user=app password='Pw SECRETPART x",
    "host=db user=app password=Pw'SECRETPART dbname=shop",
    "postgresql://app:SECRETPART/x@db/shop",
])
def test_mask_dsn_and_scrub_never_show_an_odd_password(dsn: str) -> None:
    assert "SECRETPART" not in mask_dsn(dsn)
    forget_all()
    assert "SECRETPART" not in scrub_text(f"failed: {dsn} (more)")


def test_redaction_by_value_covers_escaped_spellings() -> None:
    register('Pw"q\\x#y%z')
    for spelling in ('Pw"q\\x#y%z', json.dumps('Pw"q\\x#y%z'), "Pw%22q%5Cx%23y%25z"):
        assert "q" not in redact(f"<{spelling}>").replace(REDACTED, ""), spelling
    register("ab", None, "")  # too short, or nothing: ignored rather than garbling every message
    assert redact("about ab") == "about ab"


def test_libpq_error_echo_is_a_one_line_error_without_the_password() -> None:
    with pytest.raises(DatabaseError) as err:
        split_password("postgresql://u:Pw#ECHOPART%zz@h/db")
    assert "ECHOPART" not in str(err.value) and "invalid percent-encoded token" in str(err.value)


def test_dsn_with_hash_keeps_its_password_when_the_database_changes() -> None:
    dsn = "postgresql://u:s3cr#t@h:5/db?sslmode=disable"
    assert dbname_of(dsn) == "db"
    assert with_dbname(dsn, "other") == "postgresql://u:s3cr#t@h:5/other?sslmode=disable"
    assert server_label(dsn) == "database 'db' on h:5"


def test_keys_are_registered_where_they_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    identity, _recipient = generate_keypair()
    load_identity("X_IDENTITY", {"X_IDENTITY": identity})
    assert redact(f"key {identity}") == f"key {REDACTED}"
    monkeypatch.setenv("X_S3_SECRET", "s3-SECRETPART-key")
    s3_credentials_from_env(None, "X_S3_SECRET")
    assert "SECRETPART" not in redact("signature for s3-SECRETPART-key")
    monkeypatch.setenv("PGPASSWORD", "env-SECRETPART-pw")
    env = tool_env(None)
    assert env["PGPASSWORD"] == "env-SECRETPART-pw"  # passed through to the tools
    assert "SECRETPART" not in redact("echo env-SECRETPART-pw")
    assert tool_env("dsn-pw-1234")["PGPASSWORD"] == "dsn-pw-1234"  # the DSN's own wins


def test_audit_records_name_database_and_host_and_never_a_secret(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    register("AUDITSECRET")
    record = AuditLog(storage, actor="test").record(
        "backup", database="shop", outcome="failed",
        detail="cannot connect to postgresql://admin:****@db.example.com:5432/shop: AUDITSECRET rejected",
        data={"error": "password=AUDITSECRET", "dsn": "postgresql://a:b@h/x"})
    assert "database 'shop' on db.example.com:5432" in record.detail
    assert "postgresql://" not in json.dumps([record.detail, record.data])
    _assert_tree_clean(tmp_path / "store", Role("", "", "AUDITSECRET", "", ""), "the audit log")
    [stored] = read(storage)
    assert stored.hash == record.hash


# -- every channel, against a real server ----------------------------------------------------------

@pytest.mark.parametrize("form", ["uri-hash-percent", "uri-hash", "keyword-unbalanced-quote"])
def test_odd_dsn_never_reaches_cli_json_or_store(form: str, role: Role, write_config, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dsn, _ok = _forms(role)[form]
    write_config(dsn, database="shop", deployment="production")
    code = run(["backup", "shop"])
    out, err = capsys.readouterr()
    assert code != 0 and err.startswith("error["), err
    _assert_clean(out + err, role, "CLI output")
    code = run(["backup", "shop", "--json"])
    out, err = capsys.readouterr()
    assert code != 0 and json.loads(out)["error"]["code"].startswith("DBP"), out
    _assert_clean(out + err, role, "--json output")
    # the failures were audited, and neither the audit log nor anything else stored holds the password
    records = read(FilesystemStorage(tmp_path / "store"))
    assert [r.outcome for r in records] == ["failed", "failed"]
    _assert_tree_clean(tmp_path / "store", role, "the store")


def test_wrong_password_with_hash_is_masked_in_cli_output(role: Role, write_config, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_config(role.uri(f"Bad#{role.marker}"), database="shop", deployment="production")
    assert run(["backup", "shop"]) != 0
    out, err = capsys.readouterr()
    assert "password authentication failed" in err
    _assert_clean(out + err, role, "CLI output")
    _assert_tree_clean(tmp_path / "store", role, "the store")


@pytest.mark.slow
@pytest.mark.parametrize("form", ["uri-hash-percent", "uri-hash", "keyword-unbalanced-quote"])
def test_odd_dsn_never_reaches_a_dagster_run(form: str, role: Role, write_config, tmp_path: Path) -> None:
    dsn, _ok = _forms(role)[form]
    write_config(dsn, database="shop", deployment="production")
    with dg.instance_for_test() as instance:
        result = load_definitions().resolve_job_def("shop_backup_job").execute_in_process(
            instance=instance, raise_on_error=False)
        assert not result.success
        logs = instance.all_logs(result.run_id)
        messages = [entry.user_message for entry in logs]
        assert any("backing up 'shop' from " in m for m in messages), messages
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
        assert "error[DBP" in str(failure.event_specific_data), failure
        for entry in logs:
            _assert_clean(dg.serialize_value(entry), role, f"the event log ({entry.user_message[:60]})")
        _assert_tree_clean(Path(instance.root_directory), role, "the Dagster instance")
    _assert_tree_clean(tmp_path / "store", role, "the store")


@pytest.mark.slow
def test_successful_dagster_backup_logs_database_and_host_only(role: Role, write_config, tmp_path: Path) -> None:
    """A DSN libpq accepts with an unencoded ``#``: the backup works, and no log shows a DSN."""
    hashed = f"Ok#{role.marker}"
    with psycopg.connect(f"host={role.socket_dir} dbname={role.dbname} user={role.name} "
                         f"password='{role.password}'", autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role.name} PASSWORD '{hashed}'")
    try:
        write_config(role.uri(hashed), database="shop", deployment="production")
        with dg.instance_for_test() as instance:
            result = load_definitions().resolve_job_def("shop_backup_job").execute_in_process(instance=instance)
            assert result.success
            messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
            assert f"backing up 'shop' from database '{role.dbname}' on {role.socket_dir}" in messages
            assert not any("postgresql://" in m for m in messages)
            _assert_tree_clean(Path(instance.root_directory), role, "the Dagster instance")
        _assert_tree_clean(tmp_path / "store", role, "the store")
    finally:
        with psycopg.connect(f"host={role.socket_dir} dbname={role.dbname} user={role.name} "
                             f"password='{hashed}'", autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role.name} PASSWORD '{role.password}'")


def test_backup_with_the_password_only_in_pgpassword(role: Role, write_config, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """pg_dump used to get an environment without PGPASSWORD: 'no password supplied'."""
    write_config(f"postgresql://{role.name}@/{role.dbname}?host={role.socket_dir}", database="shop",
                 deployment="production")
    monkeypatch.setenv("PGPASSWORD", role.password)
    code = run(["backup", "shop", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    _assert_clean(out + err, role, "CLI output")
    storage = FilesystemStorage(tmp_path / "store")
    [backup] = list_backups(storage, "shop")
    assert load_manifest(storage, "shop", backup.backup_id).tables["public.customers"].rows == 50
    _assert_tree_clean(tmp_path / "store", role, "the store")


@pytest.mark.slow
def test_dagster_step_log_and_unexpected_errors_are_redacted() -> None:
    """Inside ``core_errors_as_failures`` a step's log lines lose every registered secret and show
    DSNs as database and host; an unexpected exception holding a secret fails the run redacted."""
    secret = f"Step-{secrets.token_hex(8)}"
    register(secret)

    @dg.op
    def leaky(context) -> None:  # type: ignore[no-untyped-def]  # Dagster reads the annotation at runtime
        with core_errors_as_failures():
            context.log.info(f"connecting to postgresql://app:{secret}@db.example.com:5432/shop")
            context.log.info("echo %s", secret)
            raise RuntimeError(f"library echo: password={secret}")

    @dg.job
    def leaky_job() -> None:
        leaky()

    with dg.instance_for_test() as instance:
        result = leaky_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        logs = instance.all_logs(result.run_id)
        messages = [entry.user_message for entry in logs]
        assert "connecting to database 'shop' on db.example.com:5432" in messages
        assert "echo ****" in messages
        for entry in logs:
            assert secret not in dg.serialize_value(entry), entry.user_message
        for path in Path(instance.root_directory).rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path
