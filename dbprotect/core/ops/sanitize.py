"""Sanitized development copies, resolved from configuration: what the CLI and Dagster call."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyrage

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config, SanitizeSpec
from dbprotect.core.crypto import load_identity
from dbprotect.core.errors import (
    ConfigError,
    CredentialIsolationError,
    DbprotectError,
    NotFoundError,
    Refusals,
    RefusedError,
)
from dbprotect.core.ops.context import primary_store, raw_identity, scratch_server_from_config
from dbprotect.core.pg.tools import connect
from dbprotect.core.redact import register
from dbprotect.core.restore.oncall import RestoreTarget, restore
from dbprotect.core.sanitize.build import SanitizeResult, build_sanitized, database_failure, sanitized_name
from dbprotect.core.sanitize.coverage import (
    Coverage,
    columns_from_manifest,
    large_object_count,
    partition_parents,
    require_coverage,
    require_large_object_rule,
    require_rules_fit,
    source_columns,
)
from dbprotect.core.sanitize.promote import newest_promotable, require_promotable
from dbprotect.core.sanitize.rules import RuleSet, load_rules
from dbprotect.core.sanitize.starter import starter_rules
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import load_manifest, newest_verified_backup
from dbprotect.core.store.manifest import Manifest


def sanitize_spec(config: Config, database: str) -> SanitizeSpec:
    spec = config.database(database).sanitize
    if spec is None:
        raise ConfigError(f"{config.source}: databases.{database} has no sanitize: section",
                          hint="add sanitize: {rules: FILE, hmac_key_env: VAR} to make sanitized copies")
    return spec


def rules_for(config: Config, database: str) -> RuleSet:
    path = Path(sanitize_spec(config, database).rules).expanduser()
    return load_rules(path if path.is_absolute() else config.base_dir() / path)


def masking_key(config: Config, database: str, environ: Mapping[str, str] | None = None, *,
                value: str | None = None) -> bytes:
    """The masking key (production side only); its value never reaches a message.

    ``value``: the key as the caller resolved it (Dagster, from its resource); without it, the key
    is read from its variable in ``environ`` (the CLI's channel), never both.
    """
    spec = sanitize_spec(config, database)
    if config.deployment == "development":
        raise CredentialIsolationError("a development deployment never holds the masking key",
                                       hint="sanitized copies are built by the production deployment")
    if value is None:
        value = (os.environ if environ is None else environ).get(spec.hmac_key_env)
    if not value:
        raise ConfigError(f"${spec.hmac_key_env} is not set (the masking key of database {database!r})",
                          hint=f"export {spec.hmac_key_env}=<64 hex digits, e.g. from secrets.token_hex(32)>")
    register(value)  # redacted from all output
    return value.encode()


def build_sanitized_copy(config: Config, database: str, *, backup_id: str | None = None,
                         environ: Mapping[str, str] | None = None, by: str = "dbprotect",
                         progress: Callable[[str], None] | None = None,
                         identity: pyrage.x25519.Identity | None = None,
                         key_value: str | None = None) -> SanitizeResult:
    """Build, check and (if every check passed) store the sanitized copy of ``database``; audited.

    The coverage gate runs first, from the backup's manifest, so an unclassified column stops the
    run before anything is decrypted or restored. The build itself is
    :func:`dbprotect.core.sanitize.build.build_sanitized`.
    """
    if config.keys.development is None:
        raise ConfigError(f"{config.source}: keys.development is missing",
                          hint="sanitized copies are encrypted to the development key, never the raw-backup key")
    spec = sanitize_spec(config, database)
    rules = rules_for(config, database)
    key = masking_key(config, database, environ, value=key_value)
    storage = primary_store(config, database, environ)
    backup_id = backup_id or newest_verified_backup(storage, database)
    manifest = load_manifest(storage, database, backup_id)
    try:
        parents = _live_partition_parents(config, database, environ)
        if parents is not None:  # otherwise the build's own gate (the backup's catalog) decides, before any row
            require_coverage(rules.inherited(parents), columns_from_manifest(manifest), database=database)
        identity = raw_identity(config, environ, identity)
        with scratch_server_from_config(config, environ, audit=AuditLog(storage, actor=by),
                                        database=database) as server:
            result = build_sanitized(storage, manifest, identity, server, rules=rules, spec=spec, key=key,
                                     development_recipients=config.keys.development.recipients,
                                     pg_bin_dir=config.tool_dirs, work_dir=config.scratch.work_dir, by=by,
                                     progress=progress)
    except DbprotectError as exc:
        _audit_failure(storage, by, database, manifest.backup_id, rules, exc)
        raise
    _audit(storage, by, result)
    return result


def _live_partition_parents(config: Config, database: str, environ: Mapping[str, str] | None) -> dict[str, str] | None:
    """Partition -> parent from the production catalog (no data read), or None when it cannot be reached.

    Only for the gate before decrypting: the backup's manifest lists partitions, not their parents.
    """
    try:
        with connect(resolve_dsn(config, database, "production", environ), autocommit=True,
                     application_name="dbprotect-sanitize") as conn:
            return partition_parents(conn)
    except DbprotectError:
        return None


def _audit_failure(storage: Storage, by: str, database: str, backup_id: str, rules: RuleSet,
                   exc: DbprotectError) -> None:
    """A build that stopped (transformer, load, type, coverage, database error) leaves its record too.

    The message is the error's one line: it names table, column and transformer, never a value.
    """
    AuditLog(storage, actor=by).record(
        "sanitize", database=database, outcome="failed", target=backup_id,
        detail=f"{exc.code}: {exc.message}",
        data={"source_backup_id": backup_id, "rules_sha256": rules.sha256, "error_code": exc.code,
              "exit_status": exc.exit_code})


def _audit(storage: Storage, by: str, result: SanitizeResult) -> None:
    failed = [c for c in result.checks if not c.ok]
    AuditLog(storage, actor=by).record(
        "sanitize", database=result.database, outcome="failed" if failed else "ok",
        target=result.artifact_id or result.source_backup_id,
        detail="; ".join(f"{c.name}: {c.detail}" for c in failed) if failed
        else f"sanitized copy {result.artifact_id} of backup {result.source_backup_id}"
        + (f"; {len(result.waivers)} keep waiver(s): "
           + ", ".join(f"{column} ({reason})" for column, reason in result.waivers.items()) if result.waivers else ""),
        data={"source_backup_id": result.source_backup_id, "rules_sha256": result.rules_sha256,
              "masking_key_id": result.key_id, "metrics": result.metrics(), "waivers": result.waivers})


def promote_dev_copy(config: Config, database: str, *, confirmed: bool, artifact_id: str | None = None,
                     environ: Mapping[str, str] | None = None, by: str = "dbprotect",
                     progress: Callable[[str], None] | None = None,
                     identity: pyrage.x25519.Identity | None = None) -> object:
    """Restore the newest promotable sanitized copy into the development database of ``database``.

    ``confirmed``: the typed ``--confirm``, or the configuration's ``sanitize.promote: true`` for
    the sensor. Returns :class:`dbprotect.core.restore.oncall.RestoreResult`.
    """
    sanitize_spec(config, database)
    if config.keys.development is None:
        raise ConfigError(f"{config.source}: keys.development is missing", hint="promotion decrypts with it")
    storage = primary_store(config, database, environ)
    if artifact_id:
        manifest = load_manifest(storage, sanitized_name(database), artifact_id)
    else:
        found = newest_promotable(storage, database)
        if found.manifest is None:
            raise NotFoundError(f"nothing to promote: {found.reason}",
                                hint=f"build one on the production side: 'dbprotect sanitize build {database}'")
        manifest = found.manifest
    require_promotable(manifest)
    target = RestoreTarget(resolve_dsn(config, database, "development", environ), "development", existing=True)
    if not confirmed:
        raise RefusedError(f"refused: promoting sanitized copy {manifest.backup_id} replaces the development "
                           f"database {target.name!r}; it needs confirmation", hint="repeat with --confirm",
                           refusal=Refusals.PROMOTION_UNCONFIRMED)
    if identity is None:  # the caller's resolved development identity, else its variable (CLI)
        identity = load_identity(config.keys.development.identity_env, environ)
    return restore(storage, manifest, identity, target, confirmation=target.name,
                   recipients=config.keys.development.recipients, audit=AuditLog(storage, actor=by),
                   safety_database=f"{database}-development-safety", pg_bin_dir=config.tool_dirs,
                   work_dir=config.scratch.work_dir, by=by, progress=progress)


@dataclass(frozen=True)
class CoverageCheck:
    """The coverage gate's verdict for one database: which backup, which rule file, what is left to review."""

    database: str
    backup_id: str
    rules: RuleSet
    coverage: Coverage
    #: Partitions whose rules come from their parent (partition -> parent), from the live catalog.
    inherited: dict[str, str] | None = None
    #: Large objects in production (each needs the ``large_objects:`` rule).
    large_objects: int = 0


def check_sanitize_coverage(config: Config, database: str,
                            environ: Mapping[str, str] | None = None) -> CoverageCheck:
    """The rule file of ``database`` against its newest verified backup and production's live catalog.

    The backup's manifest gives the columns that will be copied; the production catalog (read
    only: catalog queries and a small sample per masked column, nothing stored) gives partition
    parents (partitions inherit their parent's rules), each column's type (every masked column's
    transformer output must load into it: ``require_rules_fit``) and the large objects (which
    need a ``large_objects:`` rule). Raises naming every unclassified column or unfit rule.
    """
    rules = rules_for(config, database)
    storage = primary_store(config, database, environ)
    manifest = load_manifest(storage, database, newest_verified_backup(storage, database))
    try:
        return _check_against_catalog(config, database, rules, manifest, environ)
    except psycopg.Error as exc:  # never psycopg's own text: its DETAIL may quote production values
        raise database_failure(database, exc) from None


def _check_against_catalog(config: Config, database: str, rules: RuleSet, manifest: Manifest,
                           environ: Mapping[str, str] | None) -> CoverageCheck:
    with connect(resolve_dsn(config, database, "production", environ), autocommit=True,
                 application_name="dbprotect-sanitize") as conn:
        parents = partition_parents(conn)
        rules = rules.inherited(parents)
        found = require_coverage(rules, columns_from_manifest(manifest), database=database)
        live = source_columns(conn)
        require_rules_fit(conn, {table: [column for column in infos if rules.rule(table, column.name) is not None]
                                 for table, infos in live.items()}, rules)
        large_objects = large_object_count(conn)
        require_large_object_rule(rules, large_objects, database=database)
    return CoverageCheck(database, manifest.backup_id, rules, found, parents, large_objects)


def starter_rules_for(config: Config, database: str, environ: Mapping[str, str] | None = None) -> RuleSet:
    """A starter rule file guessed from the production schema; rules already configured are kept."""
    try:
        existing: RuleSet | None = rules_for(config, database)
    except ConfigError:
        existing = None
    dsn = resolve_dsn(config, database, "production", environ)
    with connect(dsn, autocommit=True, application_name="dbprotect-sanitize") as conn:
        return starter_rules(conn, existing=existing)
