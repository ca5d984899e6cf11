"""The undo of ``promote`` (issue 11.4): its safety backup is an ordinary backup on the development side.

``promote`` replaces the development database after a safety backup encrypted to the development
key. That backup is listed (``list --all``, kind ``safety``), restorable by its id from the
development side with the development identity alone (no raw key there), and ``promote`` prints
the exact command; run as printed, it puts the development database back as it was (every table's
rows and content digest).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.errors import EXIT_OK
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.retention.kinds import protected_target
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect_tests.fixtures.crm import KEY_ENV, SHARED_EMAIL_RULES, SHARED_EMAIL_SQL
from dbprotect_tests.fixtures.fix_pg import content
from dbprotect_tests.test_sanitize import protect  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

DEVELOPMENT_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text);
INSERT INTO customers SELECT i, 'dev' || i || '@example.com', 'Dev ' || i FROM generate_series(1, 40) i;
CREATE TABLE scratch_notes (note_id serial PRIMARY KEY, body text);
INSERT INTO scratch_notes (body) SELECT md5(g::text) FROM generate_series(1, 75) g;
"""


def test_promote_prints_its_undo_and_the_undo_puts_development_back(
        protect, make_db, pg, tmp_path: Path, monkeypatch, other_age_keys,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    source = make_db(SHARED_EMAIL_SQL)
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_EMAIL_RULES)
    protect(source, "crm", rules)
    assert run(["sanitize", "build", "crm"]) == EXIT_OK
    capsys.readouterr()
    # the development side: no production secret at all
    for variable in ("TEST_RAW_IDENTITY", "TEST_CRM_PROD_DSN", KEY_ENV):
        monkeypatch.delenv(variable)
    dev_dsn = make_db(DEVELOPMENT_SQL, prefix="crm_dev")
    name = str(dbname_of(dev_dsn))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "development")
    monkeypatch.setenv("TEST_CRM_DEV_DSN", dev_dsn)
    monkeypatch.setenv("TEST_DEV_IDENTITY", other_age_keys[0])
    monkeypatch.setenv("DBPROTECT_DEPLOYMENT", "development")
    before = content(dev_dsn)
    assert set(before) == {"public.customers", "public.scratch_notes"}

    assert run(["promote", "crm", "--confirm"]) == EXIT_OK
    out = capsys.readouterr().out
    assert content(dev_dsn) != before
    store = FilesystemStorage(tmp_path / "store")
    [safety] = list_backups(store, "crm-development-safety")
    manifest = load_manifest(store, "crm-development-safety", safety.backup_id)
    assert manifest.environment == "development" and (manifest.model_extra or {})["kind"] == "safety"
    host = manifest.source["server"].split(" on ")[1]
    assert protected_target(manifest) == f"development: database {name!r} on {host}"
    [line] = [line for line in out.splitlines() if "to undo this promotion:" in line]
    command = line.split("to undo this promotion:", 1)[1].strip()
    assert command == f"dbprotect restore crm {safety.backup_id} --target development:{name} --confirm {name}"

    assert run(["list", "crm", "--all", "--json"]) == EXIT_OK
    listing = json.loads(capsys.readouterr().out)
    assert (safety.backup_id, "safety", "crm-development-safety") in {
        (row["backup_id"], row["kind"], row["folder"]) for row in listing["backups"]}

    argv = shlex.split(command)
    assert argv[0] == "dbprotect"
    assert run(argv[1:]) == EXIT_OK, capsys.readouterr()
    out = capsys.readouterr().out
    assert content(dev_dsn) == before  # every table's rows and content digest as before the promotion
    # the undo's own safety backup went beside the first one, to the development key, with its undo printed
    assert len(list_backups(store, "crm-development-safety")) == 2
    assert list_backups(store, "crm-safety") == []
    assert "to undo this restore: dbprotect restore crm " in out and "(crm-development-safety)" in out
