"""The least-privilege backup role the README documents (issue 13, point 5): a login role with
``pg_read_all_data`` (and ``BYPASSRLS`` for tables with row-level security), no superuser, no
ownership, backs up a database it does not own and the backup passes a drill, on a real server."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.errors import EXIT_OK
from dbprotect.core.pg.dsn import dbname_of

pytestmark = pytest.mark.slow  # a backup, a verification and a drill (a few seconds)

README = Path(__file__).resolve().parents[1] / "README.md"
APP_SQL = """
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id serial PRIMARY KEY, tenant int NOT NULL, amount numeric(10,2));
INSERT INTO billing.invoices (tenant, amount) SELECT g % 3, g * 1.25 FROM generate_series(1, 300) g;
ALTER TABLE billing.invoices ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON billing.invoices USING (tenant = current_setting('app.tenant', true)::int);
CREATE TABLE notes (id bigserial PRIMARY KEY, body text);
INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 200) g;
"""


def _role_sql_from_readme() -> list[str]:
    """The statements of the README's backup-role block, so the test runs what the README says."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index("<!-- backup-role -->"):]
    block = block[block.index("```sql") + len("```sql"):]
    block = block[:block.index("```")]
    code = "\n".join(line.split("--")[0] for line in block.splitlines())
    return [statement.strip() for statement in code.split(";") if statement.strip()]


@pytest.fixture
def backup_role(pg) -> Iterator[str]:
    role = f"dbprotect_backup_{secrets.token_hex(3)}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        for statement in _role_sql_from_readme():
            admin.execute(re.sub(r"\bdbprotect_backup\b", role, statement).replace("'change-me'", "'pw'"))
    yield role
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


def test_a_backup_and_a_drill_as_the_least_privilege_role(pg, make_db, write_config, backup_role: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    owner_dsn = make_db(APP_SQL, prefix="app")  # owned by the superuser: the role owns nothing
    dbname = dbname_of(owner_dsn) or ""
    with psycopg.connect(owner_dsn, autocommit=True) as owner:
        owner.execute(f'ALTER DATABASE "{dbname}" SET dbprotect.environment = \'production\'')
    as_role = pg.dsn(dbname, user=backup_role)
    with psycopg.connect(as_role) as conn:
        superuser, createdb, bypassrls = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()
        assert (superuser, createdb, bypassrls) == (False, False, True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO notes (body) VALUES ('x')")  # reads everything, writes nothing
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)  # drills restore on the scratch server
    write_config(as_role, extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    assert run(["backup", "shop"]) == EXIT_OK
    assert run(["verify", "latest"]) == EXIT_OK
    assert run(["drill", "shop"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "drill of shop backup" in out and "passed" in out and "500 rows" in out


@pytest.mark.parametrize("taken_away", ["REVOKE pg_read_all_data FROM {role}", "ALTER ROLE {role} NOBYPASSRLS"])
def test_without_each_privilege_the_backup_fails_cleanly(pg, make_db, write_config, backup_role: str, taken_away: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Each line of the README's block is needed: without it, the same backup fails (one line, exit != 0)."""
    owner_dsn = make_db(APP_SQL, prefix="app")
    dbname = dbname_of(owner_dsn) or ""
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(taken_away.format(role=f'"{backup_role}"'))
    write_config(pg.dsn(dbname, user=backup_role))
    assert run(["backup", "shop"]) != EXIT_OK
    err = capsys.readouterr().err
    assert err.startswith("error[DBP") and "Traceback" not in err
