"""Sanitized development copies (issue 5) end to end, on real PostgreSQL: the demo fintech schema
(users full of personal data), Chinook and Northwind with their rule files in ``rules/``.

Each build restores the newest verified backup into a scratch database, streams every table through
the transformers into a second one, checks it and stores it encrypted to the development key; the
tests decrypt that artifact with the development identity and compare it with the source.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import CredentialIsolationError, NotFoundError, RefusedError
from dbprotect.core.ops import backup_database, build_sanitized_copy, promote_dev_copy, verify_database_backup
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import set_marker
from dbprotect.core.pg.pg_restore import run_pg_restore
from dbprotect.core.restore.decrypt import decrypted_archive
from dbprotect.core.sanitize.build import sanitized_name
from dbprotect.core.sanitize.coverage import CoverageError
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.demo import PG_DATABASE, load_demo_data
from dbprotect_tests.fixtures.crm import KEY_ENV, SHARED_EMAIL_RULES, SHARED_EMAIL_SQL
from dbprotect_tests.fixtures.fix_pg import table_counts

# Slow, so not in the fast lane: each test builds, checks and restores a sanitized copy (2-7 s).
pytestmark = pytest.mark.slow

RULES = Path(__file__).parent / "rules"


@pytest.fixture(scope="module")
def demo_dsn(pg) -> str:  # type: ignore[no-untyped-def]
    """The demo fintech database (its loader names the database fintech_prod), 20,000 rows."""
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    dsn = pg.dsn(PG_DATABASE)
    load_demo_data(dsn, 20_000)
    return dsn


@pytest.fixture
def protect(write_config, pg, monkeypatch, tmp_path: Path, other_age_keys) -> Callable[..., Any]:  # type: ignore[no-untyped-def]
    """Factory: a production deployment with a sanitize section for ``database``, one verified backup."""

    def factory(dsn: str, database: str, rules: str | Path, *, backup: bool = True) -> Any:
        monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
        monkeypatch.setenv(KEY_ENV, "k" * 8 + secrets.token_hex(16))
        path = write_config(dsn, database=database, deployment="production",
                            extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
        doc = yaml.safe_load(path.read_text())
        doc["databases"][database]["sanitize"] = {"rules": str(rules), "hmac_key_env": KEY_ENV}
        doc["keys"]["development"] = {"recipients": [other_age_keys[1]], "identity_env": "TEST_DEV_IDENTITY"}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        config = load_config(path)
        if backup:
            backup_database(config, database)
            verify_database_backup(config, database)
        return config

    return factory


def restored_artifact(config, database: str, make_db, identity_text: str) -> str:  # type: ignore[no-untyped-def]
    """Decrypt the newest sanitized artifact with the development identity into a new database."""
    store = FilesystemStorage(Path(config.base_dir()) / "store")
    [entry, *_] = list_backups(store, sanitized_name(database))
    manifest = load_manifest(store, entry.database, entry.backup_id)
    dsn = make_db(prefix="sanitized")
    with decrypted_archive(store, manifest, parse_identity(identity_text, source="test")) as archive:
        run_pg_restore(archive, dsn, server_major=int(manifest.source["server_major"]))
    return dsn


def rows_by(dsn: str, table: str, key: str) -> dict[Any, dict[str, Any]]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return {row[key]: row for row in cur.execute(f"SELECT * FROM {table}")}


def assert_masked_differ(source: str, copy: str, table: str, key: str, columns: list[str]) -> int:
    before, after = rows_by(source, table, key), rows_by(copy, table, key)
    assert before.keys() == after.keys()
    compared = 0
    for pk, row in before.items():
        for column in columns:
            if row[column] is not None:
                assert after[pk][column] != row[column], f"{table}.{column} unchanged"
                compared += 1
    return compared


def test_demo_copy_masks_every_value_and_keeps_constraints(protect, demo_dsn: str, make_db, other_age_keys) -> None:
    config = protect(demo_dsn, "fintech", RULES / "demo.yaml")
    result = build_sanitized_copy(config, "fintech")
    assert result.ok, [c.detail for c in result.checks if not c.ok]
    assert result.artifact_id and result.rows > 19_000
    copy = restored_artifact(config, "fintech", make_db, other_age_keys[0])

    masked = ["email", "phone_number", "name", "first_name", "last_name", "date_of_birth", "last_login_ip",
              "created_ip", "last_login_location", "referral_code", "cognito_username", "bio", "login_count"]
    assert assert_masked_differ(demo_dsn, copy, "users", "id", masked) > 10_000
    users = rows_by(copy, "users", "id")
    source_users = rows_by(demo_dsn, "users", "id")
    emails = [u["email"] for u in users.values() if u["email"]]
    assert len(emails) == len(set(emails)) and all(e.endswith("@example.com") for e in emails)
    for user in users.values():  # E.164 kept valid, country prefix kept
        phone = user["phone_number"]
        if phone:
            assert phone.startswith("+") and phone[1:].isdigit() and 8 <= len(phone) <= 16
            assert phone[:3] == source_users[user["id"]]["phone_number"][:3]
        if user["last_login_ip"] is not None:
            assert str(user["last_login_ip"]).startswith(("24", "25", "2001:db8:"))
        born, was = user["date_of_birth"], source_users[user["id"]]["date_of_birth"]
        assert 0 < abs((born - was).days) <= 180
    # constraints were built after the load and hold: count them on both sides
    constraint_sql = ("SELECT count(*) FROM pg_constraint WHERE contype IN ('p','u','f') "
                      "AND connamespace = 'public'::regnamespace")
    with psycopg.connect(demo_dsn) as a, psycopg.connect(copy) as b:
        assert a.execute(constraint_sql).fetchone() == b.execute(constraint_sql).fetchone()
        assert b.execute("SELECT count(*) FROM accounts a LEFT JOIN users u ON u.id = a.customer_id "
                         "WHERE u.id IS NULL").fetchone() == (0,)
    # lineage: source backup, rule hash, key id; never the key
    store = FilesystemStorage(Path(config.base_dir()) / "store")
    manifest = load_manifest(store, "fintech-sanitized", result.artifact_id)
    lineage = manifest.model_extra["sanitized"]
    assert lineage["source_backup_id"] == result.source_backup_id
    assert lineage["rules_sha256"] == result.rules_sha256 and len(lineage["masking_key_id"]) == 12
    assert all(check["ok"] for check in lineage["checks"].values())
    import os
    assert os.environ[KEY_ENV] not in manifest.to_json().decode()
    assert manifest.encryption["recipients"][0]["recipient"] == other_age_keys[1]


def test_same_email_masks_the_same_in_every_table(protect, make_db, other_age_keys, tmp_path: Path) -> None:
    source = make_db(SHARED_EMAIL_SQL)
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_EMAIL_RULES)
    config = protect(source, "crm", rules)
    result = build_sanitized_copy(config, "crm")
    assert result.ok, [c.detail for c in result.checks if not c.ok]
    copy = restored_artifact(config, "crm", make_db, other_age_keys[0])
    with psycopg.connect(copy) as conn:
        # the foreign key on the masked column holds, and every newsletter row joins its customer
        assert conn.execute("SELECT count(*) FROM newsletter n JOIN customers c USING (email)").fetchone() == (800,)
        assert conn.execute("SELECT count(*) FROM customers WHERE email LIKE '%corp.example.org'").fetchone() == (0,)
    with psycopg.connect(source) as a, psycopg.connect(copy) as b:
        pairs_before = dict(a.execute("SELECT n.id, c.id FROM newsletter n JOIN customers c USING (email)").fetchall())
        pairs_after = dict(b.execute("SELECT n.id, c.id FROM newsletter n JOIN customers c USING (email)").fetchall())
    assert pairs_before == pairs_after


def test_unclassified_column_stops_the_run(protect, make_db, tmp_path: Path) -> None:
    source = make_db(SHARED_EMAIL_SQL + "ALTER TABLE customers ADD COLUMN passport_no text, ADD COLUMN dob date;")
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_EMAIL_RULES)
    config = protect(source, "crm", rules)
    with pytest.raises(CoverageError) as caught:
        build_sanitized_copy(config, "crm")
    assert "public.customers.dob" in str(caught.value) and "public.customers.passport_no" in str(caught.value)
    assert "2 column(s) have no masking rule" in str(caught.value)
    assert not list_backups(FilesystemStorage(tmp_path / "store"), "crm-sanitized")


def test_injected_leak_fails_no_pii_leaked_and_blocks_promotion(protect, make_db, tmp_path: Path,
                                                                monkeypatch) -> None:
    source = make_db(SHARED_EMAIL_SQL)
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_EMAIL_RULES.replace("newsletter: {id: keep, email: email",
                                                "newsletter: {id: keep, email: keep"))
    config = protect(source, "crm", rules)
    with pytest.raises(Exception, match=r"violates foreign key constraint"):
        build_sanitized_copy(config, "crm")  # kept e-mails no longer match the masked customers: FK fails
    # without the foreign key, the load succeeds and the leak check is what stops it
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE newsletter DROP CONSTRAINT newsletter_email_fkey")
    backup_database(config, "crm")
    verify_database_backup(config, "crm")
    result = build_sanitized_copy(config, "crm")
    leak = {c.name: c for c in result.checks}["no_pii_leaked"]
    assert not result.ok and not leak.ok and result.artifact_id is None
    assert "public.newsletter.email (keep): 800 value(s) hold an e-mail address" in leak.detail
    assert not list_backups(FilesystemStorage(tmp_path / "store"), "crm-sanitized")
    monkeypatch.setenv("TEST_CRM_DEV_DSN", make_db())
    with pytest.raises(NotFoundError, match="no sanitized copy"):
        promote_dev_copy(config, "crm", confirmed=True)


def test_development_deployment_refuses_production_credentials(protect, make_db, tmp_path: Path, monkeypatch,
                                                               other_age_keys) -> None:
    source = make_db(SHARED_EMAIL_SQL)
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_EMAIL_RULES)
    config = protect(source, "crm", rules, backup=False)
    dev = config.model_copy(update={"deployment": "development"})
    clean = {"TEST_CRM_DEV_DSN": "postgresql://dev@/crm", "TEST_DEV_IDENTITY": other_age_keys[0]}
    check_credential_isolation(dev, clean)
    for variable, value in (("TEST_RAW_IDENTITY", "AGE-SECRET-KEY-1X"), ("TEST_CRM_PROD_DSN", "postgresql://p@/x"),
                            (KEY_ENV, "masking-key-value-0123456789")):
        with pytest.raises(CredentialIsolationError, match=variable) as caught:
            check_credential_isolation(dev, {**clean, variable: value})
        assert value not in str(caught.value)
    prod = config.model_copy(update={"deployment": "production"})
    check_credential_isolation(prod, {"TEST_CRM_PROD_DSN": "postgresql://p@/x", KEY_ENV: "k" * 32})
    with pytest.raises(CredentialIsolationError, match="TEST_DEV_IDENTITY"):
        check_credential_isolation(prod, {"TEST_CRM_PROD_DSN": "postgresql://p@/x", "TEST_DEV_IDENTITY": "x"})


def test_promotion_restores_the_copy_into_a_marked_development_database(protect, make_db, pg, tmp_path: Path,
                                                                      monkeypatch, other_age_keys) -> None:
    source = make_db(SHARED_EMAIL_SQL)
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_EMAIL_RULES)
    config = protect(source, "crm", rules)
    result = build_sanitized_copy(config, "crm")
    assert result.ok
    # the development side: its own deployment, dev DSN and dev key only
    for variable in ("TEST_RAW_IDENTITY", "TEST_CRM_PROD_DSN", KEY_ENV):
        monkeypatch.delenv(variable)
    dev_dsn = make_db("CREATE TABLE stale (x int)", prefix="crm_dev")
    monkeypatch.setenv("TEST_CRM_DEV_DSN", dev_dsn)
    monkeypatch.setenv("TEST_DEV_IDENTITY", other_age_keys[0])
    dev = config.model_copy(update={"deployment": "development"})
    check_credential_isolation(dev)
    with pytest.raises(RefusedError, match="needs confirmation"):
        promote_dev_copy(dev, "crm", confirmed=False)
    with pytest.raises(RefusedError, match="no environment marker"):
        promote_dev_copy(dev, "crm", confirmed=True)
    name = dbname_of(dev_dsn)
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, name, "development")
    promote_dev_copy(dev, "crm", confirmed=True)
    with psycopg.connect(dev_dsn) as conn:
        assert conn.execute("SELECT to_regclass('stale')").fetchone() == (None,)
        assert conn.execute("SELECT count(*), count(*) FILTER (WHERE email LIKE '%@example.com') "
                            "FROM customers").fetchone() == (500, 500)


@pytest.mark.parametrize(("fixture", "database", "checks"), [
    ("chinook_dsn", "chinook", {"customer": ("customer_id", ["first_name", "last_name", "email", "phone", "address",
                                                             "city", "postal_code", "company", "fax"]),
                                "employee": ("employee_id", ["first_name", "last_name", "email", "phone",
                                                             "birth_date", "address"])}),
    ("northwind_dsn", "northwind", {"customers": ("customer_id", ["contact_name", "phone", "address", "city",
                                                                  "company_name", "fax", "postal_code"]),
                                    "employees": ("employee_id", ["first_name", "last_name", "birth_date",
                                                                  "home_phone", "notes", "address"]),
                                    "orders": ("order_id", ["ship_name", "ship_address", "ship_city"])}),
])
def test_fixture_databases_with_their_rule_files(request, protect, make_db, other_age_keys, fixture: str,
                                                database: str, checks: dict[str, tuple[str, list[str]]]) -> None:
    source = request.getfixturevalue(fixture)
    config = protect(source, database, RULES / f"{database}.yaml")
    result = build_sanitized_copy(config, database)
    assert result.ok, [c.detail for c in result.checks if not c.ok]
    assert not result.unreviewed
    copy = restored_artifact(config, database, make_db, other_age_keys[0])
    for table, (key, columns) in checks.items():
        assert assert_masked_differ(source, copy, table, key, columns) > 0
    assert table_counts(source) == table_counts(copy)
    if database == "chinook":  # the same e-mail masks the same wherever it appears
        with psycopg.connect(copy) as conn:
            assert conn.execute("SELECT count(*) FROM customer WHERE email NOT LIKE '%@example.com'").fetchone() == (0,)


def test_transformers_are_keyed_deterministic_and_shaped() -> None:
    from dbprotect.core.sanitize.rules import ColumnRule
    from dbprotect.core.sanitize.transformers import Masker

    a, b = Masker(b"a" * 32), Masker(b"b" * 32)
    email = ColumnRule("email")
    assert a.transformer(email).fn(b"jane@corp.org", 0) == a.transformer(email).fn(b"jane@corp.org", 0)
    assert a.transformer(email).fn(b"jane@corp.org", 0) != b.transformer(email).fn(b"jane@corp.org", 0)
    assert a.transformer(email).fn(b"jane@corp.org", 0) != a.transformer(email).fn(b"jane@corp.org", 1)
    phone = a.transformer(ColumnRule("phone")).fn(b"+4915112345678", 0)
    assert phone[:3] == b"+49" and phone[1:].isdigit() and len(phone) == 14 and phone != b"+4915112345678"
    assert a.transformer(ColumnRule("phone")).fn(b"(030) 123-4567", 0)[:3] == b"(03"
    ip = a.transformer(ColumnRule("ip")).fn(b"10.1.2.3/24", 0)
    assert int(ip.split(b".")[0]) >= 240 and ip.endswith(b"/24")
    assert a.transformer(ColumnRule("ip")).fn(b"2a00::1", 0).startswith(b"2001:db8:")
    shifted = a.transformer(ColumnRule("date", params=(("max_days", 5),))).fn(b"2000-02-28 10:00:00+00", 0)
    assert shifted.endswith(b" 10:00:00+00") and shifted[:10] != b"2000-02-28"
    assert a.transformer(ColumnRule("number", params=(("pct", 10),))).fn(b"0", 0) in (b"1", b"-1")
    assert a.transformer(ColumnRule("number", params=(("pct", 10),))).fn(b"100.00", 0) != b"100.00"
    uuid = a.transformer(ColumnRule("hash", params=(("format", "uuid"),))).fn(b"x", 0).decode()
    assert len(uuid) == 36 and uuid[14] == "4"
    doc = a.transformer(ColumnRule.parse({"transformer": "json", "paths": {"contact.email": "email", "tags.*": "null"}},
                                         where="t")).fn(b'{"contact": {"email": "x@y.org"}, "tags": ["a"], "n": 1}', 0)
    assert b"x@y.org" not in doc and b'"tags": [null]' in doc and b'"n": 1' in doc
    assert a.key_id() != b.key_id() and len(a.key_id()) == 12


def test_the_masking_hmac_is_hmac_sha256_and_outputs_do_not_move() -> None:
    """The per-value HMAC takes the stdlib's keyed states (cheaper copies than OpenSSL's context): it must be
    HMAC-SHA256 exactly, for any key length and value, and the masked outputs must stay what they were
    (pinned values: the same key masks the same in every version, so copies built before still join)."""
    import hashlib
    import hmac

    from dbprotect.core.sanitize.rules import ColumnRule
    from dbprotect.core.sanitize.transformers import Masker

    for key in (b"k" * 16, secrets.token_bytes(32), secrets.token_bytes(64), secrets.token_bytes(100)):
        masker = Masker(key)
        for value in (b"", b"jane@corp.org", secrets.token_bytes(200), b"\0\xff" * 40):
            assert masker.digest(b"email", value) == hmac.digest(key, b"email\0" + value, hashlib.sha256)
    masker = Masker(b"pinned masking key, 32 bytes...!")
    pinned_email = masker.transformer(ColumnRule("email")).fn(b"jane@corp.org", 0)
    assert pinned_email == b"u21b91e20c76064fb597e@example.com"
    assert masker.transformer(ColumnRule("ip")).fn(b"10.1.2.3/24", 0) == b"245.68.229.21/24"
    assert masker.transformer(ColumnRule("ip")).fn(b"10.1.2.4", 0) == b"243.253.23.210"
    assert masker.transformer(ColumnRule("phone")).fn(b"+4915112345678", 0) == b"+4986465053021"


@pytest.mark.parametrize("python_hmac", ["without keyed states", "with wrong keyed states"])
def test_the_masking_hmac_falls_back_to_openssl_when_the_stdlib_states_are_missing_or_wrong(monkeypatch,
                                                                                           python_hmac: str) -> None:
    """A Python whose hmac module keeps no ``_inner``/``_outer`` states, or keeps others, must still mask with
    HMAC-SHA256: the self-test against ``hmac.digest`` sends it to OpenSSL's context (the same outputs)."""
    import hashlib
    import hmac

    from dbprotect.core.sanitize import transformers
    from dbprotect.core.sanitize.rules import ColumnRule
    from dbprotect.core.sanitize.transformers import Masker

    real = hmac.HMAC

    class Changed(real):  # type: ignore[misc, valid-type]
        """The stdlib's HMAC; over a hash constructor it cannot hand to OpenSSL, without or with other states."""

        def __init__(self, key: bytes, msg: bytes | None = None, digestmod: Any = "") -> None:
            super().__init__(key, msg, digestmod)
            if callable(digestmod) and digestmod is not hashlib.sha256:
                if python_hmac == "without keyed states":
                    del self._inner, self._outer
                else:
                    self._inner, self._outer = hashlib.sha256(b"x"), hashlib.sha256(b"y")

    monkeypatch.setattr(transformers.hmac, "HMAC", Changed)
    key = b"pinned masking key, 32 bytes...!"
    masker = Masker(key)
    assert masker.digest(b"email", b"jane@corp.org") == hmac.digest(key, b"email\0jane@corp.org", hashlib.sha256)
    assert masker.transformer(ColumnRule("email")).fn(b"jane@corp.org", 0) == b"u21b91e20c76064fb597e@example.com"


