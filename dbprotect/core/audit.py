"""The audit log: an append-only, hash-chained record of what dbprotect did, kept in the backup store.

Every backup, verification, restore, drill, deletion and refused action becomes one record, stored
next to the backups (the store, not Dagster, is the source of truth, and outlives Dagster's
database). Object stores cannot append, so each record is its own small object at its sequence
number::

    _audit/<seq:012d>.json

written with ``put_if_absent`` (``O_EXCL``/``link`` on a filesystem, ``If-None-Match: *`` on S3):
a record can never be overwritten, and of two writers racing for one sequence number exactly one
wins; the loser reads the new end of the log and tries the next number. A listing returns the
log in order. Logs written before format 2's sequence keys used
``_audit/<seq:012d>-<YYYYMMDDTHHMMSSZ>-<nonce>.json``; those keys are still read.

Each record holds ``seq``, ``at``, ``actor`` (a person or a schedule), ``action`` (backup, verify,
restore, drill, delete, refused, ...), ``database``, ``target`` (usually a backup id),
``outcome``, ``detail``, ``data`` (structured extras), ``prev_hash``, ``merged`` and ``hash``:

- ``hash`` = SHA-256 of the record's canonical JSON (sorted keys, no spaces, UTF-8) without the
  ``hash`` field — so it covers the links too;
- ``prev_hash`` = the ``hash`` of the previous record (64 zeros for the first), i.e. the SHA-256
  of its canonical JSON; ``seq`` is that record's ``seq`` + 1;
- ``merged`` = hashes of other records that were also at the end of the log (normally empty).

Concurrency. Two writers that append at the same moment both read the same end of the log and
both try ``seq`` N: one creates it, the other's ``put_if_absent`` fails, so it reads the end again
and writes ``seq`` N+1 linked to the winner. The chain stays a line and no record is lost. Logs
from before sequence keys may hold *siblings* (two records with one ``seq`` under random keys):
an append links to every record nobody links to yet (the first in ``prev_hash``, the others in
``merged``), joining the branches as a git merge does, so removing either is still seen.

:func:`verify_chain` recomputes everything and names what it finds: an *edited* record no longer
matches its hash; a *missing* record leaves a gap in the sequence or a link to nothing; a record
rewritten with a fresh hash leaves a *broken link* in the record after it; a record moved to
another key carries a ``seq`` that disagrees with its key (*reordered*).

Anchors. Removing the *newest* records (truncation), or rewriting the tail with freshly computed
hashes, leaves a log that is valid in itself. So every backup's manifest (``audit_head``) records
the head of the log (seq, hash) when it was written: :func:`collect_anchors` reads the newest few
manifests of each database, and
:func:`verify_chain` requires each anchored record to still be there with that hash (else
*truncated*, or *rewritten*). ``audit --verify --expect-head SEQ:HASH`` checks a head kept
outside the store the same way.

A damaged record (empty, not JSON, missing fields) never stops an append: the end of the log is
found among the readable records, the new record is still written after the damaged one's
sequence number (linked to the newest readable record), and :func:`verify_chain` names the
damaged one (*unreadable*) and accepts a link that passes over only unreadable records.

Limits, stated plainly:

- Records newer than the newest anchor can be removed unnoticed unless a head kept elsewhere is
  passed (``known_head`` / ``--expect-head``). Someone who can write the store can rewrite the log
  *and* every manifest and check record; only an outside copy of the head (or object lock on the
  bucket) stops that.
- An append looks at the newest :data:`MERGE_WINDOW` sequence numbers for records to link; a
  sibling that lands later than that (a writer stalled for several appends) stays unlinked: it
  is still read and verified, but its removal would look like a truncation.
- Finding the end of the log lists every record key (one LIST per 1,000 records on S3) and reads
  only the newest few records.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dbprotect.core.errors import DbprotectError, StorageError
from dbprotect.core.pg.dsn import scrub_text, scrub_value
from dbprotect.core.store import Storage

AUDIT_PREFIX = "_audit/"
GENESIS_HASH = "0" * 64
#: How many of the newest sequence numbers an append searches for records to link.
MERGE_WINDOW = 3
#: ``_audit/<seq>.json``, or the random-keyed form of logs written before it.
_KEY = re.compile(r"^_audit/(\d{12})(?:-\d{8}T\d{6}Z-[0-9a-f]{8})?\.json$")
#: How many sequence numbers an append tries before giving up (each lost race costs one).
APPEND_ATTEMPTS = 50


@dataclass(frozen=True)
class AuditEvent:
    """What happened, as the caller states it; :func:`append` adds seq and hashes."""

    at: datetime
    actor: str
    action: str
    database: str
    outcome: str
    target: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """One stored record, as read back (``at`` kept as its stored ISO text so hashes reproduce)."""

    key: str
    seq: int
    at: str
    actor: str
    action: str
    database: str
    target: str
    outcome: str
    detail: str
    data: dict[str, Any]
    prev_hash: str
    merged: tuple[str, ...]
    hash: str

    @property
    def links(self) -> tuple[str, ...]:
        return (self.prev_hash, *self.merged)

    def line(self) -> str:
        target = f" {self.target}" if self.target else ""
        detail = f" — {self.detail}" if self.detail else ""
        return (f"{self.seq:>6} {self.at} {self.actor:<18} {self.action:<8} {self.database}{target}: "
                f"{self.outcome}{detail}")


def canonical_json(body: dict[str, Any]) -> bytes:
    """The bytes a record's hash is taken over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in body.items() if k != "hash"})).hexdigest()


