"""Sanitized development copies, resolved from configuration: what the CLI and Dagster call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dbprotect.core.config.model import Config, resolve_dsn
from dbprotect.core.errors import ConfigError
from dbprotect.core.ops.operations import newest_verified_backup, primary_store
from dbprotect.core.pg.tools import connect
from dbprotect.core.sanitize.build import rules_for
from dbprotect.core.sanitize.coverage import Coverage, columns_from_manifest, require_coverage
from dbprotect.core.sanitize.rules import RuleSet
from dbprotect.core.sanitize.starter import starter_rules
from dbprotect.core.store.catalog import load_manifest


@dataclass(frozen=True)
class CoverageCheck:
    """The coverage gate's verdict for one database: which backup, which rule file, what is left to review."""

    database: str
    backup_id: str
    rules: RuleSet
    coverage: Coverage


def check_sanitize_coverage(config: Config, database: str) -> CoverageCheck:
    """The rule file of ``database`` against the columns of its newest verified backup.

    Reads only the backup's manifest: no connection, nothing decrypted. Raises
    :class:`~dbprotect.core.sanitize.coverage.CoverageError` naming every unclassified column.
    """
    rules = rules_for(config, database)
    storage = primary_store(config, database)
    manifest = load_manifest(storage, database, newest_verified_backup(storage, database))
    found = require_coverage(rules, columns_from_manifest(manifest), database=database)
    return CoverageCheck(database, manifest.backup_id, rules, found)


def starter_rules_for(config: Config, database: str, environ: Mapping[str, str] | None = None) -> RuleSet:
    """A starter rule file guessed from the production schema; rules already configured are kept."""
    try:
        existing: RuleSet | None = rules_for(config, database)
    except ConfigError:
        existing = None
    dsn = resolve_dsn(config, database, "production", environ)
    with connect(dsn, autocommit=True, application_name="dbprotect-sanitize") as conn:
        return starter_rules(conn, existing=existing)
