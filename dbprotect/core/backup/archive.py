"""Reading a ``pg_dump --format=custom`` archive as it streams past, without storing it.

Why: the manifest needs per-table row counts and content checksums taken in the same snapshot
as the dump. Computing them with a second full scan on another connection costs about as much
as the dump itself; the table data is already flowing through our pipe, so we read it there.
This module parses the archive header, the table of contents (TOC) and the data blocks of an
uncompressed (``-Z0``) custom-format archive, and feeds each table's COPY rows to a
:class:`TableDigest`.

The format (``src/bin/pg_dump/pg_backup_archiver.c`` and ``pg_backup_custom.c``): integers are
a sign byte plus ``intsize`` little-endian bytes; strings are an integer length (-1 for NULL) and
the bytes. Header, then the TOC entries, then data blocks: a block-type byte (1 = table data,
3 = large objects), the TOC dump id, then length-prefixed chunks ending with a zero length. When
pg_dump writes to a pipe the TOC comes first, with no data offsets, which is what we read.

Archive versions 1.14 to 1.16 (pg_dump 12 to 18) are understood. Anything else raises
:class:`UnsupportedArchive`, and the backup falls back to digesting tables over COPY in the
exported snapshot (same digest, same values, just slower).

:class:`TableDigest` is the one definition of a table's content checksum: the count of COPY text
rows and the sum, modulo 2**64, of the CRC-32 of each row's text (newline included). A sum is
order-independent, so a restored table whose rows come back in another physical order has the
same checksum. It detects corruption and accidental change, not a forger: the SHA-256 of the
stored object and the age MAC are the cryptographic protections.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from itertools import repeat
from operator import eq, getitem

CHECKSUM_ALGORITHM = "crc32-sum-v1"


def large_object_term(oid: int, content_sha256: bytes) -> int:
    """One large object's share of the large objects' content digest (their sum modulo 2**64).

    Why a sum of per-object terms: the archive streams each object once in its own order, the
    restored database is read in another; the oid is part of the term, so content moved from one
    object to another changes the digest too.
    """
    return int.from_bytes(hashlib.blake2b(b"%d:" % oid + content_sha256, digest_size=8).digest(), "big")


def large_objects_digest(terms: int) -> str:
    """The large objects' content digest as recorded (16 hex digits) from the sum of their terms."""
    return f"{terms & ((1 << 64) - 1):016x}"

_MASK64 = (1 << 64) - 1
_TERMINATOR = b"\\.\n"
_BLK_DATA = 1
_BLK_BLOBS = 3
_SUPPORTED = {(1, 14), (1, 15), (1, 16)}
_BULK_WINDOW = 1 << 16
_BULK_WINDOW_MAX = 1 << 22


class UnsupportedArchive(Exception):
    """The archive is of a version or shape this reader does not understand."""


class TruncatedArchive(Exception):
    """The stream ended in the middle of the archive."""


class TableDigest:
    """Row count and order-independent content checksum of one table's COPY text rows.

    Feed it the COPY text stream in chunks of any size (``COPY ... TO STDOUT`` output or the data
    chunks of an archive); a ``\\.`` line ends the data.
    """

    __slots__ = ("_carry", "_ended", "_sum", "rows")

    def __init__(self) -> None:
        self.rows = 0
        self._sum = 0
        self._carry = b""
        self._ended = False

    def feed(self, data: bytes) -> None:
        if self._ended or not data:
            return
        # Fast path: the chunk is exactly one row (what pg_dump -Z0 and psycopg's COPY produce).
        if not self._carry and data[-1] == 10 and data.find(b"\n") == len(data) - 1:
            if data == _TERMINATOR:
                self._ended = True
                return
            self.rows += 1
            self._sum += zlib.crc32(data)
            return
        data = self._carry + data
        lines = data.split(b"\n")
        self._carry = lines.pop()
        for line in lines:
            row = line + b"\n"
            if row == _TERMINATOR:
                self._ended = True
                self._carry = b""
                return
            self.rows += 1
            self._sum += zlib.crc32(row)

    def feed_stream(self, data: bytes) -> None:
        """Like :meth:`feed`, for large buffers of many rows (``psql``'s COPY output).

        Why: :meth:`feed` loops over the rows of a buffer in Python; this digests them with
        C-level passes. ``splitlines(keepends=True)`` also splits at a bare ``\\r``, which COPY
        text never holds (it writes ``\\r``, and no server encoding has the byte inside a
        character); when the pieces do not number the newlines, the buffer takes the exact path:
        ``crc32(b"\\n", crc32(row))`` over ``split(b"\\n")``. A ``\\.`` line goes through
        :meth:`feed`, which ends the data there.
        """
        if self._ended or not data:
            return
        data = self._carry + data
        cut = data.rfind(b"\n") + 1
        body, self._carry = data[:cut], data[cut:]
        if not body:
            return
        rows = body.splitlines(keepends=True)
        if len(rows) == body.count(b"\n") and _TERMINATOR not in rows:
            self.rows += len(rows)
            self._sum += sum(map(zlib.crc32, rows))
            return
        lines = body.split(b"\n")
        lines.pop()  # the empty piece after the last newline
        if _TERMINATOR[:-1] in lines:
            tail, self._carry = self._carry, b""
            self.feed(body)
            if not self._ended:
                self._carry = tail
            return
        self.rows += len(lines)
        self._sum += sum(map(zlib.crc32, repeat(b"\n", len(lines)), map(zlib.crc32, lines)))

    def add(self, part: TableDigest) -> None:
        """Fold in the digest of another, disjoint part of the same table's rows.

        Why: a sum is order-independent, so a large table read in parts over several connections
        has the count and checksum of the whole when its parts' counts and sums are added.
        """
        self.rows += part.rows
        self._sum += part._sum

    @property
    def checksum(self) -> str:
        return f"{self._sum & _MASK64:016x}"

    @property
    def complete(self) -> bool:
        """No partial row left over (a stream cut mid-row is not a complete table)."""
        return not self._carry


