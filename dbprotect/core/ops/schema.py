"""Schema changes, resolved from configuration: drift, sync plans and pushes, guarded commands, lint.

The rules live in :mod:`dbprotect.core.schema` (plans, lint, markers, the guard's order); this
module resolves DSNs, stores and keys, takes the verified backup a destructive change stands on,
and audits every outcome.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyrage

from dbprotect.core.audit import AuditLog
from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.isolation import ALLOWED_ENVIRONMENTS, resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.crypto import load_identity
from dbprotect.core.errors import (
    ConfigError,
    DatabaseError,
    DbprotectError,
    NotFoundError,
    Refusals,
    RefusedError,
    ToolError,
)
from dbprotect.core.ops.backups import backup_database, verify_database_backup
from dbprotect.core.ops.context import audit_log, primary_store, raw_identity, scratch_server_from_config
from dbprotect.core.pg.dsn import dbname_of, mask_dsn
from dbprotect.core.pg.scratch import scratch_database
from dbprotect.core.pg.tools import connect, server_major
from dbprotect.core.restore.guards import check_confirmation
from dbprotect.core.schema.drift import DriftReport, compare_schemas
from dbprotect.core.schema.guard import BACKUP_ID_ENV, GuardResult, mask_arguments
from dbprotect.core.schema.lint import DEFAULT_EXCLUDED_SQUAWK_RULES, LintResult, lint_files
from dbprotect.core.schema.plan import plan_migration
from dbprotect.core.schema.planfile import PlanFile
from dbprotect.core.schema.proof import PlanProof, prove_plan, schema_dump
from dbprotect.core.schema.protect import FRESH_BACKUP, ProtectingBackup, store_name
from dbprotect.core.schema.stored import (
    StoredSnapshot,
    check_loadable,
    drift_from_snapshot,
    load_checked_schema,
    read_schema_snapshot,
    schema_sha256,
    snapshot_key,
)
from dbprotect.core.schema.sync import (
    PLAN_PREAMBLE,
    PushResult,
    SchemaPlan,
    apply_plan,
    check_sync_direction,
    lint_plan,
    require_target_marker,
)
from dbprotect.core.schema.targets import check_target
from dbprotect.core.schema.watch import WatchState, alembic_revision, migration_files
from dbprotect.core.store.catalog import list_backups
from dbprotect.core.store.manifest import with_kind
from dbprotect.core.verify.integrity import verify_backup


def lint_pg_version(*, pg_version: int | None, dsn: str | None = None, config: Config | None = None,
                    database: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The PostgreSQL major to lint for, and where it came from: the target's server when a DSN is known.

    A DSN given explicitly wins; else the configured database's production DSN when this
    deployment can resolve it; else ``--pg-version``; else 18, said as a default (never as a fact).
    """
    if dsn is None and config is not None and database:
        try:
            dsn = resolve_dsn(config, database, "production", environ)
        except DbprotectError:
            dsn = None
    if dsn is not None:
        with connect(dsn, autocommit=True, application_name="dbprotect-lint") as conn:
            major = server_major(conn)
        ignored = f" (--pg-version {pg_version} ignored)" if pg_version not in (None, major) else ""
        return major, f"the target {mask_dsn(dsn)}{ignored}"
    if pg_version is not None:
        return pg_version, "--pg-version"
    return 18, "the default (no target DSN to ask)"


def lint_migrations(files: Iterable[str | Path], *, pg_version: int | None = None, config: Config | None = None,
                    database: str | None = None, actor: str = "dbprotect", dsn: str | None = None,
                    environ: Mapping[str, str] | None = None) -> LintResult:
    """Lint migration files; with a configured ``database``, its exclusions apply and waivers are audited.

    squawk judges for the target's PostgreSQL version (:func:`lint_pg_version`). Every inline
    waiver that silenced a finding is recorded in the database's audit log (who, where, which
    rule and why), so a waiver is never invisible.
    """
    exclude: tuple[str, ...] = DEFAULT_EXCLUDED_SQUAWK_RULES
    if config is not None and database:
        exclude = tuple(config.database(database).schema_settings.lint_exclude)
    version, source = lint_pg_version(pg_version=pg_version, dsn=dsn, config=config, database=database,
                                      environ=environ)
    result = replace(lint_files(list(files), pg_version=version, exclude=exclude), pg_version_from=source)
    if config is not None and database and result.waived:
        audit = audit_log(config, database, actor=actor, environ=environ)
        for finding, waiver in result.waived:
            audit.record("lint-waiver", database=database, outcome="ok", target=f"{finding.file}:{finding.line}",
                         detail=f"{finding.rule} waived because {waiver.reason}", data=waiver.to_dict())
    return result


