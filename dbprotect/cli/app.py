"""The ``dbprotect`` command: a thin wrapper over :mod:`dbprotect.core.ops.operations`.

Every rule lives in ``dbprotect.core``; this module parses arguments, calls the core, and
renders the result for a person (rich tables, a progress bar on a terminal) or for a script
(``--json``: one JSON document on stdout, nothing else, errors included).

Errors are handled in one place, :func:`run`: a :class:`DbprotectError` becomes one line
``error[CODE]: message`` plus ``hint: ...`` on stderr and its ``exit_code``; anything unexpected
becomes one ``internal error`` line (the traceback only with ``DBPROTECT_DEBUG=1``). Text that
reaches the terminal passes through :func:`scrub`, so a DSN's password is never printed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from dbprotect.core.errors import DbprotectError, IntegrityError
from dbprotect.core.pg.dsn import mask_dsn

EXIT_OK = 0
#: ``status`` found a database whose newest verified backup is older than its RPO (or none).
EXIT_RPO_VIOLATED = 11
#: ``drill``: the backup restored and verified, but slower than the database's RTO target.
EXIT_RTO_EXCEEDED = 12
#: Wrong command line (unknown option, missing argument): sysexits' EX_USAGE.
EXIT_USAGE = 64
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
DEBUG_ENV = "DBPROTECT_DEBUG"

EXIT_CODES_HELP = """\b
Exit codes:
   0  success
   1  other diagnosed failure
   2  configuration missing or invalid
   3  credential isolation: this deployment holds another deployment's secrets
   4  cannot connect to or query PostgreSQL
   5  pg_dump / pg_restore missing, too old or failed
   6  the backup store failed
   7  a backup (or a copy, or the audit chain) failed verification
   8  key missing, malformed or not a recipient of the backup
   9  refused by a guard
  10  no such database or backup
  11  status: a database violates its RPO
  12  drill: restored and verified, but slower than the RTO target
  64  wrong command line
  70  internal error (DBPROTECT_DEBUG=1 shows the traceback)
 130  interrupted"""

_URI = re.compile(r"postgres(?:ql)?://[^\s'\"<>]+")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)


def scrub(text: str) -> str:
    """Mask every DSN password in ``text`` (both URI and keyword forms): last line of defence."""
    text = _URI.sub(lambda match: mask_dsn(match.group(0)), text)
    return _KEYWORD_PASSWORD.sub(lambda match: match.group(1) + "****", text)


@dataclass
class Ui:
    """What every command needs: output mode, the configuration path, and extra error context."""

    json: bool = False
    config_path: str | None = None
    #: Merged into the ``--json`` error document (e.g. the failed verification report).
    error_context: dict[str, Any] = field(default_factory=dict)

    def console(self, *, stderr: bool = False) -> Any:
        """A rich console on stdout (or stderr); wide and plain when not a terminal."""
        from rich.console import Console

        console = Console(stderr=stderr, highlight=False)
        if not console.is_terminal:
            console = Console(stderr=stderr, highlight=False, width=200, no_color=True)
        return console

    @property
    def interactive(self) -> bool:
        """A progress bar makes sense: a person watches stderr, and no script reads JSON."""
        return not self.json and sys.stderr.isatty()

    def emit(self, document: dict[str, Any]) -> None:
        click.echo(scrub(json.dumps(document, indent=2, default=str)))

    def load(self) -> Any:
        """The validated configuration, refused if this deployment holds another's credentials."""
        from dbprotect.core.config.isolation import check_credential_isolation
        from dbprotect.core.config.load import load_config

        config = load_config(self.config_path)
        check_credential_isolation(config)
        return config


F = TypeVar("F", bound=Callable[..., Any])


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ui).json = True


def _set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(Ui).config_path = value


