"""The retention command: ``cleanup`` applies a database's retention policy per storage target.

The plan and the sweep are :func:`dbprotect.core.ops.cleanup_database`; here the plan is printed
and the first failure (a refusal, a store that failed half-way) becomes the exit status.
"""

from __future__ import annotations

import click
from rich.markup import escape

from dbprotect.cli.ui.render import Ui, common_options, human_bytes, scrub
from dbprotect.core.errors import EXIT_OK
from dbprotect.core.ops import TargetCleanup, cleanup_database, cli_actor, first_cleanup_error


@click.command()
@click.argument("database")
@click.option("--dry-run", is_flag=True, help="Print the plan and what would be deleted; delete and record nothing.")
@click.option("--target", metavar="NAME", help="Only this storage target [default: every target of DATABASE].")
@common_options
@click.pass_obj
def cleanup(ui: Ui, database: str, dry_run: bool, target: str | None) -> int:
    """Apply DATABASE's retention policy: print the plan, then delete what it marks.

    \b
    Per storage target (its retention_by_target policy, else retention): one line per backup,
    keep or delete and every reason. Then the sweep, oldest first: manifest.json first (the
    backup stops being listed), then the dump and check objects; incomplete uploads older than
    a day go too. Never deleted, whatever the policy: the newest verified backup, the
    min_verified newest verified ones, uploads in progress. Each deletion is recorded in the
    primary store's audit log ('dbprotect audit').

    Exits 9 when a plan refuses (max_age would delete the verified backups the rules need: nothing
    is deleted on that target) and 6 when a store fails half-way (every backup still listed is
    whole; run it again to finish).
    """
    config = ui.load()
    cleanups = cleanup_database(config, database, target=target, dry_run=dry_run, actor=cli_actor())
    document = {"database": database, "dry_run": dry_run, "targets": [c.to_dict() for c in cleanups]}
    if not ui.json:
        _print_cleanups(ui, cleanups, dry_run)
    error = first_cleanup_error(cleanups)
    if error is not None:
        ui.error_context.update(document)
        raise error
    if ui.json:
        ui.emit(document)
    return EXIT_OK


def _print_cleanups(ui: Ui, cleanups: list[TargetCleanup], dry_run: bool) -> None:
    console = ui.console()
    for done in cleanups:
        console.print(f"[bold]{escape(done.target)}[/] ({escape(done.uri)})", soft_wrap=True)
        console.print(escape(scrub(done.plan.render())), soft_wrap=True)
        result = done.result
        if result is not None:
            verb = "would delete" if dry_run else "deleted"
            console.print(f"{verb} {len(result.deleted_backups)} backup(s) and {len(result.removed_incomplete)} "
                          f"incomplete upload(s), {len(result.deleted_objects)} object(s), "
                          f"{human_bytes(result.bytes_freed)}" + (" (dry run: nothing deleted)" if dry_run else ""),
                          soft_wrap=True)
        if done.continuous is not None:
            console.print(escape(scrub(done.continuous.render())), soft_wrap=True)
        console.print()
