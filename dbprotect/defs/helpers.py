"""What every Dagster definition of dbprotect does the same way.

- :func:`core_errors_as_failures`: a :class:`~dbprotect.core.errors.DbprotectError` fails the
  run with the one-line sentence the CLI prints, its code and hint beside it in the UI; and the
  step's log drops every registered secret (:func:`redact_logs`).
- :func:`safe_text`: what a log line, a description or a metadata text says: no secret (removed
  by value, :mod:`dbprotect.core.redact`), and a DSN named by its database and host, never shown.
- :func:`numeric_metadata`: core's measurements as numbers the UI plots (counts as ints,
  everything else as floats), never as text.
- :func:`phase_logger`: a progress callback for core's long operations that logs each phase once.
- :func:`keyed_resource`: the resource under a key computed per database. Everywhere else a
  resource is a typed parameter named as its key
  (``dbprotect_config: dg.ResourceParam[DbprotectConfigResource]``),
  the way Dagster binds resources.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg

from dbprotect.core.errors import DbprotectError
from dbprotect.core.pg.dsn import scrub_text, scrub_value
from dbprotect.core.redact import contains_secret
from dbprotect.defs.names import DATABASE_TAG

ResourceT = TypeVar("ResourceT", bound=dg.ConfigurableResource)


def safe_text(text: str) -> str:
    """``text`` as Dagster may keep it: registered secrets removed, DSNs named by database and host."""
    return scrub_text(text, name_servers=True)


def safe_value(value: Any) -> Any:
    """A JSON-like value (an op's output, kept by the IO manager) with :func:`safe_text` on every string."""
    return scrub_value(value, name_servers=True)


class _RedactingFilter(logging.Filter):
    """Rewrites each log record's message through :func:`safe_text` before Dagster stores it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            message = safe_text(record.getMessage())
            if message != record.getMessage():
                record.msg, record.args = message, ()
        return True


_REDACTING_FILTER = _RedactingFilter()


def redact_logs(log: logging.Logger) -> None:
    """Make ``log`` (a step's ``context.log``) drop every registered secret from what it records."""
    if _REDACTING_FILTER not in log.filters:
        log.addFilter(_REDACTING_FILTER)


def _current_step_log() -> logging.Logger | None:
    try:
        return dg.OpExecutionContext.get().log
    except dg.DagsterInvariantViolationError:
        return None  # not inside a step (a sensor, a test calling the body directly)


@contextmanager
def core_errors_as_failures() -> Iterator[None]:
    """Re-raise a :class:`DbprotectError` as ``dagster.Failure`` with its code and hint as metadata.

    The run fails with the same sentence ``dbprotect`` prints, without secrets and with DSNs
    named by database and host (:func:`safe_text`); the hint appears beside it in the UI. Any
    other exception whose text holds a registered secret (a library echoing a connection string)
    becomes a Failure with that text redacted, since Dagster stores an exception's text and its
    causes in the event log. The current step's log is redacted from here on (:func:`redact_logs`).
    """
    log = _current_step_log()
    if log is not None:
        redact_logs(log)
    try:
        yield
    except DbprotectError as exc:
        metadata = {"error_code": dg.MetadataValue.text(exc.code)}
        if exc.hint:
            metadata["hint"] = dg.MetadataValue.text(safe_text(exc.hint))
        raise dg.Failure(description=safe_text(f"error[{exc.code}]: {exc.one_line()}"), metadata=metadata) from None
    except Exception as exc:
        if not contains_secret(f"{exc!r} {exc}"):
            raise
        raise dg.Failure(description=safe_text(f"internal error: {type(exc).__name__}: {exc}")) from None


def numeric_metadata(metrics: Mapping[str, float], counts: Container[str] = ()) -> dict[str, dg.MetadataValue]:
    """Metrics named in ``counts`` as ints, every other one as a float: numbers the UI plots, never text."""
    return {name: dg.MetadataValue.int(int(value)) if name in counts else dg.MetadataValue.float(float(value))
            for name, value in metrics.items()}


def phase_logger(log: dg.DagsterLogManager, label: str) -> Callable[[str], None]:
    """A progress callback logging ``<label>: <phase>`` once per phase.

    Core's progress also ticks repeatedly within a phase (while pg_restore runs); the run's log
    should show the phases, not the ticks.
    """
    last: list[str] = []

    def log_phase(phase: str) -> None:
        if last != [phase]:
            log.info(safe_text(f"{label}: {phase}"))
        last[:] = [phase]

    return log_phase


def keyed_resource(context: dg.AssetExecutionContext, key: str, kind: type[ResourceT]) -> ResourceT:
    """The resource under ``key``, checked to be a ``kind``, for keys computed per database.

    Dagster binds a resource to the function parameter of the same name, and a parameter name
    cannot be computed (``shop_production_postgres``). A function needing such a resource declares
    ``required_resource_keys`` and takes every resource through here: Dagster refuses a function
    that mixes the two ways.
    """
    resource = getattr(context.resources, key)
    if not isinstance(resource, kind):
        raise TypeError(f"resource {key!r} is a {type(resource).__name__}, not a {kind.__name__}")
    return resource


def per_database_check_requests(keys: dict[str, dg.AssetCheckKey], run_key: str) -> list[dg.RunRequest]:
    """One run per database, of that database's check only, tagged with the database.

    A run per database, not one for all: the run list filters by ``dbprotect/database``, the
    database's run queue limit applies, and one unreachable store does not fail the others' runs.
    """
    return [dg.RunRequest(run_key=f"{run_key}:{database}", tags={DATABASE_TAG: database}, asset_check_keys=[key])
            for database, key in keys.items()]


__all__ = ["core_errors_as_failures", "keyed_resource", "numeric_metadata", "per_database_check_requests",
           "phase_logger", "redact_logs", "safe_text",
           "safe_value"]
