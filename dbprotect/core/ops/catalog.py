"""What a store and a configuration hold, resolved from configuration: backup listings, audit logs, markers.

Small config-level reads (and the one marker write) that the CLI used to assemble itself from
engine pieces: which store a database's backups are listed from, which store's audit log to read,
which DSN an environment marker goes on. Here so that every caller resolves them the same way.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from dbprotect.core import audit
from dbprotect.core.audit import AuditRecord, ChainReport
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config, derived_folders
from dbprotect.core.errors import DbprotectError, NotFoundError
from dbprotect.core.ops.context import open_storage, primary_store
from dbprotect.core.pg.dsn import dbname_of
from dbprotect.core.schema.targets import mark_database
from dbprotect.core.store.catalog import BackupEntry, find_backup, list_backups, load_manifest
from dbprotect.core.store.manifest import BACKUP_KINDS, Manifest


@dataclass(frozen=True)
class BackupListing:
    """The backups of one database in its primary store, newest first."""

    database: str
    storage_uri: str
    entries: list[BackupEntry]
    #: Folders that are not readable backups (an impossible date in the name), with the reason.
    skipped: tuple[str, ...] = ()
    #: With every kind listed: ``"<folder>/<backup id>"`` -> its kind (:data:`BACKUP_KINDS`, or
    #: ``backup`` for one older than kinds, ``unreadable`` when its manifest does not parse).
    kinds: dict[str, str] = field(default_factory=dict)

    def kind(self, entry: BackupEntry) -> str | None:
        return self.kinds.get(f"{entry.database}/{entry.backup_id}")


def folder_kind(database: str, folder: str) -> str | None:
    """The kind every backup in ``folder`` has, for a folder derived from ``database``; None for
    ``database``'s own folder (scheduled or manual: its manifests say which) and for any other folder."""
    kinds = {f"{database}-safety": "safety", f"{database}-development-safety": "safety",
             f"{database}.development": "guard", f"{database}-sanitized": "sanitized"}
    return kinds.get(folder)


def manifest_kind(manifest: Manifest) -> str:
    """What a manifest says it is: its ``kind``, a sanitized copy by its lineage, else ``backup``
    (taken before kinds were recorded)."""
    extra = manifest.model_extra or {}
    kind = extra.get("kind")
    if isinstance(kind, str) and kind in BACKUP_KINDS:
        return kind
    return "sanitized" if "sanitized" in extra else "backup"


def backup_folders(database: str) -> list[str]:
    """Where ``database``'s backups of every kind live in its primary store: its own folder first."""
    return [database, *derived_folders(database)]


def list_database_backups(config: Config, database: str, *, include_incomplete: bool = False,
                          all_kinds: bool = False, environ: Mapping[str, str] | None = None) -> BackupListing:
    """List ``database``'s backups from its primary store (object names and sizes; no manifest read).

    An unknown database name raises :class:`~dbprotect.core.errors.NotFoundError` before any store
    is opened; ``include_incomplete`` adds uploads that never got their manifest (never backups).
    ``all_kinds`` adds the safety, guard and sanitized backups kept in the folders derived from the
    name (:func:`backup_folders`) and says each backup's kind; that reads the manifests of the
    database's own folder (the only place where scheduled and manual backups sit side by side).
    """
    config.database(database)
    storage = primary_store(config, database, environ)
    skipped: list[str] = []
    entries: list[BackupEntry] = []
    kinds: dict[str, str] = {}
    for folder in backup_folders(database) if all_kinds else [database]:
        found = list_backups(storage, folder, include_incomplete=include_incomplete,
                             tolerance=config.clock_skew_tolerance, skipped=skipped)
        entries.extend(found)
        if not all_kinds:
            continue
        for entry in found:
            kind = folder_kind(database, folder)
            if kind is None and entry.has_manifest:
                try:
                    kind = manifest_kind(load_manifest(storage, folder, entry.backup_id))
                except DbprotectError:
                    kind = "unreadable"  # untrusted: named, never guessed; 'verify' says why
            kinds[f"{folder}/{entry.backup_id}"] = kind or "backup"
    entries.sort(key=lambda entry: entry.backup_id, reverse=True)
    return BackupListing(database, storage.uri, entries, tuple(skipped), kinds)


