"""Schema snapshots in the store: how an isolated development deployment sees production's schema.

A production deployment writes, beside a backup, ``<database>/<backup_id>/schema-snapshot.json.age``:
the schema only (``pg_dump --schema-only``, no data, no owners, no privileges), encrypted to the
*schema* recipients, so the key that opens it opens no backup. A development deployment that
holds only that schema identity reads the newest snapshot, loads it into a scratch database and
compares its own database with it: drift without ever holding a production DSN or the raw key.
Plan files bound to a snapshot's hash are in :mod:`dbprotect.core.schema.planfile`; the design
(and what is not built yet: signatures) is in ``docs/schema-across-deployments.md``.

Everything read from the store is untrusted: the document is parsed strictly, bounded, must name
the folder it was found in, and its SHA-256 (of the normalized schema) is recomputed from the
schema text it carries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pyrage

from dbprotect.core.crypto import parse_recipients
from dbprotect.core.errors import CryptoError, IntegrityError, ToolError
from dbprotect.core.pg.scratch import ScratchServer, scratch_database
from dbprotect.core.pg.tools import connect, server_version_text
from dbprotect.core.schema.drift import DriftReport, compare_schemas
from dbprotect.core.schema.proof import schema_dump
from dbprotect.core.schema.snapshot import normalize_schema_dump
from dbprotect.core.store.base import Storage

SNAPSHOT_OBJECT = "schema-snapshot.json.age"
SNAPSHOT_FORMAT = 1
#: A schema dump larger than this is refused when read (a hostile store cannot make us load gigabytes).
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024


def snapshot_key(database: str, backup_id: str) -> str:
    return f"{database}/{backup_id}/{SNAPSHOT_OBJECT}"


def schema_sha256(dump: str) -> str:
    """The hash a plan file would carry: of the normalized schema, so dump noise never changes it."""
    return hashlib.sha256(("\n\n".join(normalize_schema_dump(dump)) + "\n").encode()).hexdigest()


@dataclass(frozen=True)
class StoredSnapshot:
    database: str
    backup_id: str
    sha256: str
    server_version: str
    dump: str
    #: when the backup carrying it started (from the store's listing; None when read alone)
    started_at: datetime | None = None


def write_schema_snapshot(storage: Storage, *, database: str, backup_id: str, dsn: str, recipients: list[str],
                          pg_bin_dir: str | None = None) -> StoredSnapshot:
    """Dump ``dsn``'s schema and store it, encrypted to ``recipients``, in the backup's folder."""
    dump = schema_dump(dsn, pg_bin_dir=pg_bin_dir)
    with connect(dsn, autocommit=True, application_name="dbprotect-schema") as conn:
        version = server_version_text(conn)
    snapshot = StoredSnapshot(database, backup_id, schema_sha256(dump), version, dump)
    document = json.dumps({"format": SNAPSHOT_FORMAT, "database": database, "backup_id": backup_id,
                           "sha256": snapshot.sha256, "server_version": version, "schema": dump}).encode()
    storage.put_if_absent(snapshot_key(database, backup_id), pyrage.encrypt(document, parse_recipients(recipients)))
    return snapshot


def read_schema_snapshot(storage: Storage, *, database: str, backup_id: str,
                         identity: pyrage.x25519.Identity) -> StoredSnapshot:
    """Read and check one stored snapshot; any doubt is an :class:`IntegrityError` naming the object."""
    key = snapshot_key(database, backup_id)
    encrypted = storage.get_bytes(key)
    if len(encrypted) > MAX_SNAPSHOT_BYTES:
        raise IntegrityError(f"{key} is larger than {MAX_SNAPSHOT_BYTES} bytes; refusing to read it")
    try:
        document: Any = json.loads(pyrage.decrypt(encrypted, [identity]))
    except (pyrage.DecryptError, ValueError):
        raise CryptoError(f"{key} does not decrypt with the schema identity, or is not a snapshot",
                          hint="the snapshot is encrypted to keys.schema recipients") from None
    fields = {"format": int, "database": str, "backup_id": str, "sha256": str, "server_version": str, "schema": str}
    if not isinstance(document, dict) or set(document) != set(fields) or \
            not all(isinstance(document[name], kind) for name, kind in fields.items()):
        raise IntegrityError(f"{key} is not a schema snapshot document")
    if document["format"] != SNAPSHOT_FORMAT:
        raise IntegrityError(f"{key} has snapshot format {document['format']}, this dbprotect reads {SNAPSHOT_FORMAT}")
    if (document["database"], document["backup_id"]) != (database, backup_id):
        raise IntegrityError(f"{key} names {document['database']}/{document['backup_id']}: moved between folders")
    if schema_sha256(document["schema"]) != document["sha256"]:
        raise IntegrityError(f"{key}: the schema does not match its recorded SHA-256")
    check_loadable(document["schema"], where=key)
    return StoredSnapshot(database, backup_id, document["sha256"], document["server_version"], document["schema"])


#: What a schema-only dump may contain: definitions, never statements that run code or move data.
_DDL_NODES = frozenset({
    "CreateSchemaStmt", "CreateStmt", "AlterTableStmt", "IndexStmt", "CreateSeqStmt", "AlterSeqStmt", "ViewStmt",
    "CreateTableAsStmt", "CreateEnumStmt", "CompositeTypeStmt", "CreateDomainStmt", "AlterDomainStmt",
    "CreateFunctionStmt", "CreateTrigStmt", "CreatePolicyStmt", "CommentStmt", "VariableSetStmt",
    "CreateExtensionStmt", "RuleStmt", "CreateRangeStmt", "AlterEnumStmt", "DefineStmt", "CreateCastStmt",
    "CreateStatsStmt", "AlterObjectSchemaStmt", "CreateEventTrigStmt", "AlterFunctionStmt", "AlterTypeStmt",
})
_SAFE_LANGUAGES = frozenset({"sql", "plpgsql"})


def check_loadable(dump: str, *, where: str) -> None:
    """Refuse a stored dump unless every statement is a definition (parsed, not pattern-matched).

    A stored snapshot is untrusted: age encryption proves nothing about who wrote it, and the
    scratch load runs as a superuser. So COPY, DO, ``SELECT`` (but dump's own ``set_config``),
    functions in languages other than SQL and PL/pgSQL, event triggers' code... never run.
    """
    from pglast import ast, parse_sql  # ~130 ms, only when a snapshot is read
    from pglast.parser import ParseError

    try:
        statements = parse_sql(dump)
    except ParseError as exc:
        raise IntegrityError(f"{where} does not parse as SQL: {exc}") from None
    for raw in statements:
        node = raw.stmt
        name = type(node).__name__
        if isinstance(node, ast.SelectStmt) and _is_set_config(node):
            continue
        if name == "CreateEventTrigStmt" or name not in _DDL_NODES:
            raise IntegrityError(f"{where} holds a {name} statement, which a schema-only dump never does")
        if isinstance(node, ast.CreateFunctionStmt):
            language = next((str(option.arg.sval) for option in node.options or ()
                             if option.defname == "language"), "sql")
            if language.lower() not in _SAFE_LANGUAGES:
                raise IntegrityError(f"{where} defines a function in language {language!r}; refusing to load it")


def _is_set_config(node: object) -> bool:
    """``SELECT pg_catalog.set_config('search_path', '', false)``: the one SELECT pg_dump writes."""
    from pglast import ast

    targets = getattr(node, "targetList", None) or ()
    if len(targets) != 1 or getattr(node, "fromClause", None):
        return False
    call = targets[0].val
    return isinstance(call, ast.FuncCall) and [n.sval for n in call.funcname] == ["pg_catalog", "set_config"] and \
        all(isinstance(arg, ast.A_Const) for arg in call.args or ())


def load_checked_schema(dsn: str, dump: str, *, what: str) -> None:
    """Run a schema dump that :func:`check_loadable` accepted into a scratch database (never anywhere else)."""
    try:
        with connect(dsn, autocommit=True, application_name="dbprotect-schema") as conn:
            conn.execute(dump.encode())
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolError(f"{what} does not load: {first}") from None


def drift_from_snapshot(dsn: str, snapshot: StoredSnapshot, scratch: ScratchServer, *, left: str = "development",
                        allowed: tuple[str, ...] = ()) -> DriftReport:
    """``dsn``'s schema against a stored snapshot (loaded into a scratch database, never run elsewhere)."""
    with scratch_database(scratch) as copy:
        load_checked_schema(copy.dsn, snapshot.dump, what=f"the stored schema snapshot {snapshot.backup_id}")
        return compare_schemas(dsn, copy.dsn, left=left, right=f"production (snapshot {snapshot.backup_id})",
                               allowed=allowed)


__all__ = ["StoredSnapshot", "check_loadable", "drift_from_snapshot", "load_checked_schema", "read_schema_snapshot",
           "schema_sha256", "snapshot_key", "write_schema_snapshot"]