def common_options(func: F) -> F:
    """``--config`` and ``--json``, accepted before or after the command name."""
    func = click.option("--json", "json_output", is_flag=True, expose_value=False, callback=_set_json,
                        is_eager=True, help="Print one JSON document on stdout (no colour, no progress bar).")(func)
    func = click.option("--config", "config_path", type=click.Path(dir_okay=False), expose_value=False,
                        callback=_set_config, is_eager=True, metavar="PATH",
                        help="Configuration file [default: $DBPROTECT_CONFIG, else ./dbprotect.yaml].")(func)
    return func


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.version_option(package_name="dbprotect", prog_name="dbprotect")
def cli() -> None:
    """Verified, encrypted PostgreSQL backups you can restore, without Dagster.

    The backup store is the source of truth: every command here works from dbprotect.yaml and the
    store alone, so it keeps working when Dagster's own database is gone.
    """


# --- formatting helpers --------------------------------------------------------------------------

def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_age(age: timedelta | None) -> str:
    if age is None:
        return "-"
    seconds = int(max(age.total_seconds(), 0))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _error_document(err: DbprotectError) -> dict[str, Any]:
    return {"code": err.code, "exit_code": err.exit_code, "message": scrub(err.one_line()),
            "hint": scrub(err.hint) if err.hint else None}


class ByteBar:
    """A rich bar of bytes done vs estimate on stderr, started by the first update (so that
    the slow steps before the data flows show no empty bar) and removed when stopped."""

    def __init__(self, ui: Ui, label: str) -> None:
        self._ui = ui
        self._label = label
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, done: int, estimate: int) -> None:
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeElapsedColumn(),
                                      console=self._ui.console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=None)
        self._progress.update(self._task, completed=done, total=max(done, estimate))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextmanager
def progress_bar(ui: Ui, label: str) -> Iterator[ByteBar | None]:
    """A :class:`ByteBar` when a person watches stderr, else None (no bar for scripts)."""
    if not ui.interactive:
        yield None
        return
    bar = ByteBar(ui, label)
    try:
        yield bar
    finally:
        bar.stop()


# --- status --------------------------------------------------------------------------------------

@cli.command()
@common_options
@click.pass_obj
def status(ui: Ui) -> int:
    """Per database: newest backup, its age against the RPO, its verification state.

    Only a backup that passed integrity (rungs stored and readable) counts as a recovery point.
    Exits 11 when any database violates its RPO (no verified backup, or the newest is too old)
    or its store cannot be read, so an on-call script can run 'dbprotect status --json' and act
    on the exit code alone.
    """
    from dbprotect.core.ops import database_status

    config = ui.load()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for name in sorted(config.databases):
        try:
            rows.append(database_status(config, name, now).to_dict())
        except DbprotectError as err:
            rows.append({"database": name, "error": _error_document(err), "rpo": {"ok": False,
                         "reason": f"store cannot be read: {err.one_line()}"}})
    violated = [row["database"] for row in rows if not row["rpo"]["ok"]]
    if ui.json:
        ui.emit({"checked_at": now.isoformat(), "ok": not violated, "rpo_violations": violated, "databases": rows})
    else:
        _print_status(ui, rows, now)
        _print_targets(ui, rows, now)
    return EXIT_RPO_VIOLATED if violated else EXIT_OK


def _print_targets(ui: Ui, rows: list[dict[str, Any]], now: datetime) -> None:
    """Per database and storage target: holdings, and what the next cleanup would delete."""
    from rich.markup import escape
    from rich.table import Table

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


def _print_status(ui: Ui, rows: list[dict[str, Any]], now: datetime) -> None:
    from rich.markup import escape
    from rich.table import Table

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


# --- backup --------------------------------------------------------------------------------------

@cli.command()
@click.argument("database")
@common_options
@click.pass_obj
def backup(ui: Ui, database: str) -> int:
    """Back up the production environment of DATABASE to its primary store now.

    pg_dump runs in an exported snapshot; its output is compressed (zstd), encrypted (age) and
    hashed on the way to the store, and the manifest (with per-table row counts and checksums)
    is written last. Prints the backup id, where it went, sizes, ratio, duration and rows.
    """
    from dbprotect.core.ops import backup_database, cli_actor

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
    console.print(f"[bold]backup {manifest.backup_id}[/] of {database}: done", soft_wrap=True)
    _print_backup_lines(console, result.uri, metrics)
    return EXIT_OK


