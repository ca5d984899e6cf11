"""The ``demo`` command: a complete protected setup on this machine, then what to try next.

Everything it builds is :mod:`dbprotect.demo`'s; this module only reports its steps and result.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape

from dbprotect.cli.ui.render import Ui, common_options, print_backup_lines, progress_bar
from dbprotect.core.errors import EXIT_OK, EXIT_RPO_VIOLATED, IntegrityError
from dbprotect.demo import NEXT_COMMANDS, DemoResult, display_path, executable, run_demo, stop_demo_server


@click.command()
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
    if stop:
        stopped = stop_demo_server(workdir)
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

        result = run_demo(workdir, rows=rows, on_step=step, progress=bar, run_all=run_all)
    ok = result.integrity.ok and result.rpo.ok and all(passed for passed, _ in result.extras.values())
    if ui.json:
        ui.emit({"ok": ok, **result.to_dict()})
    else:
        _print_demo(ui.console(), result)
    if not result.integrity.ok:
        raise IntegrityError(f"the demo backup failed verification: {result.integrity.summary()}")
    return EXIT_OK if ok else EXIT_RPO_VIOLATED


def _print_demo(console: Console, result: DemoResult) -> None:
    """What was built, where its files are, and the commands to try on it."""
    tables = ", ".join(f"{name.removeprefix('public.')} {rows:,}" for name, rows in result.table_rows.items())
    console.print()
    console.print(f"[bold]dbprotect demo: done in {result.seconds:.1f} s[/]")
    how = f"loaded in {result.load_seconds:.1f} s" if result.loaded_now else "reused from an earlier run"
    console.print(f"  data       {result.total_rows:,} rows ({how}): {tables}", soft_wrap=True)
    console.print(f"  backup     {result.backup.manifest.backup_id} of fintech (database fintech_prod)")
    print_backup_lines(console, result.backup.uri, result.backup.metrics())
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