@dataclass(slots=True)
class TocEntry:
    dump_id: int
    had_dumper: bool
    tag: str
    desc: str
    section: int
    defn: str
    copy_stmt: str
    namespace: str
    owner: str
    relkind: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.tag}" if self.namespace else self.tag

    @property
    def copy_columns(self) -> str | None:
        """The column list pg_dump copied (generated columns are left out of it)."""
        match = re.match(r"COPY\s+.+?\s+\((.*)\)\s+FROM\s+stdin", self.copy_stmt, re.S)
        return match.group(1) if match else None


@dataclass(slots=True)
class ArchiveHeader:
    version: tuple[int, int, int]
    int_size: int
    off_size: int
    compression: int
    dbname: str
    server_version: str
    pg_dump_version: str


@dataclass
class ArchiveSummary:
    """What the inspector learned from one archive."""

    header: ArchiveHeader | None = None
    toc: list[TocEntry] = field(default_factory=list)
    tables: dict[str, TableDigest] = field(default_factory=dict)
    table_columns: dict[str, str | None] = field(default_factory=dict)
    large_objects: int = 0
    large_object_bytes: int = 0
    #: Sum of :func:`large_object_term` over every large object in the archive.
    large_object_terms: int = 0
    complete: bool = False

    def sequences(self) -> dict[str, dict[str, object]]:
        """Sequence values from the ``SEQUENCE SET`` entries (``SELECT pg_catalog.setval(...)``)."""
        found: dict[str, dict[str, object]] = {}
        pattern = re.compile(r"setval\('(.+?)',\s*(-?\d+),\s*(true|false)\)", re.S)
        for entry in self.toc:
            if entry.desc == "SEQUENCE SET":
                match = pattern.search(entry.defn)
                if match:
                    name = match.group(1).replace("''", "'")
                    found[name] = {"value": int(match.group(2)), "is_called": match.group(3) == "true"}
        return found


class _NeedMore(Exception):
    """Not enough bytes buffered for the next item; the caller rewinds to the item's start."""


class _Paused(Exception):
    """Not enough bytes buffered, but the progress made so far is committed (no rewind)."""


