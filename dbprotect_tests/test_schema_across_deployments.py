"""Issue 14 point 3, end to end: isolated production and development deployments of one database.

Production backs up (writing the schema snapshot); development, with no production DSN and no
raw key, sees drift through its Dagster asset check and the CLI, and writes a plan file bound
to the snapshot's hash; only production pushes it, and only against that same schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dbprotect.cli.app import run
from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.crypto import generate_keypair
from dbprotect.core.errors import IntegrityError
from dbprotect.core.ops import backup_database
from dbprotect.core.schema.drift import DriftReport
from dbprotect.core.schema.planfile import read_plan_file
from dbprotect.core.schema.stored import StoredSnapshot
from dbprotect.defs.resources import CONFIG_RESOURCE, DbprotectConfigResource, build_resources
from dbprotect.defs.schema import SNAPSHOT_DRIFT_CHECK, build_schema_definitions, snapshot_drift_evaluation
from dbprotect_tests.fixtures.fix_pg import PgServer, mark_environment, psql

pytestmark = pytest.mark.slow

SCHEMA = "CREATE TABLE t (id int PRIMARY KEY, name text);"


class Deployments:
    """Two configuration files and the environment each deployment has (switching one for the other)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prod: str, dev: str, raw_identity: str,
                 dev_identity: str, scratch: str) -> None:
        self.monkeypatch, self.prod, self.dev = monkeypatch, prod, dev
        self.raw_identity, self.dev_identity, self.scratch = raw_identity, dev_identity, scratch
        self.paths: dict[str, Path] = {}
        base = yaml.safe_load((tmp_path / "dbprotect.yaml").read_text(encoding="utf-8"))
        for deployment in ("production", "development"):
            doc = {**base, "deployment": deployment}
            doc["databases"]["shop"]["allow_plaintext"] = True
            self.paths[deployment] = tmp_path / f"{deployment}.yaml"
            self.paths[deployment].write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    def use(self, deployment: str) -> None:
        """Exactly the variables that deployment holds; the load refuses if another's leaked in."""
        own = {"production": {"TEST_SHOP_PROD_DSN": self.prod, "TEST_RAW_IDENTITY": self.raw_identity},
               "development": {"TEST_SHOP_DEV_DSN": self.dev, "TEST_DEV_IDENTITY": self.dev_identity}}
        for name in (*own["production"], *own["development"]):
            self.monkeypatch.delenv(name, raising=False)
        for name, value in own[deployment].items():
            self.monkeypatch.setenv(name, value)
        self.monkeypatch.setenv("TEST_SCRATCH_ADMIN_DSN", self.scratch)
        self.monkeypatch.setenv("DBPROTECT_CONFIG", str(self.paths[deployment]))
        check_credential_isolation(load_config())