def record_key(seq: int) -> str:
    """The one key a record with sequence number ``seq`` may have (written once, never replaced)."""
    return f"{AUDIT_PREFIX}{seq:012d}.json"


def _key_seq(key: str) -> int | None:
    match = _KEY.match(key)
    return int(match.group(1)) if match else None


def _keys(storage: Storage) -> list[str]:
    return [info.key for info in storage.list(AUDIT_PREFIX) if info.key.endswith(".json")]


#: What a damaged record raises while being read (empty, not UTF-8, not JSON, wrong field types).
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)


def _load(storage: Storage, key: str) -> tuple[AuditRecord, dict[str, Any]]:
    raw = json.loads(storage.get_bytes(key))
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    record = AuditRecord(
        key=key, seq=int(raw["seq"]), at=str(raw["at"]), actor=str(raw["actor"]), action=str(raw["action"]),
        database=str(raw["database"]), target=str(raw.get("target", "")), outcome=str(raw["outcome"]),
        detail=str(raw.get("detail", "")), data=dict(raw.get("data", {})), prev_hash=str(raw["prev_hash"]),
        merged=tuple(str(h) for h in raw.get("merged", [])), hash=str(raw["hash"]))
    return record, raw


def _open_ends(storage: Storage) -> tuple[int, list[AuditRecord]]:
    """The newest seq and the records nobody links to yet, newest and smallest key first."""
    keyed = [(seq, key) for key in _keys(storage) if (seq := _key_seq(key)) is not None]
    if not keyed:
        return 0, []
    newest = max(seq for seq, _ in keyed)
    window = []
    for seq, key in keyed:
        if seq > newest - MERGE_WINDOW:
            try:
                window.append(_load(storage, key))
            except _UNREADABLE:
                continue  # damaged: verify_chain names it; the log goes on from the readable records
    if not window:
        # the newest records are all damaged: link to the newest readable record before them
        for _seq, key in sorted(keyed, reverse=True):
            try:
                window = [_load(storage, key)]
                break
            except _UNREADABLE:
                continue
    linked = {h for record, _raw in window for h in record.links}
    # an edited record (content no longer matches its hash) is never linked to: verify names it
    ends = [r for r, raw in window if r.hash not in linked and record_hash(raw) == r.hash]
    return newest, sorted(ends, key=lambda r: (-r.seq, r.key))


