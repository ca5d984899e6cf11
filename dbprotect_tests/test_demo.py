"""``dbprotect demo`` end to end, as a user runs it: the console script, a fresh folder, twice.

The demo starts its own embedded PostgreSQL (left running by design, for the Dagster UI); the
test stops it with ``dbprotect demo --stop`` whatever happens, so nothing keeps running.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from dbprotect.core.store import FilesystemStorage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.demo import demo_rules_yaml
from dbprotect_tests.fixtures.fix_pg import pg_bin, psql, table_counts

# Slow, so not in the fast lane: the demo starts its own PostgreSQL and loads the fintech data (3-5 s).
pytestmark = pytest.mark.slow

DBPROTECT = Path(sys.executable).parent / "dbprotect"
ROWS = 3000


def _demo(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("DBPROTECT_", "TEST_"))}  # "nothing configured"
    return subprocess.run([str(DBPROTECT), "demo", "--dir", str(workdir), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=workdir.parent)


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = shlex.split(value)[0]
    return values


FirstRun = tuple[Path, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    """The demo's first run from nothing, once for the module: (its folder, the run).

    Both tests start from it (a demo run is most of each one's time); neither writes anything the
    other reads except one more backup, which only the twice-run test counts.
    """
    folder = tmp_path_factory.mktemp("demo-home") / "demo"
    try:
        yield folder, _demo(folder, "--rows", str(ROWS), "--json")
    finally:
        stopped = _demo(folder, "--stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not (folder / "pgdata" / "postmaster.pid").exists()


def test_demo_runs_twice_from_nothing(first_run: FirstRun) -> None:
    workdir, first = first_run
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    key_file = workdir.parent / "keys" / "raw-backups.agekey"
    secret = next(line for line in key_file.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    dev_key_file = workdir.parent / "keys" / "development.agekey"
    dev_secret = next(line for line in dev_key_file.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    masking_file = workdir.parent / "keys" / "demo-masking.key"
    masking_key = masking_file.read_text().strip()
    secrets = (secret, dev_secret, masking_key)

    # One backup in the store, whose manifest agrees with the database it came from.
    store = FilesystemStorage(workdir / "store")
    (entry,) = list_backups(store, "fintech")
    assert entry.backup_id == report["backup"]["backup_id"] and entry.status == "verified:readable"
    manifest = load_manifest(store, "fintech", entry.backup_id)
    env = _env_file(workdir / "demo.env")
    live = table_counts(env["DBPROTECT_DEMO_PROD_DSN"])
    assert {name: table.rows for name, table in manifest.tables.items()} == live == report["data"]["tables"]
    assert live["public.users"] >= 100 and sum(live.values()) == ROWS
    assert report["integrity"]["ok"] is True and report["rpo"]["ok"] is True
    assert report["data"]["loaded_now"] is True

    # The keys are private; the age identities are referenced (never copied) by demo.env, the masking
    # key (sanitize reads no @path) is in demo.env, itself 0600; no secret is ever printed.
    for private in (key_file, dev_key_file, masking_file, workdir / "demo.env"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert dev_secret != secret and len(masking_key) == 64 and report["dev_recipient"] != report["recipient"]
    assert env["DBPROTECT_DEMO_RAW_IDENTITY"] == f"@{key_file}"
    assert env["DBPROTECT_DEMO_DEV_IDENTITY"] == f"@{dev_key_file}"
    assert env["DBPROTECT_DEMO_MASKING_KEY"] == masking_key
    assert secret not in (workdir / "demo.env").read_text() + (workdir / "dbprotect.yaml").read_text()
    assert dev_secret not in (workdir / "demo.env").read_text() + (workdir / "dbprotect.yaml").read_text()
    assert masking_key not in (workdir / "dbprotect.yaml").read_text()
    assert not any(value in first.stdout + first.stderr for value in secrets)

    # Second run: same server, data and key; one more backup, human output this time.
    second = _demo(workdir, "--rows", str(ROWS))
    assert second.returncode == 0, second.stderr
    assert "reused from an earlier run" in second.stdout
    assert "integrity  ok" in second.stdout and "RPO        ok" in second.stdout
    assert "dagster dev -m dbprotect.defs" in second.stdout
    for command in ("drill fintech", "warm-copy fintech", "sanitize build fintech", "schema drift fintech"):
        assert f"dbprotect {command}\n" in second.stdout
    assert "creating fintech_dev" not in second.stdout  # the development database is reused
    assert not any(value in second.stdout + second.stderr for value in secrets)
    assert len(list_backups(store, "fintech")) == 2
    assert secret == next(line for line in key_file.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    assert masking_key == masking_file.read_text().strip()


def test_demo_data_is_the_fintech_schema_with_its_guards(first_run: FirstRun) -> None:
    workdir, result = first_run
    assert result.returncode == 0, result.stderr
    dsn = _env_file(workdir / "demo.env")["DBPROTECT_DEMO_PROD_DSN"]
    # The environment marker destructive steps check, and row-level security on tenant data.
    assert psql(dsn, "SHOW dbprotect.environment").strip() == "production"
    assert psql(dsn, "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class "
                     "WHERE relrowsecurity").strip() == "accounts,transactions"
    # Personal data shaped like seed 001: E.164 phones, unique e-mails, audit fields filled in.
    stats = psql(dsn, "SELECT count(*) = count(DISTINCT email) + count(*) FILTER (WHERE email IS NULL), "
                      "bool_and(phone_number ~ '^\\+[1-9][0-9]{6,14}$'), count(last_login_ip) > 0, "
                      "count(*) FILTER (WHERE is_deleted AND deleted_at IS NOT NULL) > 0 FROM users").strip()
    assert stats == "t|t|t|t"
    # The audit log is append-only, even for its owner.
    refused = subprocess.run([str(pg_bin() / "psql"), "-X", "-At", dsn, "-c",
                              "DELETE FROM audit_log WHERE audit_id IN (SELECT audit_id FROM audit_log LIMIT 1)"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "append-only" in refused.stderr
    # The config the demo wrote drives the ordinary CLI.
    env = {**os.environ, **_env_file(workdir / "demo.env")}
    status = subprocess.run([str(DBPROTECT), "status", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["databases"][0]["rpo"]["ok"] is True
    # ... and the Dagster definitions the printed UI command loads, even from the repository root
    # (whose dagster.yaml is for deployments and needs variables the demo does not have).
    repo_root = Path(__file__).resolve().parents[1]
    validate = subprocess.run([str(DBPROTECT.parent / "dagster"), "definitions", "validate", "-m", "dbprotect.defs"],
                              capture_output=True, text=True, env=env, cwd=repo_root, timeout=180)
    assert validate.returncode == 0, validate.stderr[-2000:]
    assert "Validation successful for code location dbprotect.defs" in validate.stdout + validate.stderr
    _every_domain_is_configured(workdir)


def _every_domain_is_configured(workdir: Path) -> None:
    """Development, scratch, warm copy, retention, sanitized copies on the one server (one demo run saved)."""
    from dbprotect.core.config.isolation import check_credential_isolation
    from dbprotect.core.config.load import load_config
    from dbprotect.defs import build_definitions

    env = _env_file(workdir / "demo.env")
    config = load_config(workdir / "dbprotect.yaml")
    check_credential_isolation(config, env)  # a demo deployment may hold both environments' credentials
    spec = config.database("fintech")
    assert config.deployment == "demo" and set(spec.environments) == {"production", "development"}
    assert spec.warm_copy is not None and spec.sanitize is not None and not spec.sanitize.promote
    assert (spec.retention.keep_last, spec.retention.max_age) == (10, timedelta(days=30))
    assert config.scratch.admin_dsn_env and env[config.scratch.admin_dsn_env].split("?")[0].endswith("/postgres")
    assert config.keys.development and config.keys.development.recipients != config.keys.raw.recipients
    assert (workdir / spec.sanitize.rules).read_text().count("public.users:") == 1

    # One server: production and development marked, the warm copy left for its first refresh.
    prod, dev = env["DBPROTECT_DEMO_PROD_DSN"], env["DBPROTECT_DEMO_DEV_DSN"]
    assert psql(dev, "SHOW dbprotect.environment").strip() == "development"
    assert psql(dev, "SELECT count(*) FROM users").strip() == "0"
    assert psql(prod, "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
                      "WHERE datname LIKE 'fintech%'").strip() == "fintech_dev,fintech_prod"
    assert env["DBPROTECT_DEMO_STANDBY_DSN"].split("?")[0].endswith("/fintech_standby")

    keys = {key.to_user_string() for key in build_definitions(config).get_repository_def().asset_graph
            .get_all_asset_keys()}
    assert {"fintech/production_snapshot", "fintech/warm_copy", "fintech/sanitized_copy",
            "fintech/schema_production", "fintech/schema_development"} <= keys, keys

    # A printed command on the demo: the masking rules cover every column of the backup.
    checked = subprocess.run([str(DBPROTECT), "sanitize", "check", "fintech"], capture_output=True, text=True,
                             env={**os.environ, **env}, cwd=workdir.parent, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "every column of backup" in checked.stdout and "has a rule" in checked.stdout


def test_packaged_demo_rules_are_the_reviewed_ones() -> None:
    """The demo ships a copy of the rule file test_sanitize.py checks; the two must not drift apart."""
    assert demo_rules_yaml() == (Path(__file__).parent / "rules" / "demo.yaml").read_text(encoding="utf-8")
