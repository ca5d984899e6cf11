"""Every command's --help works, and every copy of the exit-code table is the one in ``core.errors``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest

from dbprotect.cli.app import EXIT_CODES_HELP, cli, run
from dbprotect.core import errors
from dbprotect.core.errors import EXIT_STATUSES, DbprotectError, exit_status_markdown, exit_status_plain

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand of ``group`` as its argv prefix, found by walking the group."""
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, (*prefix, name)))
    return paths


COMMANDS = [(), *_command_paths(cli)]


def test_the_walk_finds_the_subcommands() -> None:
    assert {("schema", "drift"), ("sanitize", "build"), ("warm-copy",), ("check-target",)} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda path: " ".join(path) or "dbprotect")
def test_help_exits_0_for_every_command(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: dbprotect {' '.join(command)}".rstrip())


def _subclasses(cls: type) -> set[type]:
    return {cls} | {sub for direct in cls.__subclasses__() for sub in _subclasses(direct)}


def test_the_table_covers_every_error_class_with_its_own_code() -> None:
    rows = {row.code: row.exit_status for row in EXIT_STATUSES}
    for error in _subclasses(DbprotectError):
        assert rows.get(error.code) == error.exit_code, error.__name__
    statuses = [row.exit_status for row in EXIT_STATUSES]
    assert statuses == sorted(set(statuses)), "one row per exit status, in order"
    assert {"OK", "RPO_VIOLATED", "RTO_EXCEEDED", "USAGE", "INTERNAL", "INTERRUPTED"} <= set(rows)


def test_readme_holds_exactly_the_generated_table() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| exit | code | meaning |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) == exit_status_markdown()
    assert sum(line.startswith("| exit |") for line in lines) == 1, "one exit-code table in the README"


def test_cli_help_shows_the_generated_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert EXIT_CODES_HELP.endswith(exit_status_plain())
    assert run(["--help"]) == 0
    # all whitespace dropped: the help wraps to the terminal's width, which other tests may change, and
    # may break a line after a hyphen ("warm-" / "copy")
    out = "".join(capsys.readouterr().out.split())
    assert "".join(exit_status_plain().split()) in out


def test_the_module_prints_the_table_for_pasting() -> None:
    printed = subprocess.run([sys.executable, "-m", errors.__name__], capture_output=True, text=True, check=True)
    assert printed.stdout == exit_status_markdown() + "\n"


def test_every_refusal_has_its_own_code_and_the_readme_lists_them() -> None:
    refusals = errors.Refusals.all()
    codes = [refusal.code for refusal in refusals]
    assert len(set(codes)) == len(codes) and all(code.startswith("DBP9") and len(code) == 6 for code in codes)
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| refusal | refused because |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) == errors.refusal_markdown()
    printed = subprocess.run([sys.executable, "-m", errors.__name__, "--refusals"], capture_output=True, text=True,
                             check=True)
    assert printed.stdout == errors.refusal_markdown() + "\n"


def test_a_refusal_names_its_rule() -> None:
    with pytest.raises(TypeError):
        errors.RefusedError("refused without a rule")  # type: ignore[call-arg]
    refused = errors.RefusedError("refused: typed the wrong name", refusal=errors.Refusals.CONFIRMATION)
    assert (refused.code, refused.exit_code, refused.refusal) == ("DBP906", 9, errors.Refusals.CONFIRMATION)


def _refusal_calls() -> list[tuple[str, int, str | None]]:
    """Every ``RefusedError(...)`` in the package, with the ``Refusals`` member it names (None if none)."""
    found = []
    for path in sorted(Path(errors.__file__).parents[1].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RefusedError":
                named = next((k.value for k in node.keywords if k.arg == "refusal"), None)
                member = named.attr if isinstance(named, ast.Attribute) and \
                    getattr(named.value, "id", None) == "Refusals" else None
                found.append((path.name, node.lineno, member))
    return found


def test_every_refusal_site_names_a_known_rule() -> None:
    calls = _refusal_calls()
    assert len(calls) >= 30
    known = {name for name, value in vars(errors.Refusals).items() if isinstance(value, errors.Refusal)}
    assert [call for call in calls if call[2] not in known] == []
    assert known == {call[2] for call in calls}, "a refusal nobody raises"
