"""No password on a tool's command line (review of session 3): ``schema.snapshot.dump_schema`` and the
backup's pg_dump, run against a password-protected role, get the DSN's password only in
``PGPASSWORD``. A command line is readable by every user of the machine (``ps``, ``/proc/<pid>/cmdline``).

pg_dump is wrapped by a script in ``pg_bin_dir`` that records the argv it was started with (what
``/proc/<pid>/cmdline`` of the running pg_dump shows: the script execs it with the same argv) and
whether the password reached it through the environment, then runs the real tool.
"""

from __future__ import annotations

import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbprotect.core.config.load import load_config
from dbprotect.core.ops import backup_database
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.tools import find_tool
from dbprotect.core.schema.snapshot import dump_schema

pytestmark = pytest.mark.slow  # a real pg_dump per test, through a shell wrapper

PASSWORD = "Pw-" + secrets.token_hex(8)  # distinctive: found nowhere on a command line by chance
LOG_ENV = "TEST_PG_DUMP_ARGV_LOG"


@pytest.fixture
def recording_pg_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(folder holding the wrapping ``pg_dump``, the log it appends each call's NUL-separated argv to)."""
    real = find_tool("pg_dump")
    folder = tmp_path / "wrapped-bin"
    folder.mkdir()
    log = tmp_path / "pg_dump.argv"
    wrapper = folder / "pg_dump"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\0" "$0" "$@" >> "${LOG_ENV}"\n'
        f'printf "\\n" >> "${LOG_ENV}"\n'
        f'if [ "$PGPASSWORD" = "{PASSWORD}" ]; then echo password-in-env >> "${LOG_ENV}.env"; fi\n'
        f'exec "{real}" "$@"\n', encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(LOG_ENV, str(log))
    return folder, log


@pytest.fixture
def role_dsn(pg, make_db) -> Iterator[str]:
    """A DSN with a password, of a login role that owns a database with one table."""
    role = f"argv_{secrets.token_hex(3)}"
    dsn = make_db("CREATE TABLE item (id int PRIMARY KEY); INSERT INTO item VALUES (1), (2);")
    dbname = dbname_of(dsn)
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'")
        admin.execute(f'ALTER DATABASE "{dbname}" OWNER TO "{role}"')
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute(f'ALTER TABLE item OWNER TO "{role}"')
        owner.execute(f"ALTER DATABASE \"{dbname}\" SET dbprotect.environment = 'production'")
    yield pg.dsn(dbname, user=role, password=PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as owner:  # the role's objects are in that database
        owner.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
        admin.execute(f'DROP ROLE "{role}"')


def _calls(log: Path) -> list[list[str]]:
    """Each recorded call's argv (the dump itself, and any version probe)."""
    entries = [line.strip("\0") for line in log.read_text(encoding="utf-8").split("\n") if line.strip("\0")]
    return [entry.split("\0") for entry in entries]


def _dumps(log: Path) -> list[list[str]]:
    return [argv for argv in _calls(log) if "--version" not in argv and "-V" not in argv]


def test_dump_schema_puts_no_password_on_pg_dumps_command_line(recording_pg_dump, role_dsn: str) -> None:
    folder, log = recording_pg_dump
    assert PASSWORD in role_dsn
    text, _version = dump_schema(role_dsn, pg_bin_dir=str(folder))
    assert "CREATE TABLE public.item" in text
    [dump] = _dumps(log)  # the wrapper did run: the test sees the real command line
    assert "--schema-only" in dump and dbname_of(role_dsn) in " ".join(dump)
    assert not any(PASSWORD in arg for arg in dump), "the password is on pg_dump's command line"
    assert (log.parent / f"{log.name}.env").read_text(encoding="utf-8").strip() == "password-in-env"


def test_the_backups_pg_dump_puts_no_password_on_its_command_line(recording_pg_dump, role_dsn: str,
                                                                   write_config) -> None:
    folder, log = recording_pg_dump
    config = load_config(write_config(role_dsn, extra={"pg_bin_dir": str(folder)}))
    result = backup_database(config, "shop")
    assert result.manifest.backup_id
    dumps = _dumps(log)
    assert dumps, "the backup did not run the wrapped pg_dump"
    for dump in dumps:
        assert not any(PASSWORD in arg for arg in dump), "the password is on pg_dump's command line"
    assert "password-in-env" in (log.parent / f"{log.name}.env").read_text(encoding="utf-8")


def test_the_recorder_sees_a_password_that_is_on_the_command_line(recording_pg_dump, role_dsn: str) -> None:
    """The counter-test: a pg_dump given the full DSN, as the old schema code did, is caught."""
    folder, log = recording_pg_dump
    subprocess.run([str(folder / "pg_dump"), "--schema-only", "--dbname", role_dsn], check=True,
                   capture_output=True)
    [dump] = _dumps(log)
    assert any(PASSWORD in arg for arg in dump)
