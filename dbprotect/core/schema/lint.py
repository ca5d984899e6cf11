"""Migration lint: squawk's rules (for the target's PostgreSQL version) plus dbprotect's data-loss rules.

Why two sets: squawk knows locking and rewrite hazards well; dbprotect adds the rules that lose
*data* and that seed 004 asks a backup and a review for, named the same everywhere::

    drop-table             DROP TABLE
    drop-column            ALTER TABLE ... DROP COLUMN
    drop-schema            DROP SCHEMA
    truncate               TRUNCATE
    delete-without-where   DELETE without WHERE (every row)
    update-without-where   UPDATE without WHERE (every row)
    type-change            ALTER COLUMN ... TYPE (rewrites the table, may truncate or fail on values)
    rename                 RENAME of a table, column or other object (breaks running code)

and the rules that need a reviewer's eyes because the statement hides what it does or how long
it locks (the SQL is parsed by PostgreSQL's own parser, through ``pglast``, never by patterns)::

    data-modifying-cte     WITH d AS (DELETE/UPDATE ... RETURNING ...) SELECT ...: a query that changes rows
    do-block               DO $$ ... $$: dynamic code lint cannot see into; needs a waiver after review
    drop-cascade           DROP ... CASCADE (also ALTER TABLE ... DROP ... CASCADE): drops dependents silently
    lock-heavy             SET NOT NULL, ADD CONSTRAINT without NOT VALID, SET LOGGED/UNLOGGED/TABLESPACE/
                           ACCESS METHOD, VACUUM FULL, CLUSTER: ACCESS EXCLUSIVE for a whole scan or rewrite

A DELETE or UPDATE without WHERE is found wherever it sits (inside a WITH too). When squawk
reports the same problem as one of these rules (``ban-drop-column`` and ``drop-column``), the
problem is reported once, under dbprotect's name, naming squawk's rule in the message; a waiver
of either name covers it.

A finding reads ``file:line: rule: message``. A rule is waived only inline, in the statement's
leading comments, with a reason::

    -- dbprotect: allow drop-column because the column was unused since release 4.2
    ALTER TABLE invoice DROP COLUMN legacy_total;

A waiver without ``because <reason>`` is itself a finding (``waiver-without-reason``). Waivers
that were used are returned with the result, so callers record them in the audit log.

Style rules of squawk that say nothing about safety are excluded by default
(:data:`DEFAULT_EXCLUDED_SQUAWK_RULES`); the configuration can change the list.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbprotect.core.errors import ToolError

DATA_LOSS_RULES: dict[str, str] = {
    "drop-table": "DROP TABLE deletes the table and all its rows",
    "drop-column": "DROP COLUMN deletes the column's data in every row",
    "drop-schema": "DROP SCHEMA deletes every object in it (with CASCADE, silently)",
    "truncate": "TRUNCATE deletes every row",
    "delete-without-where": "DELETE without WHERE deletes every row",
    "update-without-where": "UPDATE without WHERE rewrites every row",
    "type-change": "ALTER COLUMN ... TYPE rewrites the table and can truncate or reject values",
    "rename": "RENAME breaks code that still uses the old name",
}

#: Rules that are not data loss by themselves but hide it or lock for long; same waiver syntax.
REVIEW_RULES: dict[str, str] = {
    "data-modifying-cte": "a WITH query deletes or updates rows: a data change that reads like a query",
    "do-block": "DO block: lint cannot see the SQL inside it; review it, then waive with a reason",
    "drop-cascade": "CASCADE also drops every object that depends on it, silently",
    "lock-heavy": "holds an ACCESS EXCLUSIVE lock while it scans or rewrites the whole table",
}

#: squawk rules about style or robustness, not safety; excluded unless the configuration says otherwise.
DEFAULT_EXCLUDED_SQUAWK_RULES: tuple[str, ...] = (
    "prefer-robust-stmts", "prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-identity",
    "prefer-text-field", "prefer-timestamptz", "require-timeout-settings",
)

#: squawk rules that say the same as a data-loss rule: one waiver (of either name) covers both.
SQUAWK_EQUIVALENTS: dict[str, str] = {
    "ban-drop-table": "drop-table", "ban-drop-column": "drop-column", "ban-truncate-cascade": "truncate",
    "renaming-table": "rename", "renaming-column": "rename", "changing-column-type": "type-change",
    "adding-not-nullable-field": "lock-heavy", "constraint-missing-not-valid": "lock-heavy",
    "adding-foreign-key-constraint": "lock-heavy",
}

_WAIVER = re.compile(r"--\s*dbprotect:\s*allow\s+([a-z0-9_-]+)(?:\s+because\s+(\S.*))?", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    message: str
    source: str  # "dbprotect" or "squawk"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "rule": self.rule, "message": self.message,
                "source": self.source}


@dataclass(frozen=True)
class Waiver:
    file: str
    line: int
    rule: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule} waived because {self.reason}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "rule": self.rule, "reason": self.reason}


@dataclass(frozen=True)
class LintResult:
    findings: tuple[Finding, ...]
    waived: tuple[tuple[Finding, Waiver], ...]
    #: the PostgreSQL major squawk judged for, and where that number came from (the target, or not)
    pg_version: int | None = None
    pg_version_from: str = ""

    @property
    def ok(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        return [str(finding) for finding in self.findings]

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "pg_version": self.pg_version, "pg_version_from": self.pg_version_from,
                "findings": [f.to_dict() for f in self.findings],
                "waived": [{**f.to_dict(), "reason": w.reason, "waiver_line": w.line} for f, w in self.waived]}


@dataclass(frozen=True)
class _Statement:
    start: int  # offset where the statement's span (leading comments included) begins
    end: int
    first_line: int  # 1-based line of the statement's first keyword
    last_line: int
    node: object


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _statements(text: str) -> list[_Statement]:
    """Statements with their spans; a span starts after the previous statement, so it holds the
    comments written above the statement (where waivers go)."""
    # pglast is imported on first use: ~130 ms (python -X importtime) that only lint pays.
    from pglast import parse_sql
    from pglast.parser import ParseError

    data = text.encode()
    try:
        parsed = parse_sql(text)
    except ParseError:
        return []
    found: list[_Statement] = []
    previous_end = 0
    for raw in parsed:
        # pglast offsets are byte offsets into UTF-8; a statement's location may skip the comments
        # above it, so its span starts where the previous statement ended (the ';' included)
        location = raw.stmt_location or 0
        length = raw.stmt_len or (len(data) - location)
        start = min(location, previous_end)
        length += location - start
        previous_end = start + length + (1 if data[start + length:start + length + 1] == b";" else 0)
        span = data[start:start + length].decode(errors="replace")
        body = re.sub(r"^(\s|--[^\n]*\n)*", "", span)
        char_start = len(data[:start].decode(errors="replace"))
        first = _line_of(text, char_start + (len(span) - len(body)))
        found.append(_Statement(char_start, char_start + len(span), first,
                                _line_of(text, char_start + len(span)), raw.stmt))
    return found


def _walk(node: object) -> Iterator[object]:
    """``node`` and every parse node below it (CTEs, subqueries, expressions)."""
    from pglast import ast

    yield node
    for name in getattr(node, "__slots__", ()):
        value = getattr(node, name, None)
        for child in value if isinstance(value, tuple) else (value,):
            if isinstance(child, ast.Node):
                yield from _walk(child)


def _lock_heavy(cmd: object) -> str | None:
    """What makes one ALTER TABLE subcommand lock-heavy, if it is."""
    from pglast import enums

    kind = enums.AlterTableType
    subtype = getattr(cmd, "subtype", None)
    if subtype == kind.AT_SetNotNull:
        return "SET NOT NULL scans every row under ACCESS EXCLUSIVE (add a CHECK ... NOT VALID, validate, then set)"
    if subtype == kind.AT_AddConstraint:
        constraint = getattr(cmd, "def_", None)
        if getattr(constraint, "contype", None) in (enums.ConstrType.CONSTR_CHECK, enums.ConstrType.CONSTR_FOREIGN) \
                and not getattr(constraint, "skip_validation", False):
            return "ADD CONSTRAINT without NOT VALID checks every row under lock (add NOT VALID, then VALIDATE)"
    rewrites = {kind.AT_SetLogged: "SET LOGGED", kind.AT_SetUnLogged: "SET UNLOGGED",
                kind.AT_SetTableSpace: "SET TABLESPACE", kind.AT_SetAccessMethod: "SET ACCESS METHOD"}
    if subtype in rewrites:
        return f"{rewrites[subtype]} rewrites the table under ACCESS EXCLUSIVE"
    return None


def _rules(node: object) -> list[tuple[str, str]]:
    """The (rule, message) pairs one parsed statement breaks, nested statements included."""
    from pglast import ast, enums

    found: dict[str, str] = {}

    def add(rule: str, message: str | None = None) -> None:
        found.setdefault(rule, message or DATA_LOSS_RULES.get(rule) or REVIEW_RULES[rule])

    if isinstance(node, ast.DropStmt):
        if node.removeType == enums.ObjectType.OBJECT_TABLE:
            add("drop-table")
        if node.removeType == enums.ObjectType.OBJECT_SCHEMA:
            add("drop-schema")  # its message already says what CASCADE does to a schema
        elif node.behavior == enums.DropBehavior.DROP_CASCADE:
            add("drop-cascade")
    elif isinstance(node, ast.TruncateStmt):
        add("truncate")
    elif isinstance(node, ast.RenameStmt):
        add("rename")
    elif isinstance(node, ast.DoStmt):
        add("do-block")
    elif isinstance(node, ast.VacuumStmt) and any(getattr(o, "defname", "") == "full" for o in node.options or ()):
        add("lock-heavy", "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE")
    elif isinstance(node, ast.ClusterStmt) and node.relation is not None:
        add("lock-heavy", "CLUSTER rewrites the table under ACCESS EXCLUSIVE")
    elif isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            if cmd.subtype == enums.AlterTableType.AT_DropColumn:
                add("drop-column")
            elif cmd.subtype == enums.AlterTableType.AT_AlterColumnType:
                add("type-change")
            if cmd.behavior == enums.DropBehavior.DROP_CASCADE:
                add("drop-cascade")
            heavy = _lock_heavy(cmd)
            if heavy:
                add("lock-heavy", heavy)
    for inner in _walk(node):
        if isinstance(inner, ast.CommonTableExpr) and isinstance(inner.ctequery, (ast.DeleteStmt, ast.UpdateStmt)):
            add("data-modifying-cte")
        elif isinstance(inner, ast.DeleteStmt) and inner.whereClause is None:
            add("delete-without-where")
        elif isinstance(inner, ast.UpdateStmt) and inner.whereClause is None:
            add("update-without-where")
    return list(found.items())


def squawk_path() -> Path:
    """The squawk binary of the ``squawk-cli`` package (beside this Python), else on ``$PATH``."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return beside
    found = shutil.which("squawk")
    if found:
        return Path(found)
    raise ToolError("squawk not found", hint="install the squawk-cli package (pip install squawk-cli)")


