"""The restore commands: ``restore`` (the on-call restore) and ``drill`` (a timed restore into scratch).

Thin calls into :mod:`dbprotect.core.ops`: the plan, the guards and the staged swap all live in
:mod:`dbprotect.core.restore`; here the ``--target`` spelling is parsed and the outcome printed.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from dbprotect.cli.commands.wal import pitr_drill, point_in_time_options, point_in_time_restore
from dbprotect.cli.ui.render import PhasePrinter, Ui, common_options, human_age, scrub
from dbprotect.core.errors import EXIT_OK, EXIT_RTO_EXCEEDED, IntegrityError
from dbprotect.core.ops import audit_log, cli_actor, drill_database, restore_database, undo_command
from dbprotect.core.restore.oncall import RestorePlan


def phase_line(timings: dict[str, float]) -> str:
    """``restore 1.20 s, verify 0.40 s, tables_released_during_restore 5``: durations (keys ending
    in ``_seconds``) in seconds, anything else (a count) as the number it is."""
    return ", ".join(f"{key.removesuffix('_seconds')} {value:.2f} s" if key.endswith("_seconds")
                     else f"{key} {value:g}" for key, value in timings.items())


def _parse_target(spec: str) -> tuple[bool, str | None, str | None]:
    """``--target`` as (existing, environment or None, database name or None)."""
    kind, _, name = spec.partition(":")
    if kind == "new":
        return False, None, name or None
    if kind in ("production", "development"):
        return True, kind, name or None
    raise click.BadParameter(f"{spec!r}: expected new, new:NAME, production[:NAME] or development[:NAME]",
                             param_hint="'--target'")


@click.command()
@click.argument("database")
@click.argument("backup_id", required=False)
@click.option("--target", "target_spec", default="new", show_default=True, metavar="TARGET",
              help="new[:NAME] creates database NAME (default <database>_restored_<backup id>) on the server of "
              "--environment; production[:NAME] or development[:NAME] OVERWRITES the database that environment's "
              "configured DSN names (or NAME on its server), after a safety backup.")
@click.option("--environment", type=click.Choice(["production", "development"]), default=None,
              help="For --target new: whose server (configured DSN) gets the new database and which environment "
              "marker it carries [default: production].")
@click.option("--confirm", "confirmation", metavar="NAME",
              help="Overwriting an existing database needs its exact name here.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--analyze/--no-analyze", default=None,
              help="ANALYZE before the database is put in place [default: only when overwriting an existing "
              "database; a new one is analyzed by autovacuum].")
@point_in_time_options
@common_options
@click.pass_obj
def restore(ui: Ui, database: str, backup_id: str | None, target_spec: str, environment: str | None,
            confirmation: str | None, dry_run: bool, analyze: bool | None, to_time: str | None = None,
            to_lsn: str | None = None, data_dir: Path | None = None) -> int:
    """Restore BACKUP_ID of DATABASE (default: the newest backup that passed verification).

    BACKUP_ID may be any kind of DATABASE's backups ('list DATABASE --all'): a safety backup
    taken before an overwrite restore (whose undo command that restore printed), a guard backup.

    \b
    Works from dbprotect.yaml and the backup store alone (no Dagster). Targets:
      --target new            a new database <database>_restored_<backup id> on the
                              production server (its DSN from the configured variable)
      --target new:NAME       a new database NAME; --environment picks the server
      --target production     OVERWRITE the database $<production dsn_env> names
      --target production:NAME  OVERWRITE database NAME on that server

    The backup is restored into a staging database on the target's server with pg_restore -j
    <cores>, verified against the manifest (row counts, checksums, schema objects, sequences),
    and only then renamed into place, so a failed restore never leaves a half-restored target.
    Overwriting needs --confirm NAME, the target's environment marker to equal the environment
    you named, and a safety backup of the target that passes integrity; development data is
    never restored into production. Refusals exit 9 and change nothing. --dry-run prints the
    plan: what will be dropped, replaced and created, how big, how long the last drill took.

    With --to-time T or --to-lsn L (databases with 'continuous:'): a point-in-time restore of the
    whole server into the new data directory --data-dir, started on a free port and promoted.
    """
    if to_time or to_lsn or data_dir:
        return point_in_time_restore(ui, database, backup_id=backup_id, to_time=to_time, to_lsn=to_lsn,
                                     data_dir=data_dir)
    existing, named_environment, name = _parse_target(target_spec)
    if existing and environment and environment != named_environment:
        raise click.BadParameter(f"--target {target_spec} names the {named_environment} environment, "
                                 f"--environment says {environment}", param_hint="'--environment'")
    config = ui.load()
    outcome = restore_database(config, database, backup_id,
                               environment=named_environment or environment or "production", existing=existing,
                               target_name=name, confirmation=confirmation, dry_run=dry_run, by=cli_actor(),
                               progress=PhasePrinter(ui), analyze=analyze)
    if isinstance(outcome, RestorePlan):
        if ui.json:
            ui.emit({"dry_run": True, "plan": outcome.to_dict(), "summary": outcome.summary()})
        else:
            click.echo(scrub(outcome.summary()))
            click.echo("dry run: nothing was changed")
        return EXIT_OK
    plan = outcome.plan
    if ui.json:
        ui.emit({"dry_run": False, "plan": plan.to_dict(), "restored_database": outcome.target_database,
                 "safety_backup_id": outcome.safety_backup_id, "metrics": outcome.metrics(),
                 "database_settings": outcome.settings.to_dict() if outcome.settings else None,
                 "undo_command": undo_command(database, outcome.safety_backup_id, plan.target.environment,
                                              outcome.target_database) if outcome.safety_backup_id else None})
        return EXIT_OK
    timings = phase_line(outcome.timings)
    click.echo(f"restored {database} backup {plan.backup_id} into {plan.target.environment} database "
               f"{outcome.target_database!r}: {plan.tables} tables, {plan.rows:,} rows verified")
    if outcome.safety_backup_id:
        click.echo(f"  safety backup of the replaced database: {outcome.safety_backup_id} "
                   f"({outcome.safety_folder or database + '-safety'})")
        click.echo("  to undo this restore: " + undo_command(database, outcome.safety_backup_id,
                                                              plan.target.environment, outcome.target_database))
    if outcome.settings is not None:
        applied = outcome.settings.applied
        click.echo(f"  database settings applied: {', '.join(applied) if applied else 'none recorded'}")
        for line in outcome.settings.not_applied:
            click.echo(f"  database setting NOT applied: {line}")
    click.echo(f"  phases: {timings}")
    return EXIT_OK


@click.command()
@click.argument("database")
@click.option("--pitr", is_flag=True,
              help="A point-in-time drill instead (databases with 'continuous:'): restore the server to a random "
                   "moment between two heartbeats and prove the one before is there and the one after is not.")
@common_options
@click.pass_obj
def drill(ui: Ui, database: str, pitr: bool) -> int:
    """A restore drill: restore the newest backup of DATABASE into a scratch database and verify it.

    Measures the RTO (time from start to a verified database) against the database's
    rto_minutes and the RPO at drill time (the restored data's age); records the result in the
    store and the audit log; the scratch database is always dropped. Exits 7 when the restore
    does not verify, 12 when it verified but took longer than the RTO target.
    """
    if pitr:
        return pitr_drill(ui, database)
    config = ui.load()
    actor = cli_actor()
    result = drill_database(config, database, by=actor, progress=PhasePrinter(ui),
                            audit=audit_log(config, database, actor=actor))
    if ui.json:
        ui.error_context["drill"] = result.to_dict()
    else:
        verdict = "passed" if result.ok else "FAILED"
        phases = phase_line(result.verification.timings)
        click.echo(scrub(f"drill of {database} backup {result.backup_id}: {verdict}: {result.reason}"))
        click.echo(f"  RTO {result.rto_seconds:.1f} s (target {result.rto_target_seconds:.0f} s); "
                   f"RPO at drill time {human_age(timedelta(seconds=result.rpo_seconds))}")
        click.echo(f"  phases: {phases}; {result.verification.tables} tables, {result.verification.rows:,} rows")
    if not result.verification.ok:
        raise IntegrityError(f"drill of {database}: {result.verification.detail}",
                             hint=f"the backup {result.backup_id} does not restore as recorded; run "
                             f"'dbprotect verify {result.backup_id}' and take a new backup")
    if ui.json:
        ui.emit(ui.error_context.pop("drill"))
    return EXIT_OK if result.ok else EXIT_RTO_EXCEEDED