def locate_any_backup(config: Config, backup_id: str, database: str | None = None, *,
                      environ: Mapping[str, str] | None = None) -> tuple[str, BackupEntry]:
    """A backup of any kind by id: (the configured database it belongs to, its listing entry).

    Searches each configured database's own folder and the folders derived from its name (safety
    backups, guard backups, sanitized copies), so the undo path's backups are reached by their id
    like any other. ``entry.database`` is the folder the backup sits in.
    """
    names = [database] if database else sorted(config.databases)
    for name in names:
        storage = primary_store(config, name, environ)
        try:
            folders = [name] if backup_id == "latest" else backup_folders(name)  # 'latest': the database's own
            return name, find_backup(storage, folders, backup_id)
        except NotFoundError:
            continue
    raise NotFoundError(f"no backup {backup_id!r} of any kind in any configured database ({', '.join(names)})",
                        hint="'dbprotect list DATABASE --all' shows the backups that exist, with their kind")


def undo_command(database: str, backup_id: str, environment: str, target_name: str) -> str:
    """The exact command that puts ``target_name`` back as ``backup_id`` (a safety or guard backup) left it.

    Printed by every command that takes such a backup: an on-call engineer copies it, nothing to look up.
    """
    return (f"dbprotect restore {shlex.quote(database)} {backup_id} --target "
            f"{shlex.quote(f'{environment}:{target_name}')} --confirm {shlex.quote(target_name)}")


def primary_store_names(config: Config) -> list[str]:
    """The storage targets that are some configured database's primary store, sorted."""
    return sorted({config.primary_storage(name) for name in config.databases})


@dataclass(frozen=True)
class AuditReading:
    """Records read from one store's audit log, and the chain's verdict when it was checked."""

    store: str
    uri: str
    records: list[AuditRecord]
    chain: ChainReport | None


def read_audit_log(config: Config, store_name: str, *, database: str | None = None, limit: int | None = None,
                   verify_chain: bool = False, expect_head: tuple[int, str] | None = None,
                   environ: Mapping[str, str] | None = None) -> AuditReading:
    """The audit log of the storage target ``store_name``, oldest record first.

    ``database`` keeps only records about it; ``limit`` keeps the newest N. With ``verify_chain``
    every hash and link of the whole log is recomputed (whatever the filters), so an edited,
    removed or reordered record is named in :attr:`AuditReading.chain`, and the chain must still
    hold the heads the newest manifests recorded (anchors) and ``expect_head`` (``(seq, hash)``).
    """
    storage = open_storage(config, store_name, environ)
    records = [r for r in audit.read(storage) if database is None or r.database == database]
    if limit:
        records = records[-limit:]
    chain = (audit.verify_chain(storage, known_head=expect_head, anchors=audit.collect_anchors(storage))
             if verify_chain or expect_head else None)
    return AuditReading(store_name, storage.uri, records, chain)


def mark_configured_database(config: Config, database: str, environment: str) -> tuple[str, str | None]:
    """Set the environment marker on the database that ``environment``'s configured DSN names.

    Returns (the database's name on its server, its previous marker or None).
    """
    return mark_database(resolve_dsn(config, database, environment), environment)


def undo_command_for(config: Config, database: str, environment: str, backup_id: str,
                     environ: Mapping[str, str] | None = None) -> str:
    """:func:`undo_command` for a backup of the database ``environment``'s configured DSN names."""
    name = dbname_of(resolve_dsn(config, database, environment, environ)) or database
    return undo_command(database, backup_id, environment, name)
