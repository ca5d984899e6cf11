"""Finding and checking the PostgreSQL client tools, and connecting to servers.

Which tools, per server (issue 11):

* ``pg_dump`` must be at least as new as the server it dumps (an older pg_dump refuses).
* ``pg_restore`` must be at least as new as the ``pg_dump`` that wrote the archive (an older one
  cannot read a newer archive format), and is preferably of the *target* server's major: a newer
  pg_restore sends settings an older server rejects (``SET transaction_timeout`` from 17 on);
  :mod:`dbprotect.core.pg.pg_restore` handles that case when no tool of the target's major exists.
* A DSN that requires TLS (``sslmode`` require, verify-ca, verify-full) needs tools whose libpq
  was built with OpenSSL. The embedded PostgreSQL 18 build has no SSL; system packages have it.

Folders are searched in this order: ``pg_bin_dirs`` (configuration, one folder per major, the
server's own major first), then ``pg_bin_dir`` or ``$DBPROTECT_PG_BIN`` (either one means "use
these tools", so nothing else is searched after it), else the embedded build, the usual system
locations (:data:`SYSTEM_BIN_PATTERNS`) and ``$PATH``. Every failure to find a fitting tool is a
:class:`ToolError` (the environment, never the backup) naming what to install.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbprotect.core.errors import DatabaseError, ToolError
from dbprotect.core.pg.dsn import connection_failure_reason, mask_dsn, register_dsn
from dbprotect.core.pg.embedded import embedded_bin_dir
from dbprotect.core.redact import register

PG_BIN_ENV = "DBPROTECT_PG_BIN"
CONNECT_TIMEOUT_SECONDS = 10

#: Where PostgreSQL packages put a major's programs: Debian/Ubuntu, RHEL/PGDG, Homebrew.
SYSTEM_BIN_PATTERNS = ("/usr/lib/postgresql/{major}/bin", "/usr/pgsql-{major}/bin",
                       "/opt/homebrew/opt/postgresql@{major}/bin")

#: ``sslmode`` values under which libpq refuses a connection without TLS.
TLS_SSLMODES = ("require", "verify-ca", "verify-full")

#: Host names whose traffic stays on this machine (plus 127.0.0.0/8).
LOOPBACK = ("localhost", "::1")


@dataclass(frozen=True)
class ToolDirs:
    """The configured tool folders: ``pg_bin_dir`` (the tools to use) and ``pg_bin_dirs`` (one per major)."""

    default: str | None = None
    by_major: Mapping[int, str] = field(default_factory=dict)


ToolPlace = ToolDirs | str | os.PathLike[str] | None


def tool_dirs(place: ToolPlace) -> ToolDirs:
    """A :class:`ToolDirs` from what callers pass: a ``ToolDirs``, one folder (``pg_bin_dir``), or nothing."""
    if isinstance(place, ToolDirs):
        return place
    return ToolDirs(default=os.fspath(place) if place else None)


def _system_dirs() -> list[tuple[int, Path]]:
    """The usual system folders of every installed major, newest first."""
    found: dict[int, Path] = {}
    for pattern in SYSTEM_BIN_PATTERNS:
        for folder in glob.glob(pattern.format(major="*")):
            match = re.search(r"(?:postgresql[/@]|pgsql-)(\d+)", folder)
            if match and int(match.group(1)) not in found:
                found[int(match.group(1))] = Path(folder)
    return sorted(found.items(), reverse=True)


def candidate_dirs(place: ToolPlace, prefer_major: int | None = None) -> tuple[list[Path], bool]:
    """The folders to look in, in order, and whether the search may go on to ``$PATH``.

    ``prefer_major``: the configured and system folders of that major come first.
    """
    dirs = tool_dirs(place)
    ordered: list[Path] = []
    by_major = sorted(dirs.by_major.items(), key=lambda item: (item[0] != prefer_major, -item[0]))
    ordered += [Path(folder) for _major, folder in by_major]
    explicit = dirs.default or os.environ.get(PG_BIN_ENV)
    if explicit:
        return [*ordered, Path(explicit)], False
    system = sorted(_system_dirs(), key=lambda item: item[0] != prefer_major)
    ordered += [folder for major, folder in system if major == prefer_major]
    embedded = embedded_bin_dir()
    if embedded:
        ordered.append(embedded)
    ordered += [folder for major, folder in system if major != prefer_major]
    return list(dict.fromkeys(ordered)), True


def find_tool(name: str, bin_dir: ToolPlace = None) -> Path:
    """Absolute path of a PostgreSQL client tool (the first found), or :class:`ToolError` saying where we looked."""
    folders, may_use_path = candidate_dirs(bin_dir)
    for folder in folders:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if not may_use_path:
        raise ToolError(
            f"{name} not found in {', '.join(map(str, folders))}",
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

    @property
    def has_ssl(self) -> bool:
        return tool_has_ssl(self.path)


def tool_version(path: Path) -> ToolVersion:
    """The tool's version, asked once per file state (path and modification time): a long-running
    process (a Dagster code server) sees an upgraded tool, and a lookup costs one ``--version`` run."""
    try:
        changed = path.stat().st_mtime_ns
    except OSError:
        changed = 0
    return _tool_version(str(path), changed)


@functools.cache
def _tool_version(path: str, _changed: int) -> ToolVersion:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"{path} does not run: {exc}") from None
    match = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        raise ToolError(f"cannot read the version of {path} from {out.stdout.strip()!r}")
    return ToolVersion(Path(path), match.group(0), int(match.group(1)))


@functools.cache
def tool_has_ssl(path: Path) -> bool:
    """Whether the tool's libpq can speak TLS: its folder's ``pg_config --configure`` names OpenSSL,
    else its libpq (``ldd``) links libssl. Unknown (neither tool available) counts as yes: libpq
    itself then says "SSL support is not compiled in".
    """
    pg_config = path.parent / "pg_config"
    try:
        if pg_config.is_file():
            configure = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True,
                                       timeout=30, check=True).stdout
            return "--with-openssl" in configure or "--with-ssl=openssl" in configure
        libs = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=30, check=True).stdout
        if "libssl" in libs:
            return True
        libpq = re.search(r"libpq[^ ]* => (\S+)", libs)
        if libpq:
            return "libssl" in subprocess.run(["ldd", libpq.group(1)], capture_output=True, text=True,
                                              timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    return True


def dsn_requires_tls(dsn: str | None) -> bool:
    """Whether libpq will refuse to connect to ``dsn`` without TLS (its ``sslmode``, else ``$PGSSLMODE``)."""
    if not dsn:
        return False
    try:
        mode = conninfo_to_dict(dsn).get("sslmode") or os.environ.get("PGSSLMODE")
    except psycopg.ProgrammingError:
        return False
    return str(mode) in TLS_SSLMODES


def dsn_sends_plaintext(dsn: str) -> bool:
    """Whether ``dsn`` may reach a server over the network without TLS: some host is neither a Unix
    socket nor a loopback address and its ``sslmode`` (else ``$PGSSLMODE``) does not require TLS.
    Sockets and loopback never leave the machine (libpq never uses TLS on a socket), so they do not count.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return False  # libpq cannot use it at all: connecting fails with "invalid DSN", nothing is sent
    hosts = str(params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST") or "")
    network = [host for host in (part.strip() for part in hosts.split(","))
               if host and not host.startswith(("/", "@")) and host not in LOOPBACK and not host.startswith("127.")]
    return bool(network) and not dsn_requires_tls(dsn)


def _installed(name: str, place: ToolPlace, prefer_major: int | None) -> tuple[list[ToolVersion], list[Path]]:
    """Every runnable ``name`` in the candidate folders (then ``$PATH``), in order, and the folders searched."""
    folders, may_use_path = candidate_dirs(place, prefer_major)
    paths = [folder / name for folder in folders]
    if may_use_path and (on_path := shutil.which(name)):
        paths.append(Path(on_path))
    found: list[ToolVersion] = []
    for path in dict.fromkeys(paths):
        if path.is_file() and os.access(path, os.X_OK):
            found.append(tool_version(path))
    return found, folders


def _install_hint(name: str, major: int, tls: bool) -> str:
    what = f"PostgreSQL {major} client tools" + (" built with OpenSSL" if tls else "")
    return (f"install the {what} (e.g. apt install postgresql-client-{major}, dnf install postgresql{major}, "
            f"brew install postgresql@{major}) and set pg_bin_dirs: {{{major}: <its bin folder>}} "
            f"(or pg_bin_dir) to the folder holding {name}")


def select_tool(name: str, *, at_least: int = 0, prefer: int | None = None, dsn: str | None = None,
                place: ToolPlace = None, newer_than: str = "the server") -> ToolVersion:
    """The first ``name`` of major ``at_least`` or newer (of major ``prefer`` if there is one) that can
    reach ``dsn`` (TLS when its sslmode requires it); else a one-line :class:`ToolError` naming what to install.
    ``newer_than`` says what sets ``at_least`` in that message ("the server", "the archive").
    """
    tls = dsn_requires_tls(dsn)
    found, folders = _installed(name, place, prefer)
    new_enough = [tool for tool in found if tool.major >= at_least]
    usable = [tool for tool in new_enough if not tls or tool.has_ssl]
    preferred = [tool for tool in usable if tool.major == prefer]
    if preferred or usable:
        return (preferred or usable)[0]
    wanted = max(at_least, prefer or 0) or 18
    if new_enough:
        listed = ", ".join(f"{tool.path} ({tool.text})" for tool in new_enough)
        raise ToolError(f"the DSN {mask_dsn(dsn or '')} requires TLS (sslmode) but the {name} found are built "
                        f"without SSL support: {listed}", hint=_install_hint(name, wanted, tls=True))
    if found:
        newest = max(found, key=lambda tool: tool.major)
        older = "" if len(found) == 1 else f" (the newest of {len(found)} found)"
        raise ToolError(f"{name} {newest.text} ({newest.path}){older} is older than {newer_than} "
                        f"(PostgreSQL {at_least})",
                        hint=f"use {name} {at_least} or newer: " + _install_hint(name, wanted, tls))
    if not tool_dirs(place).default and not os.environ.get(PG_BIN_ENV) and not folders:
        raise ToolError(f"{name} not found", hint=_install_hint(name, wanted, tls))
    where = ", ".join(map(str, folders))
    raise ToolError(f"{name} not found in {where}" + ("" if not _may_use_path(place) else " nor on $PATH"),
                    hint="set pg_bin_dir (or $DBPROTECT_PG_BIN) to the folder holding the PostgreSQL client "
                         "tools; or " + _install_hint(name, wanted, tls))


def _may_use_path(place: ToolPlace) -> bool:
    return not (tool_dirs(place).default or os.environ.get(PG_BIN_ENV))


def require_tool_for_server(name: str, server_major: int, bin_dir: ToolPlace = None, *,
                            dsn: str | None = None) -> ToolVersion:
    """The tool, checked to be at least as new as the server's major version (and to speak TLS when
    ``dsn`` requires it). A ``pg_bin_dirs`` folder of the server's own major comes first; otherwise
    the first in search order (the newest tools first: a newer pg_dump is what PostgreSQL advises).
    """
    prefer = server_major if server_major in tool_dirs(bin_dir).by_major else None
    return select_tool(name, at_least=server_major, prefer=prefer, dsn=dsn, place=bin_dir)


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
