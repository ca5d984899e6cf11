"""What a store and a configuration hold, resolved from configuration: backup listings, audit logs, markers.

Small config-level reads (and the one marker write) that the CLI used to assemble itself from
engine pieces: which store a database's backups are listed from, which store's audit log to read,
which DSN an environment marker goes on. Here so that every caller resolves them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbprotect.core import audit
from dbprotect.core.audit import AuditRecord, ChainReport
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.ops.context import open_storage, primary_store
from dbprotect.core.schema.targets import mark_database
from dbprotect.core.store.catalog import BackupEntry, list_backups


@dataclass(frozen=True)
class BackupListing:
    """The backups of one database in its primary store, newest first."""

    database: str
    storage_uri: str
    entries: list[BackupEntry]
    #: Folders that are not readable backups (an impossible date in the name), with the reason.
    skipped: tuple[str, ...] = ()


def list_database_backups(config: Config, database: str, *, include_incomplete: bool = False) -> BackupListing:
    """List ``database``'s backups from its primary store (object names and sizes; no manifest read).

    An unknown database name raises :class:`~dbprotect.core.errors.NotFoundError` before any store
    is opened; ``include_incomplete`` adds uploads that never got their manifest (never backups).
    """
    config.database(database)
    storage = primary_store(config, database)
    skipped: list[str] = []
    entries = list_backups(storage, database, include_incomplete=include_incomplete,
                           tolerance=config.clock_skew_tolerance, skipped=skipped)
    return BackupListing(database, storage.uri, entries, tuple(skipped))


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
                   verify_chain: bool = False, expect_head: tuple[int, str] | None = None) -> AuditReading:
    """The audit log of the storage target ``store_name``, oldest record first.

    ``database`` keeps only records about it; ``limit`` keeps the newest N. With ``verify_chain``
    every hash and link of the whole log is recomputed (whatever the filters), so an edited,
    removed or reordered record is named in :attr:`AuditReading.chain`, and the chain must still
    hold the heads the newest manifests recorded (anchors) and ``expect_head`` (``(seq, hash)``).
    """
    storage = open_storage(config, store_name)
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
