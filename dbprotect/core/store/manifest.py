"""The backup store's layout and the manifest that makes a backup a backup.

Layout (documented for humans in ``docs/store-format.md``)::

    <database>/<backup-id>/dump.zst.age          pg_dump -Fc -Z0 | zstd | age
    <database>/<backup-id>/manifest.json         written last: its presence makes the backup exist
    <database>/<backup-id>/checks/[<seq>-]<when>-<rung>-<ok|failed>.json   one object per verification

A ``backup-id`` is ``YYYYMMDDTHHMMSSZ-xxxxxx`` (UTC start time, random suffix), so ids sort by
time. Verification results are written as their own small objects, named so that a listing of
keys alone tells each backup's state (no GET per backup). Format 2 writes them once and never
rewrites the manifest; format-1 manifests also carry them in ``verifications`` (both are read). ``<seq>`` (ten digits,
increasing per backup) is the order of the checks: a clock can be wrong, a sequence cannot be
skewed. Check keys without one (written before it existed) come before every sequenced check.

Everything read back from a store is untrusted input: someone with write access to the bucket
is not thereby allowed to run SQL as the restore role or to pass one database's backup off as
another's. So a manifest is validated against a strict schema (sizes and counts bounded), a
table's column list must parse as a list of identifiers (it reaches SQL only as
``sql.Identifier``), and :func:`check_manifest_location` refuses a manifest that names another
folder than the one it was read from.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dbprotect.core.errors import IntegrityError
from dbprotect.core.pg.dsn import server_label

FORMAT_VERSION = 2
#: Versions this dbprotect reads: 1 (results also appended to the manifest) and 2 (manifest write-once).
READABLE_FORMAT_VERSIONS = (1, 2)
DUMP_OBJECT = "dump.zst.age"
MANIFEST_OBJECT = "manifest.json"
CHECKS_FOLDER = "checks"

Rung = Literal["stored", "readable", "restored", "drilled"]
RUNGS: tuple[str, ...] = ("stored", "readable", "restored", "drilled")

BACKUP_ID_PATTERN = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{6})$")
_CHECK_KEY = re.compile(
    r"^(?:(\d{10})-)?(\d{8}T\d{6}(?:\d{6})?Z)-(stored|readable|restored|drilled)-(ok|failed)\.json$")

#: Bounds on what a manifest may hold: far above any real database, low enough that an edited
#: manifest cannot make a reader allocate without limit.
MAX_TABLES = 100_000
MAX_COLUMNS = 1_600  # PostgreSQL's own limit of columns per table
MAX_NAME_LENGTH = 255  # PostgreSQL truncates identifiers at 63 bytes; a manifest name is never longer in UTF-8
MAX_TEXT_LENGTH = 100_000

#: One entry of pg_dump's COPY column list: an identifier pg_dump left unquoted (its ``fmtId``
#: quotes anything but lower-case letters, digits and ``_``) or a double-quoted one (``""`` for a
#: quote inside). Nothing else: no spaces inside, no parentheses, no semicolons.
_COLUMN = r'(?:[a-z_][a-z0-9_$]*|"(?:[^"\x00]|"")+")'
_COLUMN_LIST = re.compile(rf"{_COLUMN}(?:\s*,\s*{_COLUMN})*")
_COLUMN_ITEM = re.compile(_COLUMN)


def parse_column_list(text: str) -> tuple[str, ...]:
    """``id, "Order Date"`` (pg_dump's COPY column list) → ``('id', 'Order Date')``; ValueError otherwise.

    Why strict: the list comes from a manifest, which anyone with write access to the store can
    edit. Parsed into names, each name reaches SQL only through ``sql.Identifier``; a list that
    does not parse (``id); DROP TABLE x; --``) is refused as a damaged manifest, never run.
    """
    if not _COLUMN_LIST.fullmatch(text):
        raise ValueError(f"column list {text[:60]!r} is not a list of column names")
    names = tuple(item[1:-1].replace('""', '"') if item.startswith('"') else item
                  for item in _COLUMN_ITEM.findall(text))
    if len(names) > MAX_COLUMNS:
        raise ValueError(f"column list names {len(names)} columns (at most {MAX_COLUMNS})")
    if any(len(name.encode()) > MAX_NAME_LENGTH for name in names):
        raise ValueError("column list holds a name longer than any PostgreSQL identifier")
    return names


def new_backup_id(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-ffffrr``: ``ffff`` orders backups started within the same second
    (microseconds // 16, in hex), ``rr`` is random so two writers never collide."""
    at = now.astimezone(UTC)
    return f"{at:%Y%m%dT%H%M%SZ}-{at.microsecond // 16:04x}{secrets.token_hex(1)}"


