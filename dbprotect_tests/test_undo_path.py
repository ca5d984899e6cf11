"""The undo path (issue 11.4): safety and guard backups are ordinary backups, reached by id, with their kind.

An overwrite restore prints the exact command that undoes it; that command, run as printed, puts
the replaced database back as it was (per-table row counts and content digests). ``list --all``
names every backup's kind; ``verify`` and ``restore`` take a safety backup's id.
"""

from __future__ import annotations

import json
import shlex

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.errors import EXIT_OK, IntegrityError
from dbprotect.core.ops.catalog import folder_kind, manifest_kind, undo_command
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.core.store.manifest import Manifest, with_kind
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.fixtures.fix_pg import content

PRODUCTION_SQL = """
CREATE TABLE artist (artist_id int PRIMARY KEY, name text);
INSERT INTO artist SELECT g, 'artist ' || g FROM generate_series(1, 50) g;
CREATE TABLE notes (note_id serial PRIMARY KEY, body text, at timestamptz DEFAULT '2026-01-02 03:04:05+00');
INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 200) g;
"""


def test_undo_command_is_exact_and_quoted() -> None:
    assert undo_command("shop", "20260101T000000Z-abcd", "production", "shop") == \
        "dbprotect restore shop 20260101T000000Z-abcd --target production:shop --confirm shop"
    odd = undo_command("shop", "20260101T000000Z-abcd", "development", "my db; rm -rf /")
    assert shlex.split(odd)[-3:] == ["development:my db; rm -rf /", "--confirm", "my db; rm -rf /"]


def test_kinds_by_folder_and_manifest() -> None:
    assert folder_kind("shop", "shop-safety") == "safety"
    assert folder_kind("shop", "shop-development-safety") == "safety"
    assert folder_kind("shop", "shop.development") == "guard"
    assert folder_kind("shop", "shop-sanitized") == "sanitized"
    assert folder_kind("shop", "shop") is None
    assert folder_kind("shop", "shopx-safety") is None
    with pytest.raises(ValueError):
        with_kind("nightly")


def test_a_manifest_with_an_unknown_kind_is_malformed(backed_up_store) -> None:
    _store, manifest = backed_up_store
    assert manifest_kind(manifest) == "manual"  # taken by the CLI
    forged = {**manifest.model_dump(mode="json"), "kind": "trusted; DROP TABLE x"}
    with pytest.raises(IntegrityError, match="kind"):
        Manifest.from_json(json.dumps(forged).encode(), where="test")
    older = manifest.model_dump(mode="json")
    older.pop("kind")
    assert manifest_kind(Manifest.from_json(json.dumps(older).encode(), where="test")) == "backup"


@pytest.fixture
def backed_up_store(chinook_dsn, pg, write_config, monkeypatch, capsys, tmp_path):
    """Chinook configured as ``chinook`` (scratch server: the test server), one verified backup."""
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    write_config(chinook_dsn, database="chinook", extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    code, backup, _ = run_json(capsys, "backup", "chinook")
    assert code == 0
    capsys.readouterr()
    store = FilesystemStorage(tmp_path / "store")
    return store, load_manifest(store, "chinook", backup["backup_id"])


@pytest.mark.slow
def test_restore_over_production_then_undo_it_by_the_printed_command(backed_up_store, pg, make_db, monkeypatch,
                                                                     capsys) -> None:
    store, manifest = backed_up_store
    dsn = make_db(PRODUCTION_SQL, prefix="undo")
    name = str(dbname_of(dsn))
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "production")
    monkeypatch.setenv("TEST_CHINOOK_PROD_DSN", dsn)
    before = content(dsn)
    assert set(before) == {"public.artist", "public.notes"}

    code = run(["restore", "chinook", manifest.backup_id, "--target", "production", "--confirm", name])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert content(dsn) != before
    [safety] = list_backups(store, "chinook-safety")
    [line] = [line for line in out.splitlines() if "to undo this restore:" in line]
    command = line.split("to undo this restore:", 1)[1].strip()
    assert command == (f"dbprotect restore chinook {safety.backup_id} --target production:{name} "
                       f"--confirm {name}")

    code, listing, _ = run_json(capsys, "list", "chinook", "--all")
    assert code == EXIT_OK
    kinds = {(row["backup_id"], row["kind"], row["folder"]) for row in listing["backups"]}
    assert kinds == {(manifest.backup_id, "manual", "chinook"), (safety.backup_id, "safety", "chinook-safety")}
    code, plain_listing, _ = run_json(capsys, "list", "chinook")
    assert [row["backup_id"] for row in plain_listing["backups"]] == [manifest.backup_id]  # without --all: as before

    assert run(["verify", safety.backup_id]) == EXIT_OK  # by its id alone, no --database
    assert f"backup {safety.backup_id}" in capsys.readouterr().out

    argv = shlex.split(command)
    assert argv[0] == "dbprotect"
    code = run(argv[1:])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert content(dsn) == before  # every table's rows and content digest as before the first restore
    # Undoing took its own safety backup, beside the first one (never chinook-safety-safety), and prints its undo.
    assert len(list_backups(store, "chinook-safety")) == 2
    assert list_backups(store, "chinook-safety-safety") == []
    assert "to undo this restore: dbprotect restore chinook " in out


@pytest.mark.slow
def test_verify_and_restore_refuse_an_id_of_no_kind(backed_up_store, capsys) -> None:
    assert run(["verify", "20200101T000000Z-0000"]) != EXIT_OK
    assert "no backup '20200101T000000Z-0000' of any kind" in capsys.readouterr().err
