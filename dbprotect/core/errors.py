"""Every failure dbprotect reports, with a stable exit code, a one-line message and a hint.

The hierarchy is deliberately shallow (as in psycopg's ``errors``): a few broad bases whose
instances carry structured detail, not dozens of leaf classes::

    DbprotectError                 exit 1   anything we diagnosed ourselves
    ├── ConfigError                exit 2   dbprotect.yaml is missing, unreadable or invalid
    ├── CredentialIsolationError   exit 3   a deployment holds another deployment's secrets
    ├── DatabaseError              exit 4   cannot connect, authenticate or query PostgreSQL
    ├── ToolError                  exit 5   pg_dump / pg_restore missing, too old, or failed
    ├── StorageError               exit 6   the backup store failed to save, list or load
    ├── IntegrityError             exit 7   a backup is corrupt, truncated or does not match its manifest
    ├── CryptoError                exit 8   a key is missing, malformed or not the right one
    ├── RefusedError               exit 9   a guard refused an action (policy, confirmation)
    └── NotFoundError              exit 10  no such database, backup or object

The CLI prints ``error[CODE]: message`` and ``hint: ...`` and exits with ``exit_code``; Dagster
ops raise them so the run fails with the same sentence. Messages never contain secrets: DSNs are
masked by :func:`dbprotect.core.pg.dsn.mask_dsn` before they reach an error.
"""

from __future__ import annotations


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


__all__ = [
    "ConfigError",
    "CredentialIsolationError",
    "CryptoError",
    "DatabaseError",
    "DbprotectError",
    "IntegrityError",
    "NotFoundError",
    "RefusedError",
    "StorageError",
    "ToolError",
]