def fresh_verified_backup(config: Config, database: str, *, max_age: timedelta, now: datetime | None = None,
                          environ: Mapping[str, str] | None = None) -> \
        ProtectingBackup | None:
    """The newest production backup that passed integrity and started within ``max_age``, if any."""
    now = now or datetime.now(UTC)
    for entry in list_backups(primary_store(config, database, environ), database):
        if entry.integrity_ok and now - entry.started_at <= max_age:
            return ProtectingBackup(database, database, entry.backup_id, entry.started_at, taken_now=False)
    return None


def take_verified_backup(config: Config, database: str, environment: str, *, why: str, actor: str,
                         environ: Mapping[str, str] | None = None,
                         identity: pyrage.x25519.Identity | None = None) -> ProtectingBackup:
    """Back up the database behind ``environment`` now and check its integrity (rungs 1 and 2).

    Any failure, of the backup or of its verification, becomes one :class:`RefusedError` saying
    that ``why`` (the change it was to protect) does not happen.
    """
    try:
        if environment == "production":
            result = backup_database(config, database, environ=environ, actor=actor, kind="guard")
            report = verify_database_backup(config, database, result.manifest.backup_id, by=actor,
                                            environ=environ, actor=actor, identity=identity)
        else:
            storage = primary_store(config, database, environ)
            name = store_name(database, environment)
            audit = AuditLog(storage, actor=actor)
            result = run_backup(database=name, dsn=resolve_dsn(config, database, environment, environ),
                                storage=storage, recipients=config.keys.raw.recipients, environment=environment,
                                pg_bin_dir=config.tool_dirs, finish=with_kind("guard"))
            report = verify_backup(storage, name, result.manifest.backup_id, raw_identity(config, environ, identity),
                                   by=actor)
            audit.record("backup", database=name, outcome="ok" if report.ok else "failed",
                         target=result.manifest.backup_id, detail=f"before {why}; {report.summary()}")
    except DbprotectError as exc:
        raise RefusedError(f"refused: the backup before {why} failed ({exc.one_line()}); nothing was changed",
                           hint=exc.hint or "fix the backup first: 'dbprotect backup' shows the same error",
                           refusal=Refusals.PROTECTING_BACKUP_FAILED) from None
    if not report.ok:
        raise RefusedError(f"refused: the backup before {why} failed integrity ({report.summary()}); "
                           "nothing was changed", hint="check the store, then retry",
                           refusal=Refusals.PROTECTING_BACKUP_FAILED)
    return ProtectingBackup(database, store_name(database, environment), result.manifest.backup_id,
                            result.manifest.started_at, taken_now=True)


def guard_command(config: Config, database: str, environment: str, command: Sequence[str], *,
                  confirmation: str | None = None, actor: str = "dbprotect",
                  environ: Mapping[str, str] | None = None) -> GuardResult:
    """Back up (and verify) ``database``'s ``environment``, then run ``command``; see the module docstring."""
    if not command:
        raise RefusedError("no command to guard", hint="dbprotect guard -d DB -e ENV -- COMMAND ARGS...",
                           refusal=Refusals.NO_COMMAND)
    shown = mask_arguments(command)
    audit = AuditLog(primary_store(config, database, environ), actor=actor)
    try:
        dsn = resolve_dsn(config, database, environment, environ)
        check_target(dsn, environment)
        if environment == "production":  # the name of the database it would run against, as restore asks
            check_confirmation(dbname_of(dsn) or database, confirmation, action=f"running '{shown}' against")
        backup = take_verified_backup(config, database, environment, why=f"'{shown}'", actor=actor,
                                      environ=environ)
    except DbprotectError as exc:
        audit.record("guard", database=database, outcome="refused", detail=f"{shown}: not run: {exc.one_line()}",
                     data={"error": exc.code, "environment": environment})
        raise
    env = {**(os.environ if environ is None else environ), BACKUP_ID_ENV: backup.backup_id}
    try:
        done = subprocess.run(list(command), env=dict(env), check=False)
    except OSError as exc:
        audit.record("guard", database=database, outcome="failed", target=backup.backup_id,
                     detail=f"{shown}: could not start: {exc.strerror}", data={"environment": environment})
        raise ToolError(f"the guarded command could not start: {exc.strerror}",
                        hint=f"the backup {backup.backup_id} was taken; check the command") from None
    audit.record("guard", database=database, outcome="ok" if done.returncode == 0 else "failed",
                 target=backup.backup_id, detail=f"{shown}: exit {done.returncode}",
                 data={"environment": environment, "returncode": done.returncode})
    return GuardResult(shown, done.returncode, backup)


