"""The ``dbprotect`` CLI against a real PostgreSQL (Chinook) and a real filesystem store.

Most tests call :func:`dbprotect.cli.app.run` in-process (the same entry point the console script
uses, including its one-place error handling); the failure cases that promise "one line, no
traceback, no password" also run the installed console script as a separate process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbprotect.cli.app import run
from dbprotect.cli.ui.render import scrub
from dbprotect.core.errors import EXIT_RPO_VIOLATED, EXIT_USAGE
from dbprotect_tests.fixtures.cli import run_json

DBPROTECT = Path(sys.executable).parent / "dbprotect"


def _console_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DBPROTECT), *args], capture_output=True, text=True, timeout=120, env=os.environ.copy())


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def chinook_config(chinook_dsn: str, write_config) -> Path:
    return write_config(chinook_dsn, database="chinook")


@pytest.mark.parametrize("command", [[], ["status"], ["backup"], ["list"], ["verify"], ["demo"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: dbprotect {' '.join(command)}".rstrip())
    assert "--json" in out and "--config PATH" in out
    expected = {"": "11 status: a database violates its RPO", "status": "Exits 11", "backup": "snapshot",
                "list": "--all", "verify": "--stored-only", "demo": "--rows N"}
    assert expected[" ".join(command)] in " ".join(out.split())


def test_backup_list_verify_status(chinook_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, backup, _ = run_json(capsys, "backup", "chinook")
    assert code == 0
    backup_id = backup["backup_id"]
    assert backup["rows"]["public.track"] == 3503 and backup["total_rows"] > 15000
    assert backup["stored_bytes"] < backup["dump_bytes"] and backup["compression_ratio"] > 1
    assert backup["uri"].endswith(f"/chinook/{backup_id}/dump.zst.age")

    code, listing, _ = run_json(capsys, "list", "chinook")
    assert code == 0
    assert [(b["backup_id"], b["status"]) for b in listing["backups"]] == [(backup_id, "unverified")]

    # Not yet verified: no recovery point, so the RPO is violated and status says so by exit code.
    code, status, _ = run_json(capsys, "status")
    assert code == EXIT_RPO_VIOLATED
    assert status["ok"] is False and status["rpo_violations"] == ["chinook"]

    assert run(["verify", backup_id]) == 0
    out = capsys.readouterr().out
    assert f"backup {backup_id} of chinook: ok" in out
    assert "stored" in out and "readable" in out and "tables match the manifest" in out

    code, listing, _ = run_json(capsys, "list", "chinook")
    assert listing["backups"][0]["status"] == "verified:readable"
    code, status, _ = run_json(capsys, "status")
    assert code == 0
    (row,) = status["databases"]
    assert row["rpo"]["ok"] is True and row["rpo"]["newest_verified_backup"] == backup_id
    assert row["newest_backup"]["status"] == "verified:readable"

    assert run(["status"]) == 0  # the human table renders from the same data
    assert backup_id in capsys.readouterr().out


@pytest.mark.slow
def test_flipped_byte_fails_verify_with_exit_7(chinook_config: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["backup", "chinook"]) == 0
    out = capsys.readouterr().out
    backup_id = out.split()[1]
    _flip_one_byte(tmp_path / "store" / "chinook" / backup_id / "dump.zst.age")

    result = _console_script("verify", backup_id)
    assert result.returncode == 7
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error[DBP007]: backup {backup_id} of chinook failed verification: "
                               "rung stored: SHA-256 mismatch")
    assert "rung readable: decryption failed" in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stdout + result.stderr
    assert "FAILED" in result.stdout  # the per-rung report is still printed

    code, document, _ = run_json(capsys, "verify", "latest")
    assert code == 7
    assert document["error"]["code"] == "DBP007"
    assert document["verification"]["ok"] is False
    assert [r["ok"] for r in document["verification"]["results"]] == [False, False]
    code, listing, _ = run_json(capsys, "list", "chinook")
    assert listing["backups"][0]["status"] == "failed:stored,readable"


def test_stored_only_needs_no_private_key(chinook_config: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["backup", "chinook"]) == 0
    capsys.readouterr()
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    code, document, _ = run_json(capsys, "verify", "latest", "--database", "chinook", "--stored-only")
    assert code == 0
    assert [(r["rung"], r["ok"]) for r in document["results"]] == [("stored", True)]
    code = run(["verify", "latest"])
    err = capsys.readouterr().err
    assert code == 8  # a missing key is a key problem, as the README's table says (issue 13)
    assert err.startswith("error[DBP008]: $TEST_RAW_IDENTITY is not set")


def test_missing_config_is_one_line_exit_2(tmp_path: Path) -> None:
    result = _console_script("--config", str(tmp_path / "nowhere.yaml"), "status")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error[DBP002]: {tmp_path / 'nowhere.yaml'}: configuration file not found",
        "hint: create it, point DBPROTECT_CONFIG at it, or run 'dbprotect demo' for a working example",
    ]


@pytest.mark.slow
def test_unreachable_database_exit_4_never_shows_password(write_config) -> None:
    write_config("postgresql://u:secretpw@127.0.0.1:1/x", database="shop")
    human = _console_script("backup", "shop")
    machine = _console_script("backup", "shop", "--json")
    for result in (human, machine):
        assert result.returncode == 4
        assert "secretpw" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert lines[0].startswith("error[DBP004]: cannot connect to postgresql://u:****@127.0.0.1:1/x")
        assert len(lines) <= 2
    assert json.loads(machine.stdout)["error"]["code"] == "DBP004"


def test_unknown_names_and_bad_usage(chinook_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list", "nope"]) == 10
    assert capsys.readouterr().err.startswith("error[DBP010]: no database 'nope'")
    assert run(["frobnicate"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("error[USAGE]: No such command 'frobnicate'")
    code, document, _ = run_json(capsys, "verify")
    assert code == EXIT_USAGE and document["error"]["code"] == "USAGE"


def test_scrub_masks_passwords_in_both_dsn_forms() -> None:
    text = "failed: postgresql://app:hunter2@db:5432/shop and host=db password=hunter2 user=app"
    assert "hunter2" not in scrub(text)
    assert "postgresql://app:****@db:5432/shop" in scrub(text)
