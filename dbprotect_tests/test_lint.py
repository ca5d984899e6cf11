"""Migration lint: squawk findings with file and line, data-loss rules, inline waivers audited."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dbprotect.cli.app import run
from dbprotect.core.schema.lint import lint_files, lint_text

MIGRATIONS = Path(__file__).parent / "migrations"


def test_findings_with_file_line_and_waivers() -> None:
    path = MIGRATIONS / "002_drop_legacy.sql"
    result = lint_files([path])
    lines = result.lines()
    assert f"{path}:7: delete-without-where: DELETE without WHERE deletes every row" in lines
    assert f"{path}:11: waiver-without-reason: waiver of rename needs 'because <reason>'" in lines
    assert any(line.startswith(f"{path}:12: rename:") for line in lines)
    # squawk's finding of the same problem is folded into ours (one report), its rule named in the message
    assert any(line.startswith(f"{path}:12: rename:") and "squawk: renaming-table" in line for line in lines)
    assert any(line.startswith(f"{path}:14: type-change:") and "squawk: changing-column-type" in line
               for line in lines)
    assert not any(":12: renaming-table" in line or ":14: changing-column-type" in line for line in lines)
    assert not any(":5: drop-column" in line or ":5: ban-drop-column" in line for line in lines)
    assert {(f.rule, f.line, w.reason) for f, w in result.waived} == {
        ("drop-column", 5, "legacy_total has been unused since release 4.2")}
    assert not any(":9:" in line for line in lines)  # UPDATE with WHERE is fine


def test_squawk_rule_surfaces_with_line(tmp_path: Path) -> None:
    path = tmp_path / "003_required.sql"
    path.write_text("CREATE TABLE t (id bigint);\n\nALTER TABLE t ADD COLUMN x bigint NOT NULL;\n")
    result = lint_files([path])
    assert any(line.startswith(f"{path}:3: adding-required-field:") for line in result.lines())


@pytest.mark.parametrize(("sql", "rule"), [
    ("DROP TABLE a;", "drop-table"), ("DROP SCHEMA s CASCADE;", "drop-schema"), ("TRUNCATE a;", "truncate"),
    ("UPDATE a SET x = 1;", "update-without-where"), ("ALTER TABLE a RENAME COLUMN x TO y;", "rename"),
    ("ALTER TABLE a DROP COLUMN x;", "drop-column"), ("ALTER TABLE a ALTER COLUMN x TYPE int;", "type-change"),
])
def test_each_data_loss_rule(sql: str, rule: str) -> None:
    assert [f.rule for f in lint_text(f"SELECT 1;\n{sql}\n", "m.sql").findings] == [rule]
    waived = lint_text(f"SELECT 1;\n-- dbprotect: allow {rule} because reviewed in PR 12\n{sql}\n", "m.sql")
    assert waived.ok and waived.waived[0][1].reason == "reviewed in PR 12"


def test_cli_lint_records_waivers_in_audit(write_config: Callable[..., Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_config(None, database="shop")
    ok = tmp_path / "004_ok.sql"
    ok.write_text("-- dbprotect: allow drop-table because replaced by song in 003\nDROP TABLE track_old;\n")
    assert run(["lint", "-d", "shop", str(ok)]) == 0
    capsys.readouterr()
    assert run(["--json", "audit", "-d", "shop"]) == 0
    doc = json.loads(capsys.readouterr().out)
    text = json.dumps(doc)
    assert "lint-waiver" in text and "replaced by song in 003" in text
    assert run(["lint", str(MIGRATIONS / "002_drop_legacy.sql")]) == 9
    err = capsys.readouterr()
    assert "002_drop_legacy.sql:7: delete-without-where" in err.out
