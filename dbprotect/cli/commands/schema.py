"""The schema commands: ``lint``, ``schema diff|push|drift``, ``guard``, ``mark`` and ``check-target``.

Thin calls into :mod:`dbprotect.core.ops` (configured databases) and
:mod:`dbprotect.core.schema.targets` (a database named by a DSN on the command line).
"""

from __future__ import annotations

import os

import click

from dbprotect.cli.ui.render import Ui, common_options, scrub
from dbprotect.core.errors import EXIT_OK, ConfigError, Refusals, RefusedError
from dbprotect.core.ops import (
    cli_actor,
    drift_between,
    drift_from_production_snapshot,
    guard_command,
    lint_migrations,
    mark_configured_database,
    plan_against_production_snapshot,
    plan_sync,
    push_plan_file,
    push_schema,
    undo_command_for,
)
from dbprotect.core.schema.planfile import PlanFile, read_plan_file, write_plan_file
from dbprotect.core.schema.sync import SchemaPlan
from dbprotect.core.schema.targets import check_target, mark_database

ENVIRONMENT_CHOICE = click.Choice(["production", "development"])


@click.command()
@click.argument("database")
@click.argument("environment", type=click.Choice(["production", "development", "scratch", "test"]))
@click.option("--dsn", help="Mark the database this DSN names instead of the configured one of ENVIRONMENT.")
@common_options
@click.pass_obj
def mark(ui: Ui, database: str, environment: str, dsn: str | None) -> int:
    """Set the environment marker of DATABASE's ENVIRONMENT database (or of --dsn's database).

    The marker (ALTER DATABASE ... SET dbprotect.environment) is what every destructive step
    checks before it acts, so a mistyped DSN cannot turn a dev refresh into a prod overwrite.
    """
    if dsn is not None:
        name, previous = mark_database(dsn, environment)
    elif environment in ("production", "development"):
        name, previous = mark_configured_database(ui.load(), database, environment)
    else:
        raise click.UsageError(f"marking a {environment} database needs --dsn")
    if ui.json:
        ui.emit({"database": name, "environment": environment, "previous": previous})
    else:
        click.echo(f"database {name} marked {environment} (was {previous or 'unmarked'})")
    return EXIT_OK


@click.command("check-target")
@click.argument("dsn")
@click.option("--expect", required=True, metavar="ENV",
              help="The environment the database must be marked as (e.g. test).")
@common_options
@click.pass_obj
def check_target_command(ui: Ui, dsn: str, expect: str) -> int:
    """Exit 0 only when the database DSN names is marked --expect (exit 9 otherwise, unmarked too).

    Run it first in a test suite ('dbprotect check-target "$TEST_DATABASE_URL" --expect test')
    so tests refuse to run against development or production.
    """
    name = check_target(dsn, expect)
    if ui.json:
        ui.emit({"database": name, "environment": expect, "ok": True})
    else:
        click.echo(f"database {name} is marked {expect}")
    return EXIT_OK


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--pg-version", type=int, default=None,
              help="The target's PostgreSQL major version, when no target can be asked (default 18).")
@click.option("--dsn-env", metavar="VAR",
              help="Ask the server at the DSN in $VAR for its version (with -d DB: its production DSN).")
@click.option("--database", "-d", metavar="DB",
              help="Record used waivers in DB's audit log (needs the configuration).")
@common_options
@click.pass_obj
def lint(ui: Ui, files: tuple[str, ...], pg_version: int | None, dsn_env: str | None, database: str | None) -> int:
    """Lint migration FILES: squawk (for the target's version) and dbprotect's rules (parsed by pglast).

    \b
    The version: the server at --dsn-env's DSN, else -d DB's production DSN when this deployment
    has it, else --pg-version, else 18 (the output says which).
    Findings print as 'file:line: rule: message'. Data-loss rules: drop-table, drop-column,
    drop-schema, truncate, delete-without-where, update-without-where, type-change, rename;
    review rules: data-modifying-cte, do-block, drop-cascade, lock-heavy.
    Waive one only inline, above the statement, with a reason:
      -- dbprotect: allow drop-column because the column is unused since 4.2
    Exits 9 when any finding is left.
    """
    config = ui.load() if database else None
    dsn = None
    if dsn_env:
        dsn = os.environ.get(dsn_env)
        if not dsn:
            raise ConfigError(f"${dsn_env} is not set", hint=f"export {dsn_env}=postgresql://user@host/db")
    result = lint_migrations(files, pg_version=pg_version, config=config, database=database, actor=cli_actor(),
                             dsn=dsn)
    if ui.json:
        ui.error_context["lint"] = result.to_dict()
    else:
        for line in result.lines():
            click.echo(line)
        for finding, waiver in result.waived:
            click.echo(f"{finding.file}:{finding.line}: {finding.rule}: waived because {waiver.reason}")
    if not result.ok:
        raise RefusedError(f"{len(result.findings)} lint finding(s) in {len(files)} file(s)",
                           hint="fix them, or waive one inline: -- dbprotect: allow RULE because REASON",
                           refusal=Refusals.LINT_FINDINGS)
    if ui.json:
        ui.emit(ui.error_context["lint"])
    else:
        click.echo(f"lint passed ({len(files)} file(s), {len(result.waived)} waived finding(s); "
                   f"PostgreSQL {result.pg_version} from {result.pg_version_from})")
    return EXIT_OK


