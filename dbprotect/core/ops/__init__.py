"""The operations users run, resolved from configuration: the only config-level entry points.

Each takes the validated :class:`~dbprotect.core.config.model.Config` and a database name, finds the
DSNs, stores and keys, calls the engine modules of :mod:`dbprotect.core` and audits the outcome.
The CLI, the Dagster definitions and the demo call these and nothing below them that takes a
``Config``, so a rule cannot drift apart between the three. One module per domain; this package
re-exports them so callers write ``from dbprotect.core.ops import backup_database``.
"""

from dbprotect.core.ops.operations import (
    DEFAULT_ACTOR,
    CopyOutcome,
    DatabaseStatus,
    TargetCleanup,
    TargetStatus,
    audit_log,
    backup_database,
    cleanup_database,
    cli_actor,
    copy_targets,
    copy_to_target,
    database_status,
    default_restore_name,
    first_cleanup_error,
    locate_backup,
    newest_verified_backup,
    primary_store,
    raw_identity,
    restore_database,
    restore_target,
    target_holdings,
    target_status,
    target_store,
    verify_database_backup,
    verify_target_copy,
)
from dbprotect.core.ops.sanitize import CoverageCheck, check_sanitize_coverage, starter_rules_for
from dbprotect.core.ops.schema import lint_migrations
from dbprotect.core.restore.warm import refresh_warm_copy, verify_warm_copy, warm_copy_dsn
from dbprotect.core.sanitize.build import build_sanitized_copy, rules_for
from dbprotect.core.sanitize.promote import promote_dev_copy
from dbprotect.core.schema.guard import guard_command
from dbprotect.core.schema.protect import fresh_verified_backup, take_verified_backup
from dbprotect.core.schema.sync import drift_between, plan_sync, push_schema
from dbprotect.core.schema.watch import observe as observe_migrations
from dbprotect.core.verify.drill import drill_database, restore_verify_database

__all__ = [
    "DEFAULT_ACTOR",
    "CopyOutcome",
    "CoverageCheck",
    "DatabaseStatus",
    "TargetCleanup",
    "TargetStatus",
    "audit_log",
    "backup_database",
    "build_sanitized_copy",
    "check_sanitize_coverage",
    "cleanup_database",
    "cli_actor",
    "copy_targets",
    "copy_to_target",
    "database_status",
    "default_restore_name",
    "drift_between",
    "drill_database",
    "first_cleanup_error",
    "fresh_verified_backup",
    "guard_command",
    "lint_migrations",
    "locate_backup",
    "newest_verified_backup",
    "observe_migrations",
    "plan_sync",
    "primary_store",
    "promote_dev_copy",
    "push_schema",
    "raw_identity",
    "refresh_warm_copy",
    "restore_database",
    "restore_target",
    "restore_verify_database",
    "rules_for",
    "starter_rules_for",
    "take_verified_backup",
    "target_holdings",
    "target_status",
    "target_store",
    "verify_database_backup",
    "verify_target_copy",
    "verify_warm_copy",
    "warm_copy_dsn",
]