def backup_time(backup_id: str) -> datetime:
    if not BACKUP_ID_PATTERN.match(backup_id):
        raise ValueError(f"{backup_id!r} is not a backup id")
    return _parse_stamp(backup_id[:16])


def _parse_stamp(stamp: str) -> datetime:
    """``YYYYMMDDTHHMMSS[ffffff]Z`` by slicing: listings parse one per object, strptime is 10x slower."""
    micro = int(stamp[15:21]) if len(stamp) > 16 else 0
    return datetime(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                    int(stamp[13:15]), micro, tzinfo=UTC)


def dump_key(database: str, backup_id: str) -> str:
    return f"{database}/{backup_id}/{DUMP_OBJECT}"


def manifest_key(database: str, backup_id: str) -> str:
    return f"{database}/{backup_id}/{MANIFEST_OBJECT}"


#: The largest check sequence number (ten digits in the key).
MAX_CHECK_SEQUENCE = 10**10 - 1


def check_key(database: str, backup_id: str, at: datetime, rung: str, ok: bool, seq: int | None = None) -> str:
    """The key of one check object; ``seq`` (from :func:`~dbprotect.core.store.catalog.next_check_sequence`)
    is its place in the backup's order of checks, which the reader trusts over ``at``."""
    stamp = f"{at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"
    prefix = ""
    if seq is not None:
        if not 0 < seq <= MAX_CHECK_SEQUENCE:
            raise ValueError(f"check sequence {seq} out of range")
        prefix = f"{seq:010d}-"
    return f"{database}/{backup_id}/{CHECKS_FOLDER}/{prefix}{stamp}-{rung}-{'ok' if ok else 'failed'}.json"


def parse_check_key(name: str) -> tuple[datetime, str, bool, int] | None:
    """``(when, rung, ok, seq)`` from a check object's file name, or None if it is not one.

    ``seq`` is 0 for a check written before sequences existed; an impossible date is not a check.
    """
    match = _CHECK_KEY.match(name)
    if not match:
        return None
    try:
        at = _parse_stamp(match.group(2))
    except ValueError:
        return None
    return at, match.group(3), match.group(4) == "ok", int(match.group(1) or 0)


#: The session settings a backup records under ``checksum.session`` (see
#: :data:`dbprotect.core.backup.content.DUMP_SESSION`, plus the source's encoding and monetary locale).
DIGEST_SESSION_SETTINGS = frozenset({"DateStyle", "IntervalStyle", "extra_float_digits", "TimeZone", "bytea_output",
                                     "client_encoding", "lc_monetary"})
_SETTING_VALUE = re.compile(r"[A-Za-z0-9_.,@+/\- ]{1,64}")

class TableRecord(BaseModel):
    """One table's row count and checksum, and where it lives (``schema`` and ``name`` extras, ``columns``).

    ``schema`` and ``name`` are kept as extra fields (as manifests have always stored them), but
    only those two: every field here can reach SQL (as identifiers) or a verdict, so any other
    field is a manifest this reader does not understand.
    """

    model_config = ConfigDict(extra="allow")
    rows: int = Field(ge=0, le=2**63 - 1)
    checksum: str = Field(pattern=r"^[0-9a-f]{16}$")
    columns: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)

    @field_validator("columns")
    @classmethod
    def _columns_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_column_list(value)
        return value

    @model_validator(mode="after")
    def _known_extras(self) -> TableRecord:
        for key, value in (self.model_extra or {}).items():
            if key not in ("schema", "name"):
                raise ValueError(f"unknown table field {key[:40]!r}")
            if not isinstance(value, str) or not 0 < len(value.encode()) <= MAX_NAME_LENGTH or "\x00" in value:
                raise ValueError(f"table {key} is not a name")
        return self

    @property
    def column_names(self) -> tuple[str, ...] | None:
        """The copied columns as names (for ``sql.Identifier``); None when the backup recorded none.

        Raises :class:`IntegrityError` for a list that does not parse (only reachable for a record
        built without validation: :meth:`Manifest.from_json` refuses such a manifest first).
        """
        if not self.columns:
            return None
        try:
            return parse_column_list(self.columns)
        except ValueError as exc:
            raise IntegrityError(f"manifest is malformed: {exc}") from None

    def location(self, qualified: str) -> tuple[str, str]:
        """(schema, table): the recorded ones, else split from the ``schema.table`` key."""
        extra = self.model_extra or {}
        schema, name = extra.get("schema"), extra.get("name")
        if schema and name:
            return schema, name
        schema, _, name = qualified.partition(".")
        return schema, name