@pytest.fixture
def deployments(make_db: Callable[..., str], write_config: Callable[..., Path], pg: PgServer,
                age_keys: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployments:
    dev_identity, dev_recipient = generate_keypair()
    prod, dev = make_db(SCHEMA, prefix="prod"), make_db(SCHEMA, prefix="dev")
    mark_environment(prod, "production")
    mark_environment(dev, "development")
    write_config(prod, database="shop", extra={
        "keys": {"raw": {"recipients": [age_keys[1]], "identity_env": "TEST_RAW_IDENTITY"},
                 "development": {"recipients": [dev_recipient], "identity_env": "TEST_DEV_IDENTITY"}},
        "scratch": {"admin_dsn_env": "TEST_SCRATCH_ADMIN_DSN"}})
    return Deployments(tmp_path, monkeypatch, prod, dev, age_keys[0], dev_identity, pg.admin_dsn)


def _columns(dsn: str) -> list[str]:
    return psql(dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 't' "
                "ORDER BY ordinal_position").split()


def test_the_development_asset_check_sees_a_production_column_from_the_snapshot(
        deployments: Deployments, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployments.use("production")
    psql(deployments.prod, "ALTER TABLE t ADD COLUMN discount numeric(5,2)")
    newest = backup_database(load_config(), "shop").manifest.backup_id

    deployments.use("development")
    config = load_config()
    defs = build_schema_definitions(config)
    checks = list(defs.asset_checks or [])
    assert [spec.name for check in checks for spec in check.check_specs] == [SNAPSHOT_DRIFT_CHECK]
    assert [key.to_user_string() for a in defs.assets or [] for key in a.keys] == ["shop/schema_development"]
    resources = {**build_resources(config),
                 CONFIG_RESOURCE: DbprotectConfigResource(path=str(deployments.paths["development"]))}

    def evaluate() -> dg.AssetCheckEvaluation:
        result = dg.materialize([*(defs.assets or []), *checks], resources=resources,
                                instance=dg.DagsterInstance.ephemeral())
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    drifted = evaluate()
    assert not drifted.passed and drifted.severity == dg.AssetCheckSeverity.ERROR
    assert drifted.metadata["drift"].value == f"column public.t.discount: only in production (snapshot {newest})"
    assert drifted.metadata["snapshot_backup_id"].value == newest
    # the CLI says the same, exit 9
    assert run(["schema", "drift", "shop", "--from-snapshot"]) == 9
    assert f"column public.t.discount: only in production (snapshot {newest})" in capsys.readouterr().out

    psql(deployments.dev, "ALTER TABLE t ADD COLUMN discount numeric(5,2)")
    assert evaluate().passed
    assert run(["schema", "drift", "shop", "--from-snapshot"]) == 0


def test_no_drift_against_a_snapshot_older_than_the_rpo_is_a_warning_not_a_pass() -> None:
    taken = datetime(2026, 1, 1, tzinfo=UTC)
    snapshot = StoredSnapshot("shop", "20260101T000000Z", "0" * 64, "18", "", started_at=taken)
    clean = DriftReport(left="development", right="production", items=())
    fresh = snapshot_drift_evaluation(clean, snapshot, rpo_hours=24, now=taken + timedelta(hours=23))
    assert fresh.passed
    stale = snapshot_drift_evaluation(clean, snapshot, rpo_hours=24, now=taken + timedelta(hours=25))
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
    assert "older than the RPO" in (stale.description or "")


def _make_plan(deployments: Deployments, out: Path) -> None:
    deployments.use("production")
    backup_database(load_config(), "shop")
    deployments.use("development")
    psql(deployments.dev, "ALTER TABLE t ADD COLUMN note text")
    assert run(["schema", "diff", "development", "production", "shop", "--from-snapshot", "--out", str(out)]) == 0


def test_a_plan_file_from_development_is_pushed_only_by_production(
        deployments: Deployments, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    _make_plan(deployments, out)
    plan = read_plan_file(out)
    assert plan.sql == 'alter table "public"."t" add column "note" text;\n' and not plan.unplannable
    assert "left no difference" in plan.proof
    capsys.readouterr()

    # the development deployment only writes plans
    assert run(["schema", "push", "--plan", str(out), "--confirm", "shop"]) == 9
    assert "DBP952" in capsys.readouterr().err

    deployments.use("production")
    assert run(["schema", "push", "--plan", str(out)]) == 9  # no typed confirmation
    assert _columns(deployments.prod) == ["id", "name"]
    assert run(["schema", "push", "--plan", str(out), "--confirm", "shop"]) == 0
    assert _columns(deployments.prod) == ["id", "name", "note"]
    # applied once: production's schema is no longer the one the plan was made against
    capsys.readouterr()
    assert run(["schema", "push", "--plan", str(out), "--confirm", "shop"]) == 9
    assert "DBP953" in capsys.readouterr().err


def test_a_plan_made_against_another_snapshot_is_refused_and_nothing_changes(
        deployments: Deployments, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    _make_plan(deployments, out)
    deployments.use("production")
    psql(deployments.prod, "CREATE INDEX t_name_idx ON t (name)")  # production moved on since the snapshot
    capsys.readouterr()
    assert run(["schema", "push", "--plan", str(out), "--confirm", "shop"]) == 9
    err = capsys.readouterr().err
    assert "DBP953" in err and len(err.strip().splitlines()) <= 2
    assert _columns(deployments.prod) == ["id", "name"]


def test_a_tampered_plan_file_is_refused(deployments: Deployments, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    _make_plan(deployments, out)
    good = json.loads(out.read_text(encoding="utf-8"))
    deployments.use("production")

    def tampered(**changes: object) -> str:
        path = tmp_path / f"tampered-{len(list(tmp_path.glob('tampered-*')))}.json"
        path.write_text(json.dumps({**good, **changes}), encoding="utf-8")
        return str(path)

    # the development schema is loaded on the scratch server: parsed and allow-listed first
    with pytest.raises(IntegrityError, match="CopyStmt"):
        read_plan_file(tampered(source_schema=good["source_schema"] + "\nCOPY t FROM PROGRAM 'id';\n"))
    with pytest.raises(IntegrityError, match="not a dbprotect plan file"):
        read_plan_file(tampered(extra="x"))
    with pytest.raises(IntegrityError, match="development -> production"):
        read_plan_file(tampered(source="production", target="development"))
    # a plan whose SQL does not make production equal development's schema is disproved on a copy
    capsys.readouterr()
    assert run(["schema", "push", "--plan", tampered(sql="ALTER TABLE public.t ADD COLUMN other integer;\n"),
                "--confirm", "shop"]) == 9
    assert "DBP951" in capsys.readouterr().err
    # a forged hash never passes: production's own schema is hashed again
    assert run(["schema", "push", "--plan", tampered(source_snapshot_sha256="f" * 64), "--confirm", "shop"]) == 9
    assert "DBP953" in capsys.readouterr().err
    assert _columns(deployments.prod) == ["id", "name"]