def test_starter_rules_mark_every_guess_for_review(demo_dsn: str) -> None:
    from dbprotect.core.sanitize.starter import starter_rules

    with psycopg.connect(demo_dsn, autocommit=True) as conn:
        rules = starter_rules(conn)
    users = rules.tables["public.users"]
    assert users["email"].transformer == "email" and users["phone_number"].transformer == "phone"
    assert users["last_login_ip"].transformer == "ip" and users["date_of_birth"].transformer == "date"
    assert users["first_name"].options() == {"part": "first"} and users["id"].transformer == "keep"
    assert all(rule.review for table in rules.tables.values() for rule in table.values())
    assert "review: true" in rules.to_yaml()


def test_cli_check_build_and_promote(protect, make_db, pg, tmp_path: Path, monkeypatch, other_age_keys,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dbprotect.cli.app import run

    source = make_db(SHARED_EMAIL_SQL)
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHARED_EMAIL_RULES)
    protect(source, "crm", rules)
    assert run(["sanitize", "check", "crm"]) == 0
    capsys.readouterr()
    assert run(["sanitize", "build", "crm", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["ok"] and built["artifact_id"] and {c["name"] for c in built["checks"]} == {
        "no_pii_leaked", "constraints_hold", "row_counts_match"}
    rules.write_text(SHARED_EMAIL_RULES.replace(", note: keep}", "}"))
    assert run(["sanitize", "check", "crm"]) == 2
    assert "public.newsletter.note" in capsys.readouterr().err
    # development side: no production secret, a marked dev database, --confirm required
    for variable in ("TEST_RAW_IDENTITY", "TEST_CRM_PROD_DSN", KEY_ENV):
        monkeypatch.delenv(variable)
    dev_dsn = make_db(prefix="crm_dev")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        set_marker(admin, dbname_of(dev_dsn), "development")
    monkeypatch.setenv("TEST_CRM_DEV_DSN", dev_dsn)
    monkeypatch.setenv("TEST_DEV_IDENTITY", other_age_keys[0])
    monkeypatch.setenv("DBPROTECT_DEPLOYMENT", "development")
    assert run(["promote", "crm"]) == 9
    assert "needs confirmation" in capsys.readouterr().err
    assert run(["promote", "crm", "--confirm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["development_database"] == dbname_of(dev_dsn)
    monkeypatch.setenv("TEST_RAW_IDENTITY", "AGE-SECRET-KEY-1QQQ")
    assert run(["promote", "crm", "--confirm"]) == 3
    assert "TEST_RAW_IDENTITY" in capsys.readouterr().err


def test_subset_keeps_referential_integrity(protect, demo_dsn: str, make_db, other_age_keys) -> None:
    """10 % of the users: their accounts, those accounts' transactions, every referenced row (tenants, referrers)."""
    config = protect(demo_dsn, "fintech", RULES / "demo.yaml")
    path = Path(config.source)
    doc = yaml.safe_load(path.read_text())
    doc["databases"]["fintech"]["sanitize"]["subset"] = {"public.users": {"percent": 10}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = build_sanitized_copy(load_config(path), "fintech")
    assert result.ok, [c.detail for c in result.checks if not c.ok]
    copy = restored_artifact(config, "fintech", make_db, other_age_keys[0])
    before, after = table_counts(demo_dsn), table_counts(copy)
    assert 0.05 * before["public.users"] < after["public.users"] < 0.3 * before["public.users"]
    assert 0 < after["public.transactions"] < before["public.transactions"]
    with psycopg.connect(copy) as conn:  # foreign keys were created after the load, so they hold; spot-check
        assert conn.execute("SELECT count(*) FROM accounts a WHERE NOT EXISTS "
                            "(SELECT 1 FROM users u WHERE u.id = a.customer_id)").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM users u WHERE referred_by IS NOT NULL AND NOT EXISTS "
                            "(SELECT 1 FROM users r WHERE r.id = u.referred_by)").fetchone() == (0,)
    assert "subset" in {c.name: c for c in result.checks}["row_counts_match"].detail