class Verification(BaseModel):
    model_config = ConfigDict(extra="allow")
    rung: Rung
    ok: bool
    at: datetime
    detail: str = Field(default="", max_length=MAX_TEXT_LENGTH)
    by: str = Field(default="", max_length=MAX_TEXT_LENGTH)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=100)


#: At most this many schema entries (definitions, owners) and materialized views in one manifest.
MAX_OBJECTS = 1_000_000
_DIGEST = r"^[0-9a-f]{16}$"


def _bounded_name(value: str, what: str, limit: int = MAX_TEXT_LENGTH) -> str:
    if not 0 < len(value) <= limit or "\x00" in value:
        raise ValueError(f"{what} {value[:60]!r} is empty, too long or holds a NUL")
    return value


class MaterializedViewRecord(BaseModel):
    """One materialized view: whether it was populated and, if so, its rows' digest (as a table's)."""

    model_config = ConfigDict(extra="forbid")
    namespace: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    populated: bool
    rows: int | None = Field(default=None, ge=0, le=2**63 - 1)
    checksum: str | None = Field(default=None, pattern=_DIGEST)

    @model_validator(mode="after")
    def _digest_when_populated(self) -> MaterializedViewRecord:
        if "\x00" in self.namespace + self.name:
            raise ValueError("materialized view name holds a NUL")
        if self.populated != (self.rows is not None and self.checksum is not None):
            raise ValueError("a populated materialized view has rows and checksum, an empty one neither")
        return self


#: A setting's name as ``pg_db_role_setting`` stores it (``work_mem``, ``app.tenant``); at most this many per role.
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*")
MAX_DATABASE_SETTINGS = 1_000


def _settings_map(value: dict[str, str], what: str) -> dict[str, str]:
    if len(value) > MAX_DATABASE_SETTINGS:
        raise ValueError(f"{what}: more than {MAX_DATABASE_SETTINGS} settings")
    for name, setting in value.items():
        if len(name) > MAX_NAME_LENGTH or not _SETTING_NAME.fullmatch(name):
            raise ValueError(f"{what}: {name[:40]!r} is not a setting name")
        if len(setting) > MAX_TEXT_LENGTH or "\x00" in setting:
            raise ValueError(f"{what}.{name}: the value is too long or holds a NUL")
    return value


class DatabaseSettingsRecord(BaseModel):
    """The database's own settings (``ALTER DATABASE … SET``, and ``ALTER ROLE … IN DATABASE … SET``).

    ``all_roles`` is ``pg_db_role_setting``'s row for every role (``setrole = 0``), ``roles`` one
    row per role, as ``name -> value`` text exactly as the server stores it. dbprotect's own
    ``dbprotect.*`` settings describe the place, not the data, and are never recorded.
    """

    model_config = ConfigDict(extra="forbid")
    all_roles: dict[str, str] = Field(default_factory=dict)
    roles: dict[str, dict[str, str]] = Field(default_factory=dict, max_length=MAX_DATABASE_SETTINGS)

    @field_validator("all_roles")
    @classmethod
    def _all_roles(cls, value: dict[str, str]) -> dict[str, str]:
        return _settings_map(value, "database_settings.all_roles")

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for role, settings in value.items():
            _bounded_name(role, "role", MAX_NAME_LENGTH)
            _settings_map(settings, "database_settings.roles")
        return value


class CatalogRecord(BaseModel):
    """What a full comparison needs beyond tables and sequences, captured in the dump's snapshot.

    Absent from manifests written before it existed: their comparisons say what they cannot check.
    ``definitions`` maps each schema entry of the archive to the digest of pg_dump's SQL for it,
    ``owners`` each owned entry to its owner (see :func:`dbprotect.core.backup.content.definition_records`);
    ``pg_dump_major`` is the pg_dump that rendered them (another major renders SQL differently).
    """

    model_config = ConfigDict(extra="forbid")
    pg_dump_major: int = Field(ge=9, le=99)
    definitions: dict[str, str] = Field(max_length=MAX_OBJECTS)
    owners: dict[str, str] = Field(max_length=MAX_OBJECTS)
    materialized_views: dict[str, MaterializedViewRecord] = Field(default_factory=dict, max_length=MAX_OBJECTS)
    #: Sum of every large object's content term (:func:`dbprotect.core.backup.archive.large_object_term`).
    large_objects_digest: str | None = Field(default=None, pattern=_DIGEST)
    #: The database's own settings (None before they were captured).
    database_settings: DatabaseSettingsRecord | None = None

    @field_validator("definitions")
    @classmethod
    def _digests(cls, value: dict[str, str]) -> dict[str, str]:
        for key, digest in value.items():
            _bounded_name(key, "definition key")
            if not re.fullmatch(_DIGEST, digest):
                raise ValueError(f"definition {key[:60]!r}: not a 16-hex-digit digest")
        return value

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: dict[str, str]) -> dict[str, str]:
        for key, owner in value.items():
            _bounded_name(key, "owner key")
            _bounded_name(owner, "owner", MAX_NAME_LENGTH)
        return value

    @field_validator("materialized_views")
    @classmethod
    def _view_names(cls, value: dict[str, MaterializedViewRecord]) -> dict[str, MaterializedViewRecord]:
        for key in value:
            _bounded_name(key, "materialized view", 2 * MAX_NAME_LENGTH + 1)
        return value