def _print_backup_lines(console: Any, uri: str, metrics: dict[str, float]) -> None:
    from rich.markup import escape

    console.print(f"  stored at  {escape(uri)}", soft_wrap=True)
    console.print(f"  sizes      dump {human_bytes(metrics['dump_bytes'])} -> compressed "
                  f"{human_bytes(metrics['compressed_bytes'])} -> stored {human_bytes(metrics['stored_bytes'])} "
                  f"(ratio {metrics['compression_ratio']:.2f}x)", soft_wrap=True)
    console.print(f"  duration   {metrics['duration_seconds']:.2f} s ({metrics['throughput_mb_per_s']} MB/s; "
                  f"checksums {metrics['checksum_seconds']:.2f} s)", soft_wrap=True)
    console.print(f"  rows       {int(metrics['total_rows']):,} in {int(metrics['tables'])} tables", soft_wrap=True)


# --- list ----------------------------------------------------------------------------------------

@cli.command("list")
@click.argument("database")
@click.option("--all", "include_incomplete", is_flag=True,
              help="Also show incomplete uploads (no manifest): never backups, shown for cleanup and diagnosis.")
@common_options
@click.pass_obj
def list_command(ui: Ui, database: str, include_incomplete: bool) -> int:
    """The backups of DATABASE in its primary store, newest first, with status, size and age.

    Read from the store alone (object names and sizes; no manifest is downloaded). Status is
    'unverified', 'verified:<highest rung passed>', 'failed:<rungs>', or with --all
    'incomplete' (an upload that never got its manifest).
    """
    from dbprotect.core.ops import primary_store
    from dbprotect.core.store.catalog import list_backups

    config = ui.load()
    config.database(database)  # NotFoundError (exit 10) for an unknown name
    storage = primary_store(config, database)
    entries = list_backups(storage, database, include_incomplete=include_incomplete)
    now = datetime.now(UTC)
    if ui.json:
        ui.emit({"database": database, "storage": storage.uri, "backups": [
            {**entry.to_dict(), "age_seconds": round((now - entry.started_at).total_seconds())} for entry in entries
        ]})
        return EXIT_OK
    _print_list(ui, database, storage.uri, entries, now)
    return EXIT_OK


def _print_list(ui: Ui, database: str, storage_uri: str, entries: list[Any], now: datetime) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = ui.console()
    if not entries:
        console.print(f"no backups of {escape(database)} in {escape(storage_uri)}", soft_wrap=True)
        return
    table = Table(title=f"backups of {database} in {storage_uri}", title_justify="left")
    for column in ("backup id", "started (UTC)", "age", "size", "status"):
        table.add_column(column)
    for entry in entries:
        colour = "green" if entry.status.startswith("verified") else "red" if entry.status.startswith(
            ("failed", "incomplete", "missing")) else "yellow"
        table.add_row(entry.backup_id, f"{entry.started_at:%Y-%m-%d %H:%M:%S}", human_age(now - entry.started_at),
                      human_bytes(entry.dump_bytes), f"[{colour}]{escape(entry.status)}[/]")
    console.print(table)


# --- verify --------------------------------------------------------------------------------------

@cli.command()
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
    from dbprotect.core.ops import cli_actor, locate_backup, verify_database_backup

    config = ui.load()
    if backup_id == "latest" and database is None:
        if len(config.databases) != 1:
            raise click.UsageError("'latest' needs --database when several databases are configured")
        database = next(iter(config.databases))
    entry = locate_backup(config, backup_id, database)
    report = verify_database_backup(config, entry.database, entry.backup_id, stored_only=stored_only,
                                    by="dbprotect verify", actor=cli_actor())
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


def _print_report(ui: Ui, report: Any) -> None:
    from rich.markup import escape

    console = ui.console()
    verdict = "[green]ok[/]" if report.ok else "[red bold]FAILED[/]"
    console.print(f"backup {report.backup_id} of {escape(report.database)}: {verdict}", soft_wrap=True)
    for result in report.results:
        mark = "[green]ok[/]    " if result.ok else "[red]FAILED[/]"
        console.print(f"  {result.rung:<9} {mark} {escape(scrub(result.detail))} ({result.seconds:.2f} s)",
                      soft_wrap=True)


