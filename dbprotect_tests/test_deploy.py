"""The docker-compose deployment (issue 13, point 4), checked where Docker is absent: the compose
file at the YAML level (every service's environment, volumes and the secret rules), each code
location's definitions loaded with exactly its own service's environment, and ``dbprotect keygen``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import dagster as dg
import pyrage
import pytest
import yaml

from dbprotect.cli.app import run
from dbprotect.core.crypto import load_identity
from dbprotect.core.errors import CredentialIsolationError, RefusedError
from dbprotect.defs import load_definitions

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
CODE_LOCATIONS = ("code-production", "code-verification", "code-development")
SECRET_NAME = re.compile(r"DSN|IDENTITY|SECRET|PASSWORD|KEY", re.IGNORECASE)
DAGSTER_STORAGE_VARS = {"DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"}


def _expand(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (what `docker compose config` prints without an .env)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    return {name: _expand(value) for name, value in env.items()}


def _mounts(service: str) -> dict[str, tuple[str, str]]:
    """Target path in the container -> (source on the host, mode)."""
    mounts = {}
    for volume in SERVICES[service].get("volumes") or []:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


def test_webserver_and_daemon_hold_no_secret_of_dbprotect() -> None:
    for service in ("webserver", "daemon"):
        assert set(_environment(service)) == DAGSTER_STORAGE_VARS, service  # Dagster's own storage only
        assert [target for target in _mounts(service)] == ["/etc/dagster/workspace.yaml"], service


def test_the_production_location_has_production_and_the_scratch_server_and_no_identity() -> None:
    env = _environment("code-production")
    secrets = {name for name in env if SECRET_NAME.search(name) and not name.startswith("DAGSTER_PG")}
    assert secrets == {"APP_PROD_DSN", "SCRATCH_ADMIN_DSN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "@prod-db:" in env["APP_PROD_DSN"] and "@scratch-db:" in env["SCRATCH_ADMIN_DSN"]
    mounts = _mounts("code-production")
    assert mounts == {"/etc/dbprotect/dbprotect.yaml": ("./deploy/dbprotect.yaml", "ro")}
    assert env["DBPROTECT_CONFIG"] == "/etc/dbprotect/dbprotect.yaml"


def test_the_verification_location_has_the_raw_identity_and_no_production_or_development_dsn() -> None:
    env = _environment("code-verification")
    secrets = {name for name in env if SECRET_NAME.search(name) and not name.startswith("DAGSTER_PG")}
    assert secrets == {"DBPROTECT_RAW_IDENTITY", "APP_BACKUP_DSN", "SCRATCH_ADMIN_DSN", "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY"}
    assert env["DBPROTECT_DEPLOYMENT"] == "verification"
    assert {name for name in env if name.endswith("_DSN")} == {"APP_BACKUP_DSN", "SCRATCH_ADMIN_DSN"}
    assert not any(host in value for value in env.values() for host in ("prod-db", "dev-db"))
    assert "@backup-db:" in env["APP_BACKUP_DSN"] and "@scratch-db:" in env["SCRATCH_ADMIN_DSN"]
    assert _mounts("code-verification") == {
        "/etc/dbprotect/dbprotect.yaml": ("./deploy/dbprotect.yaml", "ro"),
        "/run/dbprotect/keys/raw-backups.agekey": ("./deploy/keys/raw-backups.agekey", "ro")}
    assert env["DBPROTECT_RAW_IDENTITY"] == "@/run/dbprotect/keys/raw-backups.agekey"
    assert not {"prod-db", "dev-db"} & set(SERVICES["code-verification"]["depends_on"])


def test_the_development_location_has_development_and_its_identity_only() -> None:
    env = _environment("code-development")
    secrets = {name for name in env if SECRET_NAME.search(name) and not name.startswith("DAGSTER_PG")}
    assert secrets == {"APP_DEV_DSN", "DBPROTECT_DEV_IDENTITY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "@dev-db:" in env["APP_DEV_DSN"]
    assert not any("prod-db" in value or "backup-db" in value for value in env.values())
    mounts = _mounts("code-development")
    assert mounts == {"/etc/dbprotect/dbprotect.yaml": ("./deploy/dbprotect-development.yaml", "ro"),
                      "/run/dbprotect/keys/development.agekey": ("./deploy/keys/development.agekey", "ro")}
    assert env["DBPROTECT_DEV_IDENTITY"] == "@/run/dbprotect/keys/development.agekey"


def test_no_other_service_sees_a_key_or_the_configuration() -> None:
    for service in SERVICES:
        for target, (source, mode) in _mounts(service).items():
            if "deploy/" in source:
                assert mode == "ro", (service, target)
            if "keys" in source:
                assert (service, Path(source).name) in {("code-development", "development.agekey"),
                                                        ("code-verification", "raw-backups.agekey")}, service


def test_minio_init_gets_the_credentials_it_uses() -> None:
    env = _environment("minio-init")
    assert env == {"MINIO_ROOT_USER": "dbprotect", "MINIO_ROOT_PASSWORD": "dbprotect-secret"}
    assert SERVICES["minio-init"]["environment"] == SERVICES["minio"]["environment"]
    entrypoint = SERVICES["minio-init"]["entrypoint"]
    assert "$${MINIO_ROOT_USER}" in entrypoint and "$${MINIO_ROOT_PASSWORD}" in entrypoint
    assert ":-" not in entrypoint  # no default of its own that an override would not reach


def test_every_dependency_and_workspace_entry_is_a_service() -> None:
    for service, spec in SERVICES.items():
        for dependency in spec.get("depends_on") or {}:
            assert dependency in SERVICES, (service, dependency)
    workspace = yaml.safe_load((ROOT / "deploy" / "workspace.yaml").read_text(encoding="utf-8"))
    hosts = {entry["grpc_server"]["host"] for entry in workspace["load_from"]}
    assert hosts == set(CODE_LOCATIONS)


def test_the_image_holds_no_key_and_no_configuration() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copies = [line for line in dockerfile.splitlines() if line.startswith(("COPY", "ADD"))]
    assert not any("deploy" in line or "keys" in line or line.split()[1] == "." for line in copies), copies
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for pattern in ("**/*.agekey", "**/keys/", "deploy/", ".venv", ".git", "dbprotect_tests/", ".dbprotect/"):
        assert pattern in ignored, pattern


# --- each code location with its own environment ------------------------------------------------

def _location_config(service: str, tmp_path: Path, recipients: dict[str, str]) -> Path:
    source = _mounts(service)["/etc/dbprotect/dbprotect.yaml"][0]
    text = (ROOT / source).read_text(encoding="utf-8")
    text = text.replace("REPLACE-ME-with-the-development-age1-public-key", recipients["development"])
    text = text.replace("REPLACE-ME-with-the-age1-public-key", recipients["raw"])
    path = tmp_path / f"{service}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _only(service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dev_key: Path) -> None:
    """The process environment as that service has it (nothing of this machine's dbprotect or app)."""
    for name in list(os.environ):
        if name.startswith(("APP_", "DBPROTECT_", "AWS_", "TEST_")):
            monkeypatch.delenv(name)
    for name, value in _environment(service).items():
        monkeypatch.setenv(name, value.replace("@/run/dbprotect/keys/development.agekey", f"@{dev_key}")
                           .replace("@/run/dbprotect/keys/raw-backups.agekey", f"@{dev_key.parent / 'raw.agekey'}"))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[dict[str, str], Path]:
    dev_key = tmp_path / "development.agekey"
    assert run(["keygen", str(dev_key)]) == 0
    raw_key = tmp_path / "raw.agekey"
    assert run(["keygen", str(raw_key)]) == 0
    raw_recipient = str(load_identity("K", {"K": f"@{raw_key}"}).to_public())
    dev_recipient = str(load_identity("K", {"K": f"@{dev_key}"}).to_public())
    return {"raw": raw_recipient, "development": dev_recipient}, dev_key


def test_each_code_location_loads_with_its_own_environment_and_sees_only_its_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: tuple[dict[str, str], Path]) -> None:
    recipients, dev_key = keys
    _only("code-production", monkeypatch, tmp_path, dev_key)
    production = load_definitions(_location_config("code-production", tmp_path, recipients))
    resources = production.resources or {}
    assert "app_production_postgres" in resources
    assert "DBPROTECT_RAW_IDENTITY" not in os.environ and "DBPROTECT_DEV_IDENTITY" not in os.environ
    assert "APP_DEV_DSN" not in os.environ

    # Production's resources hold references (variable names) to secrets; the values it has are these.
    secrets = production.resources["dbprotect_secrets"]
    assert set(secrets.values) == {"APP_PROD_DSN", "SCRATCH_ADMIN_DSN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(secrets.environ()) == set(secrets.values)  # each one set in its environment
    assert not resources["raw_backup_identity"].identity.get_value()  # named, never held here

    _only("code-verification", monkeypatch, tmp_path, dev_key)
    verification = load_definitions(_location_config("code-verification", tmp_path, recipients))
    ver_resources = verification.resources or {}
    assert not any(key.endswith("_postgres") for key in ver_resources), sorted(ver_resources)
    assert set(ver_resources["dbprotect_secrets"].values) == {
        "APP_BACKUP_DSN", "SCRATCH_ADMIN_DSN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(ver_resources["dbprotect_secrets"].environ()) == set(ver_resources["dbprotect_secrets"].values)
    assert str(ver_resources["raw_backup_identity"].parsed().to_public()) == recipients["raw"]
    assert {name for name in os.environ if name.endswith("_DSN")} == {"APP_BACKUP_DSN", "SCRATCH_ADMIN_DSN"}
    assert {job.name for job in verification.resolve_all_job_defs()} >= {"app_readability_job"}
    assert not any(job.name.endswith("_backup_job") for job in verification.resolve_all_job_defs())

    _only("code-development", monkeypatch, tmp_path, dev_key)
    development = load_definitions(_location_config("code-development", tmp_path, recipients))
    dev_resources = development.resources or {}
    assert not any("production" in key for key in dev_resources), sorted(dev_resources)
    assert "APP_PROD_DSN" not in os.environ and "DBPROTECT_RAW_IDENTITY" not in os.environ
    assert str(load_identity("DBPROTECT_DEV_IDENTITY").to_public()) == recipients["development"]
    assert set(dev_resources["dbprotect_secrets"].values) == {
        "APP_DEV_DSN", "DBPROTECT_DEV_IDENTITY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


# --- every job, check, sensor and schedule can get its secrets where it is defined ----------------

def _secret_names(resource: object) -> set[str]:
    """The environment variables a resource reads its secrets from (its ``EnvVar`` references)."""
    found: set[str] = set()
    values = list(vars(resource).values()) if hasattr(resource, "__dict__") else []
    while values:
        value = values.pop()
        if isinstance(value, dg.EnvVar):
            found.add(value.env_var_name)
        elif isinstance(value, dict):
            values.extend(value.values())
    return found


def _requirements(defs: Any) -> dict[str, set[str]]:
    """``<job or sensor or schedule>/<op>`` -> the resource keys it requires."""
    needs: dict[str, set[str]] = {}
    for job in defs.resolve_all_job_defs():
        for node in job.all_node_defs:
            needs[f"{job.name}/{node.name}"] = set(node.required_resource_keys)
    for sensor in defs.sensors or []:
        needs[f"sensor:{sensor.name}"] = set(getattr(sensor, "required_resource_keys", ()) or ())
    for schedule in defs.schedules or []:
        needs[f"schedule:{schedule.name}"] = set(getattr(schedule, "required_resource_keys", ()) or ())
    return needs


def unmet_needs(defs: Any, environ: dict[str, str]) -> list[str]:
    """Each (definition, resource, variable) whose secret the location's environment lacks: what
    would fail there with DBP008 (no identity) or "$VAR is not set" on its first run."""
    resources = defs.resources or {}
    unmet = []
    for name, keys in sorted(_requirements(defs).items()):
        for key in sorted(keys):
            if key not in resources:
                unmet.append(f"{name}: resource {key} is not defined")
                continue
            unmet += [f"{name}: {key} needs ${variable}" for variable in sorted(_secret_names(resources[key]))
                      if not environ.get(variable)]
    return unmet


@pytest.mark.parametrize("service", CODE_LOCATIONS)
def test_every_definition_of_a_location_can_get_its_secrets_there(
        service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: tuple[str, str]) -> None:
    """The test that would have caught DBP008 in compose: production's restore verification, drills,
    warm copy and restore job all asked for the raw identity, which only code-verification holds."""
    recipients, dev_key = keys
    _only(service, monkeypatch, tmp_path, dev_key)
    defs = load_definitions(_location_config(service, tmp_path, recipients))
    requirements = _requirements(defs)
    assert requirements, service
    assert unmet_needs(defs, dict(os.environ)) == []
    identity = (defs.resources or {}).get("raw_backup_identity")
    if identity is not None and identity.identity.get_value():
        assert str(identity.parsed().to_public()) == recipients["raw"]  # held, and the right key


def test_the_check_fails_for_a_location_asked_to_decrypt_without_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: tuple[str, str]) -> None:
    """The counter-test: production as it was (the identity expected here, not held) is caught,
    naming what would have failed."""
    recipients, dev_key = keys
    _only("code-production", monkeypatch, tmp_path, dev_key)
    config = _location_config("code-production", tmp_path, recipients)
    config.write_text(config.read_text(encoding="utf-8").replace("held_in: verification", "held_in: this_deployment"),
                      encoding="utf-8")
    unmet = unmet_needs(load_definitions(config), dict(os.environ))
    joined = "\n".join(unmet)
    for needed in ("restore_verified", "restore_drill_within_rto", "restore", "backup_integrity_verified"):
        assert needed in joined, needed
    # What production lacks, and only that: the identity, and the warm copy's DSN (its refresh
    # would be defined here again).
    assert {line.rsplit("$", 1)[1] for line in unmet} == {"DBPROTECT_RAW_IDENTITY", "APP_BACKUP_DSN"}, unmet


def test_the_verification_location_holds_the_warm_copy_and_scratch_dsns_and_no_production_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: tuple[str, str]) -> None:
    recipients, dev_key = keys
    _only("code-verification", monkeypatch, tmp_path, dev_key)
    defs = load_definitions(_location_config("code-verification", tmp_path, recipients))
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"app_readability_job", "app_restore_verification_job", "app_restore_drill_job",
            "app_warm_copy_job"} <= jobs
    assert not jobs & {"restore", "app_backup_job"}
    assert {schedule.name for schedule in defs.schedules} == {"app_restore_drill_schedule"}
    assert set(defs.resources["dbprotect_secrets"].values) == {
        "APP_BACKUP_DSN", "SCRATCH_ADMIN_DSN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "@scratch-db:" in os.environ["SCRATCH_ADMIN_DSN"] and "@backup-db:" in os.environ["APP_BACKUP_DSN"]

    _only("code-production", monkeypatch, tmp_path, dev_key)
    production = load_definitions(_location_config("code-production", tmp_path, recipients))
    jobs = {job.name for job in production.resolve_all_job_defs()}
    assert "app_backup_job" in jobs
    assert not jobs & {"restore", "app_restore_verification_job", "app_restore_drill_job", "app_warm_copy_job"}


@pytest.mark.parametrize(("service", "foreign"), [
    ("code-development", "APP_PROD_DSN"), ("code-development", "DBPROTECT_RAW_IDENTITY"),
    ("code-development", "APP_BACKUP_DSN"), ("code-production", "APP_DEV_DSN"),
    ("code-production", "DBPROTECT_RAW_IDENTITY"), ("code-verification", "APP_PROD_DSN"),
    ("code-verification", "APP_DEV_DSN"),
])
def test_a_location_given_another_ones_secret_refuses_to_load(
        service: str, foreign: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        keys: tuple[dict[str, str], Path]) -> None:
    recipients, dev_key = keys
    _only(service, monkeypatch, tmp_path, dev_key)
    monkeypatch.setenv(foreign, "postgresql://someone:pw@elsewhere/app")
    config = _location_config(service, tmp_path, recipients)
    if service == "code-development" and foreign == "APP_BACKUP_DSN":
        text = config.read_text(encoding="utf-8").replace(
            "    storage: [minio]", "    warm_copy: {dsn_env: APP_BACKUP_DSN}\n    storage: [minio]", 1)
        config.write_text(text, encoding="utf-8")
    with pytest.raises(CredentialIsolationError):
        load_definitions(config)


# --- keygen -------------------------------------------------------------------------------------

def test_keygen_writes_a_0600_key_pair_prints_the_public_key_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys" / "raw-backups.agekey"
    assert run(["keygen", str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("age1") and len(printed.splitlines()) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    identity = load_identity("K", {"K": f"@{path}"})
    assert str(identity.to_public()) == printed
    assert pyrage.decrypt(pyrage.encrypt(b"x", [pyrage.x25519.Recipient.from_str(printed)]), [identity]) == b"x"
    before = path.read_bytes()
    assert run(["keygen", str(path)]) == RefusedError.exit_code
    assert "DBP941" in capsys.readouterr().err and path.read_bytes() == before
    assert run(["--json", "keygen", str(tmp_path / "second.agekey")]) == 0
    assert '"mode": "0600"' in capsys.readouterr().out


def test_the_wal_receiver_streams_production_with_the_public_key_only() -> None:
    """Issue 15: one supervised receiver, restarted by compose, holding no identity (it only encrypts)."""
    spec = SERVICES["wal-receiver"]
    assert spec["command"][:4] == ["dbprotect", "wal", "receive", "app"]
    assert spec["restart"] == "unless-stopped"
    env = _environment("wal-receiver")
    secrets = {name for name in env if SECRET_NAME.search(name)}
    assert secrets == {"APP_PROD_DSN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # no identity, no Dagster
    assert "@prod-db:" in env["APP_PROD_DSN"] and env["DBPROTECT_CONFIG"] == "/etc/dbprotect/dbprotect.yaml"
    mounts = _mounts("wal-receiver")
    assert mounts["/etc/dbprotect/dbprotect.yaml"] == ("./deploy/dbprotect.yaml", "ro")
    assert not any("keys" in source for source, _ in mounts.values())
    spool = spec["command"][spec["command"].index("--spool") + 1]
    assert any(spool.startswith(target) and source in COMPOSE["volumes"] for target, (source, _) in mounts.items())
    config = yaml.safe_load((ROOT / "deploy" / "dbprotect.yaml").read_text(encoding="utf-8"))
    assert config["databases"]["app"]["continuous"]["slot"]
    assert config["keys"]["raw"]["recipients"] and "identity" not in config["keys"]["raw"]
    # the server lets it: a bounded slot (dbprotect refuses an unbounded one) and replication in pg_hba
    assert any(arg.startswith("max_slot_wal_keep_size=") for arg in SERVICES["prod-db"]["command"])
    init = [m for m in SERVICES["prod-db"]["volumes"] if "allow-replication.sh" in m]
    assert init and "host replication" in (ROOT / "deploy" / "allow-replication.sh").read_text(encoding="utf-8")