@click.group()
def schema() -> None:
    """Schema drift and sync between the environments of a database (DDL from 'results').

    Only schema moves, never data: development data never reaches production.
    """


def _print_plan(plan: SchemaPlan) -> None:
    """The DDL of a plan, with its lint verdict as SQL comments (so the output stays runnable)."""
    if plan.empty:
        click.echo(f"{plan.target} already matches {plan.source}: no changes")
        return
    click.echo(f"-- plan taking {plan.target} ({plan.target_dsn_masked}) to {plan.source}")
    if plan.script():
        click.echo(scrub(plan.script()))
    if plan.proof:
        click.echo(f"-- proof: {plan.proof}")
    for item in plan.unplannable:
        click.echo(f"-- UNPLANNABLE (push refuses): {item}")
    if plan.lint is not None:
        click.echo("-- lint: " + ("passed" if plan.lint.ok else "FAILED"))
        for line in plan.lint.lines():
            click.echo(f"--   {line}")


def _print_plan_file(plan: PlanFile, path: str) -> None:
    click.echo(f"-- plan taking production (snapshot {plan.source_snapshot_backup_id}, sha256 "
               f"{plan.source_snapshot_sha256[:12]}) to development, written to {path}")
    click.echo(scrub(plan.sql) if plan.sql.strip() else "-- (no statements)")
    if plan.proof:
        click.echo(f"-- proof: {plan.proof}")
    for item in plan.unplannable:
        click.echo(f"-- UNPLANNABLE (push refuses): {item}")


@schema.command()
@click.argument("source", type=ENVIRONMENT_CHOICE)
@click.argument("target", type=ENVIRONMENT_CHOICE)
@click.argument("database")
@click.option("--no-proof", is_flag=True, help="Skip running the plan on a scratch copy of TARGET's schema.")
@click.option("--from-snapshot", is_flag=True,
              help="development -> production only: plan against production's newest schema snapshot in the "
              "store (no production DSN needed); needs --out.")
@click.option("--out", "out", metavar="FILE", type=click.Path(dir_okay=False),
              help="With --from-snapshot: write the plan file that 'schema push --plan' runs in production.")
@common_options
@click.pass_obj
def diff(ui: Ui, source: str, target: str, database: str, no_proof: bool, from_snapshot: bool,
         out: str | None) -> int:
    """Print the DDL that takes TARGET's schema of DATABASE to SOURCE's (changes nothing).

    The plan is first run on a scratch copy of TARGET's schema (no data): a difference it would
    not carry is listed as UNPLANNABLE, and 'schema push' refuses such a plan.
    In a development deployment: 'schema diff development production DB --from-snapshot --out
    plan.json' writes a plan file bound to the snapshot's hash, for review and 'push --plan'.
    """
    if from_snapshot or out:
        if not (from_snapshot and out) or (source, target) != ("development", "production") or no_proof:
            raise click.UsageError("a plan file is made with: schema diff development production DB "
                                   "--from-snapshot --out FILE (always proven)")
        plan_file = plan_against_production_snapshot(ui.load(), database)
        write_plan_file(plan_file, out)
        if ui.json:
            ui.emit({**plan_file.to_dict(), "out": out})
        else:
            _print_plan_file(plan_file, out)
        return EXIT_OK
    plan = plan_sync(ui.load(), database, source, target, prove=not no_proof)
    if ui.json:
        ui.emit(plan.to_dict())
    else:
        _print_plan(plan)
    return EXIT_OK


@schema.command()
@click.argument("source", type=ENVIRONMENT_CHOICE, required=False)
@click.argument("target", type=ENVIRONMENT_CHOICE, required=False)
@click.argument("database", required=False)
@click.option("--confirm", "confirmation", metavar="NAME", help="Pushing to production needs DATABASE's name here.")
@click.option("--dry-run", is_flag=True, help="Print the plan (and its lint) and change nothing.")
@click.option("--plan", "plan_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Production deployment: apply a plan file made by 'schema diff --from-snapshot --out' "
              "(no SOURCE TARGET DATABASE; refused unless production's schema is the one it was made against).")