# --- restore -------------------------------------------------------------------------------------

def _parse_target(spec: str) -> tuple[bool, str | None, str | None]:
    """``--target`` as (existing, environment or None, database name or None)."""
    kind, _, name = spec.partition(":")
    if kind == "new":
        return False, None, name or None
    if kind in ("production", "development"):
        return True, kind, name or None
    raise click.BadParameter(f"{spec!r}: expected new, new:NAME, production[:NAME] or development[:NAME]",
                             param_hint="'--target'")


class _PhasePrinter:
    """Each restore phase once on stderr (core's progress also ticks while pg_restore runs)."""

    def __init__(self, ui: Ui) -> None:
        self._ui = ui
        self._last = ""

    def __call__(self, phase: str) -> None:
        if phase != self._last and self._ui.interactive:
            click.echo(f"- {phase}", err=True)
        self._last = phase


@cli.command()
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
@common_options
@click.pass_obj
def restore(ui: Ui, database: str, backup_id: str | None, target_spec: str, environment: str | None,
            confirmation: str | None, dry_run: bool, analyze: bool | None) -> int:
    """Restore BACKUP_ID of DATABASE (default: the newest backup that passed verification).

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
    """
    from dbprotect.core.ops import cli_actor, restore_database

    existing, named_environment, name = _parse_target(target_spec)
    if existing and environment and environment != named_environment:
        raise click.BadParameter(f"--target {target_spec} names the {named_environment} environment, "
                                 f"--environment says {environment}", param_hint="'--environment'")
    config = ui.load()
    outcome = restore_database(config, database, backup_id,
                               environment=named_environment or environment or "production", existing=existing,
                               target_name=name, confirmation=confirmation, dry_run=dry_run, by=cli_actor(),
                               progress=_PhasePrinter(ui), analyze=analyze)
    from dbprotect.core.restore.oncall import RestorePlan

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
                 "safety_backup_id": outcome.safety_backup_id, "metrics": outcome.metrics()})
        return EXIT_OK
    timings = ", ".join(f"{key.removesuffix('_seconds')} {value:.2f} s" for key, value in outcome.timings.items())
    click.echo(f"restored {database} backup {plan.backup_id} into {plan.target.environment} database "
               f"{outcome.target_database!r}: {plan.tables} tables, {plan.rows:,} rows verified")
    if outcome.safety_backup_id:
        click.echo(f"  safety backup of the replaced database: {outcome.safety_backup_id} ({database}-safety)")
    click.echo(f"  phases: {timings}")
    return EXIT_OK


# --- drill ---------------------------------------------------------------------------------------

@cli.command()
@click.argument("database")
@common_options
@click.pass_obj
def drill(ui: Ui, database: str) -> int:
    """A restore drill: restore the newest backup of DATABASE into a scratch database and verify it.

    Measures the RTO (time from start to a verified database) against the database's
    rto_minutes and the RPO at drill time (the restored data's age); records the result in the
    store and the audit log; the scratch database is always dropped. Exits 7 when the restore
    does not verify, 12 when it verified but took longer than the RTO target.
    """
    from dbprotect.core.audit import AuditLog
    from dbprotect.core.ops import cli_actor, drill_database, primary_store

    config = ui.load()
    actor = cli_actor()
    result = drill_database(config, database, by=actor, progress=_PhasePrinter(ui),
                            audit=AuditLog(primary_store(config, database), actor=actor))
    if ui.json:
        ui.error_context["drill"] = result.to_dict()
    else:
        verdict = "passed" if result.ok else "FAILED"
        phases = ", ".join(f"{key.removesuffix('_seconds')} {value:.2f} s"
                           for key, value in result.verification.timings.items())
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


# --- demo ----------------------------------------------------------------------------------------

@cli.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False), default=None, metavar="PATH",
              help="Work folder [default: .dbprotect/demo]; the key goes in 'keys/' beside it.")
