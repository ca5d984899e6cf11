"""The operations users run, resolved from configuration: the only config-level entry points.

Each takes the validated :class:`~dbprotect.core.config.model.Config` and a database name, finds the
DSNs, stores and keys, calls the engine modules of :mod:`dbprotect.core` and audits the outcome.
The CLI, the Dagster definitions and the demo call these and nothing below them that takes a
``Config``, so a rule cannot drift apart between the three. Nothing below ``ops`` imports it.

One module per domain::

    context.py   stores, keys, audit log and actor resolved from configuration
    backups.py   backup, integrity verification, locating a backup by id
    catalog.py   what the stores hold: listings, the audit log, marking a configured database
    status.py    RPO and every storage target's holdings
    restores.py  on-call restores, restore verification (rung 3), drills (rung 4)
    copies.py    copies to further targets, the warm copy
    retention.py retention cleanup and compliance per target
    sanitize.py  sanitized copies: coverage, build, promotion
    schema.py    drift, sync plans and pushes, guarded commands, migration lint

This package re-exports them, so callers write ``from dbprotect.core.ops import backup_database``.
"""

from dbprotect.core.ops.backups import (
    backup_database,
    locate_backup,
    newest_recorded_rung,
    readability_recorded,
    rung_recorded,
    verify_database_backup,
)
from dbprotect.core.ops.catalog import (
    AuditReading,
    BackupListing,
    list_database_backups,
    locate_any_backup,
    mark_configured_database,
    primary_store_names,
    read_audit_log,
    undo_command,
    undo_command_for,
)
from dbprotect.core.ops.context import (
    DEFAULT_ACTOR,
    DEVELOPMENT_KEY_DEPLOYMENTS,
    BackupKeys,
    audit_log,
    backup_identity,
    backup_keys,
    cli_actor,
    open_storage,
    primary_store,
    raw_identity,
    target_store,
)
from dbprotect.core.ops.copies import (
    CopyOutcome,
    copy_targets,
    copy_to_target,
    refresh_warm_copy,
    target_holdings,
    verify_target_copy,
    verify_warm_copy,
    warm_copy_dsn,
)
from dbprotect.core.ops.restores import (
    compare_with_backup,
    default_restore_name,
    drill_database,
    restore_database,
    restore_target,
    restore_verify_database,
)
from dbprotect.core.ops.retention import (
    TargetCleanup,
    cleanup_database,
    first_cleanup_error,
    retention_compliance_by_target,
)
from dbprotect.core.ops.sanitize import (
    CoverageCheck,
    build_sanitized_copy,
    check_sanitize_coverage,
    masking_key,
    promote_dev_copy,
    rules_for,
    sanitize_spec,
    starter_rules_for,
)
from dbprotect.core.ops.schema import (
    drift_between,
    drift_from_production_snapshot,
    fresh_verified_backup,
    guard_command,
    lint_migrations,
    migrations_dir,
    observe_migrations,
    plan_against_production_snapshot,
    plan_sync,
    push_plan_file,
    push_schema,
    take_verified_backup,
)
from dbprotect.core.ops.status import DatabaseStatus, TargetStatus, database_status, target_status
from dbprotect.core.store.catalog import newest_verified_backup

__all__ = [
    "DEFAULT_ACTOR",
    "DEVELOPMENT_KEY_DEPLOYMENTS",
    "AuditReading",
    "BackupKeys",
    "BackupListing",
    "CopyOutcome",
    "CoverageCheck",
    "DatabaseStatus",
    "TargetCleanup",
    "TargetStatus",
    "audit_log",
    "backup_database",
    "backup_identity",
    "backup_keys",
    "build_sanitized_copy",
    "check_sanitize_coverage",
    "cleanup_database",
    "cli_actor",
    "compare_with_backup",
    "copy_targets",
    "copy_to_target",
    "database_status",
    "default_restore_name",
    "drift_between",
    "drift_from_production_snapshot",
    "drill_database",
    "first_cleanup_error",
    "fresh_verified_backup",
    "guard_command",
    "lint_migrations",
    "list_database_backups",
    "locate_any_backup",
    "locate_backup",
    "mark_configured_database",
    "masking_key",
    "migrations_dir",
    "newest_recorded_rung",
    "newest_verified_backup",
    "observe_migrations",
    "open_storage",
    "plan_against_production_snapshot",
    "plan_sync",
    "primary_store",
    "primary_store_names",
    "promote_dev_copy",
    "push_plan_file",
    "push_schema",
    "raw_identity",
    "read_audit_log",
    "readability_recorded",
    "refresh_warm_copy",
    "restore_database",
    "restore_target",
    "restore_verify_database",
    "retention_compliance_by_target",
    "rules_for",
    "rung_recorded",
    "sanitize_spec",
    "starter_rules_for",
    "take_verified_backup",
    "target_holdings",
    "target_status",
    "target_store",
    "undo_command",
    "undo_command_for",
    "verify_database_backup",
    "verify_target_copy",
    "verify_warm_copy",
    "warm_copy_dsn",
]