def append(storage: Storage, event: AuditEvent) -> AuditRecord:
    """Add one record after the end of the log, at the next sequence number, linking every record
    not yet linked.

    Written with ``put_if_absent`` at its sequence key: it never replaces a record. Losing a race
    for a sequence number (another writer appended first) means reading the end again and trying
    the next one. Never deletes. Raises :class:`~dbprotect.core.errors.StorageError` when the store
    fails or after :data:`APPEND_ATTEMPTS` lost races.
    """
    for _attempt in range(APPEND_ATTEMPTS):
        newest, ends = _open_ends(storage)
        parent = ends[0] if ends else None
        body: dict[str, Any] = {
            # after every key in the log, damaged ones included (their key is taken for ever)
            "seq": max(newest, parent.seq if parent else 0) + 1, "at": event.at.astimezone(UTC).isoformat(),
            "actor": event.actor, "action": event.action, "database": event.database, "target": event.target,
            "outcome": event.outcome, "detail": event.detail, "data": event.data,
            "prev_hash": parent.hash if parent else GENESIS_HASH, "merged": [r.hash for r in ends[1:]],
        }
        body["hash"] = record_hash(body)
        key = record_key(body["seq"])
        if storage.put_if_absent(key, json.dumps(body, indent=2, ensure_ascii=False).encode() + b"\n"):
            return _load_body(key, body)
    raise StorageError(f"{storage.uri}: could not append to the audit log: {APPEND_ATTEMPTS} other appends won "
                       "the race for the next sequence number", hint="run the command again")


def audit_head(storage: Storage) -> dict[str, Any] | None:
    """The log's current head as an anchor (``{"seq": N, "hash": ...}``), None for an empty log.

    What manifests and check records store: whoever later finds the log without that record knows
    its tail was removed or rewritten. A store too broken to list gives None (the backup or check
    being written matters more than its anchor; the write itself will report the store).
    """
    try:
        _newest, ends = _open_ends(storage)
    except DbprotectError:
        return None
    if not ends:
        return None
    return {"seq": ends[0].seq, "hash": ends[0].hash}


def _load_body(key: str, body: dict[str, Any]) -> AuditRecord:
    return AuditRecord(key=key, seq=body["seq"], at=body["at"], actor=body["actor"], action=body["action"],
                       database=body["database"], target=body["target"], outcome=body["outcome"],
                       detail=body["detail"], data=body["data"], prev_hash=body["prev_hash"],
                       merged=tuple(body["merged"]), hash=body["hash"])


def read(storage: Storage) -> Iterator[AuditRecord]:
    """Every readable record in key (= sequence) order; unreadable ones are skipped (verify names them)."""
    for key in _keys(storage):
        try:
            yield _load(storage, key)[0]
        except _UNREADABLE:
            continue


@dataclass(frozen=True)
class ChainProblem:
    seq: int | None
    key: str | None
    kind: str  # missing | edited | broken-link | reordered | unreadable | truncated | rewritten
    message: str


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problems: tuple[ChainProblem, ...]

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def render(self) -> str:
        if self.ok:
            return (f"audit chain intact: {self.records} record(s), head seq {self.head_seq} {self.head_hash[:16]} "
                    f"(keep it: --expect-head {self.head_seq}:{self.head_hash})")
        return "\n".join([f"audit chain BROKEN ({len(self.problems)} problem(s)):"]
                         + [f"  {p.kind}: {p.message}" for p in self.problems])

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "records": self.records, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "problems": [asdict(p) for p in self.problems]}


def _check_links(record: AuditRecord, by_hash: dict[str, AuditRecord], seqs: set[int],
                 orphans: set[int], unreadable: frozenset[int] = frozenset()) -> list[ChainProblem]:
    """Where ``record``'s links lead: to the record(s) before it, to nothing, or to a rewrite.

    A link to nothing while the seq before still holds a record that nobody links to means that
    record was rewritten (its hash changed); with no such orphan, the linked record was deleted.
    A gap in the sequence is reported once, by :func:`verify_chain`, not again here. A link may pass
    over sequence numbers held only by ``unreadable`` records (an append after a damaged record
    links to the newest readable one); the damaged record is reported as such.
    """

    def skips_only_unreadable(below: int) -> bool:
        between = range(below + 1, record.seq)
        return all(seq in unreadable and seq not in seqs for seq in between)

    if record.prev_hash == GENESIS_HASH:
        if record.seq == 1 or skips_only_unreadable(0):
            return []
        return [ChainProblem(record.seq, record.key, "broken-link",
                             f"record seq {record.seq} ({record.key}) claims to be the first record")]
    problems: list[ChainProblem] = []
    for link in record.links:
        target = by_hash.get(link)
        if target is None and record.seq - 1 in orphans:
            problems.append(ChainProblem(record.seq, record.key, "broken-link",
                                         f"record seq {record.seq} ({record.key}) does not link to the record at seq "
                                         f"{record.seq - 1}: that record was rewritten or replaced"))
        elif target is None and record.seq - 1 in seqs:
            problems.append(ChainProblem(record.seq, record.key, "missing",
                                         f"record seq {record.seq} ({record.key}) links to a record that is gone "
                                         f"({link[:16]}): deleted"))
        elif target is not None and (target.seq >= record.seq
                                     or (link == record.prev_hash and target.seq != record.seq - 1
                                         and not skips_only_unreadable(target.seq))):
            problems.append(ChainProblem(record.seq, record.key, "reordered",
                                         f"record seq {record.seq} ({record.key}) links to seq {target.seq}: "
                                         f"sequence numbers were changed"))
    return problems


