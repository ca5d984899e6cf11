"""What every Dagster definition of dbprotect does the same way.

- :func:`core_errors_as_failures`: a :class:`~dbprotect.core.errors.DbprotectError` fails the
  run with the one-line sentence the CLI prints, its code and hint beside it in the UI.
- :func:`numeric_metadata`: core's measurements as numbers the UI plots (counts as ints,
  everything else as floats), never as text.
- :func:`phase_logger`: a progress callback for core's long operations that logs each phase once.
- :func:`keyed_resource`: the resource under a key computed per database. Everywhere else a
  resource is a typed parameter named as its key (``dbprotect_config: DbprotectConfigResource``),
  the way Dagster binds resources.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import dagster as dg

from dbprotect.core.errors import DbprotectError

ResourceT = TypeVar("ResourceT", bound=dg.ConfigurableResource)


@contextmanager
def core_errors_as_failures() -> Iterator[None]:
    """Re-raise a :class:`DbprotectError` as ``dagster.Failure`` with its code and hint as metadata.

    The run fails with the same sentence ``dbprotect`` prints (already free of secrets: core
    masks DSNs before they reach a message); the hint appears beside it in the UI.
    """
    try:
        yield
    except DbprotectError as exc:
        metadata = {"error_code": dg.MetadataValue.text(exc.code)}
        if exc.hint:
            metadata["hint"] = dg.MetadataValue.text(exc.hint)
        raise dg.Failure(description=f"error[{exc.code}]: {exc.one_line()}", metadata=metadata) from None


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
            log.info(f"{label}: {phase}")
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


__all__ = ["core_errors_as_failures", "keyed_resource", "numeric_metadata", "phase_logger"]
