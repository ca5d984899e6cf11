"""Issue 11's undo path, finished: compliance judges each kind by its own rule, and one key choice
(:func:`dbprotect.core.ops.backup_keys`) serves every command that takes a backup id.

Compliance: a folder that holds what the policy promises only when its guard backups are counted as
scheduled ones is out of compliance (the counter-test: the same folder without kinds passes).
Keys: a backup's folder decides its key, never a caller's raw identity: a promotion's safety backup
and a sanitized copy are read with the development identity, and a deployment that may not hold it
refuses in one line (DBP934).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyrage
import pytest
import yaml

from dbprotect.cli.app import run
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.load import load_config
from dbprotect.core.config.model import Config
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import EXIT_OK, ConfigError, Refusals, RefusedError
from dbprotect.core.ops import backup_identity, backup_keys, compare_with_backup, retention_compliance_by_target
from dbprotect.core.pg.dsn import dbname_of, with_dbname
from dbprotect.core.retention.compliance import compliance_by_target, retention_compliance
from dbprotect.core.retention.policy import RetentionPolicy
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import BackupEntry, CheckRecord
from dbprotect.core.store.manifest import with_kind
from dbprotect.core.verify.integrity import verify_backup
from dbprotect.defs import load_definitions
from dbprotect.defs.names import RESTORE_JOB
from dbprotect_tests.fixtures.fix_pg import table_counts

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def verified(days_ago: float, n: int) -> BackupEntry:
    started = NOW - timedelta(days=days_ago)
    checked = started + timedelta(hours=1)
    return BackupEntry("shop", f"{started:%Y%m%dT%H%M%SZ}-{n:06x}", started, has_manifest=True, dump_bytes=1000,
                       checks=[CheckRecord(checked, "stored", True), CheckRecord(checked, "readable", True)])


def test_guard_backups_in_the_own_folder_do_not_make_it_compliant() -> None:
    entries = [verified(1, 1), verified(2, 2), verified(3, 3)]
    policy = RetentionPolicy.parse("min_verified=3")
    assert retention_compliance(entries, policy, NOW).ok  # counted as scheduled: compliant (the old verdict)
    kinds = {entries[0].backup_id: "guard", entries[1].backup_id: "guard"}
    report = retention_compliance(entries, policy, NOW, kinds=kinds)
    assert not report.ok and report.verified == 1
    assert report.problems == ("1 verified backup(s), the policy asks for at least 3 (not counted, judged by "
                               "their own kind's rule: 2 guard)",)
    assert report.to_dict()["not_counted"] == {"guard": 2}
    # scheduled and manual backups count, and so does one older than kinds
    kinds = {entries[0].backup_id: "scheduled", entries[1].backup_id: "manual"}
    assert retention_compliance(entries, policy, NOW, kinds=kinds).ok


def test_an_unreadable_kind_is_counted_by_no_rule_and_guard_age_still_counts() -> None:
    entries = [verified(1, 1), verified(2, 2), verified(40, 3)]
    policy = RetentionPolicy.parse("min_verified=2, max_age=30d")
    kinds = {entries[1].backup_id: "unreadable", entries[2].backup_id: "guard"}
    report = retention_compliance(entries, policy, NOW, kinds=kinds)
    assert not report.ok and report.verified == 1 and report.too_old == (entries[2].backup_id,)
    # a safety backup past max_age protects the newest restore: not out of compliance for its age
    safety = retention_compliance(entries, RetentionPolicy.parse("min_verified=1, max_age=30d"), NOW,
                                  kinds={entries[2].backup_id: "safety"})
    assert safety.ok and safety.too_old == ()


def test_compliance_by_target_reads_kinds_per_target() -> None:
    entries = [verified(1, 1), verified(2, 2)]
    policies = [("primary", RetentionPolicy.parse("min_verified=2"))]
    listed = compliance_by_target("shop", policies, lambda target: entries, NOW)
    assert listed.ok
    judged = compliance_by_target("shop", policies, lambda target: entries, NOW,
                                  kinds_of=lambda target, found: {found[0].backup_id: "guard"})
    assert not judged.ok and "1 guard" in judged.summary()


# -- the key choice -------------------------------------------------------------------------------------

def _config(deployment: str, raw: tuple[str, str], development: tuple[str, str] | None,
            tmp_path: Path) -> Config:
    keys: dict[str, object] = {"raw": {"recipients": [raw[1]], "identity_env": "T_RAW_IDENTITY"}}
    if development:
        keys["development"] = {"recipients": [development[1]], "identity_env": "T_DEV_IDENTITY"}
    return Config.model_validate({
        "deployment": deployment, "keys": keys,
        "storage": {"local": {"type": "filesystem", "path": str(tmp_path / "store")}},
        "databases": {"shop": {"storage": ["local"], "environments": {
            "production": {"dsn_env": "T_SHOP_PROD"}, "development": {"dsn_env": "T_SHOP_DEV"}}}},
    })


def _pair() -> tuple[str, str]:
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def test_the_folder_decides_the_key_for_every_kind(tmp_path: Path) -> None:
    raw, dev = _pair(), _pair()
    config = _config("demo", raw, dev, tmp_path)
    for folder, key, safety in [("shop", "raw", "shop-safety"), ("shop-safety", "raw", "shop-safety"),
                                ("shop.development", "raw", "shop-safety"),
                                ("shop-development-safety", "development", "shop-development-safety"),
                                ("shop-sanitized", "development", "shop-development-safety")]:
        keys = backup_keys(config, "shop", folder)
        assert (keys.key, keys.safety_folder) == (key, safety), folder
    environ = {"T_RAW_IDENTITY": raw[0], "T_DEV_IDENTITY": dev[0]}
    raw_given = pyrage.x25519.Identity.from_str(raw[0])
    # a caller's raw identity is never used for a development-key backup: the development one is read
    chosen = backup_identity(config, "shop", "shop-development-safety", environ, raw=raw_given)
    assert str(chosen.to_public()) == dev[1]
    assert str(backup_identity(config, "shop", "shop", environ).to_public()) == raw[1]


@pytest.mark.parametrize("deployment", ["production", "verification"])
def test_a_deployment_without_the_development_key_refuses_in_one_line(deployment: str, tmp_path: Path) -> None:
    config = _config(deployment, _pair(), _pair(), tmp_path)
    with pytest.raises(RefusedError) as refused:
        backup_identity(config, "shop", "shop-development-safety", {})
    assert refused.value.refusal == Refusals.DEVELOPMENT_KEY_NOT_HELD and refused.value.code == "DBP934"
    assert "\n" not in refused.value.one_line()
    with pytest.raises(ConfigError, match=r"keys\.development is missing"):
        backup_keys(_config("demo", _pair(), None, tmp_path), "shop", "shop-sanitized")


SHOP_SQL = "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT i, 'n' || i FROM " \
           "generate_series(1, 20) i;"


@pytest.mark.slow
def test_retention_compliant_does_not_count_a_real_guard_backup(make_db, write_config, monkeypatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A scheduled backup and a guard backup (``guard`` before a command) in the own folder: with
    ``min_verified=2`` the check used to pass (two verified); the guard backup is not the schedule's."""
    production = make_db(SHOP_SQL, prefix="shopkinds")
    name = str(dbname_of(production))
    path = write_config(production)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["databases"]["shop"]["retention"] = "keep_last=10, min_verified=2"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("TEST_SHOP_DEV_DSN", make_db(prefix="shopkindsdev"))
    assert run(["mark", "shop", "production"]) == EXIT_OK
    assert run(["backup", "shop"]) == EXIT_OK
    assert run(["verify", "latest"]) == EXIT_OK
    assert run(["guard", "-d", "shop", "-e", "production", "--confirm", name, "--", "true"]) == EXIT_OK
    capsys.readouterr()
    config = load_config()
    [primary] = retention_compliance_by_target(config, "shop").targets
    assert primary.report is not None
    assert not primary.ok and primary.report.verified == 1, primary.problems
    assert primary.report.not_counted == {"guard": 1}
    assert run(["backup", "shop"]) == EXIT_OK and run(["verify", "latest"]) == EXIT_OK
    assert retention_compliance_by_target(load_config(), "shop").ok  # two scheduled backups: compliant