def verify_chain(storage: Storage, *, known_head: tuple[int, str] | None = None,
                 anchors: list[Anchor] | None = None) -> ChainReport:
    """Recompute every hash and link; name each deleted, edited, rewritten or moved record.

    ``known_head`` — a ``(seq, hash)`` seen earlier — also catches removal of the newest records;
    ``anchors`` (:func:`collect_anchors`) do the same with the heads the store's own manifests and
    check records recorded.
    """
    problems: list[ChainProblem] = []
    records: list[AuditRecord] = []
    unreadable: set[int] = set()
    for key in _keys(storage):
        try:
            record, raw = _load(storage, key)
        except _UNREADABLE as exc:
            if (damaged := _key_seq(key)) is not None:
                unreadable.add(damaged)
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            problems.append(ChainProblem(_key_seq(key), key, "unreadable",
                                         f"{key} is not a readable audit record ({reason})"))
            continue
        records.append(record)
        if _key_seq(key) != record.seq:
            problems.append(ChainProblem(record.seq, key, "reordered",
                                         f"{key} holds record seq {record.seq}: records were moved or renamed"))
        if record_hash(raw) != record.hash:
            problems.append(ChainProblem(record.seq, key, "edited",
                                         f"record seq {record.seq} ({key}) was edited: its content does not match "
                                         f"its hash"))
    by_hash = {r.hash: r for r in records}
    seqs = {r.seq for r in records}
    head_seq = max(seqs, default=0)
    gaps = sorted(set(range(1, head_seq + 1)) - seqs - unreadable)  # a damaged record is named as such
    for start, end in _runs(gaps):
        span = f"{start}" if start == end else f"{start}-{end}"
        problems.append(ChainProblem(start, None, "missing",
                                     f"record(s) seq {span} missing before seq {end + 1}: deleted"))
    linked = {h for r in records for h in r.links}
    orphans = {r.seq for r in records if r.hash not in linked and r.seq < head_seq}
    for record in sorted(records, key=lambda r: (r.seq, r.key)):
        problems += _check_links(record, by_hash, seqs, orphans, frozenset(unreadable))
    head = min((r for r in records if r.seq == head_seq), key=lambda r: r.key, default=None)
    if known_head is not None:
        seq, digest = known_head
        if digest not in by_hash and seq > head_seq:
            problems.append(ChainProblem(seq, None, "truncated",
                                         f"the log ends at seq {head_seq}, but seq {seq} was seen before: the "
                                         f"newest records were deleted"))
        elif digest not in by_hash:
            problems.append(ChainProblem(seq, None, "edited",
                                         f"record seq {seq} seen before (hash {digest[:16]}) is gone or changed"))
    problems += _check_anchors(anchors or [], by_hash, head_seq)
    return ChainReport(not problems, len(records), head_seq, head.hash if head else GENESIS_HASH, tuple(problems))


@dataclass(frozen=True)
class Anchor:
    """A head of the log recorded elsewhere in the store: ``where`` says which object recorded it."""

    seq: int
    hash: str
    where: str


_HASH = re.compile(r"^[0-9a-f]{64}$")


def parse_anchor(value: object, where: str) -> Anchor | None:
    """An ``audit_head`` value read from the store (untrusted): None unless it is well formed."""
    if not isinstance(value, dict):
        return None
    seq, digest = value.get("seq"), value.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(digest, str) \
            or not _HASH.match(digest):
        return None
    return Anchor(seq, digest, where)