def run_squawk(path: Path, *, pg_version: int, exclude: Sequence[str]) -> list[Finding]:
    """squawk's findings for one file, lines 1-based (squawk's JSON reports them 0-based)."""
    command = [str(squawk_path()), "--pg-version", str(pg_version), "--reporter", "json"]
    if exclude:
        command.append("--exclude=" + ",".join(exclude))
    try:
        done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"squawk did not run on {path}: {exc}") from None
    try:
        raw = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        reason = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[0]
        raise ToolError(f"squawk failed on {path}: {reason}") from None
    return [Finding(str(path), int(item["line"]) + 1, item["rule_name"],
                    item["message"] + (f" ({item['help']})" if item.get("help") else ""), "squawk")
            for item in raw]


def lint_text(text: str, file: str, *, squawk: list[Finding] | None = None) -> LintResult:
    """Apply dbprotect's rules to ``text`` (and waivers to them and to ``squawk``'s findings)."""
    statements = _statements(text)
    findings: list[Finding] = []
    if not statements and text.strip() and not squawk:
        findings.append(Finding(file, 1, "syntax-error", "the file does not parse as PostgreSQL SQL", "dbprotect"))
    ours: list[tuple[Finding, int, int]] = []  # finding, its statement's first and last line
    for statement in statements:
        for rule, message in _rules(statement.node):
            ours.append((Finding(file, statement.first_line, rule, message, "dbprotect"),
                         _line_of(text, statement.start), statement.last_line))
    merged: dict[int, list[str]] = {}  # index in ours -> squawk rules reporting the same problem
    for finding in squawk or []:
        same = next((i for i, (mine, first, last) in enumerate(ours)
                     if mine.rule == SQUAWK_EQUIVALENTS.get(finding.rule) and first <= finding.line <= last), None)
        if same is None:
            findings.append(finding)
        elif finding.rule not in merged.setdefault(same, []):
            merged[same].append(finding.rule)
    for index, (mine, _, _) in enumerate(ours):
        also = merged.get(index)
        message = f"{mine.message} (squawk: {', '.join(also)})" if also else mine.message
        findings.append(Finding(mine.file, mine.line, mine.rule, message, mine.source))
    waivers: list[tuple[Waiver, int, int]] = []  # waiver, statement span lines
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        match = _WAIVER.search(line)
        if not match:
            continue
        if not match.group(2):
            findings.append(Finding(file, number, "waiver-without-reason",
                                    f"waiver of {match.group(1)} needs 'because <reason>'", "dbprotect"))
            continue
        span = next(((s.first_line, s.last_line) for s in statements
                     if _line_of(text, s.start) <= number <= s.last_line), (number, number + 1))
        waivers.append((Waiver(file, number, match.group(1).lower(), match.group(2).strip()), *span))
    kept: list[Finding] = []
    waived: list[tuple[Finding, Waiver]] = []
    for finding in sorted(findings, key=lambda f: (f.line, f.rule)):
        names = {finding.rule, SQUAWK_EQUIVALENTS.get(finding.rule, finding.rule)} | {
            squawk for squawk, ours in SQUAWK_EQUIVALENTS.items() if ours == finding.rule}  # either name waives
        waiver = next((w for w, first, last in waivers if w.rule in names and first <= finding.line <= last
                       and w.line <= finding.line), None)
        if waiver is None:
            kept.append(finding)
        else:
            waived.append((finding, waiver))
    return LintResult(tuple(kept), tuple(waived))


def lint_files(paths: Iterable[str | Path], *, pg_version: int = 18,
               exclude: Sequence[str] = DEFAULT_EXCLUDED_SQUAWK_RULES) -> LintResult:
    """Lint migration files: squawk (``--pg-version``) and the data-loss rules, waivers applied."""
    findings: list[Finding] = []
    waived: list[tuple[Finding, Waiver]] = []
    for raw in paths:
        path = Path(raw)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror}") from None
        result = lint_text(text, str(path), squawk=run_squawk(path, pg_version=pg_version, exclude=exclude))
        findings += result.findings
        waived += result.waived
    return LintResult(tuple(findings), tuple(waived), pg_version)
