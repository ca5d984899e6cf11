"""The WAL stream: ``pg_receivewal`` into a private spool, each segment → zstd → age → store, then removed.

Layout (``docs/store-format.md``)::

    <database>/continuous/wal/<timeline>/<segment>.zst.age       a completed segment
    <database>/continuous/wal/<timeline>/<segment>.json          its record; written last, write-once
    <database>/continuous/wal/partial/<segment>.json             the newest partial segment's record
    <database>/continuous/wal/partial/<segment>.<token>.zst.age  the object that record names
    <database>/continuous/wal/history/<tli>.history.zst.age      timeline history files (+ .json)

Why it is shaped this way:

* **No loss across a crash.** The receiver streams through a replication slot: the server keeps WAL
  until pg_receivewal has flushed it to the spool. A segment leaves the spool only after its object and
  record are in the store. A restarted receiver ships what the spool holds first, and pg_receivewal
  resumes from the spool's ``.partial`` (or the slot's ``restart_lsn`` when the spool is empty).
* **No duplicates.** A completed segment's record is write-once and carries the SHA-256 of the
  plaintext: shipping the same segment again (a crash between the store and the spool removal) finds
  the record, compares, and only removes the spool file. Different content under the same name is an
  :class:`IntegrityError`, never an overwrite.
* **RPO bound.** The current ``.partial`` segment is shipped at least every ``partial_upload_seconds``
  when it changed. Its record points at a fresh object (a random token) so a reader never sees a
  record and an object of two different ships; the superseded object is deleted afterwards.
* **Gaps and timeline switches are visible**: :func:`wal_gaps` lists missing segment ranges per
  timeline; segments of each timeline live in their own folder.
* **One receiver per spool** (an ``flock``), and pg_receivewal dies with its supervisor
  (``PR_SET_PDEATHSIG``): a receiver killed with SIGKILL leaves no orphan streaming on the slot.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
import pyrage

from dbprotect.core.backup.pipeline import READ_SIZE, StderrTail, encrypt_to_store
from dbprotect.core.continuous.base import format_lsn, parse_lsn
from dbprotect.core.continuous.checks import check_server
from dbprotect.core.continuous.objects import decrypt_object, read_json_record
from dbprotect.core.crypto import parse_recipients
from dbprotect.core.errors import DbprotectError, IntegrityError, NotFoundError, ToolError
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.pg.tools import ToolPlace, connect, require_tool_for_server, split_password, tool_env
from dbprotect.core.store import Storage
from dbprotect.core.store.base import ObjectNotFound

SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
HISTORY_NAME = re.compile(r"^[0-9A-F]{8}\.history$")
DEFAULT_SEGMENT_SIZE = 16 << 20
WAL_PAGE = 8192
LOCK_FILE = ".receiver.lock"
PR_SET_PDEATHSIG = 1
Log = Callable[[str], None]


def wal_prefix(database: str) -> str:
    return f"{database}/continuous/wal"


def segment_object_key(database: str, name: str) -> str:
    return f"{wal_prefix(database)}/{name[:8]}/{name}.zst.age"


def segment_record_key(database: str, name: str) -> str:
    return f"{wal_prefix(database)}/{name[:8]}/{name}.json"


def partial_record_key(database: str, name: str) -> str:
    return f"{wal_prefix(database)}/partial/{name}.json"


def progress_record_key(database: str) -> str:
    """A newer commit-time sample for the newest completed segment, while no partial follows it."""
    return f"{wal_prefix(database)}/progress.json"


def history_object_key(database: str, name: str) -> str:
    return f"{wal_prefix(database)}/history/{name}.zst.age"


def history_record_key(database: str, name: str) -> str:
    return f"{wal_prefix(database)}/history/{name}.json"


def segment_number(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The segment's position in the WAL (per timeline): log * segments-per-log + seg."""
    return int(name[8:16], 16) * (0x100000000 // segment_size) + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


@dataclass(frozen=True)
class SegmentRecord:
    """One stored WAL file: which, where in the WAL, and the hashes that prove it."""

    segment: str
    kind: str  # "segment" | "partial" | "history"
    timeline: int
    start_lsn: str
    end_lsn: str
    plain_bytes: int
    plain_sha256: str
    object: str  # the object's key
    size: int
    sha256: str
    shipped_at: str
    #: The server's clock when a commit-time sample was taken whose flush LSN (``safe_lsn``) this object
    #: and those before it hold: every commit acknowledged by then is in the store (measured RPO,
    #: :mod:`dbprotect.core.continuous.rpo`). None when no sample was covered (records before it existed).
    safe_time: str | None = None
    safe_lsn: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_store(cls, storage: Storage, key: str, *, database: str, name: str) -> SegmentRecord:
        """Read and check a record (untrusted): it must name this segment and an object under this database."""
        value = read_json_record(storage, key)
        try:
            record = cls(**value)
        except TypeError as exc:
            raise IntegrityError(f"{key}: not a WAL record ({exc})") from None
        if record.segment != name or not record.object.startswith(wal_prefix(database) + "/") or ".." in record.object:
            raise IntegrityError(f"{key}: record names {record.segment} at {record.object}, not its own place")
        if not isinstance(record.size, int) or not isinstance(record.sha256, str):
            raise IntegrityError(f"{key}: object size or SHA-256 missing")
        if (record.safe_time is None) != (record.safe_lsn is None) or not all(
                isinstance(v, str | None) for v in (record.safe_time, record.safe_lsn)):
            raise IntegrityError(f"{key}: commit-time sample incomplete")
        return record

    def sample(self) -> tuple[datetime, int] | None:
        """The commit-time sample as (server time, flush LSN), checked (:class:`IntegrityError` for a time
        without a zone or anything that is not a time or an LSN); None when the record holds none. The one
        reading of a stored sample: the measured RPO and chain retention's anchor both judge by it."""
        if self.safe_time is None or self.safe_lsn is None:
            return None
        when = parse_record_time(self.safe_time)
        assert when is not None
        return when, parse_lsn(self.safe_lsn)


def parse_record_time(text: object) -> datetime | None:
    """A time read from a store record (untrusted): an aware ISO 8601 time, or None for None;
    :class:`IntegrityError` for anything else, a naive time included (whose clock would it be?)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise IntegrityError(f"{text!r} is not a time") from None
    if value.tzinfo is None:
        raise IntegrityError(f"{text!r} has no time zone")
    return value


class _PlainHasher:
    """A file being read for shipping: hashes and counts the plaintext as it passes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.bytes = 0
        self.last_nonzero_page_end = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if size and size > 0 else READ_SIZE)
        if data:
            self._hash.update(data)
            stripped = data.rstrip(b"\0")
            if stripped:
                end = self.bytes + len(stripped)
                self.last_nonzero_page_end = -(-end // WAL_PAGE) * WAL_PAGE
            self.bytes += len(data)
        return data

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _encrypt_file_to(storage: Storage, path: Path, key: str,
                     recipients: list[pyrage.x25519.Recipient]) -> tuple[_PlainHasher, int, str]:
    with open(path, "rb") as handle, storage.open_writer(key) as writer:
        plain = _PlainHasher(handle)
        stored = encrypt_to_store(plain, writer, recipients, storage=storage, zstd_level=1)
    return plain, stored.stored_bytes, stored.sha256


def _plain_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat()


#: Given the LSN an object is known to hold through, the newest commit-time sample it covers
#: (server time, flush LSN), or None.
Coverage = Callable[[int], "tuple[str, str] | None"]


def ship_completed(storage: Storage, database: str, path: Path, recipients: list[pyrage.x25519.Recipient],
                   segment_size: int = DEFAULT_SEGMENT_SIZE,
                   coverage: Coverage | None = None) -> tuple[SegmentRecord, bool]:
    """Store one completed segment (or history file) from the spool; (record, whether it was new).

    Already stored with the same plaintext: nothing is written (a restart after a crash between the
    store and the spool removal). Stored with other content: :class:`IntegrityError`.
    """
    name = path.name
    history = bool(HISTORY_NAME.match(name))
    record_key = history_record_key(database, name) if history else segment_record_key(database, name)
    object_key = history_object_key(database, name) if history else segment_object_key(database, name)
    with contextlib.suppress(ObjectNotFound):
        existing = SegmentRecord.from_store(storage, record_key, database=database, name=name)
        if existing.plain_sha256 != _plain_sha256(path):
            raise IntegrityError(f"WAL {name} is stored already with other content: a timeline conflict or a "
                                 "second server streaming into this database's folder; nothing was replaced")
        if not history:
            _drop_partials(storage, database, name)  # a crash may have come before the first run dropped them
        return existing, False
    plain, stored, sha = _encrypt_file_to(storage, path, object_key, recipients)
    if history:
        timeline, start, end = int(name[:8], 16), 0, 0
    else:
        timeline = int(name[:8], 16)
        start = segment_number(name, segment_size) * segment_size
        end = start + plain.bytes
    safe = coverage(end) if coverage is not None and not history else None
    record = SegmentRecord(segment=name, kind="history" if history else "segment", timeline=timeline,
                           start_lsn=format_lsn(start), end_lsn=format_lsn(end), plain_bytes=plain.bytes,
                           plain_sha256=plain.hexdigest, object=object_key, size=stored, sha256=sha,
                           shipped_at=_now(), safe_time=safe[0] if safe else None,
                           safe_lsn=safe[1] if safe else None)
    if not storage.put_if_absent(record_key, record.to_json()):
        existing = SegmentRecord.from_store(storage, record_key, database=database, name=name)
        if existing.plain_sha256 != record.plain_sha256:
            raise IntegrityError(f"WAL {name}: another writer stored other content at the same moment")
        return existing, False
    if not history:
        _drop_partials(storage, database, name)  # the partial this segment supersedes
    return record, True


def _drop_partials(storage: Storage, database: str, name: str, *, keep: str | None = None) -> None:
    """Delete segment ``name``'s partial objects but ``keep`` (the one its partial record names), and, when
    nothing is kept (the segment is stored complete), that record first.

    Why by listing and not by the previous record: a ship or a drop killed between its two store calls
    leaves an object no record names, which only a listing finds; the next ship of that segment removes it.
    """
    if keep is None:
        storage.delete(partial_record_key(database, name))
    for info in storage.list(f"{wal_prefix(database)}/partial/{name}."):
        if info.key != keep and info.key.endswith(".zst.age"):
            storage.delete(info.key)


def ship_partial(storage: Storage, database: str, path: Path, recipients: list[pyrage.x25519.Recipient],
                 segment_size: int = DEFAULT_SEGMENT_SIZE, coverage: Coverage | None = None) -> SegmentRecord:
    """Store the current ``.partial`` segment under a fresh object, then point its record at it.

    ``coverage`` is asked with the recorded end (rounded up to a WAL page, so the caller bounds it by
    what pg_receivewal had reported written before the file was read)."""
    name = path.name.removesuffix(".partial")
    record_key = partial_record_key(database, name)
    object_key = f"{wal_prefix(database)}/partial/{name}.{secrets.token_hex(6)}.zst.age"
    plain, stored, sha = _encrypt_file_to(storage, path, object_key, recipients)
    start = segment_number(name, segment_size) * segment_size
    safe = coverage(start + plain.last_nonzero_page_end) if coverage is not None else None
    record = SegmentRecord(segment=name, kind="partial", timeline=int(name[:8], 16), start_lsn=format_lsn(start),
                           end_lsn=format_lsn(start + plain.last_nonzero_page_end), plain_bytes=plain.bytes,
                           plain_sha256=plain.hexdigest, object=object_key, size=stored, sha256=sha,
                           shipped_at=_now(), safe_time=safe[0] if safe else None,
                           safe_lsn=safe[1] if safe else None)
    storage.put_bytes(record_key, record.to_json())
    _drop_partials(storage, database, name, keep=object_key)
    return record


def stored_segments(storage: Storage, database: str) -> dict[int, list[str]]:
    """Completed segments with a record, by timeline, sorted."""
    found: dict[int, list[str]] = {}
    for info in storage.list(wal_prefix(database) + "/"):
        parts = info.key.split("/")
        if len(parts) == 5 and re.fullmatch(r"[0-9A-F]{8}", parts[3]) and parts[4].endswith(".json"):
            name = parts[4].removesuffix(".json")
            if SEGMENT_NAME.match(name) and name[:8] == parts[3]:
                found.setdefault(int(parts[3], 16), []).append(name)
    return {timeline: sorted(names) for timeline, names in sorted(found.items())}


def wal_gaps(storage: Storage, database: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[tuple[str, str]]:
    """Missing completed segments inside each timeline's stored range: (first missing, last missing)."""
    gaps = []
    for timeline, names in stored_segments(storage, database).items():
        numbers = [segment_number(name, segment_size) for name in names]
        for before, after in itertools.pairwise(numbers):
            if after > before + 1:
                gaps.append((segment_name(timeline, before + 1, segment_size),
                             segment_name(timeline, after - 1, segment_size)))
    return gaps


def fetch_wal(storage: Storage, database: str, name: str, identity: pyrage.x25519.Identity, dest: Path) -> str:
    """Decrypt one WAL file for ``restore_command``: a completed segment, else the newest partial of it,
    else a history file. Written beside ``dest`` and renamed into place only once its SHA-256 matched.
    Returns what was served ("segment", "partial", "history"); :class:`NotFoundError` when none is stored
    (recovery then ends at the last segment the store has).
    """
    if HISTORY_NAME.match(name):
        candidates = [history_record_key(database, name)]
    elif SEGMENT_NAME.match(name):
        candidates = [segment_record_key(database, name), partial_record_key(database, name)]
    else:
        raise NotFoundError(f"{name!r} is not a WAL segment or history file name")
    for key in candidates:
        try:
            record = SegmentRecord.from_store(storage, key, database=database, name=name)
        except ObjectNotFound:
            continue
        temporary = dest.with_name(f".{dest.name}.dbprotect-{secrets.token_hex(4)}")
        try:
            with open(temporary, "xb") as out:
                decrypt_object(storage, record.object, size=record.size, sha256=record.sha256, identity=identity,
                               out=out, compressed=True, what=f"WAL {name}")
            os.replace(temporary, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        return record.kind
    raise NotFoundError(f"WAL {name} of {database} is not in the store")


@dataclass(frozen=True)
class WalVerification:
    checked: int
    problems: list[str]
    gaps: list[tuple[str, str]]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.gaps


def verify_wal(storage: Storage, database: str, identity: pyrage.x25519.Identity) -> WalVerification:
    """Every stored completed segment: record readable, object's size and SHA-256, decrypts and
    decompresses to the recorded plaintext length; and no gap inside a timeline."""
    problems = []
    checked = 0
    for _timeline, names in stored_segments(storage, database).items():
        for name in names:
            checked += 1
            try:
                record = SegmentRecord.from_store(storage, segment_record_key(database, name), database=database,
                                                  name=name)
                counter = _CountingSink()
                decrypt_object(storage, record.object, size=record.size, sha256=record.sha256, identity=identity,
                               out=counter, compressed=True, what=f"WAL {name}")  # type: ignore[arg-type]
                if counter.bytes != record.plain_bytes or counter.hexdigest != record.plain_sha256:
                    problems.append(f"WAL {name}: decrypted content differs from its record")
            except (IntegrityError, ObjectNotFound) as exc:
                problems.append(exc.one_line())
    return WalVerification(checked, problems, wal_gaps(storage, database))


class _CountingSink:
    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux), so no orphan holds the slot."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class CommitSampler:
    """Commit-time samples for the measured RPO, taken on the source server by the receiver.

    A sample is the server's ``clock_timestamp()`` T, then (a later statement) its
    ``pg_current_wal_flush_lsn()`` L: every commit acknowledged by T was flushed by the time L was
    read, so an object that holds the WAL through L holds every such commit. An object's record
    carries the newest sample it covers (``safe_time``/``safe_lsn``); nothing is guessed from the
    receiver's own clock. Asynchronous commits acknowledged before their flush are not covered by
    this bound (they are not durable on the server either).

    For a ``.partial`` the end we can vouch for is what pg_receivewal reported *written* (its
    ``write_lsn`` in ``pg_stat_replication``) before the file was read: the recorded end rounds up to
    a WAL page. A failed sample leaves the coverage where it was (older, never newer).
    """

    KEEP = 900

    def __init__(self, dsn: str, slot: str, log: Log, interval: float = 1.0) -> None:
        self._dsn, self._slot, self._log, self._interval = dsn, slot, log, interval
        self._conn: Any = None
        self._samples: collections.deque[tuple[str, int]] = collections.deque(maxlen=self.KEEP)
        self._last = 0.0
        self.written_lsn: int | None = None
        self._warned = False

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._dsn, autocommit=True, application_name="dbprotect-wal-sampler")
        return self._conn.execute(sql, params).fetchone()

    def sample(self, *, force: bool = False) -> None:
        """Take a sample (at most one per ``interval`` unless ``force``) and read the receiver's written LSN."""
        if not force and time.monotonic() - self._last < self._interval:
            return
        self._last = time.monotonic()
        try:
            at = self._query("SELECT clock_timestamp()")[0]
            row = self._query(
                "SELECT pg_current_wal_flush_lsn()::text, (SELECT r.write_lsn::text FROM pg_replication_slots s "
                "JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = %s)", (self._slot,))
        except (DbprotectError, psycopg.Error) as exc:
            if not self._warned:
                self._log(f"commit-time sample failed (the measured RPO ages until it works): "
                          f"{' '.join(str(exc).split())[:200]}")
                self._warned = True
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            return
        self._warned = False
        self._samples.append((at.astimezone(UTC).isoformat(), parse_lsn(row[0])))
        self.written_lsn = parse_lsn(row[1]) if row[1] else None

    def covered(self, end: int) -> tuple[str, str] | None:
        """The newest sample whose flush LSN ``end`` reaches."""
        for at, lsn in reversed(self._samples):
            if lsn <= end:
                return at, format_lsn(lsn)
        return None

    def covered_written(self, end: int) -> tuple[str, str] | None:
        """:meth:`covered`, bounded by what pg_receivewal had reported written (a ``.partial``'s end)."""
        return None if self.written_lsn is None else self.covered(min(end, self.written_lsn))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()


def refresh_partial_coverage(storage: Storage, database: str, record: SegmentRecord,
                             safe: tuple[str, str]) -> SegmentRecord:
    """Rewrite the current partial's record with a newer covered sample (same object): an idle server
    writes no WAL, and its RPO must not age while nothing new needs shipping."""
    updated = SegmentRecord(**{**asdict(record), "safe_time": safe[0], "safe_lsn": safe[1], "shipped_at": _now()})
    storage.put_bytes(partial_record_key(database, record.segment), updated.to_json())
    return updated


def write_progress(storage: Storage, database: str, record: SegmentRecord, safe: tuple[str, str]) -> None:
    """Say that the newest completed segment ``record`` still holds everything through a newer sample.

    After a WAL switch on an idle server (every base backup ends with one) no partial follows the
    newest segment, and its write-once record cannot be refreshed; this small record can. The reader
    trusts it only for the segment it names and only within that segment's recorded end.
    """
    storage.put_bytes(progress_record_key(database), json.dumps(
        {"segment": record.segment, "timeline": record.timeline, "end_lsn": record.end_lsn,
         "safe_time": safe[0], "safe_lsn": safe[1], "written_at": _now()}, sort_keys=True).encode())


def newest_completed(storage: Storage, database: str) -> SegmentRecord | None:
    """The newest completed segment's record of the newest timeline (None when none is readable)."""
    segments = stored_segments(storage, database)
    if not segments:
        return None
    name = segments[max(segments)][-1]
    try:
        return SegmentRecord.from_store(storage, segment_record_key(database, name), database=database, name=name)
    except (ObjectNotFound, IntegrityError):
        return None


@dataclass
class ReceiverStats:
    segments_shipped: int = 0
    duplicates_skipped: int = 0
    partials_shipped: int = 0
    restarts: int = 0
    last_partial: SegmentRecord | None = None
    last_segment: SegmentRecord | None = None
    last_progress: str | None = None


def receive_wal(*, database: str, dsn: str, storage: Storage, recipients: list[str], spool: Path, slot: str,
                partial_upload_seconds: float, synchronous: bool = False, incremental: bool = False,
                pg_bin_dir: ToolPlace = None, stop: threading.Event, log: Log = lambda line: None,
                poll_seconds: float = 0.5) -> ReceiverStats:
    """Run the receiver until ``stop`` is set: supervise pg_receivewal and ship from the spool.

    Checks the server first (an unsafe setting is a refusal), creates ``slot`` when missing, takes the
    spool's lock (one receiver per spool), ships what a previous run left, then loops.
    """
    age_recipients = parse_recipients(recipients)
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(spool, 0o700)
    lock = open(spool / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole run)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ToolError(f"another WAL receiver runs on the spool {spool}",
                            hint="one receiver per database: stop the other one first") from None
        with contextlib.closing(connect(dsn, autocommit=True, application_name="dbprotect-wal")) as conn:
            setup = check_server(conn, incremental=incremental, label=database)
            row = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()
            segment_size = int(row[0]) if row else DEFAULT_SEGMENT_SIZE
        tool = require_tool_for_server("pg_receivewal", setup.server_major, pg_bin_dir, dsn=dsn)
        dsn_without_password, password = split_password(dsn)
        env = tool_env(password, PGAPPNAME="dbprotect-pg_receivewal")
        base_args = [str(tool.path), "--no-password", f"--dbname={dsn_without_password}", f"--slot={slot}"]
        created = subprocess.run([*base_args, "--create-slot", "--if-not-exists"], capture_output=True, text=True,
                                 env=env, timeout=60)
        if created.returncode != 0:
            reason = (created.stderr.strip().splitlines() or [""])[-1].replace(dsn, mask_dsn(dsn))
            raise ToolError(f"pg_receivewal cannot create the slot {slot}: {reason}")
        stats = ReceiverStats()
        sampler = CommitSampler(dsn, slot, log)
        stats.last_segment = newest_completed(storage, database)
        _report_slot_gap(dsn, storage, database, slot, segment_size, spool, log)
        _ship_spool(storage, database, spool, age_recipients, segment_size, stats, log, sampler)
        stream_args = [*base_args, f"--directory={spool}", "--no-loop", "--status-interval=1"]
        if synchronous:
            stream_args.append("--synchronous")
        proc: subprocess.Popen[bytes] | None = None
        stderr: StderrTail | None = None
        next_partial = time.monotonic() + partial_upload_seconds
        last_partial_state: tuple[str, int, int] | None = None
        backoff = 1.0
        restart_at = 0.0
        try:
            while not stop.is_set():
                if proc is None and time.monotonic() >= restart_at:
                    proc = subprocess.Popen(stream_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
                    assert proc.stderr is not None
                    stderr = StderrTail(proc.stderr)
                if proc is not None and proc.poll() is not None:
                    reason = stderr.last_error().removeprefix("pg_receivewal: ") if stderr else ""
                    log(f"pg_receivewal exited ({proc.returncode}): {reason.replace(dsn, mask_dsn(dsn))}; "
                        f"restarting in {backoff:.0f} s")
                    stats.restarts += 1
                    proc, restart_at = None, time.monotonic() + backoff
                    backoff = min(backoff * 2, 30.0)
                elif proc is not None:
                    backoff = 1.0
                sampler.sample()
                _ship_spool(storage, database, spool, age_recipients, segment_size, stats, log, sampler)
                if time.monotonic() >= next_partial:
                    sampler.sample(force=True)
                    last_partial_state = _ship_current_partial(storage, database, spool, age_recipients,
                                                               segment_size, stats, last_partial_state, sampler)
                    next_partial = time.monotonic() + partial_upload_seconds
                stop.wait(poll_seconds)
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        sampler.sample(force=True)
        _ship_spool(storage, database, spool, age_recipients, segment_size, stats, log, sampler)
        _ship_current_partial(storage, database, spool, age_recipients, segment_size, stats, last_partial_state,
                              sampler)
        sampler.close()
        return stats
    finally:
        lock.close()


def _ship_spool(storage: Storage, database: str, spool: Path, recipients: list[pyrage.x25519.Recipient],
                segment_size: int, stats: ReceiverStats, log: Log, sampler: CommitSampler | None = None) -> None:
    """Ship every completed file in the spool, oldest first, removing each once it is stored."""
    names = sorted(p.name for p in spool.iterdir() if SEGMENT_NAME.match(p.name) or HISTORY_NAME.match(p.name))
    for name in sorted(names, key=lambda n: (not HISTORY_NAME.match(n), n)):
        path = spool / name
        record, new = ship_completed(storage, database, path, recipients, segment_size,
                                     sampler.covered if sampler is not None else None)
        if record.kind == "segment" and (stats.last_segment is None
                                         or (record.timeline, record.segment) >= (stats.last_segment.timeline,
                                                                                stats.last_segment.segment)):
            stats.last_segment = record
        if new:
            stats.segments_shipped += 1
            log(f"shipped {name} ({record.start_lsn}-{record.end_lsn})")
        else:
            stats.duplicates_skipped += 1
        path.unlink()


def _ship_current_partial(storage: Storage, database: str, spool: Path, recipients: list[pyrage.x25519.Recipient],
                          segment_size: int, stats: ReceiverStats, last: tuple[str, int, int] | None,
                          sampler: CommitSampler | None = None) -> tuple[str, int, int] | None:
    partials = sorted(p for p in spool.iterdir() if p.name.endswith(".partial") and SEGMENT_NAME.match(p.name[:24]))
    if not partials:
        newest = stats.last_segment
        if sampler is not None and newest is not None:
            safe = sampler.covered(parse_lsn(newest.end_lsn))
            if safe is not None and safe[0] != (stats.last_progress or newest.safe_time):
                write_progress(storage, database, newest, safe)
                stats.last_progress = safe[0]
        return last
    path = partials[-1]
    try:
        info = path.stat()
    except FileNotFoundError:  # completed and renamed meanwhile: the next spool pass ships it
        return last
    state = (path.name, info.st_mtime_ns, info.st_size)
    if state == last:
        shipped = stats.last_partial
        if sampler is not None and shipped is not None and shipped.segment == path.name[:24]:
            safe = sampler.covered_written(parse_lsn(shipped.end_lsn))
            if safe is not None and safe[0] != shipped.safe_time:
                stats.last_partial = refresh_partial_coverage(storage, database, shipped, safe)
        return last
    try:
        stats.last_partial = ship_partial(storage, database, path, recipients, segment_size,
                                          sampler.covered_written if sampler is not None else None)
    except FileNotFoundError:
        return last
    stats.partials_shipped += 1
    return state


def _report_slot_gap(dsn: str, storage: Storage, database: str, slot: str, segment_size: int, spool: Path,
                     log: Log) -> None:
    """Say so when the slot can no longer deliver what follows the newest stored segment (a gap)."""
    with contextlib.closing(connect(dsn, autocommit=True, application_name="dbprotect-wal")) as conn:
        row = conn.execute("SELECT restart_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
        timeline_row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    if row is None:
        return
    restart_lsn, wal_status = row
    if wal_status == "lost":
        log(f"GAP: slot {slot} is lost (max_slot_wal_keep_size exceeded): WAL after the newest stored segment "
            "is gone; take a new base backup")
        return
    timeline = int(timeline_row[0]) if timeline_row else 1
    stored = stored_segments(storage, database).get(timeline, [])
    in_spool = any(SEGMENT_NAME.match(p.name[:24]) for p in spool.iterdir())
    if not stored or in_spool or restart_lsn is None:
        return
    newest = segment_number(stored[-1], segment_size)
    resumes = parse_lsn(restart_lsn) // segment_size
    if resumes > newest + 1:
        log(f"GAP: the store ends at {stored[-1]} but slot {slot} resumes at "
            f"{segment_name(timeline, resumes, segment_size)}: segments in between are missing")


def spool_folder(base: Path, database: str) -> Path:
    return base / database


def records_json(records: list[SegmentRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
