"""The suite runs in parallel the same way in CI and in the README (pytest-xdist, one file per worker).

CI runs `.ci/run`; a reader runs the README's line. If the two drifted, a parallel-only failure could
pass in one and not the other, so the test command must be the same text in both. ``--dist loadfile``
matters for correctness, not only speed: a file's tests share module fixtures (a Dagster instance, a
fault harness's backups), which ``--dist load`` would split across workers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTEST_LINE = re.compile(r"\.venv/bin/python -m pytest -q[^\n`]*")


def _pytest_commands(text: str) -> list[str]:
    return [match.group(0).strip() for match in PYTEST_LINE.finditer(text)]


def _readme_test_command(readme: str) -> str:
    """The pytest part of the README's "Install and run the tests" line."""
    line = next(line for line in readme.splitlines() if line.startswith("python3 -m venv") and "[test]" in line)
    return _pytest_commands(line)[0]


def test_ci_runs_exactly_the_readme_test_command_in_parallel_by_file() -> None:
    readme_command = _readme_test_command((ROOT / "README.md").read_text(encoding="utf-8"))
    ci_commands = _pytest_commands((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert ci_commands == [readme_command]
    assert "-n auto" in readme_command and "--dist loadfile" in readme_command


@pytest.mark.parametrize("drift", [(" --dist loadfile", ""), ("-n auto", "-n 2"), ("-q", "-q -x")])
def test_a_ci_script_that_drifted_from_the_readme_is_caught(drift: tuple[str, str]) -> None:
    """The real ``.ci/run`` with one option of its pytest line changed no longer matches the README's."""
    readme_command = _readme_test_command((ROOT / "README.md").read_text(encoding="utf-8"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    old, new = drift
    drifted = ci.replace(readme_command, readme_command.replace(old, new, 1))
    assert drifted != ci
    assert _pytest_commands(drifted) != [readme_command]


def test_pytest_xdist_is_in_the_test_extra() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extra = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    assert '"pytest-xdist' in extra


def test_parametrized_ids_are_the_same_in_every_worker(request: pytest.FixtureRequest) -> None:
    """xdist refuses to run when workers collect different ids: no id may come from a random value.

    The ids of this session's collected tests must hold no age key (keys are made fresh per process).
    """
    ids = [item.nodeid for item in request.session.items]
    assert ids and not [nodeid for nodeid in ids if re.search(r"age1[02-9ac-hj-np-z]{20,}", nodeid)]
