"""The sanitize commands: the ``sanitize`` group (check, rules, build) and ``promote``.

Thin calls into :mod:`dbprotect.core.ops`::

    dbprotect sanitize check DATABASE     the rules against the newest backup and production's catalog
    dbprotect sanitize rules DATABASE     a starter rule file guessed from the production schema
    dbprotect sanitize build DATABASE     build, check and store the sanitized copy (production side)
    dbprotect promote DATABASE --confirm  restore the newest copy that passed into development
"""

from __future__ import annotations

from pathlib import Path

import click

from dbprotect.cli.ui.render import Ui, common_options, scrub
from dbprotect.core.errors import EXIT_OK, IntegrityError
from dbprotect.core.ops import (
    build_sanitized_copy,
    check_sanitize_coverage,
    cli_actor,
    promote_dev_copy,
    starter_rules_for,
    undo_command,
)


@click.group()
def sanitize() -> None:
    """Sanitized development copies: masking rules, their coverage, the build."""


@sanitize.command("check")
@click.argument("database")
@common_options
@click.pass_obj
def check_command(ui: Ui, database: str) -> int:
    """Check that the rule file of DATABASE classifies every column of its newest backup.

    Reads the backup's manifest (its per-table column lists) and production's live catalog
    (partitions inherit their parent's rules; every masked column's transformer output must load
    into the column's type; large objects need a large_objects: rule); nothing decrypted, nothing
    copied. Exits 2 listing every unclassified column, 13 naming each rule whose output does not
    fit its column; reports rules still marked review and every keep with a waiver.
    """
    checked = check_sanitize_coverage(ui.load(), database)
    found = checked.coverage
    if ui.json:
        ui.emit({"database": database, "backup_id": checked.backup_id, "missing": [],
                 "stale": found.stale, "unreviewed": found.unreviewed, "waivers": checked.rules.waivers(),
                 "inherited_partitions": len(checked.inherited or {}), "large_objects": checked.large_objects})
        return EXIT_OK
    click.echo(f"{database}: every column of backup {checked.backup_id} has a rule in {checked.rules.source}, "
               "and every masked column's output fits its type")
    if checked.inherited:
        click.echo(f"  {len(checked.inherited)} partition(s) take their parent's rules")
    if checked.large_objects:
        click.echo(f"  {checked.large_objects} large object(s): {checked.rules.large_objects.transformer}"  # type: ignore[union-attr]
                   " by the large_objects: rule")
    if found.unreviewed:
        click.echo(f"  {len(found.unreviewed)} rule(s) still marked review: true: "
                   f"{', '.join(found.unreviewed[:10])}{' ...' if len(found.unreviewed) > 10 else ''}")
    for column, reason in checked.rules.waivers().items():
        click.echo(f"  waiver: {column} is copied as it is (keep): {reason}")
    if found.stale:
        click.echo(f"  {len(found.stale)} rule(s) name columns that no longer exist: {', '.join(found.stale[:10])}")
    return EXIT_OK


@sanitize.command("rules")
@click.argument("database")
@click.option("--output", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the rule file here [default: print it]. Rules already in the configured file are kept.")
@common_options
@click.pass_obj
def rules_command(ui: Ui, database: str, output: str | None) -> int:
    """A starter rule file for DATABASE, guessed from the production schema and sampled values.

    Every guess is marked 'review: true'; rules already in the configured rule file are kept
    as they are, so this also classifies new columns. Needs the production DSN (production side).
    """
    rules = starter_rules_for(ui.load(), database)
    text = rules.to_yaml()
    if output:
        Path(output).write_text(text, encoding="utf-8")
    if ui.json:
        ui.emit({"database": database, "output": output, "unreviewed": rules.unreviewed()})
    elif output:
        click.echo(f"wrote {output}: {len(rules.unreviewed())} rule(s) to review")
    else:
        click.echo(text, nl=False)
    return EXIT_OK


@sanitize.command("build")
@click.argument("database")
@click.option("--backup", "backup_id", default=None, metavar="BACKUP_ID",
              help="The backup to sanitize [default: the newest that passed verification].")
@common_options
@click.pass_obj
def build_command(ui: Ui, database: str, backup_id: str | None) -> int:
    """Build the sanitized copy of DATABASE, check it and store it encrypted to the development key.

    The copy is stored only when no_pii_leaked, constraints_hold and row_counts_match all pass;
    otherwise nothing is stored and the command exits 7 naming the failed checks.
    """
    result = build_sanitized_copy(ui.load(), database, backup_id=backup_id, by=cli_actor())
    if ui.json:
        ui.error_context["sanitize"] = result.to_dict()
    else:
        for check in result.checks:
            click.echo(scrub(f"  {'ok    ' if check.ok else 'FAILED'} {check.name}: {check.detail}"))
    if not result.ok:
        failed = ", ".join(c.name for c in result.checks if not c.ok)
        raise IntegrityError(f"sanitized copy of {database} not stored: {failed} failed",
                             hint="fix the masking rules named above and build again; nothing was promoted")
    if ui.json:
        ui.emit(ui.error_context.pop("sanitize"))
    else:
        m = result.metrics()
        click.echo(f"sanitized copy {result.artifact_id} of {database} backup {result.source_backup_id}: "
                   f"{result.rows:,} rows, {m['rows_per_second']:,.0f} rows/s in the stream")
        if result.unreviewed:
            click.echo(f"  warning: {len(result.unreviewed)} rule(s) still marked review: true")
    return EXIT_OK


@click.command()
@click.argument("database")
@click.option("--confirm", is_flag=True, help="Replace the development database (after a safety backup).")
@click.option("--artifact", "artifact_id", default=None, metavar="ID",
              help="The sanitized copy [default: the newest that passed every blocking check].")
@common_options
@click.pass_obj
def promote(ui: Ui, database: str, confirm: bool, artifact_id: str | None) -> int:
    """Restore the newest sanitized copy of DATABASE that passed its checks into development.

    Development side: needs the development DSN and key, never production's. The development
    database must carry the environment marker 'development'; a copy whose checks did not all
    pass is never promoted (exit 9).
    """
    result = promote_dev_copy(ui.load(), database, confirmed=confirm, artifact_id=artifact_id, by=cli_actor())
    document = {"database": database, "artifact_id": result.plan.backup_id,  # type: ignore[attr-defined]
                "development_database": result.target_database,  # type: ignore[attr-defined]
                "safety_backup_id": result.safety_backup_id,  # type: ignore[attr-defined]
                "undo_command": undo_command(database, result.safety_backup_id,  # type: ignore[attr-defined]
                                             "development", result.target_database)}  # type: ignore[attr-defined]
    if ui.json:
        ui.emit(document)
    else:
        click.echo(f"promoted sanitized copy {document['artifact_id']} into development database "
                   f"{document['development_database']} (safety backup {document['safety_backup_id']}, "
                   f"{database}-development-safety)")
        click.echo(f"  to undo this promotion: {document['undo_command']}")
    return EXIT_OK
