"""The copy commands: ``copy`` (a backup to the other storage targets) and ``warm-copy`` (a live standby).

Thin calls into :mod:`dbprotect.core.ops`; copies are verified against the manifest there, and a
warm copy is restored, verified and swapped in there. Here only the outcome is printed.
"""

from __future__ import annotations

from datetime import timedelta

import click

from dbprotect.cli.ui.render import PhasePrinter, Ui, common_options, human_age, human_bytes, scrub, server_where
from dbprotect.core.errors import EXIT_OK, IntegrityError
from dbprotect.core.ops import cli_actor, copy_targets, copy_to_target, refresh_warm_copy, verify_warm_copy


@click.command("copy")
@click.argument("database")
@click.option("--target", metavar="NAME", help="Only this target [default: every target beyond the primary].")
@click.option("--backup", "backup_id", metavar="ID", help="Copy this backup [default: the newest verified one, "
              "unless the target already holds it].")
@common_options
@click.pass_obj
def copy_command(ui: Ui, database: str, target: str | None, backup_id: str | None) -> int:
    """Copy DATABASE's newest verified backup from its primary store to its other targets.

    The encrypted object is copied as it is (never decrypted; S3 to S3 on one endpoint is a
    server-side copy), read back and checked against the manifest's SHA-256 on the target, and
    only then committed there by writing the manifest. Exits 7 when the copy does not match.
    """
    config = ui.load()
    targets = [target] if target else copy_targets(config, database)
    if not targets:
        raise click.UsageError(f"database {database!r} has a single storage target: there is nowhere to copy to")
    outcomes = [copy_to_target(config, database, name, backup_id=backup_id, actor=cli_actor()) for name in targets]
    if ui.json:
        ui.emit({"database": database, "copies": [outcome.to_dict() for outcome in outcomes]})
        return EXIT_OK
    console = ui.console()
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            console.print(f"{outcome.target}: nothing to copy ({outcome.plan.reason})", soft_wrap=True)
            continue
        how = "server-side copy" if result.server_side else "streamed"
        console.print(f"{outcome.target}: copied {result.backup_id} ({human_bytes(result.bytes)}, {how}, "
                      f"{result.seconds:.2f} s; verified in {result.verify_seconds:.2f} s)", soft_wrap=True)
    return EXIT_OK


@click.command("warm-copy")
@click.argument("database")
@click.option("--force", is_flag=True, help="Restore even when the warm copy already holds the newest verified backup.")
@click.option("--check", "check_only", is_flag=True,
              help="Only compare the live warm copy with its backup's manifest; change nothing. Exits 7 on a mismatch.")
@common_options
@click.pass_obj
def warm_copy_command(ui: Ui, database: str, force: bool, check_only: bool) -> int:
    """Refresh DATABASE's warm copy on the backup server from its newest verified backup.

    The backup is restored into a staging database, verified table by table against its
    manifest, and swapped in by renaming; nothing happens when the warm copy already holds it.
    Refuses (exit 9) a target database marked production or development, or unmarked and not empty.
    """
    config = ui.load()
    if check_only:
        report = verify_warm_copy(config, database, actor=cli_actor())
        if not report.ok:
            raise IntegrityError(report.detail, hint=f"refresh it: 'dbprotect warm-copy {database} --force'")
        if ui.json:
            ui.emit(report.to_dict())
        else:
            click.echo(scrub(report.detail))
        return EXIT_OK
    outcome = refresh_warm_copy(config, database, force=force, actor=cli_actor(), progress=PhasePrinter(ui))
    if ui.json:
        ui.emit(outcome.to_dict())
        return EXIT_OK
    click.echo(scrub(f"{outcome.reason} (on {server_where(outcome.server)})"))
    click.echo(f"  data age {human_age(timedelta(hours=outcome.backup_age_hours()))}"
               + (f"; {outcome.tables} tables, {outcome.rows:,} rows verified in "
                  f"{outcome.timings.get('total_seconds', 0):.2f} s" if outcome.refreshed else ""))
    return EXIT_OK