def plan_sync(config: Config, database: str, source: str, target: str, *, prove: bool = False,
              environ: Mapping[str, str] | None = None) -> SchemaPlan:
    """The plan taking ``target``'s schema to ``source``'s (linted when the target is production).

    With ``prove``, the plan also runs on a scratch copy of the target's schema, and whatever it
    fails on or leaves different is added to the plan's unplannable items: a reviewer then sees
    every difference the plan does not carry, not only the ones known in advance.
    """
    check_sync_direction(source, target)
    source_dsn = resolve_dsn(config, database, source, environ)
    target_dsn = resolve_dsn(config, database, target, environ)
    planned = plan_migration(target_dsn, source_dsn)
    sql = planned.sql
    unplannable = planned.unplannable
    lint: LintResult | None = None
    proof = ""
    if target == "production" and sql.strip():
        with connect(target_dsn, autocommit=True) as conn:
            major = server_major(conn)
        exclude = tuple(config.database(database).schema_settings.lint_exclude)
        lint = lint_plan(PLAN_PREAMBLE + sql, database, pg_version=major, exclude=exclude)
    if prove and sql.strip():
        with scratch_server_from_config(config, environ) as server:
            found = prove_plan(PLAN_PREAMBLE + sql, target_dsn=target_dsn, source_dsn=source_dsn, scratch=server,
                               source=source, pg_bin_dir=config.pg_bin_dir)
        proof = found.summary()
        if found.error is not None:
            unplannable += (f"the plan fails on a scratch copy of {target}'s schema: {found.error}",)
        elif found.remaining is not None:
            unplannable += tuple(f"{line} (left by the plan on a scratch copy)" for line in found.remaining.lines())
    return SchemaPlan(database, source, target, mask_dsn(target_dsn), sql, lint, unplannable=unplannable,
                      proof=proof)


