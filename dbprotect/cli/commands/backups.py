"""The backup commands: ``status``, ``backup``, ``list`` and ``verify``.

Thin calls into :mod:`dbprotect.core.ops`; each renders its result as rich text for a person or
as one JSON document for a script (see :mod:`dbprotect.cli.ui.render`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from dbprotect.cli.ui.render import (
    Ui,
    common_options,
    error_document,
    human_age,
    human_bytes,
    print_backup_lines,
    progress_bar,
    scrub,
)
from dbprotect.core.errors import EXIT_OK, EXIT_RPO_VIOLATED, DbprotectError, IntegrityError
from dbprotect.core.ops import (
    BackupListing,
    backup_database,
    cli_actor,
    database_status,
    list_database_backups,
    locate_any_backup,
    verify_database_backup,
)
from dbprotect.core.store.catalog import BackupEntry
from dbprotect.core.verify.integrity import IntegrityReport

# --- status --------------------------------------------------------------------------------------


@click.command()
@common_options
@click.pass_obj
def status(ui: Ui) -> int:
    """Per database: newest backup, its age against the RPO, its verification state.

    Only a backup that passed integrity (rungs stored and readable) counts as a recovery point.
    Exits 11 when any database violates its RPO (no verified backup, or the newest is too old)
    or its store cannot be read, so an on-call script can run 'dbprotect status --json' and act
    on the exit code alone.
    """
    config = ui.load()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for name in sorted(config.databases):
        try:
            rows.append(database_status(config, name, now, protection=True).to_dict())
        except DbprotectError as err:
            rows.append({"database": name, "error": error_document(err), "rpo": {"ok": False,
                         "reason": f"store cannot be read: {err.one_line()}"}})
    violated = [row["database"] for row in rows if not row["rpo"]["ok"]]
    if ui.json:
        ui.emit({"checked_at": now.isoformat(), "ok": not violated, "rpo_violations": violated, "databases": rows})
    else:
        _print_status(ui, rows, now)
        _print_targets(ui, rows, now)
    return EXIT_RPO_VIOLATED if violated else EXIT_OK


def _print_status(ui: Ui, rows: list[dict[str, Any]], now: datetime) -> None:
    table = Table(title=f"dbprotect status at {now:%Y-%m-%d %H:%M} UTC", title_justify="left")
    for column in ("database", "backups", "newest backup", "age", "state", "RPO", "detail"):
        table.add_column(column)
    for row in rows:
        newest = row.get("newest_backup") or {}
        rpo = row["rpo"]
        started = newest.get("started_at")
        age = now - datetime.fromisoformat(started) if started else None
        verdict = "[green]ok[/]" if rpo["ok"] else "[red bold]VIOLATED[/]"
        table.add_row(escape(row["database"]), str(row.get("backups", "-")), escape(newest.get("backup_id", "-")),
                      human_age(age), escape(newest.get("status", "-")), verdict, escape(scrub(rpo["reason"])))
    ui.console().print(table)
    for row in rows:
        if "protection" in row:
            ui.console().print(f"{escape(row['database'])}: {escape(scrub(protection_line(row['protection'])))}",
                               soft_wrap=True)
    for row in rows:
        for reason in row.get("skipped_folders", []):
            ui.console().print(f"[yellow]skipped, not a backup:[/] {escape(reason)}", soft_wrap=True)
        if row.get("clock_skew"):
            ui.console().print(f"[yellow]clock-skew:[/] {escape(row['database'])}: {len(row['clock_skew'])} backup(s) "
                               f"dated in the future, ignored for latest, RPO and retention: "
                               f"{escape(', '.join(row['clock_skew'][:3]))}", soft_wrap=True)


def protection_line(protection: dict[str, Any]) -> str:
    """One line: logical only, or logical + continuous with its newest base, stored LSN/time and measured RPO."""
    if protection["kind"] == "logical":
        return "logical backups only"
    rpo = protection["measured_rpo"] or {}
    measured = rpo.get("rpo_seconds_measured")
    verdict = "ok" if rpo.get("ok") else "FAILING"
    return (f"logical + continuous: newest base {protection['newest_base'] or 'none'}, newest stored LSN "
            f"{protection['newest_stored_lsn'] or 'none'} (commits safe through {protection['safe_through'] or '-'}), "
            f"measured RPO {'-' if measured is None else f'{measured:.0f} s'} "
            f"(target {rpo.get('rpo_seconds_target', 0):g} s) {verdict}: {rpo.get('reason', '')}")


def _print_targets(ui: Ui, rows: list[dict[str, Any]], now: datetime) -> None:
    """Per database and storage target: holdings, and what the next cleanup would delete."""
    table = Table(title="storage targets (next cleanup: what the retention policy would delete now)",
                  title_justify="left")
    for column in ("database", "target", "backups", "verified", "size", "oldest", "newest", "next cleanup"):
        table.add_column(column)

    def age(started: str | None) -> str:
        return human_age(now - datetime.fromisoformat(started)) if started else "-"

    for row in rows:
        for target in row.get("targets", []):
            name = target["target"] + (" (primary)" if target["primary"] else "")
            if "error" in target:
                table.add_row(escape(row["database"]), escape(name), "-", "-", "-", "-", "-",
                              f"[red]store cannot be read: {escape(scrub(target['error']['message']))}[/]")
                continue
            table.add_row(escape(row["database"]), escape(name), str(target["backups"]), str(target["verified"]),
                          human_bytes(target["total_bytes"]), age(target["oldest_started_at"]),
                          age(target["newest_started_at"]), escape(_cleanup_summary(target["next_cleanup"])))
    if table.row_count:
        ui.console().print(table)


def _cleanup_summary(cleanup: dict[str, Any]) -> str:
    """One cell: what the retention policy would delete on a target now (or why it refuses)."""
    if cleanup["refused"]:
        return f"REFUSED ({cleanup['policy']}): deletes nothing"
    deletes, garbage = cleanup["deletes"], cleanup["incomplete_uploads"]
    if not deletes and not garbage:
        return f"nothing ({cleanup['policy']})"
    shown = ", ".join(deletes[:3]) + (f" and {len(deletes) - 3} more" if len(deletes) > 3 else "")
    parts = [f"{len(deletes)} backup(s): {shown}"] if deletes else []
    if garbage:
        parts.append(f"{len(garbage)} incomplete upload(s)")
    return "; ".join(parts) + f" ({cleanup['policy']})"


# --- backup --------------------------------------------------------------------------------------

@click.command()
@click.argument("database")
@common_options
@click.pass_obj
def backup(ui: Ui, database: str) -> int:
    """Back up the production environment of DATABASE to its primary store now.

    pg_dump runs in an exported snapshot; its output is compressed (zstd), encrypted (age) and
    hashed on the way to the store, and the manifest (with per-table row counts and checksums)
    is written last. Prints the backup id, where it went, sizes, ratio, duration and rows.
    """
    config = ui.load()
    with progress_bar(ui, f"backing up {database}") as progress:
        result = backup_database(config, database, progress=progress, actor=cli_actor())
    manifest = result.manifest
    metrics = result.metrics()
    if ui.json:
        ui.emit({"database": database, "backup_id": manifest.backup_id, "uri": result.uri, **metrics,
                 "rows": {name: table.rows for name, table in manifest.tables.items()}})
        return EXIT_OK
    console = ui.console()
    console.print(f"[bold]backup {manifest.backup_id}[/] of {database}: stored, [yellow]not verified yet[/]",
                  soft_wrap=True)
    print_backup_lines(console, result.uri, metrics)
    console.print(f"  verify it: dbprotect verify {manifest.backup_id} --database {database}", soft_wrap=True)
    return EXIT_OK


# --- list ----------------------------------------------------------------------------------------

@click.command("list")
@click.argument("database")
@click.option("--all", "include_all", is_flag=True,
              help="Every kind of backup (scheduled, manual, safety, guard, sanitized), with its kind, and "
              "incomplete uploads (no manifest): never backups, shown for cleanup and diagnosis.")
@common_options
@click.pass_obj
def list_command(ui: Ui, database: str, include_all: bool) -> int:
    """The backups of DATABASE in its primary store, newest first, with status, size and age.

    Read from the store alone (object names and sizes; no manifest is downloaded). Status is
    'unverified', 'verified:<highest rung passed>', 'failed:<rungs>', or with --all
    'incomplete' (an upload that never got its manifest). --all also lists the safety backups
    taken before overwrite restores, the guard backups and the sanitized copies, with a kind
    column (which reads the manifests of DATABASE's own folder): 'verify' and 'restore' take
    any of these ids.
    """
    listing = list_database_backups(ui.load(), database, include_incomplete=include_all, all_kinds=include_all)
    now = datetime.now(UTC)
    if ui.json:
        ui.emit({"database": database, "storage": listing.storage_uri, "backups": [
            {**entry.to_dict(), "age_seconds": round((now - entry.started_at).total_seconds()),
             **({"kind": listing.kind(entry), "folder": entry.database} if include_all else {})}
            for entry in listing.entries
        ], "skipped_folders": list(listing.skipped)})
        return EXIT_OK
    _print_list(ui, database, listing.storage_uri, listing.entries, now, listing if include_all else None)
    for reason in listing.skipped:
        ui.console().print(f"[yellow]skipped, not a backup:[/] {escape(reason)}", soft_wrap=True)
    return EXIT_OK


def _print_list(ui: Ui, database: str, storage_uri: str, entries: list[BackupEntry], now: datetime,
                kinds: BackupListing | None = None) -> None:
    console = ui.console()
    if not entries:
        console.print(f"no backups of {escape(database)} in {escape(storage_uri)}", soft_wrap=True)
        return
    table = Table(title=f"backups of {database} in {storage_uri}", title_justify="left")
    for column in ("backup id", *(("kind",) if kinds else ()), "started (UTC)", "age", "size", "status"):
        table.add_column(column)
    for entry in entries:
        colour = "green" if entry.status.startswith("verified") else "red" if entry.status.startswith(
            ("failed", "incomplete", "missing")) else "yellow"
        table.add_row(entry.backup_id, *((escape(kinds.kind(entry) or "backup"),) if kinds else ()),
                      f"{entry.started_at:%Y-%m-%d %H:%M:%S}", human_age(now - entry.started_at),
                      human_bytes(entry.dump_bytes), f"[{colour}]{escape(entry.status)}[/]")
    console.print(table)


# --- verify --------------------------------------------------------------------------------------

@click.command()
@click.argument("backup_id")
@click.option("--database", "-d", metavar="DB", help="The database the backup belongs to (needed for 'latest' "
              "when several are configured; otherwise every configured database is searched).")
@click.option("--stored-only", is_flag=True,
              help="Rung 1 only (object present, SHA-256 matches): needs no private key.")
@common_options
@click.pass_obj
def verify(ui: Ui, backup_id: str, database: str | None, stored_only: bool) -> int:
    """Check BACKUP_ID (or 'latest') against its manifest: rungs 1 and 2 of the ladder.

    \b
    1. stored:   the object exists and its SHA-256 and size match the manifest.
    2. readable: it decrypts with the raw-backup identity, decompresses, 'pg_restore --list'
                 parses it, and every table's row count and checksum match the manifest.

    Each rung's result is recorded in the store (so 'list' and the RPO check see it). Exits 7
    and names the failed rung when the backup fails verification.
    """
    config = ui.load()
    if backup_id == "latest" and database is None:
        if len(config.databases) != 1:
            raise click.UsageError("'latest' needs --database when several databases are configured")
        database = next(iter(config.databases))
    owner, entry = locate_any_backup(config, backup_id, database)
    report = verify_database_backup(config, owner, entry.backup_id, stored_only=stored_only,
                                    by="dbprotect verify", actor=cli_actor(), folder=entry.database)
    if ui.json:
        ui.error_context["verification"] = report.to_dict()
    else:
        _print_report(ui, report)
    if not report.ok:
        failed = [result for result in report.results if not result.ok]
        raise IntegrityError(
            f"backup {report.backup_id} of {report.database} failed verification: "
            + "; ".join(f"rung {result.rung}: {result.detail}" for result in failed),
            hint="do not rely on this backup: take a new one ('dbprotect backup "
            f"{report.database}') and check the store's disk or bucket",
        )
    if ui.json:
        ui.emit(ui.error_context["verification"])
    return EXIT_OK


def _print_report(ui: Ui, report: IntegrityReport) -> None:
    console = ui.console()
    verdict = "[green]ok[/]" if report.ok else "[red bold]FAILED[/]"
    console.print(f"backup {report.backup_id} of {escape(report.database)}: {verdict}", soft_wrap=True)
    for result in report.results:
        mark = "[green]ok[/]    " if result.ok else "[red]FAILED[/]"
        console.print(f"  {result.rung:<9} {mark} {escape(scrub(result.detail))} ({result.seconds:.2f} s)",
                      soft_wrap=True)