def _bulk_rows(buf: bytes, pos: int, end: int, width: int) -> tuple[int, int, int, bool]:
    """Rows, crc32 sum and end position of the run of whole one-row chunks in ``buf[pos:end]``, and
    whether the run was stopped by something only the chunk loop reads (rather than by ``end``).

    Why: ``pg_dump -Z0`` writes every COPY row as a chunk of its own, so a Python loop over chunks
    costs about a microsecond per row, the largest CPU cost of a backup. Cutting the buffer at line
    ends (C-level ``splitlines``) gives, per chunk, its ``width``-byte length header followed by its
    row; mapping C functions over those lists (no Python frame per row) more than halves the cost.
    A piece counts only when the length in its header equals the length of its row, so the result is
    exactly what the chunk loop computes. A header whose length bytes hold a line break is glued back
    together; anything else (a block's end, a chunk that is not one row, a ``\\.`` line, the unfinished
    tail) ends the run.
    """
    if pos + width > len(buf):
        return 0, 0, pos, True
    first_end = pos + width + int.from_bytes(buf[pos + 1:pos + width], "little")
    if first_end == pos + width or first_end > len(buf):
        return 0, 0, pos, True  # a block's end, or a chunk not all here yet (never rescan a growing buffer)
    pieces = buf[pos:max(end, first_end)].splitlines(keepends=True)
    if pieces[-1][-1] != 10:
        pieces.pop()  # cut by ``end``
    rows = list(map(getitem, pieces, repeat(slice(width, None))))
    blocked = False
    if _TERMINATOR in rows:
        cut = rows.index(_TERMINATOR)
        del pieces[cut:], rows[cut:]
        blocked = True
    lengths = list(map(len, rows))
    declared = list(map(int.from_bytes, map(getitem, pieces, repeat(slice(1, width))), repeat("little")))
    crc = zlib.crc32
    if declared == lengths:
        return len(rows), sum(map(crc, rows)), pos + sum(map(len, pieces)), blocked or not rows
    good = list(map(eq, declared, lengths))
    count, total, i, n = 0, 0, 0, len(rows)
    while i < n:
        try:
            bad = good.index(False, i)
        except ValueError:
            bad = n
        count += bad - i
        total += sum(map(crc, rows[i:bad]))
        i = bad
        if i == n:
            break
        merged, j = b"", i  # a header cut by a line break in its length bytes: glue its pieces back
        while j < n and (len(merged) <= width or merged[-1] != 10):
            merged += pieces[j]
            j += 1
        if (len(merged) <= width or merged[-1] != 10 or merged[width:] == _TERMINATOR
                or int.from_bytes(merged[1:width], "little") != len(merged) - width):
            blocked = True
            break
        count += 1
        total += crc(merged[width:])
        i = j
    return count, total, pos + sum(map(len, pieces[:i])), blocked or not count


