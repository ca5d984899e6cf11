"""Turn dbprotect's own errors into Dagster failures that read like the CLI's one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from dbprotect.core.errors import DbprotectError


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