def push_schema(config: Config, database: str, source: str, target: str, *, confirmation: str | None = None,
                dry_run: bool = False, actor: str = "dbprotect", environ: Mapping[str, str] | None = None,
                now: datetime | None = None, identity: pyrage.x25519.Identity | None = None) -> PushResult:
    """Make ``target``'s schema equal to ``source``'s, behind the rules in the module docstring.

    Refusals raise :class:`RefusedError` before anything changes and are recorded in the audit log
    (as is every applied push, with the backup it stands on).
    """
    audit = AuditLog(primary_store(config, database, environ), actor=actor)
    action = f"schema-push {source}->{target}"
    try:
        plan = plan_sync(config, database, source, target, environ=environ)
        if dry_run or plan.empty:
            return PushResult(plan, applied=False, notes=["dry run: nothing was changed"] if dry_run else
                              [f"{target} already matches {source}: nothing to do"])
        if plan.unplannable:
            raise RefusedError(f"refused: the plan cannot express {len(plan.unplannable)} difference(s): "
                               + "; ".join(plan.unplannable[:3]) + f"; {target} was not changed",
                               hint="make that change by hand (through 'dbprotect guard'), then diff again",
                               refusal=Refusals.SCHEMA_UNPLANNABLE)
        target_dsn = resolve_dsn(config, database, target, environ)
        require_target_marker(target_dsn, target)
        backup: ProtectingBackup | None = None
        if target == "production":
            if plan.lint is not None and not plan.lint.ok:
                raise RefusedError(
                    f"refused: the plan fails migration lint ({len(plan.lint.findings)} finding(s): "
                    + "; ".join(plan.lint.lines()[:3]) + "); production was not changed",
                    hint="change the development schema, or apply a reviewed migration with waivers "
                    "through 'dbprotect guard'",
                    refusal=Refusals.LINT_FINDINGS)
            check_confirmation(database, confirmation)
        proof = prove_push_plan(config, plan, target_dsn, resolve_dsn(config, database, source, environ),
                                source=source, environ=environ)
        if target == "production":
            backup = fresh_verified_backup(config, database, max_age=FRESH_BACKUP, now=now, environ=environ) or \
                take_verified_backup(config, database, "production", why=f"the schema push to {database}",
                                     actor=actor, environ=environ, identity=identity)
        apply_plan(target_dsn, plan.script())
        after = compare_schemas(resolve_dsn(config, database, source, environ), target_dsn, left=source,
                                right=target)
    except DbprotectError as exc:
        outcome = "refused" if isinstance(exc, RefusedError) else "failed"
        audit.record(action, database=database, outcome=outcome, detail=exc.one_line(), data={"error": exc.code})
        raise
    audit.record(action, database=database, outcome="ok" if after.ok else "failed",
                 target=backup.backup_id if backup else "",
                 detail=f"{len(plan.sql.splitlines())} plan lines applied; {after.summary()}",
                 data={"backup": backup.describe() if backup else None, "drift_after": after.lines()})
    if not after.ok:
        raise DatabaseError(f"the plan was applied but {after.summary()}",
                            hint="results could not express every difference; review them by hand")
    return PushResult(plan, applied=True, backup=backup, drift_after=after, notes=[proof.summary()])


def prove_push_plan(config: Config, plan: SchemaPlan, target_dsn: str, source_dsn: str, *, source: str,
                    environ: Mapping[str, str] | None = None) -> PlanProof:
    """Run the plan on a scratch copy of the target's schema; refuse unless the re-diff is empty."""
    with scratch_server_from_config(config, environ) as server:
        proof = prove_plan(plan.script(), target_dsn=target_dsn, source_dsn=source_dsn, scratch=server,
                           source=source, pg_bin_dir=config.pg_bin_dir)
    if not proof.ok:
        raise RefusedError(f"refused: {proof.summary()}; {plan.target} was not changed",
                           hint="the plan would not make the schemas equal; make the remaining change by hand",
                           refusal=Refusals.SCHEMA_PLAN_UNPROVEN)
    return proof


def drift_between(config: Config, database: str, *, environ: Mapping[str, str] | None = None) -> DriftReport:
    """Development against production, with the configured allow-list of pending changes."""
    settings = config.database(database).schema_settings
    return compare_schemas(resolve_dsn(config, database, "development", environ),
                           resolve_dsn(config, database, "production", environ),
                           left="development", right="production", allowed=settings.pending)


def newest_production_snapshot(config: Config, database: str, *,
                               environ: Mapping[str, str] | None = None) -> StoredSnapshot:
    """The newest production schema snapshot in the store, read and checked with the development identity.

    The snapshot is opened with ``keys.development``: the key a development deployment already
    holds, and one that opens no raw backup.
    """
    keys = config.keys.development
    if keys is None:
        raise ConfigError("schema snapshots are encrypted to keys.development, which is not configured",
                          hint="add keys.development (recipients and identity_env) to the configuration")
    storage = primary_store(config, database, environ)
    for entry in list_backups(storage, database):
        try:
            storage.stat(snapshot_key(database, entry.backup_id))
        except NotFoundError:
            continue
        snapshot = read_schema_snapshot(storage, database=database, backup_id=entry.backup_id,
                                        identity=load_identity(keys.identity_env, environ))
        return replace(snapshot, started_at=entry.started_at)
    raise NotFoundError(f"no backup of {database!r} in {storage.uri} carries a schema snapshot",
                        hint="the production deployment writes one with each backup when keys.development is set")