@click.option("--rows", type=click.IntRange(min=1000), default=None, metavar="N",
              help="About how many rows to generate [default: 300000, or what an earlier run loaded]. "
              "A different N reloads the demo database.")
@click.option("--stop", is_flag=True, help="Stop the demo's PostgreSQL (left running for the Dagster UI) and exit.")
@click.option("--all", "run_all", is_flag=True,
              help="Also run a restore drill, a warm copy refresh and a sanitized build (slower).")
@common_options
@click.pass_obj
def demo(ui: Ui, workdir: str | None, rows: int | None, stop: bool, run_all: bool) -> int:
    """A complete protected setup on this machine, with nothing configured.

    Starts an embedded PostgreSQL as "production", loads a fintech schema (tenants, users with
    audit fields, accounts, transactions, an audit log, row-level security) with generated
    personal data, creates an age key (mode 0600), writes dbprotect.yaml and demo.env, takes a
    backup into a filesystem store and runs the integrity and RPO checks. Then prints how to
    open the Dagster UI on the same setup. Running it again reuses the server, data and key and
    takes another backup.

    The same server also holds fintech_dev (marked development, schema only) and, after
    'dbprotect warm-copy fintech', the warm copy fintech_standby; the configuration adds a
    development key, a masking key and rules, retention and the server as scratch server.
    """
    from dbprotect.demo import setup as core_demo

    if stop:
        stopped = core_demo.stop_demo_server(workdir)
        if ui.json:
            ui.emit({"stopped": stopped})
        else:
            click.echo("demo PostgreSQL stopped" if stopped else "demo PostgreSQL was not running")
        return EXIT_OK
    console = None if ui.json else ui.console()
    with progress_bar(ui, "backing up fintech") as bar:

        def step(message: str) -> None:
            if bar is not None:
                bar.stop()  # the backup's bar ends where the next step begins
            if console is not None:
                console.print(f"[dim]-[/] {message}", soft_wrap=True)

        result = core_demo.run_demo(workdir, rows=rows, on_step=step, progress=bar, run_all=run_all)
    ok = result.integrity.ok and result.rpo.ok and all(passed for passed, _ in result.extras.values())
    if ui.json:
        ui.emit({"ok": ok, **result.to_dict()})
    else:
        _print_demo(ui, result)
    if not result.integrity.ok:
        raise IntegrityError(f"the demo backup failed verification: {result.integrity.summary()}")
    return EXIT_OK if ok else EXIT_RPO_VIOLATED


