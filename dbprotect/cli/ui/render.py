"""How every command talks to a person or a script: the :class:`Ui`, its options, and shared printers.

A command renders its result for a person (rich tables, a progress bar on a terminal) or for a
script (``--json``: one JSON document on stdout, nothing else, errors included). Errors and the
JSON document pass through :func:`scrub` (every registered secret removed by value, then DSN
passwords masked by pattern), and everything else a command writes to stdout or stderr passes
through :func:`redacted_output` (registered secrets removed), so a password is never printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TextIO, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.config.model import Config
from dbprotect.core.errors import DbprotectError
from dbprotect.core.pg.dsn import scrub_text, scrub_value, server_label
from dbprotect.core.redact import redact


def scrub(text: str) -> str:
    """``text`` without any registered secret (by value) or DSN password (by pattern, both
    URI and keyword forms): the last step before an error or a JSON document is printed."""
    return scrub_text(text)


class _RedactingStream:
    """A text stream that removes every registered secret from what is written to it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def redacted_output() -> Iterator[None]:
    """While a command runs, stdout and stderr drop every registered secret, whoever writes.

    Value redaction only: the text a command prints on purpose (``--help``'s example DSNs) is
    left as it is unless it holds a secret.
    """
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@dataclass
class Ui:
    """What every command needs: output mode, the configuration path, and extra error context."""

    json: bool = False
    config_path: str | None = None
    #: Merged into the ``--json`` error document (e.g. the failed verification report).
    error_context: dict[str, Any] = field(default_factory=dict)

    def console(self, *, stderr: bool = False) -> Console:
        """A rich console on stdout (or stderr); wide and plain when not a terminal."""
        console = Console(stderr=stderr, highlight=False)
        if not console.is_terminal:
            console = Console(stderr=stderr, highlight=False, width=200, no_color=True)
        return console

    @property
    def interactive(self) -> bool:
        """A progress bar makes sense: a person watches stderr, and no script reads JSON."""
        return not self.json and sys.stderr.isatty()

    def emit(self, document: dict[str, Any]) -> None:
        """Print ``document`` as the one JSON document of ``--json`` (scrubbed like any other output)."""
        document = scrub_value(json.loads(json.dumps(document, default=str)))
        click.echo(scrub(json.dumps(document, indent=2)))

    def load(self) -> Config:
        """The validated configuration, refused if this deployment holds another's credentials."""
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


# --- formatting ----------------------------------------------------------------------------------

def human_bytes(value: float | None) -> str:
    """``1.2 MB``: decimal units, as a person reads sizes; ``-`` for unknown."""
    if value is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_age(age: timedelta | None) -> str:
    """``3 h 12 min``: the two largest units that matter for an RPO; ``-`` for unknown."""
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


def error_document(err: DbprotectError) -> dict[str, Any]:
    """An error as ``--json`` shows it (inside a document that goes on, e.g. one database of ``status``)."""
    return {"code": err.code, "exit_code": err.exit_code, "message": scrub(err.one_line()),
            "hint": scrub(err.hint) if err.hint else None}


def server_where(masked_dsn: str) -> str:
    """Where a (masked) DSN points, as a person writes it: ``server /run/postgresql:5432`` or
    ``server db.example.com``, decoded (a URI's ``%2F`` or ``%29`` is not for people), no user."""
    label = server_label(masked_dsn)  # parsed as libpq does: percent-decoded, user and password dropped
    return "server " + label.split(" on ", 1)[1] if " on " in label else label


# --- progress ------------------------------------------------------------------------------------

class ByteBar:
    """A rich bar of bytes done vs estimate on stderr, started by the first update (so that
    the slow steps before the data flows show no empty bar) and removed when stopped."""

    def __init__(self, ui: Ui, label: str) -> None:
        self._ui = ui
        self._label = label
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._done = 0

    def __call__(self, done: int, estimate: int) -> None:
        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeElapsedColumn(),
                                      console=self._ui.console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=None)
        assert self._task is not None
        self._done = done
        self._progress.update(self._task, completed=done, total=max(done, estimate))

    def finish(self) -> None:
        """The work is done: the total is what was done, so the bar ends full (an estimate above
        the real size would leave it at, say, 84% while the command reports success)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self._done, total=self._done)
            self._progress.refresh()

    def percentage(self) -> float | None:
        """The bar's current fill in percent (None before the first update)."""
        if self._progress is None or self._task is None:
            return None
        return self._progress.tasks[0].percentage

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
        bar.finish()
    finally:
        bar.stop()


class PhasePrinter:
    """Each restore phase once on stderr (core's progress also ticks while pg_restore runs)."""

    def __init__(self, ui: Ui) -> None:
        self._ui = ui
        self._last = ""

    def __call__(self, phase: str) -> None:
        if phase != self._last and self._ui.interactive:
            click.echo(f"- {phase}", err=True)
        self._last = phase


# --- shared printers -----------------------------------------------------------------------------

def print_backup_lines(console: Console, uri: str, metrics: dict[str, float]) -> None:
    """Where a backup went, its sizes, duration and rows: shown by ``backup`` and ``demo``."""
    console.print(f"  stored at  {escape(uri)}", soft_wrap=True)
    console.print(f"  sizes      dump {human_bytes(metrics['dump_bytes'])} -> compressed "
                  f"{human_bytes(metrics['compressed_bytes'])} -> stored {human_bytes(metrics['stored_bytes'])} "
                  f"(ratio {metrics['compression_ratio']:.2f}x)", soft_wrap=True)
    console.print(f"  duration   {metrics['duration_seconds']:.2f} s ({metrics['throughput_mb_per_s']} MB/s; "
                  f"checksums {metrics['checksum_seconds']:.2f} s)", soft_wrap=True)
    console.print(f"  rows       {int(metrics['total_rows']):,} in {int(metrics['tables'])} tables", soft_wrap=True)