class ArchiveInspector:
    """Push parser: call :meth:`feed` with every chunk of the archive, then :meth:`finish`."""

    def __init__(self) -> None:
        self.summary = ArchiveSummary()
        self._buf = b""
        self._pos = 0
        self._phase = "header"
        self._toc_remaining = -1
        self._by_id: dict[int, TocEntry] = {}
        self._block_digest: TableDigest | None = None
        self._blob_state = ""  # "" | "oid" | "chunks"
        self._blob_oid = 0
        self._blob_hash = hashlib.sha256()
        self._int_size = 4
        self.failed: str | None = None

    # -- primitive readers over self._buf; raise _NeedMore when bytes are missing ------------
    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            raise _NeedMore
        data = self._buf[self._pos:end]
        self._pos = end
        return data

    def _int(self) -> int:
        raw = self._take(1 + self._int_size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def _optional_str(self) -> str | None:
        length = self._int()
        if length < 0:
            return None
        return self._take(length).decode("utf-8", errors="replace")

    def _str(self) -> str:
        return self._optional_str() or ""

    # -- public ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.failed or self._phase == "done":
            return
        self._buf = self._buf[self._pos:] + data if self._pos else self._buf + data
        self._pos = 0
        try:
            while True:
                start = self._pos
                try:
                    if self._phase == "header":
                        self._read_header()
                    elif self._phase == "toc":
                        self._read_toc_entry()
                    elif self._phase == "data":
                        self._read_data()
                    else:
                        return
                except _NeedMore:
                    self._pos = start
                    return
                except _Paused:
                    return
        except UnsupportedArchive as exc:
            self.failed = str(exc)
        finally:
            self._buf = self._buf[self._pos:]
            self._pos = 0

    def finish(self) -> ArchiveSummary:
        """Call at the end of the stream; raises :class:`TruncatedArchive` if it stopped early."""
        if self.failed:
            raise UnsupportedArchive(self.failed)
        if self._phase in ("header", "toc") or self._buf or self._block_digest is not None or self._blob_state:
            raise TruncatedArchive(f"archive ended in its {self._phase} section")
        self.summary.complete = True
        return self.summary

    # -- sections ----------------------------------------------------------------------------
    def _read_header(self) -> None:
        if self._take(5) != b"PGDMP":
            raise UnsupportedArchive("not a pg_dump custom-format archive")
        vmaj, vmin, vrev, int_size, off_size, fmt = self._take(6)
        if (vmaj, vmin) not in _SUPPORTED:
            raise UnsupportedArchive(f"archive version {vmaj}.{vmin} is not understood by this reader")
        if fmt != 1:
            raise UnsupportedArchive("not a custom-format archive")
        self._int_size = int_size
        compression = self._take(1)[0] if vmin >= 15 else self._int()
        if compression not in (0, -1) and not (vmin < 15 and compression == 0):
            raise UnsupportedArchive("archive data is compressed by pg_dump (expected --compress=0)")
        for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
            self._int()
        dbname, server_version, pg_dump_version = self._str(), self._str(), self._str()
        self.summary.header = ArchiveHeader((vmaj, vmin, vrev), int_size, off_size, compression, dbname,
                                            server_version, pg_dump_version)
        self._toc_remaining = self._int()
        self._phase = "toc"

    def _read_toc_entry(self) -> None:
        if self._toc_remaining == 0:
            self._phase = "data"
            return
        header = self.summary.header
        assert header is not None
        dump_id = self._int()
        had_dumper = bool(self._int())
        self._str()  # table oid
        self._str()  # oid
        tag, desc = self._str(), self._str()
        section = self._int()
        defn, _drop, copy_stmt = self._str(), self._str(), self._str()
        namespace, _tablespace, _tableam = self._str(), self._str(), self._str()
        relkind = ""
        if header.version[1] >= 16:
            relkind_value = self._int()
            relkind = chr(relkind_value) if relkind_value > 0 else ""
        owner = self._str()
        self._str()  # "false": with-oids, historical
        while self._optional_str() is not None:  # dependency list, NULL-terminated
            pass
        self._take(1 + header.off_size)  # data offset flag + offset
        entry = TocEntry(dump_id, had_dumper, tag, desc, section, defn, copy_stmt, namespace, owner, relkind)
        self.summary.toc.append(entry)
        self._by_id[dump_id] = entry
        self._toc_remaining -= 1

    def _read_data(self) -> None:
        if self._block_digest is not None:
            self._read_table_chunks()
            return
        if self._blob_state:
            self._read_blobs()
            return
        if self._pos == len(self._buf):
            raise _NeedMore
        block_type = self._take(1)[0]
        dump_id = self._int()
        entry = self._by_id.get(dump_id)
        if entry is None:
            raise UnsupportedArchive(f"data block for unknown TOC entry {dump_id}")
        if block_type == _BLK_DATA:
            digest = TableDigest()
            self.summary.tables[entry.qualified_name] = digest
            self.summary.table_columns[entry.qualified_name] = entry.copy_columns
            self._block_digest = digest
        elif block_type == _BLK_BLOBS:
            self._blob_state = "oid"
        else:
            raise UnsupportedArchive(f"unknown data block type {block_type}")

    def _read_table_chunks(self) -> None:
        """The hot loop. Whole one-row chunks go through :func:`_bulk_rows`; what it leaves (a block's
        end, an unusual chunk, the unfinished tail) goes through the loop below, one chunk per iteration.
        Kept flat for speed (see bench/backup_bench.py)."""
        digest = self._block_digest
        assert digest is not None
        if not digest._carry and not digest._ended:
            # Windows that double from small: a block that ends soon (many small tables) costs a small scan.
            pos, window, blocked = self._pos, _BULK_WINDOW, False
            while not blocked and pos < len(self._buf):
                bulk_rows, bulk_sum, pos, blocked = _bulk_rows(self._buf, pos, pos + window, 1 + self._int_size)
                digest.rows += bulk_rows
                digest._sum += bulk_sum
                window = min(window * 2, _BULK_WINDOW_MAX)
            self._pos = pos
        buf, pos, end = self._buf, self._pos, len(self._buf)
        width = 1 + self._int_size
        crc = zlib.crc32
        rows, total = 0, 0
        try:
            while True:
                if pos + width > end:
                    raise _Paused
                length = int.from_bytes(buf[pos + 1:pos + width], "little")
                if length == 0:
                    pos += width
                    self._block_digest = None
                    return
                if pos + width + length > end:
                    raise _Paused
                chunk = buf[pos + width:pos + width + length]
                pos += width + length
                if (not digest._carry and chunk[-1] == 10 and chunk.find(b"\n") == length - 1
                        and chunk != _TERMINATOR and not digest._ended):
                    rows += 1
                    total += crc(chunk)
                else:
                    digest.rows += rows
                    digest._sum += total
                    rows, total = 0, 0
                    digest.feed(chunk)
        finally:
            digest.rows += rows
            digest._sum += total
            self._pos = pos

    def _read_blobs(self) -> None:
        """One atomic step: a large object's oid, or one of its chunks."""
        if self._blob_state == "oid":
            oid = self._int()
            if oid == 0:
                self._blob_state = ""
            else:
                self.summary.large_objects += 1
                self._blob_state = "chunks"
                self._blob_oid, self._blob_hash = oid, hashlib.sha256()
            return
        length = self._int()
        if length == 0:
            self._blob_state = "oid"
            self.summary.large_object_terms += large_object_term(self._blob_oid, self._blob_hash.digest())
            return
        self._blob_hash.update(self._take(length))
        self.summary.large_object_bytes += length