#: Fields a manifest may carry beyond the schema: ``sanitized`` (a sanitized copy's lineage,
#: :mod:`dbprotect.core.sanitize.build`), ``kind`` (why the backup was taken, :data:`BACKUP_KINDS`)
#: and ``protects`` (a safety backup's restore: ``{target, restore_of}``, what retention keeps it for).
#: Any other unknown field makes the manifest malformed.
ALLOWED_EXTRA_FIELDS = frozenset({"sanitized", "kind", "protects"})

#: Why a backup was taken: by a schedule, by hand, before an overwrite restore (its undo), before a
#: guarded change, or a sanitized copy. All are ordinary backups: listed, verified, restored by id.
BACKUP_KINDS = ("scheduled", "manual", "safety", "guard", "sanitized")


def with_kind(kind: str) -> Callable[[Manifest], Manifest]:
    """A ``finish`` for :func:`~dbprotect.core.backup.stream.run_backup` that records the backup's kind."""
    if kind not in BACKUP_KINDS:
        raise ValueError(f"unknown backup kind {kind!r}")

    def finish(manifest: Manifest) -> Manifest:
        return Manifest.model_validate({**manifest.model_dump(mode="json"), "kind": kind})
    return finish

#: A database folder name as a manifest may state it (a configured name, or a derived folder such
#: as ``shop-safety`` or ``shop.development``): one path segment, never ``.`` or ``..``.
_FOLDER_NAME = r"^[^/\\\x00-\x1f]{1,255}$"


