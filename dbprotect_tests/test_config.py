"""``dbprotect.yaml``: what loads, what is refused (naming file, key and reason), credential
isolation between deployments, and DSN masking."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbprotect.core.config.isolation import check_credential_isolation, resolve_dsn
from dbprotect.core.config.load import CONFIG_ENV, DEPLOYMENT_ENV, load_config
from dbprotect.core.config.model import FilesystemStorageSpec, S3StorageSpec
from dbprotect.core.crypto import generate_keypair
from dbprotect.core.errors import ConfigError, CredentialIsolationError
from dbprotect.core.pg.dsn import mask_dsn

RECIPIENT = generate_keypair()[1]
SECRET = "s3cr3t-Pa55word"


def _doc(deployment: str = "production") -> dict[str, Any]:
    return {
        "deployment": deployment,
        "databases": {
            "shop": {
                "environments": {"production": {"dsn_env": "SHOP_PROD_DSN"},
                                 "development": {"dsn_env": "SHOP_DEV_DSN"}},
                "storage": ["local", "offsite"],
                "backup_schedule": "30 1 * * mon-fri",
                "rpo_hours": 6,
            },
            "crm": {"environments": {"production": {"dsn_env": "CRM_PROD_DSN"}}},
        },
        "storage": {
            "local": {"type": "filesystem", "path": "backups"},
            "offsite": {"type": "s3", "bucket": "acme-backups", "prefix": "/dbprotect/", "region": "eu-west-1",
                        "endpoint_url": "http://127.0.0.1:9000"},
        },
        "keys": {"raw": {"recipients": [RECIPIENT], "identity_env": "RAW_IDENTITY"}},
    }


def _write(tmp_path: Path, doc: dict[str, Any] | str, name: str = "dbprotect.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _refused(tmp_path: Path, doc: dict[str, Any] | str) -> str:
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message  # names the file
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (CONFIG_ENV, DEPLOYMENT_ENV, "SHOP_PROD_DSN", "SHOP_DEV_DSN", "CRM_PROD_DSN", "RAW_IDENTITY"):
        monkeypatch.delenv(name, raising=False)


class TestValidConfiguration:
    def test_loads_with_defaults_and_resolved_storage(self, tmp_path: Path) -> None:
        config = load_config(_write(tmp_path, _doc()))
        assert config.deployment == "production"
        assert config.source == str(tmp_path / "dbprotect.yaml")
        shop, crm = config.database("shop"), config.database("crm")
        assert (shop.backup_schedule, shop.rpo_hours) == ("30 1 * * mon-fri", 6.0)
        assert (crm.backup_schedule, crm.rpo_hours, crm.rto_minutes) == ("0 2 * * *", 24.0, 30.0)
        assert config.storage_names("shop") == ["local", "offsite"]
        assert config.storage_names("crm") == ["local", "offsite"]  # default: every target
        assert config.primary_storage("shop") == "local"
        assert isinstance(config.storage["local"], FilesystemStorageSpec)
        offsite = config.storage["offsite"]
        assert isinstance(offsite, S3StorageSpec) and offsite.prefix == "dbprotect"
        assert config.base_dir() == tmp_path.resolve()

    def test_environment_variable_overrides_the_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        doc = _doc("development")
        path = _write(tmp_path, doc, "elsewhere.yaml")
        monkeypatch.chdir(tmp_path)
        _write(tmp_path, _doc("production"))  # ./dbprotect.yaml, which the variable must override
        monkeypatch.setenv(CONFIG_ENV, str(path))
        config = load_config()
        assert config.source == str(path) and config.deployment == "development"
        monkeypatch.delenv(CONFIG_ENV)
        assert load_config().deployment == "production"

    def test_missing_file_names_the_file_and_the_variable(self, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.yaml"))
        with pytest.raises(ConfigError) as err:
            load_config()
        assert str(err.value) == f"{tmp_path / 'absent.yaml'}: configuration file not found"
        assert CONFIG_ENV in (err.value.hint or "")

    def test_deployment_variable_overrides_the_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DEPLOYMENT_ENV, "demo")
        assert load_config(_write(tmp_path, _doc("production"))).deployment == "demo"


def _mutated(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_doc())
    change(doc)
    return doc


class TestInvalidConfiguration:
    def test_unknown_key(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["databases"]["shop"].update(rpo_hour=6)))
        assert message.endswith("databases.shop.rpo_hour: unknown key")

    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        assert _refused(tmp_path, _mutated(lambda d: d.update(storages={}))).endswith("storages: unknown key")

    def test_missing_key(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["keys"]["raw"].pop("identity_env")))
        assert message.endswith("keys.raw.identity_env: required key is missing")

    def test_missing_storage_path(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["storage"]["local"].pop("path")))
        assert message.endswith("storage.local.path: required key is missing")

    def test_wrong_type(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["databases"]["shop"].update(rpo_hours="soon")))
        assert "databases.shop.rpo_hours: " in message and "number" in message

    def test_non_positive_rpo(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["databases"]["shop"].update(rpo_hours=0)))
        assert "databases.shop.rpo_hours: " in message and "greater than 0" in message

    def test_unknown_deployment_kind(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d.update(deployment="staging")))
        assert "deployment: " in message and "'production', 'development', 'demo' or 'verification'" in message

    def test_unknown_storage_type(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["storage"]["local"].update(type="ftp")))
        assert "storage.local: " in message and "'ftp'" in message

    @pytest.mark.parametrize("cron, reason", [
        ("every day", "five-field"),
        ("0 2 * *", "five-field"),
        ("61 2 * * *", "minute field '61'"),
        ("0 24 * * *", "hour field '24'"),
        ("0 2 0 * *", "day-of-month field '0'"),
        ("0 2 * 13 *", "month field '13'"),
        ("0 2 * * funday", "day-of-week field 'funday'"),
        ("*/0 2 * * *", "minute field '*/0'"),
        ("0 2-x * * *", "hour field '2-x'"),
    ])
    def test_bad_cron(self, tmp_path: Path, cron: str, reason: str) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["databases"]["shop"].update(backup_schedule=cron)))
        assert "databases.shop.backup_schedule: " in message and reason in message

    @pytest.mark.parametrize("cron", ["*/15 * * * *", "0 2 * * 0", "0 2 * * 7", "5,35 1-5 1 jan,jul sun-sat"])
    def test_good_cron(self, tmp_path: Path, cron: str) -> None:
        doc = _mutated(lambda d: d["databases"]["shop"].update(backup_schedule=cron))
        assert load_config(_write(tmp_path, doc)).database("shop").backup_schedule == cron

    # The last one differs from a real key in its final character (its bech32 checksum then fails).
    # Fixed ids: the key is new in each process, and xdist refuses workers that collect different ids.
    @pytest.mark.parametrize("recipient", ["ssh-ed25519 AAAAC3Nza", "age1notarealkeyatall",
                                           RECIPIENT[:-1] + ("y" if RECIPIENT.endswith("x") else "x")],
                             ids=["ssh-key", "not-bech32", "bad-checksum"])
    def test_bad_age_recipient(self, tmp_path: Path, recipient: str) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["keys"]["raw"].update(recipients=[recipient])))
        assert "keys.raw.recipients: " in message and "is not an age X25519 recipient" in message

    def test_storage_reference_to_an_undefined_target(self, tmp_path: Path) -> None:
        message = _refused(tmp_path, _mutated(lambda d: d["databases"]["shop"].update(storage=["local", "tape"])))
        assert "databases.shop.storage" in message and "'tape'" in message and "not under storage" in message
        assert "<top level>" not in message

    def test_invalid_yaml_reports_the_line(self, tmp_path: Path) -> None:
        text = "deployment: demo\ndatabases:\n  shop:\n    environments: {production: {dsn_env: X}\nstorage: {}\n"
        message = _refused(tmp_path, text)
        assert "not valid YAML (line " in message
        line = int(message.split("(line ")[1].split(",")[0])
        assert 4 <= line <= 5, message  # the unclosed brace opened on line 4

    def test_top_level_must_be_a_mapping(self, tmp_path: Path) -> None:
        assert "top level must be a mapping" in _refused(tmp_path, "- just\n- a list\n")

    def test_several_problems_are_counted(self, tmp_path: Path) -> None:
        def change(d: dict[str, Any]) -> None:
            d["databases"]["shop"]["color"] = "blue"
            d["storage"]["local"]["size"] = 3
        assert "(and 1 more problem(s))" in _refused(tmp_path, _mutated(change))


class TestCredentialIsolation:
    def _config(self, tmp_path: Path, deployment: str) -> Any:
        return load_config(_write(tmp_path, _doc(deployment)))

    def _assert_secret_free(self, err: CredentialIsolationError) -> None:
        assert SECRET not in str(err) and SECRET not in (err.hint or "")
        assert "\n" not in str(err)

    def test_development_deployment_refuses_the_production_dsn(self, tmp_path: Path) -> None:
        config = self._config(tmp_path, "development")
        environ = {"SHOP_DEV_DSN": "postgresql://dev@devhost/shop",
                   "SHOP_PROD_DSN": f"postgresql://admin:{SECRET}@prod/shop"}
        with pytest.raises(CredentialIsolationError) as err:
            check_credential_isolation(config, environ)
        assert "$SHOP_PROD_DSN" in str(err.value) and "development deployment refuses" in str(err.value)
        assert "SHOP_PROD_DSN" in (err.value.hint or "")
        self._assert_secret_free(err.value)

    def test_development_deployment_refuses_the_raw_identity(self, tmp_path: Path) -> None:
        config = self._config(tmp_path, "development")
        identity = generate_keypair()[0]
        with pytest.raises(CredentialIsolationError) as err:
            check_credential_isolation(config, {"SHOP_DEV_DSN": "postgresql://dev@h/shop", "RAW_IDENTITY": identity})
        assert "$RAW_IDENTITY" in str(err.value)
        assert identity not in str(err.value) and identity not in (err.value.hint or "")

    def test_production_deployment_refuses_the_development_dsn(self, tmp_path: Path) -> None:
        config = self._config(tmp_path, "production")
        environ = {"SHOP_PROD_DSN": "postgresql://p@prod/shop", "SHOP_DEV_DSN": f"postgresql://d:{SECRET}@dev/shop"}
        with pytest.raises(CredentialIsolationError) as err:
            check_credential_isolation(config, environ)
        assert "$SHOP_DEV_DSN" in str(err.value)
        self._assert_secret_free(err.value)

    def test_production_deployment_with_its_own_credentials_loads(self, tmp_path: Path) -> None:
        config = self._config(tmp_path, "production")
        environ = {"SHOP_PROD_DSN": "postgresql://p@prod/shop?sslmode=verify-full", "RAW_IDENTITY": "AGE-SECRET-KEY-1X",
                   "SHOP_DEV_DSN": ""}  # set but empty counts as absent; TLS: production refuses plaintext (DBP940)
        check_credential_isolation(config, environ)
        assert resolve_dsn(config, "shop", "production", environ) == "postgresql://p@prod/shop?sslmode=verify-full"

    def test_demo_allows_both(self, tmp_path: Path) -> None:
        config = self._config(tmp_path, "demo")
        environ = {"SHOP_PROD_DSN": "postgresql://p@h/shop", "SHOP_DEV_DSN": "postgresql://d@h/shop_dev",
                   "RAW_IDENTITY": "AGE-SECRET-KEY-1X"}
        check_credential_isolation(config, environ)
        assert resolve_dsn(config, "shop", "development", environ) == "postgresql://d@h/shop_dev"

    def test_isolation_reads_the_process_environment_by_default(self, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
        config = self._config(tmp_path, "development")
        monkeypatch.setenv("CRM_PROD_DSN", f"host=prod password={SECRET}")
        with pytest.raises(CredentialIsolationError) as err:
            check_credential_isolation(config)
        assert "$CRM_PROD_DSN" in str(err.value) and "'crm'" in str(err.value)
        self._assert_secret_free(err.value)

    def test_resolve_dsn_refuses_an_environment_the_deployment_may_not_reach(self, tmp_path: Path) -> None:
        config = self._config(tmp_path, "development")
        with pytest.raises(CredentialIsolationError):
            resolve_dsn(config, "shop", "production", {"SHOP_PROD_DSN": f"postgresql://a:{SECRET}@h/shop"})

    def test_resolve_dsn_names_the_unset_variable(self, tmp_path: Path) -> None:
        config = self._config(tmp_path, "production")
        with pytest.raises(ConfigError) as err:
            resolve_dsn(config, "shop", "production", {})
        assert "$SHOP_PROD_DSN is not set" in str(err.value)


class TestMaskDsn:
    @pytest.mark.parametrize("dsn, expected", [
        (f"postgresql://admin:{SECRET}@db.example.com:5432/shop", "postgresql://admin:****@db.example.com:5432/shop"),
        ("postgresql://admin@db.example.com/shop", "postgresql://admin@db.example.com/shop"),
        ("postgresql://db.example.com/shop?sslmode=require", "postgresql://db.example.com/shop?sslmode=require"),
        (f"postgres://u:{SECRET}@/shop?host=/tmp/sock", "postgres://u:****@/shop?host=/tmp/sock"),
        (f"postgresql://u@h/shop?sslmode=require&password={SECRET}",
         "postgresql://u@h/shop?sslmode=require&password=****"),
        ("postgresql://u:@h/shop", "postgresql://u:@h/shop"),
        (f"host=db port=5432 user=admin password={SECRET} dbname=shop",
         "host=db port=5432 user=admin password=**** dbname=shop"),
        (f"host=db PASSWORD = '{SECRET} with space' dbname=shop", "host=db PASSWORD = **** dbname=shop"),
        ("host=db user=admin dbname=shop", "host=db user=admin dbname=shop"),
    ])
    def test_masks_every_password_form(self, dsn: str, expected: str) -> None:
        assert mask_dsn(dsn) == expected
        assert SECRET not in mask_dsn(dsn)

    def test_password_containing_at_sign_and_colon(self) -> None:
        masked = mask_dsn("postgresql://admin:p%40ss:w@rd@host/db")
        assert masked == "postgresql://admin:****@host/db"
