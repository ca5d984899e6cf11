"""The warm copy and the database's own settings (issue 11.1): the refresh applies the backup's
``ALTER DATABASE … SET`` (the on-call restore's safe subset, from the untrusted manifest) and names
them, and ``warm-copy --check`` compares them: a setting changed on the warm copy is a difference.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.config.load import load_config
from dbprotect.core.errors import EXIT_OK
from dbprotect.core.ops import refresh_warm_copy, verify_warm_copy
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.pg.markers import owned_database_settings
from dbprotect_tests.test_warm_copy import _verified_backup, shop  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow


def _admin(pg: Any, statement: str) -> None:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(statement)


def test_the_warm_copy_gets_the_backups_settings_and_its_check_compares_them(
        shop: dict[str, Any], pg: Any, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    source = str(dbname_of(shop["source"]))
    _admin(pg, f"ALTER DATABASE \"{source}\" SET statement_timeout = '5s'")
    _admin(pg, f"ALTER DATABASE \"{source}\" SET app.tenant = 'acme'")
    config = load_config()
    _verified_backup()
    outcome = refresh_warm_copy(config, "shop", actor="test")
    assert outcome.refreshed
    assert set(outcome.settings_applied) == {"statement_timeout", "app.tenant"}, outcome.to_dict()
    assert outcome.to_dict()["settings_applied"] == outcome.settings_applied
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        assert owned_database_settings(admin, shop["warm_name"]) == {
            "": {"statement_timeout": "5s", "app.tenant": "acme"}}
    assert verify_warm_copy(config, "shop", actor="test").ok

    _admin(pg, f"ALTER DATABASE \"{shop['warm_name']}\" SET statement_timeout = '9min'")
    _admin(pg, f"ALTER DATABASE \"{shop['warm_name']}\" RESET app.tenant")
    report = verify_warm_copy(config, "shop", actor="test")
    assert not report.ok
    assert "database setting statement_timeout: value differs from the backup's" in report.problems
    assert "database setting app.tenant: in the backup, missing here" in report.problems
    capsys.readouterr()
    assert run(["warm-copy", "shop", "--check"]) == 7
    assert "statement_timeout" in capsys.readouterr().err

    assert refresh_warm_copy(config, "shop", actor="test", force=True).refreshed  # a forced refresh repairs it
    assert verify_warm_copy(config, "shop", actor="test").ok
    assert run(["warm-copy", "shop", "--check"]) == EXIT_OK