def _print_demo(ui: Ui, result: Any) -> None:
    from rich.markup import escape

    from dbprotect.demo.setup import NEXT_COMMANDS, display_path, executable

    console = ui.console()
    tables = ", ".join(f"{name.removeprefix('public.')} {rows:,}" for name, rows in result.table_rows.items())
    console.print()
    console.print(f"[bold]dbprotect demo: done in {result.seconds:.1f} s[/]")
    how = f"loaded in {result.load_seconds:.1f} s" if result.loaded_now else "reused from an earlier run"
    console.print(f"  data       {result.total_rows:,} rows ({how}): {tables}", soft_wrap=True)
    console.print(f"  backup     {result.backup.manifest.backup_id} of fintech (database fintech_prod)")
    _print_backup_lines(console, result.backup.uri, result.backup.metrics())
    integrity = "[green]ok[/]" if result.integrity.ok else "[red bold]FAILED[/]"
    console.print(f"  integrity  {integrity}: {escape(result.integrity.summary())}", soft_wrap=True)
    rpo = "[green]ok[/]" if result.rpo.ok else "[red bold]VIOLATED[/]"
    console.print(f"  RPO        {rpo}: {escape(result.rpo.reason)}", soft_wrap=True)
    console.print(f"  store      {result.backups_in_store} backup(s) in {escape(display_path(result.paths.store))}",
                  soft_wrap=True)
    for name, (passed, detail) in result.extras.items():
        console.print(f"  {name:<10} {'[green]ok[/]' if passed else '[red bold]FAILED[/]'}: {escape(detail)}",
                      soft_wrap=True)
    console.print("  databases  fintech_prod (production), fintech_dev (development, schema only), "
                  "fintech_standby (warm copy, created by its first refresh)", soft_wrap=True)
    console.print()
    console.print("[bold]Files:[/]")
    console.print(f"  config     {escape(display_path(result.paths.config))}", soft_wrap=True)
    console.print(f"  variables  {escape(display_path(result.paths.env_file))} (mode 0600: DSNs, references to "
                  "the key files, and the masking key's value)", soft_wrap=True)
    console.print(f"  key        {escape(display_path(result.paths.key_file))} (raw backups, mode 0600; public key "
                  f"{result.recipient})", soft_wrap=True)
    console.print(f"  dev key    {escape(display_path(result.paths.dev_key_file))} (sanitized copies, mode 0600; "
                  f"public key {result.dev_recipient})", soft_wrap=True)
    console.print(f"  masking    {escape(display_path(result.paths.masking_key_file))} (HMAC key, mode 0600), "
                  f"rules {escape(display_path(result.paths.rules))}", soft_wrap=True)
    console.print()
    console.print("[bold]Open the Dagster UI on the same setup[/] (then http://localhost:3000):")
    console.print(f"  {escape(result.ui_command)}", soft_wrap=True)
    console.print("[bold]Or use the CLI on it:[/]")
    env = escape(display_path(result.paths.env_file))
    cli_name = escape(executable("dbprotect"))
    console.print(f"  set -a; . {env}; set +a; {cli_name} status; {cli_name} list fintech; "
                  f"{cli_name} verify latest", soft_wrap=True)
    if not result.extras:
        console.print("[bold]Then try[/] (demo.env loaded; not run by the demo, they take a while; 'dbprotect demo "
                      "--all' runs the first three):", soft_wrap=True)
        for command in NEXT_COMMANDS:
            console.print(f"  {escape(command.replace('dbprotect', executable('dbprotect'), 1))}", soft_wrap=True)
    console.print("The demo PostgreSQL keeps running for the UI; stop it with 'dbprotect demo --stop'.", soft_wrap=True)


# --- cleanup -------------------------------------------------------------------------------------

@cli.command()
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
    from dbprotect.core.ops import cleanup_database, cli_actor, first_cleanup_error

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


def _print_cleanups(ui: Ui, cleanups: list[Any], dry_run: bool) -> None:
    from rich.markup import escape

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
        console.print()


# --- copy ----------------------------------------------------------------------------------------

@cli.command("copy")
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
    from dbprotect.core.ops import cli_actor, copy_targets, copy_to_target

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


@cli.command("warm-copy")
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
    from dbprotect.core.ops import cli_actor, refresh_warm_copy, verify_warm_copy

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
    outcome = refresh_warm_copy(config, database, force=force, actor=cli_actor(), progress=_PhasePrinter(ui))
    if ui.json:
        ui.emit(outcome.to_dict())
        return EXIT_OK
    click.echo(scrub(f"{outcome.reason} ({outcome.server})"))
    click.echo(f"  data age {human_age(timedelta(hours=outcome.backup_age_hours()))}"
               + (f"; {outcome.tables} tables, {outcome.rows:,} rows verified in "
                  f"{outcome.timings.get('total_seconds', 0):.2f} s" if outcome.refreshed else ""))
    return EXIT_OK


# --- audit ---------------------------------------------------------------------------------------

@cli.command()
@click.option("--store", "store_name", metavar="NAME", help="The storage target whose log to read [default: the "
              "primary store of the configured databases, when they share one].")
@click.option("--database", "-d", metavar="DB", help="Only records about this database.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Only the newest N records.")
@click.option("--verify", "verify_chain", is_flag=True,
              help="Recompute every hash and link; exit 7 when a record was edited, removed or moved.")