@pytest.fixture
def development_safety(write_config, chinook_dsn: str, pg, make_db, monkeypatch, tmp_path: Path, other_age_keys):
    """A demo deployment with a development key, and a promotion's safety backup of Chinook in
    ``chinook-development-safety``: encrypted to the development key only, verified with it."""
    monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", pg.admin_dsn)
    path = write_config(chinook_dsn, database="chinook", deployment="demo",
                        extra={"scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["keys"]["development"] = {"recipients": [other_age_keys[1]], "identity_env": "TEST_DEV_IDENTITY"}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("TEST_DEV_IDENTITY", other_age_keys[0])
    monkeypatch.setenv("TEST_CHINOOK_DEV_DSN", make_db(prefix="chinookdev"))
    store = FilesystemStorage(tmp_path / "store")
    folder = "chinook-development-safety"
    taken = run_backup(database=folder, dsn=chinook_dsn, storage=store, recipients=[other_age_keys[1]],
                       environment="development", finish=with_kind("safety"))
    dev_identity = parse_identity(other_age_keys[0], source="test")
    assert verify_backup(store, folder, taken.manifest.backup_id, dev_identity).ok
    return path, store, taken.manifest


@pytest.mark.slow
def test_verify_takes_a_development_safety_id(development_safety, pg, capsys) -> None:
    """``verify <id>`` of a promotion's safety backup decrypts with the development key (it used the
    raw one and failed: not a recipient)."""
    _path, _store, manifest = development_safety
    capsys.readouterr()
    assert run(["verify", manifest.backup_id]) == EXIT_OK, capsys.readouterr()
    assert "readable" in capsys.readouterr().out


@pytest.mark.slow
def test_the_dagster_restore_job_reads_a_development_safety_backup_with_the_development_key(
        development_safety, pg, instance, monkeypatch, age_keys) -> None:
    path, _store, manifest = development_safety
    defs = load_definitions()
    run_config = {"ops": {"restore_backup": {"config": {
        "database": "chinook", "backup_id": manifest.backup_id, "environment": "development",
        "target_database": "chinook_undo_job"}}}}
    result = defs.resolve_job_def(RESTORE_JOB).execute_in_process(instance=instance, run_config=run_config)
    assert result.success
    assert result.output_for_node("chinook_restore")["restored_database"] == "chinook_undo_job"
    dev_dsn = with_dbname(pg.admin_dsn, "chinook_undo_job")
    assert table_counts(dev_dsn) == {name: table.rows for name, table in manifest.tables.items()}
    assert compare_with_backup(load_config(), "chinook", manifest.backup_id, environment="development",
                               target_name="chinook_undo_job")[1].ok

    # A production deployment never holds the development identity: one line, DBP934, nothing restored.
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["deployment"] = "production"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    for variable in ("TEST_DEV_IDENTITY", "TEST_CHINOOK_DEV_DSN"):
        monkeypatch.delenv(variable)
    run_config["ops"]["restore_backup"]["config"].update(environment="production", target_database="never_made")
    refused = load_definitions().resolve_job_def(RESTORE_JOB).execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=False)
    assert not refused.success
    [failure] = refused.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("error[DBP934]: backup folder chinook-development-safety is encrypted to the "
                                  "development key"), description
    assert "\n" not in description
    with psycopg.connect(pg.admin_dsn) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = 'never_made'").fetchone() is None
