"""The one comparison (``dbprotect compare``), against real PostgreSQL: every blind spot must fail it.

A source database holds one of everything the comparison covers (a large object, materialized
views populated and not, a row security policy, a trigger, a domain CHECK, a function, a
comment, an owner role and a grant). It is backed up and restored once by dbprotect's own
restore (owners kept); each test clones the restored database (``CREATE DATABASE ... TEMPLATE``),
changes exactly one property in the clone, and asserts that the comparison names it and fails.
The clean clone, and Chinook, Northwind and the demo schema, compare clean.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyrage
import pytest

from dbprotect.cli.app import run
from dbprotect.core.audit import AuditLog
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.errors import EXIT_OK, IntegrityError
from dbprotect.core.pg.scratch import ScratchServer
from dbprotect.core.restore.oncall import RestoreTarget, restore
from dbprotect.core.restore.staged import verify_restore
from dbprotect.core.restore.warm import compare_warm_copy
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.manifest import Manifest
from dbprotect.core.verify.compare import compare_database, compare_definitions
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.fixtures.fix_pg import psql

pytestmark = pytest.mark.slow

SUFFIX = secrets.token_hex(3)
OWNER, READER = f"cmp_owner_{SUFFIX}", f"cmp_reader_{SUFFIX}"

SOURCE_SQL = f"""
CREATE DOMAIN positive AS integer CONSTRAINT positive_check CHECK (VALUE > 0);
CREATE TABLE accounts (id serial PRIMARY KEY, owner_name text NOT NULL, balance positive, note text);
INSERT INTO accounts (owner_name, balance) SELECT 'owner ' || g, g * 3 FROM generate_series(1, 200) g;
CREATE TABLE documents (id int PRIMARY KEY, body oid);
INSERT INTO documents SELECT g, lo_from_bytea(0, convert_to(repeat('page ' || g, 50), 'UTF8'))
  FROM generate_series(1, 3) g;
