"""The ``dbprotect`` command: the click group, its entry points, and the one place failures are reported.

Every rule lives in :mod:`dbprotect.core` (reached through :mod:`dbprotect.core.ops`); the commands
in :mod:`dbprotect.cli.commands` parse arguments, call it and render the result, with the shared
plumbing of :mod:`dbprotect.cli.ui.render`.

Errors are handled in one place, :func:`run`: a :class:`DbprotectError` becomes one line
``error[CODE]: message`` plus ``hint: ...`` on stderr and its ``exit_code``; anything unexpected
becomes one ``internal error`` line (the traceback only with ``DBPROTECT_DEBUG=1``). Every exit
status is a row of :data:`dbprotect.core.errors.EXIT_STATUSES`, shown at the end of ``--help``.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from dbprotect.cli.commands import (
    audit,
    backups,
    compare,
    copies,
    demo,
    keys,
    restores,
    retention,
    sanitize,
    schema,
    wal,
)
from dbprotect.cli.ui.render import Ui, common_options, redacted_output, scrub
from dbprotect.core.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    DbprotectError,
    exit_status_plain,
)

DEBUG_ENV = "DBPROTECT_DEBUG"

#: The end of ``dbprotect --help``: every exit status, rendered from the table in :mod:`dbprotect.core.errors`
#: (``\b`` keeps click from rewrapping it).
EXIT_CODES_HELP = "\b\nExit codes:\n" + exit_status_plain()


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.version_option(package_name="dbprotect", prog_name="dbprotect")
def cli() -> None:
    """Verified, encrypted PostgreSQL backups you can restore, without Dagster.

    The backup store is the source of truth: every command here works from dbprotect.yaml and the
    store alone, so it keeps working when Dagster's own database is gone.
    """


for _command in (
    backups.status, backups.backup, backups.list_command, backups.verify,
    restores.restore, restores.drill, compare.compare_command,
    demo.demo,
    retention.cleanup,
    copies.copy_command, copies.warm_copy_command,
    audit.audit, keys.keygen,
    schema.mark, schema.check_target_command, schema.lint, schema.schema, schema.guard,
    sanitize.sanitize, sanitize.promote,
    wal.wal,
):
    cli.add_command(_command)


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
    """Run one command and return its exit code; every failure is turned into one line here.

    Whatever the command writes to stdout or stderr has every registered secret removed
    (:func:`~dbprotect.cli.ui.render.redacted_output`); failures are scrubbed again by :func:`_report`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    with redacted_output():
        return _run(args)


def _run(args: list[str]) -> int:
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
            sys.stderr.write(scrub("".join(traceback.format_exc())))
        return _report(ui, "INTERNAL", EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}",
                       None if os.environ.get(DEBUG_ENV) == "1" else f"set {DEBUG_ENV}=1 for the traceback")


def main() -> None:
    """Console-script entry point (``dbprotect = dbprotect.cli.app:main``)."""
    sys.exit(run())


if __name__ == "__main__":
    main()
