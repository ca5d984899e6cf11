"""Point-in-time restore: base backup (+ incrementals, combined) + WAL replayed to a target, promoted.

Order, and why:

1. The base: the newest one that *ended* before the target (a base is consistent only at its end),
   and its chain of incrementals back to a full one (:func:`~.base.base_chain`). A newer base that
   cannot serve must not block a restore an older one can (:func:`usable_bases`): a base whose
   ``base.json`` or chain cannot be read, or whose chain holds a base ``pg_verifybackup`` failed
   (:mod:`~.verdicts`), is passed over; one whose objects fail to fetch (SHA-256, decryption, tar,
   ``pg_combinebackup``) is removed and the next older one tried. Every base passed over is named in
   the result (``skipped``). Unverified bases are tried: the fetch checks each object's SHA-256 and
   recovery checks the rest, and a base just taken has no verdict yet.
2. Each base is decrypted straight into ``tar -x`` (the SHA-256 of the stored object is checked as it
   passes; a mismatch fails the restore and the folder is removed). A chain goes into private work
   folders first, then ``pg_combinebackup`` writes the data directory and the work folders are removed.
3. Recovery settings: ``restore_command`` is ``dbprotect wal fetch %f %p`` (decrypts from the store,
   checked against each segment's record), ``recovery_target_time`` or ``recovery_target_lsn``,
   ``recovery_target_action = promote``, plus ``recovery.signal``. Nothing secret is written there:
   the identity reaches ``restore_command`` through the server's environment only. When this runs as
   root the server runs as ``postgres``, which may be unable to run this Python (or should not see the
   identity): then a *relay* serves the WAL instead — ``restore_command`` writes the request into a
   FIFO, this process (which holds the identity) fetches the file into ``pg_wal`` with the same
   :func:`~.wal.fetch_wal` and answers through a second FIFO. PostgreSQL reads any failed
   ``restore_command`` as a missing file, so a fetch that fails otherwise (a missing or wrong key, a
   damaged object) leaves its ``error[CODE]: …`` line in the server log (``wal fetch`` on its stderr, the
   relay by appending it), and a restore that stops short names that line beside PostgreSQL's. That
   line also decides what the failure is (:func:`_classified`): a damaged object (DBP007) makes it an
   integrity failure (exit 7) whether the server had opened for reads or not; anything else (the store
   unreachable, a tool missing) stays an environment failure.
4. The server starts on a free port (and a private socket folder) — as the ``postgres`` OS user when
   this runs as root, since PostgreSQL refuses root — replays, promotes; then a *smoke check*
   (:func:`smoke_check`) reads every table of every database in full and counts its rows. It is named
   a smoke check because it is one: it proves the restored files are readable, not that they hold what
   the source held at the target. No comparison with a logical backup is made, because a logical
   backup records no LSN consistent with its snapshot: no point of the WAL is known to equal it.

A data directory that exists and is not empty is never written into (DBP912).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import pyrage

from dbprotect.core.continuous.base import (
    BASE_ID_PATTERN,
    BASE_RECORD,
    BaseBackupRecord,
    base_chain,
    parse_lsn,
    read_base_tar,
)
from dbprotect.core.continuous.verdicts import base_state
from dbprotect.core.continuous.wal import fetch_wal
from dbprotect.core.errors import (
    DatabaseError,
    DbprotectError,
    IntegrityError,
    NotFoundError,
    Refusals,
    RefusedError,
    ToolError,
)
from dbprotect.core.pg.tools import ToolPlace, require_tool_for_server
from dbprotect.core.store import Storage

PROMOTE_TIMEOUT_SECONDS = 600
#: The restored server's log, inside its data directory (``pg_ctl -l``).
SERVER_LOG = "pitr-server.log"


@dataclass(frozen=True)
class PitrResult:
    data_dir: Path
    port: int
    socket_dir: Path
    chain: list[str]
    target: str
    seconds: float
    in_recovery: bool
    #: Newer bases passed over, each with why (``"<base_id>: <reason>"``), newest first.
    skipped: tuple[str, ...] = ()
    smoke: SmokeCheck | None = None
    #: The restored cluster's major version: :func:`stop_restored` stops it with that major's ``pg_ctl``.
    major: int = 18

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}&port={self.port}"


@dataclass(frozen=True)
class SmokeCheck:
    """What :func:`smoke_check` read on the promoted server. Not a comparison with anything."""

    databases: int
    tables: int
    rows: int

    def describe(self) -> str:
        return (f"smoke check, not a comparison: every table of {self.databases} database(s) read in full "
                f"({self.tables} tables, {self.rows} rows)")

    def to_dict(self) -> dict[str, object]:
        return {"kind": "smoke check (not a comparison)", "databases": self.databases, "tables": self.tables,
                "rows": self.rows}


#: Sequential scans only: an index-only count could answer from the index and never read the table.
_SEQUENTIAL_ONLY = ("SET enable_indexscan = off", "SET enable_indexonlyscan = off", "SET enable_bitmapscan = off")


def smoke_check(dsn_of: Callable[[str], str]) -> SmokeCheck:
    """Count the rows of every table and materialized view of every connectable database by sequential
    scan (every heap page read, so a page the restore left unreadable fails here); the catalogue must
    not be empty. :class:`IntegrityError` naming the table that cannot be read."""
    with psycopg.connect(dsn_of("postgres"), autocommit=True, connect_timeout=10) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")]
        row = conn.execute("SELECT count(*) FROM pg_class").fetchone()
        if not row or int(row[0]) == 0:
            raise IntegrityError("the restored server's catalogue is empty: the smoke check failed")
    tables = rows = 0
    for name in names:
        with psycopg.connect(dsn_of(name), autocommit=True, connect_timeout=10) as conn:
            for statement in _SEQUENTIAL_ONLY:
                conn.execute(statement)
            relations = [row[0] for row in conn.execute(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' ORDER BY 1")]
            for relation in relations:
                try:
                    counted = conn.execute(f"SELECT count(*) FROM {relation}").fetchone()  # quoted by format()
                except psycopg.Error as exc:
                    raise IntegrityError(f"smoke check: table {relation} of database {name} cannot be read on the "
                                         f"restored server: {' '.join(str(exc).split())[:200]}") from None
                tables += 1
                rows += int(counted[0]) if counted else 0
    return SmokeCheck(len(names), tables, rows)


def usable_bases(storage: Storage, database: str, *, to_time: datetime | None, to_lsn: str | None,
                 skipped: list[str]) -> list[list[BaseBackupRecord]]:
    """The chains of every base that ended before the target, newest first, that may serve it.

    Passed over, each named in ``skipped``: a base whose ``base.json`` cannot be read (everything read is
    untrusted), whose chain cannot be resolved, or whose chain holds a base with a failed verdict.
    :class:`NotFoundError` when no base ended before the target, or none of those may serve.
    """
    ids: set[str] = set()
    for info in storage.list(f"{database}/continuous/base/"):
        parts = info.key.split("/")
        if len(parts) == 5 and parts[4] == BASE_RECORD and BASE_ID_PATTERN.match(parts[3]):
            ids.add(parts[3])
    target_lsn = parse_lsn(to_lsn) if to_lsn is not None else None
    chains: list[list[BaseBackupRecord]] = []
    fitting = 0
    for base_id in sorted(ids, reverse=True):
        try:
            record = BaseBackupRecord.from_store(storage, database, base_id)
            if target_lsn is not None:
                fits = record.end <= target_lsn
            else:
                assert to_time is not None
                fits = datetime.fromisoformat(record.finished_at) <= to_time
        except (IntegrityError, NotFoundError, ValueError, TypeError) as exc:  # a store failure is raised
            skipped.append(f"{base_id}: base.json unreadable ({_one_line(exc)})")
            continue
        if not fits:
            continue
        fitting += 1
        try:
            chain = base_chain(storage, database, base_id)
        except (IntegrityError, NotFoundError, ValueError, TypeError) as exc:
            skipped.append(f"{base_id}: its chain cannot be read ({_one_line(exc)})")
            continue
        failed = [b.base_id for b in chain if base_state(storage, b) == "failed"]
        if failed:
            skipped.append(f"{base_id}: pg_verifybackup failed on {', '.join(failed)}")
            continue
        chains.append(chain)
    if not chains:
        usable = "usable " if fitting else ""
        raise NotFoundError(f"no {usable}base backup of {database} ended before {to_lsn or to_time}: the target "
                            f"cannot be reached{'; passed over: ' + '; '.join(skipped) if skipped else ''}",
                            hint="'dbprotect wal status' lists the base backups")
    return chains


def choose_base(storage: Storage, database: str, *, to_time: datetime | None,
                to_lsn: str | None) -> BaseBackupRecord:
    """The newest usable base backup that ended before the target (:func:`usable_bases`)."""
    return usable_bases(storage, database, to_time=to_time, to_lsn=to_lsn, skipped=[])[0][-1]


def _one_line(exc: BaseException) -> str:
    return exc.one_line() if isinstance(exc, DbprotectError) else " ".join(str(exc).split())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the restored server: this user, or ``postgres`` when this is root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ToolError("running as root and there is no 'postgres' OS user to run the restored server as",
                        hint="run the restore as an unprivileged user") from None


def _extract(storage: Storage, record: BaseBackupRecord, identity: pyrage.x25519.Identity, folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "-x", "-f", "-", "-C", str(folder)], stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert tar.stdin is not None and tar.stderr is not None
    try:
        read_base_tar(storage, record, identity, tar.stdin)  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(BrokenPipeError):
            tar.stdin.close()
        err = tar.stderr.read().decode(errors="replace").strip()
        code = tar.wait()
    if code != 0:
        raise ToolError(f"tar could not unpack base backup {record.base_id}: {err.splitlines()[-1] if err else code}")
    (folder / "pg_wal").mkdir(mode=0o700, exist_ok=True)


def _recovery_settings(restore_command: str, to_time: datetime | None, to_lsn: str | None) -> str:
    def quoted(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    lines = ["", "# dbprotect point-in-time restore", f"restore_command = {quoted(restore_command)}",
             "recovery_target_action = 'promote'", "recovery_target_inclusive = on",
             "archive_mode = off", "summarize_wal = off"]
    if to_lsn is not None:
        lines.append(f"recovery_target_lsn = {quoted(to_lsn)}")
    else:
        assert to_time is not None
        lines.append(f"recovery_target_time = {quoted(to_time.isoformat(sep=' '))}")
    return "\n".join(lines) + "\n"


def restore_to_point(*, storage: Storage, database: str, identity: pyrage.x25519.Identity, data_dir: Path,
                     restore_command: str, to_time: datetime | None = None, to_lsn: str | None = None,
                     pg_bin_dir: ToolPlace = None, server_environ: Mapping[str, str] | None = None,
                     work_dir: str | os.PathLike[str] | None = None, relay: bool = False,
                     log: Callable[[str], None] = lambda line: None) -> PitrResult:
    """Restore ``database``'s server as it was at ``to_time`` (aware) or ``to_lsn`` into ``data_dir`` and
    start it, promoted; see the module docstring. ``server_environ``: the environment the server (and so
    ``restore_command``) runs with — where the identity variable lives. ``relay``: serve the WAL from this
    process even when not root (the server then never needs the identity: drills, Dagster runs whose
    identity is a resource, not an environment variable).
    """
    if (to_time is None) == (to_lsn is None):
        raise ValueError("exactly one of to_time and to_lsn")
    if to_time is not None and to_time.tzinfo is None:
        raise ValueError("to_time must carry a time zone")
    started = time.perf_counter()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RefusedError(f"{data_dir} exists and is not empty; a point-in-time restore writes a new data "
                           "directory only", refusal=Refusals.TARGET_EXISTS, hint="name a new folder")
    skipped: list[str] = []
    chains = usable_bases(storage, database, to_time=to_time, to_lsn=to_lsn, skipped=skipped)
    user = _server_user()
    created = not data_dir.exists()
    major = _major(chains[0][-1])
    socket_dir: Path | None = None
    try:
        for index, chain in enumerate(chains):
            major = _major(chain[-1])
            try:
                _unpack_chain(storage, chain, identity, data_dir, major, pg_bin_dir, work_dir)
                break
            except (IntegrityError, ToolError, NotFoundError) as exc:
                shutil.rmtree(data_dir, ignore_errors=True)
                data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                skipped.append(f"{chain[-1].base_id}: {_one_line(exc)}")
                log(f"base backup {chain[-1].base_id} cannot serve ({_one_line(exc)}); trying an older one")
                if index == len(chains) - 1:
                    raise NotFoundError(f"no base backup of {database} that ended before {to_lsn or to_time} "
                                        f"could be fetched; passed over: {'; '.join(skipped)}",
                                        hint="'dbprotect wal verify' and 'wal base-verify' check the "
                                             "stored objects") from None
        (data_dir / "recovery.signal").touch()
        (data_dir / "standby.signal").unlink(missing_ok=True)
        data_dir.chmod(0o700)
        with contextlib.ExitStack() as stack:
            if user is not None or relay:
                relay_user = user or pwd.getpwuid(os.geteuid())
                restore_command = stack.enter_context(_wal_relay(storage, database, identity, data_dir,
                                                                 relay_user, log))
            with open(data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
                conf.write(_recovery_settings(restore_command, to_time, to_lsn))
            socket_dir = Path(tempfile.mkdtemp(prefix="dbp-pitr-sock-"))
            port, in_recovery = _start_and_promote(data_dir, socket_dir, major=major, pg_bin_dir=pg_bin_dir,
                                                   user=user, server_environ=server_environ)
        smoke = smoke_check(lambda dbname: f"postgresql://postgres@/{dbname}?host={socket_dir}&port={port}")
    except BaseException:
        # every way out that is not a promoted, checked server: no server left running (also in a folder
        # that existed empty), no half-recovered data directory we created, no socket folder in /tmp
        _stop_quietly(data_dir, major, pg_bin_dir, user)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:  # it existed empty (checked above): empty again, never a half-recovered cluster left in it
            _empty_folder(data_dir)
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    assert socket_dir is not None
    return PitrResult(data_dir, port, socket_dir, [b.base_id for b in chain], to_lsn or str(to_time),
                      time.perf_counter() - started, in_recovery, tuple(skipped), smoke, major)


def _empty_folder(folder: Path) -> None:
    """Remove everything inside ``folder`` (not the folder: its owner and mode are the caller's)."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def _major(record: BaseBackupRecord) -> int:
    leading = re.match(r"\d+", record.server_version)  # "18.1", "18beta1", "18devel"
    return int(leading.group()) if leading else 18


def _unpack_chain(storage: Storage, chain: list[BaseBackupRecord], identity: pyrage.x25519.Identity,
                  data_dir: Path, major: int, pg_bin_dir: ToolPlace,
                  work_dir: str | os.PathLike[str] | None) -> None:
    """One base into ``data_dir``, or a chain through private work folders and ``pg_combinebackup``."""
    if len(chain) == 1:
        _extract(storage, chain[0], identity, data_dir)
        return
    combine = require_tool_for_server("pg_combinebackup", major, pg_bin_dir)
    work = Path(tempfile.mkdtemp(prefix="dbprotect-pitr-", dir=work_dir))
    try:
        folders = []
        for index, record in enumerate(chain):
            folder = work / f"{index:04d}"
            _extract(storage, record, identity, folder)
            folders.append(str(folder))
        if data_dir.exists():
            data_dir.rmdir()  # pg_combinebackup creates its output folder (empty here: checked before)
        done = subprocess.run([str(combine.path), *folders, "-o", str(data_dir)], capture_output=True,
                              text=True, timeout=24 * 3600)
        if done.returncode != 0:
            raise ToolError(f"pg_combinebackup failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _wal_relay(storage: Storage, database: str, identity: pyrage.x25519.Identity, data_dir: Path,
               user: pwd.struct_passwd, log: Callable[[str], None]) -> Iterator[str]:
    """Serve ``restore_command`` from this process through two FIFOs; yields the command to configure.

    The server's startup process runs restore_command one file at a time, so one request FIFO and one
    reply FIFO suffice. Only a file name of WAL's own shapes and a destination inside ``pg_wal`` are
    accepted: the request comes from another OS user.
    """
    folder = Path(tempfile.mkdtemp(prefix="dbp-pitr-relay-"))
    request, reply = folder / "request", folder / "reply"
    for fifo in (request, reply):
        os.mkfifo(fifo, 0o600)
        os.chown(fifo, user.pw_uid, user.pw_gid)
    folder.chmod(0o711)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with open(request, encoding="utf-8") as incoming:
                line = incoming.readline().strip()
            if stop.is_set() or not line:
                continue
            status = 1
            try:
                name, relative = line.split(" ", 1)
                dest = (data_dir / relative).resolve()
                if dest.parent != (data_dir / "pg_wal").resolve():
                    raise IntegrityError(f"restore_command asked to write outside pg_wal: {relative!r}")
                fetch_wal(storage, database, name, identity, dest)
                os.chown(dest, user.pw_uid, user.pw_gid)
                status = 0
            except NotFoundError:
                pass
            except (DbprotectError, ValueError, OSError) as exc:
                log(f"restore_command {line!r}: {exc}")
                _note_in_server_log(data_dir / SERVER_LOG, exc)
            with open(reply, "w", encoding="utf-8") as outgoing:
                outgoing.write(f"{status}\n")

    server = threading.Thread(target=serve, daemon=True, name="dbprotect-wal-relay")
    server.start()
    try:
        yield (f"printf '%%s %%s\\n' %f %p > {request} && read status < {reply} && exit $status")
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # wake the server thread if it waits for a request
            os.close(os.open(request, os.O_WRONLY | os.O_NONBLOCK))
        server.join(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


def _note_in_server_log(log: Path, exc: Exception) -> None:
    """Append a relayed fetch's failure to the server log as ``dbprotect wal fetch`` would have written it
    (``error[CODE]: message``), so :func:`_log_tail` names it whichever way the WAL was served. Appended,
    never created: the server (another OS user) owns its log."""
    code = exc.code if isinstance(exc, DbprotectError) else DbprotectError.code
    message = exc.one_line() if isinstance(exc, DbprotectError) else " ".join(str(exc).split())
    with contextlib.suppress(OSError):
        descriptor = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(descriptor, f"error[{code}]: {message[:300]}\n".encode(errors="replace"))
        finally:
            os.close(descriptor)


#: Where ``runuser`` (util-linux) is looked for first, by absolute path: the PATH a restore is given (a
#: Dagster run's, a cron job's, ``server_environ``'s) often lacks the sbin folders, and as root a PATH
#: entry is not to be trusted before the system's own folders.
RUNUSER_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _runuser() -> str:
    """The absolute path of ``runuser``: in :data:`RUNUSER_DIRS`, else on this process's PATH; one line
    (DBP005) naming it when it is nowhere."""
    for folder in RUNUSER_DIRS:
        candidate = os.path.join(folder, "runuser")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("runuser")
    if found:
        return os.path.abspath(found)
    raise ToolError(f"runuser was not found (looked in {', '.join(RUNUSER_DIRS)} and PATH): this runs as root, "
                    "and the restored server must run as the 'postgres' OS user through it, since PostgreSQL "
                    "refuses root", hint="install util-linux (it provides runuser), or restore as an unprivileged user")


def _as_user(user: pwd.struct_passwd | None) -> list[str]:
    return [_runuser(), "-u", user.pw_name, "--"] if user else []


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _start_and_promote(data_dir: Path, socket_dir: Path, *, major: int, pg_bin_dir: ToolPlace,
                       user: pwd.struct_passwd | None, server_environ: Mapping[str, str] | None) -> tuple[int, bool]:
    """Start the server on a free port with its socket in ``socket_dir`` (the caller's, which removes it on
    every way out) and wait until it has promoted: (port, still in recovery)."""
    pg_ctl = require_tool_for_server("pg_ctl", major, pg_bin_dir)
    as_user = _as_user(user)
    if user:
        _chown_tree(data_dir, user)
        os.chown(socket_dir, user.pw_uid, user.pw_gid)
    port = free_port()
    options = f"-c port={port} -c listen_addresses='' -k {socket_dir} -c hot_standby=on"
    env = dict(server_environ if server_environ is not None else os.environ)
    log = data_dir / SERVER_LOG
    done = subprocess.run([*as_user, str(pg_ctl.path), "-D", str(data_dir), "-l", str(log), "-o", options,
                           "-w", "-t", str(PROMOTE_TIMEOUT_SECONDS), "start"], capture_output=True, text=True,
                          env=env, timeout=PROMOTE_TIMEOUT_SECONDS + 30)
    if done.returncode != 0:
        raise _classified(ToolError, f"the restored server did not start: {_log_tail(log)}", log)
    dsn = f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"
    deadline = time.monotonic() + PROMOTE_TIMEOUT_SECONDS
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                row = conn.execute("SELECT pg_is_in_recovery(), count(*) FROM pg_class").fetchone()
        except psycopg.OperationalError as exc:
            # a server that opened for reads (consistent) and then stopped recovering short of its target
            # exits: the cause is in its log (e.g. a WAL file restore_command could not fetch), not here
            raise _classified(DatabaseError, does_not_answer(exc, data_dir), log) from None
        in_recovery = bool(row and row[0])
        if not in_recovery:
            return port, False
        if time.monotonic() > deadline:
            raise _classified(ToolError, f"the restored server did not reach its target and promote within "
                                         f"{PROMOTE_TIMEOUT_SECONDS} s: {_log_tail(log)}", log)
        time.sleep(0.2)


def does_not_answer(exc: psycopg.OperationalError, data_dir: Path) -> str:
    """One line for a restored server (data directory ``data_dir``) that does not answer: the connection's
    own first line, then its log's tail (:func:`_log_tail`), where the cause is — a server that stopped
    recovering exits, and a fetch that failed left its ``error[CODE]`` line there. Shared by the restore
    and the drill, so both name the cause the same way."""
    first = (str(exc).strip().splitlines() or ["no reason given"])[0]
    return f"the restored server does not answer: {first}; its log: {_log_tail(data_dir / SERVER_LOG)}"


#: How ``dbprotect wal fetch`` (run by the server as ``restore_command``) reports a failure: its one line on
#: stderr, which the server writes into its log.
_FETCH_ERROR = re.compile(r"^error\[(DBP\d{3})\]: .+$")


#: What :func:`_log_tail` puts before a failed fetch's own line: a caller that reads "recovery ended before
#: the target" as the backup's fault first checks the WAL did not stop coming for an environment reason.
FETCH_FAILED = "restore_command failed: "


def _fetch_failures(log: Path) -> list[tuple[str, str]]:
    """Every ``error[CODE]: …`` line a failed fetch left in the server log, as (code, line), oldest first;
    "not in the store" (which ends every recovery) left out."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [(match.group(1), line) for line in lines
            if (match := _FETCH_ERROR.match(line)) and match.group(1) != NotFoundError.code]


def _classified(environment: type[DbprotectError], message: str, log: Path) -> DbprotectError:
    """A restored server that stopped short, as the error its cause makes it. When the last fetch that
    failed failed on the stored object itself (SHA-256 or size mismatch, does not decrypt or decompress,
    a record that does not parse: :class:`IntegrityError`, DBP007) the backup is damaged: an integrity
    failure, whether the server had opened for reads or not. Anything else — an unreachable store, a
    missing tool, the server itself — stays the ``environment`` error it was: never recorded against the
    backup. The last failure decides: recovery ends at the first WAL file it cannot get."""
    failures = _fetch_failures(log)
    if failures and failures[-1][0] == IntegrityError.code:
        return IntegrityError(message)
    return environment(message)


def _log_tail(log: Path) -> str:
    """The server log's last FATAL/ERROR/PANIC line; and, when ``dbprotect wal fetch`` failed for another
    reason than "not in the store" (which ends every recovery), its own last line too. PostgreSQL reads a
    failed ``restore_command`` as a missing file, so a missing or wrong key surfaces only as "could not
    locate required checkpoint record": the cause is the fetch's line, not the server's."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no server log"
    important = [line for line in lines if "FATAL" in line or "ERROR" in line or "PANIC" in line]
    tail = (important or lines or ["empty server log"])[-1]
    fetch_failures = _fetch_failures(log)
    if fetch_failures:
        return f"{tail}; {FETCH_FAILED}{fetch_failures[-1][1][:300]}"
    return tail


def _stop_quietly(data_dir: Path, major: int, pg_bin_dir: ToolPlace, user: pwd.struct_passwd | None) -> None:
    if not (data_dir / "postmaster.pid").exists():
        return
    with contextlib.suppress(Exception):
        pg_ctl = require_tool_for_server("pg_ctl", major, pg_bin_dir)
        subprocess.run([*_as_user(user), str(pg_ctl.path), "-D", str(data_dir), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)


def stop_restored(result: PitrResult, *, pg_bin_dir: ToolPlace = None) -> None:
    """Stop a server :func:`restore_to_point` started (fast shutdown); its socket folder is removed even
    when stopping fails (``pg_ctl stop`` signals through the pid file, not the socket)."""
    try:
        user = _server_user()
        pg_ctl = require_tool_for_server("pg_ctl", result.major, pg_bin_dir)
        subprocess.run([*_as_user(user), str(pg_ctl.path), "-D", str(result.data_dir), "-m", "fast", "stop"],
                       capture_output=True, timeout=120)
    finally:
        shutil.rmtree(result.socket_dir, ignore_errors=True)