def drift_from_production_snapshot(config: Config, database: str, *,
                                   environ: Mapping[str, str] | None = None) -> tuple[DriftReport, StoredSnapshot]:
    """Development against the newest production schema snapshot in the store: no production DSN needed."""
    snapshot = newest_production_snapshot(config, database, environ=environ)
    settings = config.database(database).schema_settings
    with scratch_server_from_config(config, environ) as server:
        report = drift_from_snapshot(resolve_dsn(config, database, "development", environ), snapshot, server,
                                     allowed=tuple(settings.pending))
    return report, snapshot


def plan_against_production_snapshot(config: Config, database: str, *,
                                     environ: Mapping[str, str] | None = None) -> PlanFile:
    """The development side of a push: the plan taking production (as its newest snapshot) to development.

    Made and proven on scratch databases only (the snapshot loaded as the target; the plan run on
    a copy of it and re-diffed against development); what the proof leaves different is listed
    as unplannable, so the reviewer and ``push --plan`` see it.
    """
    snapshot = newest_production_snapshot(config, database, environ=environ)
    dev_dsn = resolve_dsn(config, database, "development", environ)
    source_schema = schema_dump(dev_dsn, pg_bin_dir=config.pg_bin_dir)
    check_loadable(source_schema, where=f"the development schema of {database!r}")
    with scratch_server_from_config(config, environ) as server, scratch_database(server) as production_copy:
        load_checked_schema(production_copy.dsn, snapshot.dump,
                            what=f"the stored schema snapshot {snapshot.backup_id}")
        planned = plan_migration(production_copy.dsn, dev_dsn)
        unplannable = planned.unplannable
        proof = ""
        if planned.sql.strip():
            found = prove_plan(PLAN_PREAMBLE + planned.sql, target_dsn=production_copy.dsn, source_dsn=dev_dsn,
                               scratch=server, source="development", pg_bin_dir=config.pg_bin_dir)
            proof = found.summary()
            if found.error is not None:
                unplannable += (f"the plan fails on a scratch copy of the production snapshot: {found.error}",)
            elif found.remaining is not None:
                unplannable += tuple(f"{line} (left by the plan on a scratch copy)"
                                     for line in found.remaining.lines())
    return PlanFile(database=database, source_snapshot_sha256=snapshot.sha256,
                    source_snapshot_backup_id=snapshot.backup_id, sql=planned.sql, unplannable=unplannable,
                    proof=proof, source_schema=source_schema)


