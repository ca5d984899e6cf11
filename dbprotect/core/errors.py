"""Every failure dbprotect reports, with a stable exit code, a one-line message and a hint.

The hierarchy is deliberately shallow (as in psycopg's ``errors``): a few broad bases whose
instances carry structured detail, not dozens of leaf classes::

    DbprotectError                 anything we diagnosed ourselves
    ├── ConfigError                dbprotect.yaml is missing, unreadable or invalid
    ├── CredentialIsolationError   a deployment holds another deployment's secrets
    ├── DatabaseError              cannot connect, authenticate or query PostgreSQL
    ├── ToolError                  pg_dump / pg_restore missing, too old, or failed
    ├── StorageError               the backup store failed to save, list or load
    ├── IntegrityError             a backup is corrupt, truncated or does not match its manifest
    ├── CryptoError                a key is missing, malformed or not the right one
    ├── RefusedError               a guard refused an action (policy, confirmation)
    └── NotFoundError              no such database, backup or object

Each class carries its ``code`` and ``exit_code``. :data:`EXIT_STATUSES` is the one table of every
exit status the CLI can return (these classes' plus success, RPO violated, RTO exceeded, usage,
internal error and interrupted); the CLI's help text and the README's table are rendered from it
(``python -m dbprotect.core.errors`` prints the README's), so the three cannot disagree.

The CLI prints ``error[CODE]: message`` and ``hint: ...`` and exits with ``exit_code``; Dagster
ops raise them so the run fails with the same sentence. Messages never contain secrets: DSNs are
masked by :func:`dbprotect.core.pg.dsn.mask_dsn` before they reach an error.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass


class DbprotectError(Exception):
    """Base of every error dbprotect raises on purpose."""

    exit_code: int = 1
    code: str = "DBP001"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message as the user sees it: one line, newlines folded."""
        return " ".join(self.message.split())


class ConfigError(DbprotectError):
    exit_code = 2
    code = "DBP002"


class CredentialIsolationError(DbprotectError):
    exit_code = 3
    code = "DBP003"


class DatabaseError(DbprotectError):
    exit_code = 4
    code = "DBP004"


class ToolError(DbprotectError):
    exit_code = 5
    code = "DBP005"


class StorageError(DbprotectError):
    exit_code = 6
    code = "DBP006"


class IntegrityError(DbprotectError):
    exit_code = 7
    code = "DBP007"


class CryptoError(DbprotectError):
    exit_code = 8
    code = "DBP008"


class RefusedError(DbprotectError):
    exit_code = 9
    code = "DBP009"


class NotFoundError(DbprotectError):
    exit_code = 10
    code = "DBP010"


#: Success.
EXIT_OK = 0
#: ``status`` found a database whose newest verified backup is older than its RPO (or none).
EXIT_RPO_VIOLATED = 11
#: ``drill``: the backup restored and verified, but slower than the database's RTO target.
EXIT_RTO_EXCEEDED = 12
#: Wrong command line (unknown option, missing argument): sysexits' EX_USAGE.
EXIT_USAGE = 64
#: A bug: an exception nobody diagnosed (sysexits' EX_SOFTWARE).
EXIT_INTERNAL = 70
#: Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ExitStatus:
    """One row of the exit-code table: what a script sees (``exit_status``) and what it means.

    ``code`` names the status; for a failure it is the ``CODE`` of ``error[CODE]`` and ``error.code``
    under ``--json`` (``DBP00n`` for a :class:`DbprotectError`). ``meaning`` may hold Markdown code
    spans (backticks), dropped in the plain rendering.
    """

    code: str
    exit_status: int
    meaning: str


def _status_of(error: type[DbprotectError], meaning: str) -> ExitStatus:
    """The row of an error class: its code and exit status come from the class, never retyped."""
    return ExitStatus(error.code, error.exit_code, meaning)


#: Every exit status of the ``dbprotect`` command, in exit-status order.
EXIT_STATUSES: tuple[ExitStatus, ...] = (
    ExitStatus("OK", EXIT_OK, "success"),
    _status_of(DbprotectError, "other diagnosed failure"),
    _status_of(ConfigError, "configuration missing or invalid"),
    _status_of(CredentialIsolationError, "credential isolation: this deployment holds another deployment's secrets"),
    _status_of(DatabaseError, "cannot connect to / query PostgreSQL"),
    _status_of(ToolError, "pg_dump / pg_restore missing, too old or failed"),
    _status_of(StorageError, "the backup store failed"),
    _status_of(IntegrityError, "a backup or copy failed verification (corrupt, truncated, does not match its "
               "manifest), or `audit --verify` found the chain broken"),
    _status_of(CryptoError, "key problem (missing, malformed, not a recipient of this backup)"),
    _status_of(RefusedError, "refused by a guard"),
    _status_of(NotFoundError, "no such database or backup"),
    ExitStatus("RPO_VIOLATED", EXIT_RPO_VIOLATED, "`status`: a database violates its RPO (so a cron line or "
               "monitor can alert on it)"),
    ExitStatus("RTO_EXCEEDED", EXIT_RTO_EXCEEDED, "`drill`: the backup restored and verified, but slower than the "
               "database's RTO target"),
    ExitStatus("USAGE", EXIT_USAGE, "wrong command line"),
    ExitStatus("INTERNAL", EXIT_INTERNAL, "internal error (set `DBPROTECT_DEBUG=1` for the traceback)"),
    ExitStatus("INTERRUPTED", EXIT_INTERRUPTED, "interrupted"),
)


def exit_status_markdown() -> str:
    """The table as the README shows it (Markdown, one row per exit status)."""
    rows = [f"| {row.exit_status} | {row.code} | {row.meaning} |" for row in EXIT_STATUSES]
    return "\n".join(["| exit | code | meaning |", "|---|---|---|", *rows])


def exit_status_plain(width: int = 78) -> str:
    """The table as ``dbprotect --help`` shows it: aligned plain text, meanings wrapped to ``width``."""
    lines = []
    for row in EXIT_STATUSES:
        prefix = f"{row.exit_status:>4}  "
        lines.extend(textwrap.wrap(row.meaning.replace("`", ""), width=width, initial_indent=prefix,
                                   subsequent_indent=" " * len(prefix)))
    return "\n".join(lines)


__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RPO_VIOLATED",
    "EXIT_RTO_EXCEEDED",
    "EXIT_STATUSES",
    "EXIT_USAGE",
    "ConfigError",
    "CredentialIsolationError",
    "CryptoError",
    "DatabaseError",
    "DbprotectError",
    "ExitStatus",
    "IntegrityError",
    "NotFoundError",
    "RefusedError",
    "StorageError",
    "ToolError",
    "exit_status_markdown",
    "exit_status_plain",
]


if __name__ == "__main__":  # python -m dbprotect.core.errors [--plain]: the table, for pasting
    print(exit_status_plain() if "--plain" in sys.argv[1:] else exit_status_markdown())