@common_options
@click.pass_obj
def push(ui: Ui, source: str | None, target: str | None, database: str | None, confirmation: str | None,
         dry_run: bool, plan_path: str | None) -> int:
    """Make TARGET's schema of DATABASE equal to SOURCE's (or apply --plan FILE to production).

    production -> development is allowed. development -> production needs the plan to pass
    lint, a backup of production from the last hour that passed integrity (taken now if
    there is none) and --confirm DATABASE. Refusals exit 9 and change nothing.
    """
    if plan_path is not None:
        if source or target or database or dry_run:
            raise click.UsageError("schema push --plan FILE takes no SOURCE TARGET DATABASE and no --dry-run")
        result = push_plan_file(ui.load(), read_plan_file(plan_path), confirmation=confirmation, actor=cli_actor())
    elif source and target and database:
        result = push_schema(ui.load(), database, source, target, confirmation=confirmation, dry_run=dry_run,
                             actor=cli_actor())
    else:
        raise click.UsageError("schema push needs SOURCE TARGET DATABASE, or --plan FILE")
    if ui.json:
        ui.emit(result.to_dict())
        return EXIT_OK
    _print_plan(result.plan)
    for note in result.notes:
        click.echo(note)
    if result.applied:
        if result.backup:
            click.echo(f"protected by {result.backup.describe()}")
            click.echo("  to undo: " + undo_command_for(ui.load(), result.backup.database, "production",
                                                             result.backup.backup_id))
        click.echo(f"applied: {result.drift_after.summary() if result.drift_after else 'done'}")
    return EXIT_OK


@schema.command()
@click.argument("database")
@click.option("--from-snapshot", is_flag=True,
              help="Compare development with production's newest schema snapshot in the store (a development "
              "deployment: no production DSN).")
@common_options
@click.pass_obj
def drift(ui: Ui, database: str, from_snapshot: bool) -> int:
    """List the schema differences between development and production (exit 9 on drift).

    Objects only on one side and changed columns, types, defaults, constraints, indexes,
    functions, triggers and policies; patterns under schema.pending are allowed.
    """
    if from_snapshot:
        report, snapshot = drift_from_production_snapshot(ui.load(), database)
        if not ui.json:
            click.echo(f"production as of snapshot {snapshot.backup_id} (sha256 {snapshot.sha256[:12]})")
    else:
        report = drift_between(ui.load(), database)
    if ui.json:
        ui.error_context["drift"] = report.to_dict()
    else:
        for line in report.lines():
            click.echo(line)
        for item in report.allowed:
            click.echo(f"{item} (allowed: pending)")
    if not report.ok:
        raise RefusedError(report.summary(), hint="push the schema, or list expected changes under schema.pending",
                           refusal=Refusals.SCHEMA_DRIFT)
    if ui.json:
        ui.emit(ui.error_context["drift"])
    else:
        click.echo(report.summary())
    return EXIT_OK


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--database", "-d", metavar="DB", help="Configured database [default: the only one].")
@click.option("--environment", "-e", type=ENVIRONMENT_CHOICE, default="development", show_default=True)
@click.option("--confirm", "confirmation", metavar="NAME",
              help="Running against production needs that database's exact name here (as restore asks).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@common_options
@click.pass_obj
def guard(ui: Ui, database: str | None, environment: str, confirmation: str | None, command: tuple[str, ...]) -> int:
    """Back up DB's ENVIRONMENT database, verify the backup, then run COMMAND (after '--').

    \b
    dbprotect guard -d shop -e development -- alembic downgrade -1
    If the backup or its integrity check fails, COMMAND never runs (exit 9). Production needs
    --confirm NAME, NAME being the production database's exact name (as restore asks). The
    command sees $DBPROTECT_GUARD_BACKUP_ID; its exit status is returned.
    """
    config = ui.load()
    if database is None:
        if len(config.databases) != 1:
            raise click.UsageError("--database is needed when several databases are configured")
        database = next(iter(config.databases))
    result = guard_command(config, database, environment, list(command), confirmation=confirmation,
                           actor=cli_actor())
    if ui.json:
        ui.emit(result.to_dict())
    else:
        click.echo(f"guard: {result.backup.describe()}; '{result.command}' exited {result.returncode}", err=True)
        click.echo("guard: to undo: " + undo_command_for(config, database, environment, result.backup.backup_id),
                   err=True)
    return result.returncode
