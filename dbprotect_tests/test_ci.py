"""CI fails on what it promises to fail on: Dagster deprecation/beta/preview warnings and lint (issue 13, point 1)."""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg
import pytest
from dagster_shared.utils.warnings import deprecation_warning

ROOT = Path(__file__).resolve().parents[1]


def test_a_dagster_deprecation_warning_is_an_error_under_the_project_filters() -> None:
    with pytest.raises(DeprecationWarning, match="is deprecated and will be removed in"):
        deprecation_warning("dbprotect_ci_probe", "9.9")


@pytest.mark.parametrize("category", [dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning])
def test_dagster_beta_preview_and_supersession_warnings_are_errors(category: type[Warning]) -> None:
    with pytest.raises(category):
        warnings.warn("probe", category=category, stacklevel=1)


def test_other_libraries_deprecations_stay_quiet() -> None:
    """Only Dagster's are errors: a third-party deprecation we cannot fix must not fail the suite."""
    warnings.warn("old_name is old; use new_name", DeprecationWarning, stacklevel=1)


def test_ci_runs_ruff_on_the_whole_tree_and_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "ruff check dbprotect dbprotect_tests bench" in script
    assert ".venv/bin/python -m pytest -q" in script
    assert "ignore::DeprecationWarning:dagster" not in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_the_readme_says_how_to_get_the_stock_age_and_zstd() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "apt-get install age zstd" in readme and "brew install age zstd" in readme
