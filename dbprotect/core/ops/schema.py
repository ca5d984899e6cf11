"""Schema changes, resolved from configuration: migration lint with audited waivers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dbprotect.core.config.model import Config
from dbprotect.core.ops.operations import audit_log
from dbprotect.core.schema.lint import DEFAULT_EXCLUDED_SQUAWK_RULES, LintResult, lint_files


def lint_migrations(files: Iterable[str | Path], *, pg_version: int, config: Config | None = None,
                    database: str | None = None, actor: str = "dbprotect") -> LintResult:
    """Lint migration files; with a configured ``database``, its exclusions apply and waivers are audited.

    Every inline waiver that silenced a finding is recorded in the database's audit log (who,
    where, which rule and why), so a waiver is never invisible.
    """
    exclude: tuple[str, ...] = DEFAULT_EXCLUDED_SQUAWK_RULES
    if config is not None and database:
        exclude = tuple(config.database(database).schema_settings.lint_exclude)
    result = lint_files(list(files), pg_version=pg_version, exclude=exclude)
    if config is not None and database and result.waived:
        audit = audit_log(config, database, actor=actor)
        for finding, waiver in result.waived:
            audit.record("lint-waiver", database=database, outcome="ok", target=f"{finding.file}:{finding.line}",
                         detail=f"{finding.rule} waived because {waiver.reason}", data=waiver.to_dict())
    return result
