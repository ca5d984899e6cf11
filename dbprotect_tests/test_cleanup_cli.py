"""``dbprotect cleanup``, ``audit`` and the per-target part of ``status``, against real folder stores.

Backups are synthetic (test_cleanup's writer: real layout, manifests whose SHA-256 matches the
dump, verified check records), dated relative to the real clock because the CLI reads it. The
core rules (plan, sweep order, idempotence) are proven in test_retention.py and test_cleanup.py;
these tests pin what a person or a script sees: the plan, the exact ids deleted, the audit
records, and the exit codes (9 refused, 6 store failed half-way, 7 audit chain broken).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dbprotect.cli.app import run
from dbprotect.core.audit import AUDIT_PREFIX, read
from dbprotect.core.config.load import parse_config
from dbprotect.core.errors import ConfigError
from dbprotect.core.ops import cli_actor
from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups
from dbprotect.core.store.manifest import dump_key
from dbprotect_tests.fixtures.backups import DB, assert_listed_and_valid, write_backup
from dbprotect_tests.fixtures.cli import run_json

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def stores(tmp_path: Path, write_config) -> dict[str, FilesystemStorage]:
    """Two targets: local (primary, keep_last=3) with 6 daily backups and 2 incomplete uploads; offsite
    (keep_last=1) with 2 backups."""
    write_config(None, storage={"local": {"type": "filesystem", "path": str(tmp_path / "local")},
                                "offsite": {"type": "filesystem", "path": str(tmp_path / "offsite")}},
                 extra={"databases": {DB: {"environments": {"production": {"dsn_env": "TEST_SHOP_PROD_DSN"}},
                                           "storage": ["local", "offsite"], "retention": "keep_last=3",
                                           "retention_by_target": {"offsite": {"keep_last": 1}}}}})
    return {"local": FilesystemStorage(tmp_path / "local"), "offsite": FilesystemStorage(tmp_path / "offsite")}


@pytest.fixture
def seeded(stores: dict[str, FilesystemStorage]) -> dict[str, list[str]]:
    local, offsite = stores["local"], stores["offsite"]
    daily = [write_backup(local, NOW - timedelta(days=d, hours=1), n=d) for d in range(1, 7)]  # newest first
    stale = write_backup(local, NOW - timedelta(hours=30), manifest=False, n=100)
    running = write_backup(local, NOW - timedelta(hours=1), manifest=False, n=101)
    copies = [write_backup(offsite, NOW - timedelta(days=d, hours=1), n=d) for d in (1, 2)]
    return {"daily": daily, "stale": [stale], "running": [running], "copies": copies}


def keys(store: FilesystemStorage) -> list[str]:
    return [info.key for info in store.list("")]


def test_dry_run_prints_the_plan_and_deletes_nothing(stores, seeded, capsys: pytest.CaptureFixture[str]) -> None:
    before = {name: keys(store) for name, store in stores.items()}
    code, doc, _ = run_json(capsys, "cleanup", DB, "--dry-run")
    assert code == 0 and doc["dry_run"] is True
    local, offsite = doc["targets"]
    assert local["target"] == "local" and offsite["target"] == "offsite"
    assert local["result"]["deleted_backups"] == sorted(seeded["daily"][3:])  # would delete: the 3 oldest
    assert local["result"]["removed_incomplete"] == seeded["stale"]
    assert offsite["result"]["deleted_backups"] == [seeded["copies"][1]]
    reasons = {d["backup_id"]: d["reasons"] for d in local["plan"]["decisions"]}
    assert reasons[seeded["daily"][0]] == ["newest verified backup (never deleted)", "min_verified (1 of 1)",
                                           "keep_last (1 of 3)"]
    assert reasons[seeded["running"][0]][0].startswith("in progress: no manifest yet")
    assert {name: keys(store) for name, store in stores.items()} == before  # nothing deleted, no audit record
    assert not any(key.startswith(AUDIT_PREFIX) for key in before["local"] + keys(stores["local"]))
    # the text form: the rendered plan per target, then what it would do
    assert run(["cleanup", DB, "--dry-run", "--target", "local"]) == 0
    out = capsys.readouterr().out
    assert "retention plan for shop" in out and "keep_last=3, min_verified=1" in out
    assert f"delete {seeded['daily'][-1]}" in out
    assert "would delete 3 backup(s) and 1 incomplete upload(s)" in out and "(dry run: nothing deleted)" in out
    assert "offsite" not in out


def test_cleanup_deletes_exactly_the_plan_and_audits_each_deletion(stores, seeded,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, status, _ = run_json(capsys, "status")
    targets = {t["target"]: t for t in status["databases"][0]["targets"]}
    assert targets["local"]["next_cleanup"]["deletes"] == sorted(seeded["daily"][3:])
    assert targets["local"]["backups"] == 6 and targets["local"]["verified"] == 6 and targets["local"]["primary"]
    assert targets["local"]["oldest_backup"] == seeded["daily"][-1]
    assert targets["local"]["newest_backup"] == seeded["daily"][0]
    assert targets["local"]["total_bytes"] == sum(len(stores["local"].get_bytes(dump_key(DB, b)))
                                                  for b in seeded["daily"])
    assert targets["offsite"]["next_cleanup"]["deletes"] == [seeded["copies"][1]]

    assert run(["cleanup", DB]) == 0
    out = capsys.readouterr().out
    assert "deleted 3 backup(s) and 1 incomplete upload(s)" in out and "deleted 1 backup(s)" in out
    assert assert_listed_and_valid(stores["local"]) == seeded["daily"][:3]
    assert [e.backup_id for e in list_backups(stores["local"], DB, include_incomplete=True)] == \
        sorted(seeded["daily"][:3] + seeded["running"], reverse=True)  # the upload in progress stays
    assert assert_listed_and_valid(stores["offsite"]) == seeded["copies"][:1]

    records = [r for r in read(stores["local"]) if r.action == "delete"]  # the primary store's log
    assert {(r.data["store"], r.target) for r in records} == (
        {("local", b) for b in seeded["daily"][3:] + seeded["stale"]} | {("offsite", seeded["copies"][1])})
    assert {r.actor for r in records} == {cli_actor()} and {r.outcome for r in records} == {"deleted"}
    assert not any(k.startswith(AUDIT_PREFIX) for k in keys(stores["offsite"]))

    code, audit, _ = run_json(capsys, "audit", "--verify")
    assert code == 0 and audit["chain"]["ok"] and audit["chain"]["records"] == 5
    code, status, _ = run_json(capsys, "status")
    assert all(t["next_cleanup"]["deletes"] == [] for t in status["databases"][0]["targets"])
    assert run(["cleanup", DB]) == 0  # idempotent: the second run deletes nothing
    assert "deleted 0 backup(s) and 0 incomplete upload(s)" in capsys.readouterr().out


def test_a_refused_plan_exits_9_deletes_nothing_and_is_audited(tmp_path: Path, write_config,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    write_config(None, extra={"databases": {DB: {"environments": {"production": {"dsn_env": "X_DSN"}},
                                                 "retention": "max_age=2d"}}})
    store = FilesystemStorage(tmp_path / "store")
    ids = [write_backup(store, NOW - timedelta(days=d), n=d) for d in (3, 4)]
    before = keys(store)
    code, doc, err = run_json(capsys, "cleanup", DB)
    assert code == 9 and doc["error"]["code"] == "DBP917"
    assert "would delete every verified backup" in doc["error"]["message"] and ids[0] in doc["error"]["message"]
    assert doc["targets"][0]["plan"]["refused"] is True and doc["targets"][0]["result"] is None
    assert err.startswith("error[DBP917]: cleanup of shop: max_age=2d would delete every verified backup")
    assert [k for k in keys(store) if not k.startswith(AUDIT_PREFIX)] == before
    assert [(r.action, r.outcome) for r in read(store)] == [("refused", "refused")]


@pytest.fixture
def immutable() -> Iterator[Any]:
    """Make a file undeletable even for root (ext4's immutable flag), undone after the test."""
    made: list[Path] = []

    def freeze(path: Path) -> None:
        out = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"chattr +i unsupported here: {out.stderr.strip()}")
        made.append(path)

    yield freeze
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_a_store_failing_mid_cleanup_exits_6_and_every_listed_backup_stays_valid(
        tmp_path: Path, stores, seeded, immutable, capsys: pytest.CaptureFixture[str]) -> None:
    victim = sorted(seeded["daily"][3:])[1]  # the second backup the sweep deletes (oldest first)
    immutable(tmp_path / "local" / dump_key(DB, victim))
    code, doc, err = run_json(capsys, "cleanup", DB, "--target", "local")
    assert code == 6 and doc["error"]["code"] == "DBP006"
    assert f"cleanup of shop stopped at {victim}" in err and "run the cleanup again" in err
    listed = assert_listed_and_valid(stores["local"])  # manifests first: nothing listed is broken
    assert victim not in listed and sorted(seeded["daily"][3:])[0] not in listed
    assert listed == [*seeded["daily"][:3], sorted(seeded["daily"][3:])[2]]
    failed = [r for r in read(stores["local"]) if r.outcome == "failed"]
    assert [(r.action, r.target) for r in failed] == [("delete", victim)]
    subprocess.run(["chattr", "-i", str(tmp_path / "local" / dump_key(DB, victim))], check=True)
    assert run(["cleanup", DB, "--target", "local"]) == 0  # a rerun finishes the job
    capsys.readouterr()
    assert assert_listed_and_valid(stores["local"]) == seeded["daily"][:3]