@common_options
@click.pass_obj
def audit(ui: Ui, store_name: str | None, database: str | None, limit: int | None, verify_chain: bool) -> int:
    """Print the audit log kept in a backup store: who backed up, verified, copied, deleted or was refused.

    Each record is linked to the one before by its SHA-256 (a hash chain); --verify checks
    the whole chain and names what is wrong.
    """
    import dbprotect.core.audit as core_audit
    from dbprotect.core.ops import open_storage

    config = ui.load()
    if store_name is None:
        primaries = sorted({config.primary_storage(name) for name in config.databases})
        if len(primaries) != 1:
            raise click.UsageError(f"the databases use several primary stores ({', '.join(primaries)}): name one "
                                   "with --store")
        store_name = primaries[0]
    storage = open_storage(config, store_name)
    records = [r for r in core_audit.read(storage) if database is None or r.database == database]
    if limit:
        records = records[-limit:]
    report = core_audit.verify_chain(storage) if verify_chain else None
    document: dict[str, Any] = {"store": store_name, "uri": storage.uri, "records": [
        {"seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action, "database": r.database,
         "target": r.target, "outcome": r.outcome, "detail": r.detail, "data": r.data, "hash": r.hash}
        for r in records]}
    if report is not None:
        document["chain"] = report.to_dict()
    if not ui.json:
        console = ui.console()
        from rich.markup import escape

        console.print(f"audit log of {escape(storage.uri)}: {len(records)} record(s)", soft_wrap=True)
        for record in records:
            console.print(escape(scrub(record.line())), soft_wrap=True)
        if report is not None:
            console.print(escape(report.render()), soft_wrap=True)
    if report is not None and not report.ok:
        ui.error_context.update(document)
        raise IntegrityError(f"the audit log in {storage.uri} is broken: "
                             + "; ".join(p.message for p in report.problems[:3]),
                             hint="someone or something changed the store's _audit/ records; compare with a copy "
                             "of the store and investigate before trusting the log")
    if ui.json:
        ui.emit(document)
    return EXIT_OK


# --- entry point ---------------------------------------------------------------------------------

def _json_requested(argv: list[str]) -> bool:
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def _report(ui: Ui, code: str, exit_code: int, message: str, hint: str | None) -> int:
    """The one place a failure is shown: one line (and a hint) on stderr, JSON on stdout if asked."""
    message = scrub(" ".join(message.split()))
    hint = scrub(" ".join(hint.split())) if hint else None
    if ui.json:
        ui.emit({**ui.error_context, "error": {"code": code, "exit_code": exit_code, "message": message,
                                               "hint": hint}})
    # Internal errors and interrupts are not diagnoses: they get no DBP code in their line.
    click.echo(message if code in ("INTERNAL", "INTERRUPTED") else f"error[{code}]: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    return exit_code


def run(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; every failure is turned into one line here."""
    args = list(sys.argv[1:] if argv is None else argv)
    ui = Ui(json=_json_requested(args))
    try:
        result = cli.main(args, prog_name="dbprotect", standalone_mode=False, obj=ui)
        return result if isinstance(result, int) else EXIT_OK
    except DbprotectError as err:
        return _report(ui, err.code, err.exit_code, err.one_line(), err.hint)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help() if err.ctx else "")
        return EXIT_OK
    except click.ClickException as err:
        command = err.ctx.command_path if getattr(err, "ctx", None) else "dbprotect"  # type: ignore[attr-defined]
        return _report(ui, "USAGE", EXIT_USAGE, err.format_message(), f"see '{command} --help'")
    except (KeyboardInterrupt, click.Abort):
        return _report(ui, "INTERRUPTED", EXIT_INTERRUPTED, "interrupted", None)
    except click.exceptions.Exit as err:
        return err.exit_code
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        return _report(ui, "INTERNAL", EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}",
                       None if os.environ.get(DEBUG_ENV) == "1" else f"set {DEBUG_ENV}=1 for the traceback")


# Domain command modules add their commands to the group (kept apart so each reads in one place).
from dbprotect.cli.commands import sanitize as cli_sanitize  # noqa: E402
from dbprotect.cli.commands import schema as cli_schema  # noqa: E402

cli_schema.register(cli)
cli_sanitize.register(cli)


def main() -> None:
    """Console-script entry point (``dbprotect = dbprotect.cli.app:main``)."""
    sys.exit(run())


if __name__ == "__main__":
    main()