CREATE MATERIALIZED VIEW rich AS SELECT id, balance FROM accounts WHERE balance > 300;
CREATE MATERIALIZED VIEW later AS SELECT id FROM accounts WITH NO DATA;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON accounts USING (owner_name = current_user);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.note := 'touched'; RETURN NEW; END$$;
CREATE TRIGGER accounts_touch BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION touch();
CREATE FUNCTION double_it(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
CREATE INDEX accounts_owner ON accounts (owner_name);
COMMENT ON TABLE accounts IS 'customer accounts';
ALTER TABLE accounts OWNER TO {OWNER};
GRANT SELECT ON accounts TO {READER};
"""

#: Each blind spot: the one change, and words the comparison must print for it.
BLIND_SPOTS: dict[str, tuple[str, str]] = {
    "large object content": (
        "SELECT lo_put(body, 0, convert_to('PAGE', 'UTF8')) FROM documents WHERE id = 2",
        "large objects: content digest"),
    "materialized view content": (
        "UPDATE accounts SET balance = 9999 WHERE id = 150; REFRESH MATERIALIZED VIEW rich; "
        "UPDATE accounts SET balance = 450 WHERE id = 150",
        "materialized view public.rich: content checksum"),
    "materialized view emptied": (
        "REFRESH MATERIALIZED VIEW rich WITH NO DATA",
        "materialized view public.rich: populated in the backup, not populated here"),
    "materialized view populated": (
        "REFRESH MATERIALIZED VIEW later",
        "materialized view public.later: not populated in the backup, populated here"),
    "policy expression": (
        "ALTER POLICY own_rows ON accounts USING (true)",
        "POLICY public.accounts own_rows: definition differs"),
    "policy roles": (
        f"ALTER POLICY own_rows ON accounts TO {READER}",
        "POLICY public.accounts own_rows: definition differs"),
    "trigger disabled": (
        "ALTER TABLE accounts DISABLE TRIGGER accounts_touch",
        "TRIGGER public.accounts accounts_touch: definition differs"),
    "table unlogged": (
        "ALTER TABLE documents SET UNLOGGED",
        "TABLE public.documents: definition differs"),
    "domain check": (
        "ALTER DOMAIN positive DROP CONSTRAINT positive_check; "
        "ALTER DOMAIN positive ADD CONSTRAINT positive_check CHECK (VALUE > -1)",
        "DOMAIN public.positive: definition differs"),
    "owner": (
        "ALTER TABLE documents OWNER TO " + OWNER,
        f"TABLE public.documents: owned by '{OWNER}' here, by 'postgres' in the backup"),
    "acl": (
        f"GRANT UPDATE ON accounts TO {READER}",
        "ACL on TABLE public.accounts: definition differs"),
    "function body": (
        "CREATE OR REPLACE FUNCTION double_it(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 3'",
        "FUNCTION public.double_it(integer): definition differs"),
    "comment": (
        "COMMENT ON TABLE accounts IS 'someone else''s accounts'",
        "COMMENT on TABLE public.accounts: definition differs"),
    "index dropped": (
        "DROP INDEX accounts_owner",
        "INDEX public.accounts_owner: in the backup, missing here"),
}


def _admin(pg: Any, statement: str) -> None:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(statement)


def _backup_and_restore(pg: Any, store: FilesystemStorage, age_keys: tuple[str, str], source: str, database: str,
                        work: Path) -> tuple[Manifest, str]:
    """A dbprotect backup of ``source``, restored by dbprotect's own restore into a new database."""
    manifest = run_backup(database=database, dsn=source, storage=store, recipients=[age_keys[1]]).manifest
    name = f"{database}_restored_{secrets.token_hex(3)}"
    restore(store, manifest, pyrage.x25519.Identity.from_str(age_keys[0]), RestoreTarget(pg.dsn(name), "production"),
            recipients=[age_keys[1]], audit=AuditLog(store, actor="test"), work_dir=work)
    return manifest, name


@pytest.fixture(scope="module")
def restored(pg: Any, tmp_path_factory: pytest.TempPathFactory, age_keys: tuple[str, str]) -> Iterator[dict[str, Any]]:
    """The source backed up and restored once; ``clone()`` gives a fresh copy of the restored database."""
    for role in (OWNER, READER):
        _admin(pg, f"CREATE ROLE {role}")
    source = pg.create_database("cmp_source")
    psql(pg.dsn(source), SOURCE_SQL)
    base = tmp_path_factory.mktemp("compare")
    store = FilesystemStorage(base / "store")
    manifest, name = _backup_and_restore(pg, store, age_keys, pg.dsn(source), "shop", base)
    made: list[str] = [source, name]

    def clone() -> str:
        copy = f"cmp_clone_{secrets.token_hex(4)}"
        _admin(pg, f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
        made.append(copy)
        return pg.dsn(copy)

    yield {"manifest": manifest, "store": store, "source": source, "clone": clone, "base": base}
    for database in made:
        pg.drop_database(database)
    for role in (OWNER, READER):
        _admin(pg, f"DROP ROLE IF EXISTS {role}")


def test_the_restored_database_compares_clean_with_owners_and_privileges(restored: dict[str, Any]) -> None:
    comparison = compare_database(restored["clone"](), restored["manifest"])
    assert comparison.differences == []
    assert comparison.unchecked == []
    assert comparison.objects > 10


def test_the_backup_captured_what_the_comparison_needs(restored: dict[str, Any]) -> None:
    catalog = restored["manifest"].catalog
    assert catalog is not None
    assert catalog.owners["TABLE public.accounts"] == OWNER
    assert catalog.materialized_views["public.rich"].populated and catalog.materialized_views["public.rich"].rows
    assert not catalog.materialized_views["public.later"].populated
    assert catalog.large_objects_digest is not None
    assert "POLICY public.accounts own_rows" in catalog.definitions


@pytest.mark.parametrize("spot", sorted(BLIND_SPOTS))
def test_each_blind_spot_changed_alone_is_named_and_fails(restored: dict[str, Any], spot: str) -> None:
    change, named = BLIND_SPOTS[spot]
    target = restored["clone"]()
    psql(target, change)
    comparison = compare_database(target, restored["manifest"])
    assert not comparison.ok
    assert any(named in line for line in comparison.differences), comparison.differences
    # Only that property: no table's rows or checksum, nor anything unrelated, is reported.
    assert all(not line.startswith("public.") for line in comparison.differences), comparison.differences


def test_without_owners_an_owner_or_grant_change_is_not_reported_but_the_rest_is(restored: dict[str, Any]) -> None:
    """A --no-owner --no-acl restore owns everything as the restoring role: no noise, nothing else hidden."""
    target = restored["clone"]()
    psql(target, f"ALTER TABLE accounts OWNER TO postgres; REVOKE ALL ON accounts FROM {READER}; "
                 "ALTER POLICY own_rows ON accounts USING (true)")
    comparison = compare_database(target, restored["manifest"], owners=False)
    assert comparison.differences == ["POLICY public.accounts own_rows: definition differs from the backup's"]


def test_a_manifest_from_before_the_catalog_compares_what_it_has_and_says_what_it_cannot(
        restored: dict[str, Any]) -> None:
    old = restored["manifest"].model_copy(update={"catalog": None})
    raw = old.model_dump(mode="json")
    del raw["catalog"]
    assert Manifest.from_json(json.dumps(raw).encode(), where="old").catalog is None
    target = restored["clone"]()
    psql(target, "ALTER POLICY own_rows ON accounts USING (true)")
    comparison = compare_database(target, old)
    assert comparison.ok  # what an old backup cannot see ...
    assert any("not captured by backup" in line for line in comparison.unchecked)  # ... it says
    psql(target, "UPDATE accounts SET note = 'changed' WHERE id = 1")
    assert any(line.startswith("public.accounts:") for line in compare_database(target, old).differences)


@pytest.mark.parametrize("field, value", [
    ("definitions", {"TABLE public.t": "not-a-digest"}),
    ("owners", {"TABLE public.t": ""}),
    ("large_objects_digest", "zz"),
    ("materialized_views", {"public.v": {"namespace": "public", "name": "v", "populated": True}}),
    ("extra", 1),
])
def test_a_tampered_catalog_record_makes_the_manifest_malformed(restored: dict[str, Any], field: str,
                                                                value: object) -> None:
    raw = restored["manifest"].model_dump(mode="json")
    raw["catalog"][field] = value
    with pytest.raises(IntegrityError, match="malformed"):
        Manifest.from_json(json.dumps(raw).encode(), where="tampered")


def test_cli_compare_names_each_difference_and_exits_with_the_integrity_status(
        restored: dict[str, Any], pg: Any, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    target = restored["clone"]()
    name = target.split("@/", 1)[1].split("?", 1)[0]
    write_config(pg.dsn(restored["source"]), storage={"local": {"type": "filesystem",
                                                                 "path": str(restored["base"] / "store")}})
    backup_id = restored["manifest"].backup_id
    code, document, _ = run_json(capsys, "compare", backup_id, "shop", "--target", f"production:{name}")
    assert code == EXIT_OK and document["ok"] and document["differences"] == []

    psql(target, "ALTER TABLE accounts DISABLE TRIGGER accounts_touch; COMMENT ON TABLE accounts IS 'x'")
    code, document, err = run_json(capsys, "compare", "latest", "shop", "--target", f"production:{name}")
    assert code == IntegrityError.exit_code
    assert document["error"]["exit_code"] == IntegrityError.exit_code
    assert sorted(document["differences"]) == [
        "COMMENT on TABLE public.accounts: definition differs from the backup's",
        "TRIGGER public.accounts accounts_touch: definition differs from the backup's"]
    assert len(err.strip().splitlines()) == 2  # the one error line and its hint

    code = run(["compare", backup_id, "shop", "--target", f"production:{name}"])
    out, err = capsys.readouterr()
    assert code == IntegrityError.exit_code
    assert "TRIGGER public.accounts accounts_touch: definition differs" in out
    assert err.startswith("error[") and "2 differences" in err


@pytest.mark.parametrize("fixture", ["chinook_dsn", "northwind_dsn", "demo"])
def test_real_schemas_restore_and_compare_clean(fixture: str, request: pytest.FixtureRequest, pg: Any,
                                                make_db: Callable[..., str], tmp_path: Path,
                                                age_keys: tuple[str, str]) -> None:
    if fixture == "demo":
        from dbprotect.demo import load_demo_data

        source = make_db(prefix="demo")
        load_demo_data(source, 3_000)
    else:
        source = request.getfixturevalue(fixture)
    store = FilesystemStorage(tmp_path / "store")
    manifest, name = _backup_and_restore(pg, store, age_keys, source, "shop", tmp_path)
    try:
        comparison = compare_database(pg.dsn(name), manifest)
        assert comparison.differences == [] and comparison.unchecked == []
        assert manifest.catalog is not None and len(manifest.catalog.definitions) == comparison.objects
    finally:
        pg.drop_database(name)


def test_rung_3_and_drills_use_the_full_comparison(restored: dict[str, Any], pg: Any,
                                                    age_keys: tuple[str, str]) -> None:
    """A backup whose recorded policy is not what the archive restores fails rung 3, naming the policy.

    The manifest is altered in memory (a stored one is write-once): the archive restores the real
    policy, the record says otherwise, so the restored database differs from the record.
    """
    manifest = restored["manifest"]
    catalog = manifest.catalog.model_copy(deep=True)
    catalog.definitions["POLICY public.accounts own_rows"] = "0" * 16
    forged = manifest.model_copy(update={"catalog": catalog})
    result = verify_restore(restored["store"], forged, pyrage.x25519.Identity.from_str(age_keys[0]),
                            ScratchServer(pg.admin_dsn), record=False, work_dir=restored["base"])
    assert not result.ok
    assert result.problems == ["POLICY public.accounts own_rows: definition differs from the backup's"]
    # Rung 3 restores without owners and privileges: neither is reported there.
    assert verify_restore(restored["store"], manifest, pyrage.x25519.Identity.from_str(age_keys[0]),
                          ScratchServer(pg.admin_dsn), record=False, work_dir=restored["base"]).ok


def test_names_are_printed_without_control_characters(restored: dict[str, Any]) -> None:
    catalog = restored["manifest"].catalog.model_copy(deep=True)
    catalog.definitions["TABLE public.\x1b[2Jgone\nline"] = "0" * 16
    problems = compare_definitions(catalog, dict(restored["manifest"].catalog.definitions), {}, compare_owners=True)
    assert problems == ["TABLE public.\\x1b[2Jgone\\nline: in the backup, missing here"]


def test_warm_copy_check_is_the_full_comparison(restored: dict[str, Any]) -> None:
    target = restored["clone"]()
    assert compare_warm_copy(target, restored["manifest"]) == []
    psql(target, "ALTER TABLE accounts DISABLE TRIGGER accounts_touch")
    assert compare_warm_copy(target, restored["manifest"]) == [
        "TRIGGER public.accounts accounts_touch: definition differs from the backup's"]


def test_definitions_of_another_server_major_are_said_not_compared(restored: dict[str, Any]) -> None:
    """Each server renders definitions itself: across majors they are not compared, and the result says so."""
    manifest = restored["manifest"]
    other = manifest.model_copy(update={"source": {**manifest.source, "server_major": 15}})
    target = restored["clone"]()
    psql(target, "ALTER TABLE accounts DISABLE TRIGGER accounts_touch")
    comparison = compare_database(target, other)
    assert comparison.ok
    assert any("PostgreSQL 15" in line and "not compared" in line for line in comparison.unchecked)