def test_audit_verify_exits_7_when_a_record_was_edited(stores, seeded, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cleanup", DB, "--target", "local"]) == 0
    capsys.readouterr()
    record = next(iter(read(stores["local"])))
    path = Path(stores["local"].root) / record.key
    path.write_text(path.read_text().replace('"outcome": "deleted"', '"outcome": "kept"'), encoding="utf-8")
    assert run(["audit"]) == 0  # printing does not verify
    assert "kept" in capsys.readouterr().out
    code, doc, err = run_json(capsys, "audit", "--verify")
    assert code == 7 and doc["chain"]["ok"] is False
    assert err.startswith("error[DBP007]: the audit log in file://") and "was edited" in err


def test_retention_configuration_forms_and_reserved_names(tmp_path: Path) -> None:
    def config(database: str, extra: str) -> Any:
        return parse_config(f"""
deployment: demo
databases:
  {database}:
    environments: {{production: {{dsn_env: X}}}}
    {extra}
storage: {{local: {{type: filesystem, path: {tmp_path}}}, offsite: {{type: filesystem, path: {tmp_path}/o}}}}
keys: {{raw: {{recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p], identity_env: K}}}}
""")

    text = config("shop", 'retention: "keep_last=10, max_age=30d"').databases["shop"]
    mapping = config("shop", "retention: {keep_last: 10, max_age: 30d}").databases["shop"]
    assert text.policy_for("local") == mapping.policy_for("offsite")
    assert str(text.policy_for("local")) == "keep_last=10, max_age=30d, min_verified=1"
    assert text.cleanup_schedule == "0 4 * * 0"
    override = config("shop", "retention: keep_last=2\n    retention_by_target: {offsite: 'keep_monthly=12'}")
    assert str(override.databases["shop"].policy_for("offsite")) == "keep_monthly=12, min_verified=1"
    assert config("shop", "").databases["shop"].policy_for("local").empty  # unset keeps everything
    for database, extra, message in [
        ("_audit", "", "database name '_audit' is reserved"),
        ("shop", "retention: 'keep_last=ten'", "databases.shop.retention: keep_last: Input should be a valid integer"),
        ("shop", "retention: 'max_age=30'", "max_age: '30' is not a duration"),
        ("shop", "retention_by_target: {tape: 'keep_last=1'}", "retention_by_target names 'tape', which is not"),
        ("shop", "cleanup_schedule: '0 4 * * 8'", "databases.shop.cleanup_schedule: '0 4 * * 8': day-of-week"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
            config(database, extra)


@pytest.mark.parametrize("command", ["cleanup", "audit", "copy"])
def test_new_commands_have_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"Usage: dbprotect {command}") and "--json" in out
    assert {"cleanup": "Exits 9 when a plan refuses", "audit": "--verify", "copy": "server-side copy"}[command] in out
