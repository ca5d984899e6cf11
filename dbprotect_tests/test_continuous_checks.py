"""Continuous protection's configuration and start-up checks: each unsafe server setting is its own
one-line refusal, judged on the real embedded PostgreSQL 18 (``wal_server``, a server of its own).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from dbprotect.core.config.model import ContinuousSpec
from dbprotect.core.continuous.checks import ServerSetup, check_server, check_setup
from dbprotect.core.errors import Refusals, RefusedError
from dbprotect_tests.fixtures.cli import run_json


def test_continuous_configuration_defaults_and_validation() -> None:
    spec = ContinuousSpec(slot="dbprotect_shop")
    assert (spec.incremental, spec.partial_upload_seconds, spec.synchronous) == (True, 15, False)
    with pytest.raises(ValidationError):
        ContinuousSpec(slot="Bad Slot!")
    with pytest.raises(ValidationError):
        ContinuousSpec(slot="ok", base_backup_schedule="every sunday")
    with pytest.raises(ValidationError):
        ContinuousSpec(slot="ok", partial_upload_seconds=0)


def _setup(**changes: object) -> ServerSetup:
    values: dict[str, object] = {"wal_level": "replica", "summarize_wal": True, "max_slot_wal_keep_size": "256MB",
                                 "role": "backup", "can_replicate": True, "server_major": 18}
    values.update(changes)
    return ServerSetup(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "refusal"), [
    ({"wal_level": "minimal"}, Refusals.WAL_LEVEL_TOO_LOW),
    ({"can_replicate": False}, Refusals.NO_REPLICATION_ROLE),
    ({"summarize_wal": False}, Refusals.WAL_SUMMARIES_OFF),
    ({"max_slot_wal_keep_size": "-1"}, Refusals.UNBOUNDED_SLOT),
])
def test_each_unsafe_setting_is_its_own_refusal(changes: dict[str, object], refusal: object) -> None:
    with pytest.raises(RefusedError) as caught:
        check_setup(_setup(**changes), incremental=True, label="shop")
    assert caught.value.refusal is refusal
    assert "\n" not in caught.value.one_line()


def test_safe_settings_pass_and_summaries_matter_only_for_incremental() -> None:
    check_setup(_setup(), incremental=True, label="shop")
    check_setup(_setup(summarize_wal=False), incremental=False, label="shop")


def test_unbounded_slot_refusal_says_why() -> None:
    with pytest.raises(RefusedError, match="disk") as caught:
        check_setup(_setup(max_slot_wal_keep_size="-1"), incremental=False, label="shop")
    assert caught.value.code == "DBP963"


def test_checks_read_the_real_server(wal_server: str) -> None:
    with psycopg.connect(wal_server, autocommit=True) as conn:
        setup = check_server(conn, incremental=True, label="shop")
        assert setup.wal_level == "replica" and setup.summarize_wal and setup.can_replicate
        conn.execute("CREATE ROLE plain_reader LOGIN")
        try:
            conn.execute("SET ROLE plain_reader")
            with pytest.raises(RefusedError) as caught:
                check_server(conn, incremental=False, label="shop")
            assert caught.value.refusal is Refusals.NO_REPLICATION_ROLE
        finally:
            conn.execute("RESET ROLE")
            conn.execute("DROP ROLE plain_reader")


def test_wal_commands_refuse_a_database_without_continuous(write_config: Callable[..., Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_config(None)
    code, document, _err = run_json(capsys, "wal", "status", "shop")
    assert code == 2 and "continuous" in document["error"]["message"]