def parse_expected_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as ``audit --verify`` prints the head) → ``(seq, hash)``; ValueError otherwise."""
    seq, _, digest = text.strip().partition(":")
    if not seq.isdigit() or int(seq) < 1 or not _HASH.match(digest.lower()):
        raise ValueError(f"{text!r} is not SEQ:HASH (a sequence number and a 64-digit SHA-256)")
    return int(seq), digest.lower()


def collect_anchors(storage: Storage, *, per_database: int = 3) -> list[Anchor]:
    """The newest ``per_database`` audit heads recorded by the manifests of each database in the store.

    "Newest" by the anchor's own sequence number, not by folder name: a folder name carries a
    time anyone can write (a stray or forged folder dated next year would otherwise push the real
    anchors out of the window). So every manifest is read (one GET each). Reads raw JSON (a
    manifest that fails its schema still tells where the log was); anything unreadable is skipped:
    the catalog reports broken manifests, this only looks for anchors.
    """
    manifests: dict[str, list[str]] = {}
    for info in storage.list(""):
        parts = info.key.split("/")
        if len(parts) == 3 and parts[2] == "manifest.json" and not parts[0].startswith("_"):
            manifests.setdefault(parts[0], []).append(info.key)
    anchors: list[Anchor] = []
    for keys in manifests.values():
        found: list[Anchor] = []
        for key in keys:
            try:
                raw = json.loads(storage.get_bytes(key))
            except (DbprotectError, ValueError):
                continue
            anchor = parse_anchor(raw.get("audit_head") if isinstance(raw, dict) else None, key)
            if anchor is not None:
                found.append(anchor)
        anchors += sorted(found, key=lambda a: (-a.seq, a.where))[:per_database]
    return anchors


def _check_anchors(anchors: list[Anchor], by_hash: dict[str, AuditRecord], head_seq: int) -> list[ChainProblem]:
    """Each anchored record must still be in the log with the hash and seq the anchor recorded."""
    problems: list[ChainProblem] = []
    seen: set[tuple[int, str]] = set()
    for anchor in sorted(anchors, key=lambda a: -a.seq):
        if (anchor.seq, anchor.hash) in seen:
            continue
        seen.add((anchor.seq, anchor.hash))
        record = by_hash.get(anchor.hash)
        if record is not None and record.seq == anchor.seq:
            continue
        if anchor.seq > head_seq:
            problems.append(ChainProblem(anchor.seq, None, "truncated",
                                         f"the log ends at seq {head_seq}, but {anchor.where} recorded its head at "
                                         f"seq {anchor.seq}: the newest records were deleted"))
        else:
            problems.append(ChainProblem(anchor.seq, None, "rewritten",
                                         f"{anchor.where} recorded record seq {anchor.seq} with hash "
                                         f"{anchor.hash[:16]}, which the log no longer holds: its tail was rewritten"))
    return problems


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted [1, 2, 5] → (1, 2), (5, 5)."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


class AuditLog:
    """A store's audit log with a fixed actor and clock: what cleanup, backup and restore call."""

    def __init__(self, storage: Storage, *, actor: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.storage = storage
        self.actor = actor
        self.clock = clock

    def record(self, action: str, *, database: str, outcome: str, target: str = "", detail: str = "",
               data: dict[str, Any] | None = None) -> AuditRecord:
        # The log is immutable: no secret may enter it (removed by value), and a DSN is named by
        # its database and host, never shown.
        target, detail = scrub_text(target, name_servers=True), scrub_text(detail, name_servers=True)
        data = scrub_value(data or {}, name_servers=True)
        event = AuditEvent(at=self.clock(), actor=self.actor, action=action, database=database,
                           outcome=outcome, target=target, detail=detail, data=data or {})
        return append(self.storage, event)


__all__ = [
    "AUDIT_PREFIX",
    "GENESIS_HASH",
    "Anchor",
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "ChainProblem",
    "ChainReport",
    "append",
    "audit_head",
    "canonical_json",
    "collect_anchors",
    "parse_anchor",
    "parse_expected_head",
    "read",
    "record_hash",
    "verify_chain",
]
