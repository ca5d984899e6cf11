"""The CLI items of issue 13, point 7: each one as a person meets it, against real PostgreSQL and squawk.

A count shown as a count, a server shown decoded, a backup that says it is not verified yet, a
progress bar that ends full, a stopped server with a hint, a missing key with the README's exit
status, each lint problem once, one confirmation wording whose hint describes the value to type.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from dbprotect.cli.app import run
from dbprotect.cli.commands.restores import phase_line
from dbprotect.cli.ui.render import ByteBar, Ui, server_where
from dbprotect.core.errors import CryptoError, DatabaseError
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.restore.guards import CONFIRMATION_HINT
from dbprotect.core.schema.lint import lint_files

SHOP_SQL = "CREATE TABLE orders (id serial PRIMARY KEY, note text); INSERT INTO orders (note) VALUES ('a'), ('b');"


def test_a_count_among_the_phases_is_not_shown_as_seconds() -> None:
    line = phase_line({"restore_seconds": 1.5, "tables_released_during_restore": 5, "verify_seconds": 0.25})
    assert line == "restore 1.50 s, tables_released_during_restore 5, verify 0.25 s"


@pytest.mark.parametrize(("masked", "shown"), [
    ("postgresql://app:****@/postgres?host=%2Fvar%2Frun%2Fpg%29x&port=5433", "server /var/run/pg)x:5433"),
    ("postgresql://app:****@db.example.com:5432/postgres", "server db.example.com:5432"),
    ("host=/tmp/sock port=5432 dbname=postgres user=app password=****", "server /tmp/sock:5432"),
])
def test_a_server_is_shown_decoded_and_without_its_user(masked: str, shown: str) -> None:
    assert server_where(masked) == shown


class _Terminal(Ui):
    def console(self, *, stderr: bool = False) -> Console:
        return Console(file=io.StringIO(), force_terminal=True, width=100)


def test_the_progress_bar_ends_full_when_the_estimate_was_too_high() -> None:
    bar = ByteBar(_Terminal(), "backing up shop")
    bar(840, 1000)
    assert bar.percentage() == pytest.approx(84.0)
    bar.finish()
    assert bar.percentage() == pytest.approx(100.0)
    bar.stop()


@pytest.mark.slow
def test_backup_says_it_is_not_verified_yet_and_how_to_verify(make_db, write_config,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    write_config(make_db(SHOP_SQL, prefix="shop"))
    assert run(["backup", "shop"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.endswith("of shop: stored, not verified yet") and "done" not in first
    backup_id = first.split()[1]
    assert f"verify it: dbprotect verify {backup_id} --database shop" in out
    assert run(["verify", backup_id, "--database", "shop"]) == 0


def test_a_stopped_server_gives_dbp004_with_a_hint(write_config, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty_socket_folder = tmp_path / "no-server-here"
    empty_socket_folder.mkdir()
    write_config(f"postgresql://app@/shop?host={empty_socket_folder}&port=5999")
    assert run(["backup", "shop"]) == DatabaseError.exit_code == 4
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error[DBP004]: cannot connect to") and len(err) == 2
    assert err[1].startswith("hint: no server is listening there: start PostgreSQL")


@pytest.mark.slow
def test_a_missing_key_exits_8_as_the_readme_says(make_db, write_config, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_config(make_db(SHOP_SQL, prefix="shop"))
    assert run(["backup", "shop"]) == 0
    monkeypatch.delenv("TEST_RAW_IDENTITY")
    capsys.readouterr()
    assert run(["verify", "latest"]) == CryptoError.exit_code == 8
    err = capsys.readouterr().err
    assert err.startswith("error[DBP008]: $TEST_RAW_IDENTITY is not set")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "| 8 | DBP008 | key problem (missing," in readme


def test_lint_reports_each_problem_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    migration = tmp_path / "005_cleanup.sql"
    migration.write_text("ALTER TABLE orders\n  DROP COLUMN note;\nDROP TABLE legacy;\n", encoding="utf-8")
    rules = [(finding.line, finding.rule, finding.source) for finding in lint_files([migration]).findings]
    assert ("ban-drop-column" not in {rule for _, rule, _ in rules}
            and "ban-drop-table" not in {rule for _, rule, _ in rules})
    assert (1, "drop-column", "dbprotect") in rules and (3, "drop-table", "dbprotect") in rules
    assert run(["lint", str(migration)]) == 9
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if "DROP COLUMN" in line or "drop-column" in line]) == 1


@pytest.mark.slow
def test_guard_and_restore_ask_for_the_same_confirmation_and_hint_without_the_value(
        make_db, write_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    production = make_db(SHOP_SQL, prefix="shop")
    name = dbname_of(production)
    assert name
    write_config(production)
    monkeypatch.setenv("TEST_SHOP_DEV_DSN", make_db(prefix="shopdev"))
    assert run(["mark", "shop", "production"]) == 0
    ran = tmp_path / "ran"
    capsys.readouterr()
    assert run(["guard", "-d", "shop", "-e", "production", "--confirm", "shop", "--", "touch", str(ran)]) == 9
    guard_err = capsys.readouterr().err.splitlines()
    assert guard_err[0] == (f"error[DBP906]: refused: running 'touch {ran}' against database '{name}' needs its "
                            "name as confirmation (you typed 'shop'); nothing was changed")
    assert guard_err[1] == f"hint: {CONFIRMATION_HINT}" and name not in guard_err[1]
    assert not ran.exists()
    assert run(["backup", "shop"]) == 0
    assert run(["verify", "latest"]) == 0
    capsys.readouterr()
    assert run(["restore", "shop", "--target", "production"]) == 9
    restore_err = capsys.readouterr().err.splitlines()
    assert restore_err[0] == (f"error[DBP906]: refused: overwriting database '{name}' needs its name as "
                              "confirmation (you typed nothing); nothing was changed")
    assert restore_err[1] == guard_err[1]
    assert run(["guard", "-d", "shop", "-e", "production", "--confirm", name, "--", "touch", str(ran)]) == 0
    assert ran.exists()



def test_a_waiver_in_squawks_name_waives_the_one_finding_left(tmp_path: Path) -> None:
    migration = tmp_path / "006_drop.sql"
    migration.write_text("-- dbprotect: allow ban-drop-column because unused since 4.2\n"
                         "ALTER TABLE orders DROP COLUMN note;\n", encoding="utf-8")
    result = lint_files([migration])
    assert result.ok and [finding.rule for finding, _ in result.waived] == ["drop-column"]