def push_plan_file(config: Config, plan: PlanFile, *, confirmation: str | None = None, actor: str = "dbprotect",
                   environ: Mapping[str, str] | None = None, now: datetime | None = None) -> PushResult:
    """Apply a development-made plan file to production, only if it was made against production's schema now.

    Order: this deployment holds production; the plan names a configured database; production's
    normalized schema hash equals the plan's ``source_snapshot_sha256``; nothing unplannable;
    lint; typed confirmation; production's marker; the plan proven on a scratch copy of
    production against development's schema (carried by the file); a fresh verified backup;
    then the plan in one transaction and a re-diff. Every refusal is audited and changes nothing.
    """
    database = plan.database
    config.database(database)  # an unknown database is a ConfigError before anything else
    audit = AuditLog(primary_store(config, database, environ), actor=actor)
    action = "schema-push plan-file development->production"
    backup: ProtectingBackup | None = None
    try:
        if "production" not in ALLOWED_ENVIRONMENTS[config.deployment]:
            raise RefusedError(f"refused: a {config.deployment} deployment does not push plans; production's "
                               "deployment runs 'schema push --plan'", hint="hand the reviewed plan file to the "
                               "production deployment", refusal=Refusals.PLAN_OUTSIDE_PRODUCTION)
        target_dsn = resolve_dsn(config, database, "production", environ)
        current = schema_sha256(schema_dump(target_dsn, pg_bin_dir=config.pg_bin_dir))
        if current != plan.source_snapshot_sha256:
            raise RefusedError(
                f"refused: the plan was made against production's schema of snapshot {plan.source_snapshot_backup_id} "
                f"(sha256 {plan.source_snapshot_sha256[:12]}), production's schema is now {current[:12]}; "
                "production was not changed", hint="make the plan again from the newest snapshot "
                "(back up production first, then 'dbprotect schema diff --from-snapshot --out')",
                refusal=Refusals.PLAN_OTHER_SNAPSHOT)
        schema_plan = SchemaPlan(database, "development", "production", mask_dsn(target_dsn), plan.sql,
                                 unplannable=plan.unplannable, proof=plan.proof)
        if plan.empty:
            return PushResult(schema_plan, applied=False, notes=["the plan is empty: nothing to do"])
        if plan.unplannable:
            raise RefusedError(f"refused: the plan cannot express {len(plan.unplannable)} difference(s): "
                               + "; ".join(plan.unplannable[:3]) + "; production was not changed",
                               hint="make that change by hand (through 'dbprotect guard'), then plan again",
                               refusal=Refusals.SCHEMA_UNPLANNABLE)
        with connect(target_dsn, autocommit=True) as conn:
            major = server_major(conn)
        lint = lint_plan(schema_plan.script(), database, pg_version=major,
                         exclude=tuple(config.database(database).schema_settings.lint_exclude))
        schema_plan = replace(schema_plan, lint=lint)
        if not lint.ok:
            raise RefusedError(f"refused: the plan fails migration lint ({len(lint.findings)} finding(s): "
                               + "; ".join(lint.lines()[:3]) + "); production was not changed",
                               hint="change the development schema, or apply a reviewed migration with waivers "
                               "through 'dbprotect guard'", refusal=Refusals.LINT_FINDINGS)
        check_confirmation(database, confirmation)
        require_target_marker(target_dsn, "production")
        with scratch_server_from_config(config, environ) as server, scratch_database(server) as development_copy:
            load_checked_schema(development_copy.dsn, plan.source_schema, what="the plan file's development schema")
            proof = prove_plan(schema_plan.script(), target_dsn=target_dsn, source_dsn=development_copy.dsn,
                               scratch=server, source="development", pg_bin_dir=config.pg_bin_dir)
            if not proof.ok:
                raise RefusedError(f"refused: {proof.summary()}; production was not changed",
                                   hint="the plan would not make production equal development; plan again",
                                   refusal=Refusals.SCHEMA_PLAN_UNPROVEN)
            backup = fresh_verified_backup(config, database, max_age=FRESH_BACKUP, now=now, environ=environ) or \
                take_verified_backup(config, database, "production", why=f"the schema push to {database}",
                                     actor=actor, environ=environ)
            apply_plan(target_dsn, schema_plan.script())
            after = compare_schemas(development_copy.dsn, target_dsn, left="development", right="production")
    except DbprotectError as exc:
        outcome = "refused" if isinstance(exc, RefusedError) else "failed"
        audit.record(action, database=database, outcome=outcome, detail=exc.one_line(),
                     data={"error": exc.code, "plan_snapshot_sha256": plan.source_snapshot_sha256})
        raise
    audit.record(action, database=database, outcome="ok" if after.ok else "failed", target=backup.backup_id,
                 detail=f"{len(plan.sql.splitlines())} plan lines applied (snapshot {plan.source_snapshot_backup_id}); "
                 f"{after.summary()}", data={"backup": backup.describe(), "drift_after": after.lines(),
                                             "plan_snapshot_sha256": plan.source_snapshot_sha256})
    if not after.ok:
        raise DatabaseError(f"the plan was applied but {after.summary()}",
                            hint="results could not express every difference; review them by hand")
    return PushResult(schema_plan, applied=True, backup=backup, drift_after=after, notes=[proof.summary()])


def migrations_dir(config: Config, database: str) -> Path | None:
    """``schema.migrations_dir`` of ``database`` resolved against the configuration's folder."""
    configured = config.database(database).schema_settings.migrations_dir
    if not configured:
        return None
    path = Path(configured).expanduser()
    return path if path.is_absolute() else config.base_dir() / path


def observe_migrations(config: Config, database: str, environ: Mapping[str, str] | None = None) -> WatchState:
    """The current state of both markers for ``database``'s production environment."""
    directory = migrations_dir(config, database)
    files = migration_files(directory) if directory is not None else {}
    return WatchState(migrations=files, alembic=alembic_revision(resolve_dsn(config, database, "production", environ)))