class Manifest(BaseModel):
    """Everything needed to trust, find and restore one backup. Readers refuse unknown versions.

    ``extra="allow"`` only so that a sanitized copy's lineage (:data:`ALLOWED_EXTRA_FIELDS`) stays
    readable; every other unknown field is refused by :meth:`_known_extras`.
    """

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    tool: Literal["dbprotect"] = "dbprotect"
    tool_version: str = Field(max_length=100)
    database: str = Field(pattern=_FOLDER_NAME)
    backup_id: str = Field(pattern=BACKUP_ID_PATTERN.pattern)
    #: Which environment the data came from; guards refuse ones they do not know (a short word here).
    environment: str = Field(default="production", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    source: dict[str, Any]
    pg_dump: dict[str, Any]
    started_at: datetime
    snapshot_at: datetime
    finished_at: datetime
    duration_seconds: float
    bytes: dict[str, int]
    object: dict[str, Any]
    compression: dict[str, Any]
    encryption: dict[str, Any]
    checksum: dict[str, Any]
    tables: dict[str, TableRecord] = Field(max_length=MAX_TABLES)
    sequences: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=MAX_TABLES)
    large_objects: dict[str, int] = Field(default_factory=dict, max_length=10)
    #: Format 1 only: results appended here. Format 2 keeps them in ``checks/`` and never rewrites this.
    verifications: list[Verification] = Field(default_factory=list, max_length=100_000)
    #: The audit log's head (``seq``, ``hash``) when this backup was committed: an anchor that makes
    #: removal or rewriting of the log's tail detectable (``audit --verify``). None in format 1.
    audit_head: dict[str, Any] | None = Field(default=None, max_length=2)
    #: Definitions, owners, materialized views and large objects' content (None before it existed).
    catalog: CatalogRecord | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _server_label_not_dsn(cls, value: Any) -> Any:
        """Older manifests stored ``source.dsn``, a masked DSN that still named the user: read as the
        ``server`` label new manifests store (database and host, no user), and the DSN is dropped."""
        if isinstance(value, dict) and "dsn" in value:
            dsn = value["dsn"]
            value = {key: item for key, item in value.items() if key != "dsn"}
            value.setdefault("server", server_label(dsn) if isinstance(dsn, str) else "an unparseable DSN")
        return value

    @field_validator("database")
    @classmethod
    def _one_segment(cls, value: str) -> str:
        if value in (".", ".."):
            raise ValueError("a database folder is not '.' or '..'")
        return value

    @field_validator("checksum")
    @classmethod
    def _session_settings_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The session settings a digest is computed under are applied to connections on restore:
        only the text-rendering settings dbprotect records, each a short plain value, never e.g.
        ``role`` or ``search_path`` from an edited manifest."""
        session = value.get("session", {})
        if not isinstance(session, dict):
            raise ValueError("checksum.session is a mapping of setting names to values")
        for name, setting in session.items():
            if name not in DIGEST_SESSION_SETTINGS:
                raise ValueError(f"checksum.session: {str(name)[:40]!r} is not a setting dbprotect records")
            if not isinstance(setting, str) or not _SETTING_VALUE.fullmatch(setting):
                raise ValueError(f"checksum.session.{name}: not a plain setting value")
        return value

    @field_validator("tables", "sequences")
    @classmethod
    def _names_bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not 0 < len(name) <= 2 * MAX_NAME_LENGTH + 1 or "\x00" in name:
                raise ValueError(f"table or sequence name {name[:60]!r} is empty, too long or holds a NUL")
        return value

    @field_validator("sequences")
    @classmethod
    def _sequence_records(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, record in value.items():
            if (set(record) != {"value", "is_called"} or type(record["value"]) is not int
                    or type(record["is_called"]) is not bool):
                raise ValueError(f"sequence {name[:60]!r}: a record is exactly {{value: integer, is_called: boolean}}")
        return value

    @field_validator("object")
    @classmethod
    def _object_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not re.fullmatch(r"[0-9a-f]{64}", str(value.get("sha256", ""))):
            raise ValueError("object.sha256 is not a SHA-256 hex digest")
        size = value.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("object.size is not a byte count")
        return value

    @model_validator(mode="after")
    def _known_extras(self) -> Manifest:
        unknown = sorted(set(self.model_extra or {}) - ALLOWED_EXTRA_FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(repr(name[:40]) for name in unknown[:5])}")
        kind = (self.model_extra or {}).get("kind")
        if kind is not None and kind not in BACKUP_KINDS:
            raise ValueError(f"kind {str(kind)[:40]!r} is not one of {', '.join(BACKUP_KINDS)}")
        protects = (self.model_extra or {}).get("protects")
        if protects is not None and (not isinstance(protects, dict) or set(protects) != {"target", "restore_of"}
                                     or not all(isinstance(v, str) and 0 < len(v) <= 1000 and "\x00" not in v
                                                for v in protects.values())):
            raise ValueError("protects is exactly {target: text, restore_of: text}")
        return self

    @property
    def sha256(self) -> str:
        return str(self.object["sha256"])

    @property
    def stored_bytes(self) -> int:
        return int(self.object["size"])

    @property
    def total_rows(self) -> int:
        return sum(table.rows for table in self.tables.values())

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> Manifest:
        try:
            raw = json.loads(data)
        except ValueError:
            raise IntegrityError(f"{where}: manifest is not valid JSON") from None
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if version not in READABLE_FORMAT_VERSIONS:
            raise IntegrityError(
                f"{where}: manifest format_version {version!r} is not supported (this dbprotect reads "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))})",
                hint="upgrade dbprotect",
            )
        if len(data) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{where}: manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} a "
                                 "manifest may have")
        try:
            return cls.model_validate(raw)
        except Exception as exc:
            raise IntegrityError(f"{where}: manifest is malformed: {_first_error(exc)}") from None


#: A manifest larger than this is refused unread (a real one with 100,000 tables is about 30 MB).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def _first_error(exc: Exception) -> str:
    """The first problem pydantic found, as ``field.path: message`` on one line (never the value)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg'].removeprefix('Value error, ')}" if where else first["msg"]
    return str(exc).splitlines()[0]


def check_manifest_location(manifest: Manifest, database: str, backup_id: str, *, where: str) -> Manifest:
    """Refuse a manifest that names another folder than ``<database>/<backup_id>/``, where it was read.

    Why: a manifest describes its own backup. Copied into another database's folder (with or
    without its dump), it would pass its own SHA-256 and checksums and restore the other
    database's rows under this database's name. It is refused as an integrity failure.
    """
    if manifest.database != database or manifest.backup_id != backup_id:
        raise IntegrityError(
            f"{where}: manifest names backup {manifest.backup_id!r} of database {manifest.database!r}, not "
            f"{backup_id!r} of {database!r}: it was copied or moved into this folder; refusing it",
            hint="a manifest is only valid in its own folder; restore the backup from the folder it names")
    return manifest
