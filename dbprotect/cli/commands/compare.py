"""``dbprotect compare BACKUP_ID DATABASE``: any database against a backup, every difference named.

A thin call into :func:`dbprotect.core.ops.compare_with_backup` (core's one comparison, the same
that restores, drills and the warm copy use); here the target is parsed and the differences printed.
"""

from __future__ import annotations

import click

from dbprotect.cli.ui.render import Ui, common_options, scrub
from dbprotect.core.errors import EXIT_OK, IntegrityError
from dbprotect.core.ops import compare_with_backup


def _parse_target(spec: str) -> tuple[str, str | None]:
    """``--target`` as (environment, database name or None)."""
    environment, _, name = spec.partition(":")
    if environment not in ("production", "development"):
        raise click.BadParameter(f"{spec!r}: expected production[:NAME] or development[:NAME]",
                                 param_hint="'--target'")
    return environment, name or None


@click.command("compare")
@click.argument("backup_id")
@click.argument("database")
@click.option("--target", "target_spec", default="production", show_default=True, metavar="ENV[:NAME]",
              help="The compared database: the one ENV's configured DSN names, or database NAME on that server "
              "(e.g. one restored with 'restore --target new:NAME').")
@click.option("--owners/--no-owners", default=True, show_default=True,
              help="Compare owners and privileges; --no-owners for a database restored by hand with "
              "pg_restore --no-owner --no-acl.")
@common_options
@click.pass_obj
def compare_command(ui: Ui, backup_id: str, database: str, target_spec: str, owners: bool) -> int:
    """Compare a database with BACKUP_ID of DATABASE (or 'latest') and name every difference.

    \b
    Compared: every table's rows and checksum, sequences, large objects by content digest,
    materialized views (populated and content), every schema object's definition (functions,
    views, triggers and whether enabled, policies, constraints and domain checks, indexes,
    logged/unlogged, comments), owners and privileges. One difference per line; exits 7 when
    there is any. Backups from an older dbprotect say what they cannot compare.
    """
    environment, name = _parse_target(target_spec)
    config = ui.load()
    found_id, comparison = compare_with_backup(config, database, backup_id, environment=environment,
                                               target_name=name, owners=owners)
    target = f"{environment}:{name}" if name else environment
    document = {"database": database, "backup_id": found_id, "target": target, **comparison.to_dict()}
    if ui.json:
        ui.error_context.update(document)  # the same document on failure, beside "error"
    else:
        for line in comparison.differences:
            click.echo(scrub(line))
        for line in comparison.unchecked:
            click.echo(scrub(f"not compared: {line}"))
    if not comparison.ok:
        count = len(comparison.differences)
        raise IntegrityError(f"{target} differs from {database} backup {found_id}: {count} "
                             f"difference{'s' if count != 1 else ''}",
                             hint="each difference is listed above (or under 'differences' with --json)")
    if ui.json:
        ui.emit(document)
    else:
        click.echo(f"{target} matches {database} backup {found_id}: {comparison.objects} schema entries, "
                   "tables, sequences, large objects and materialized views compared")
    return EXIT_OK
