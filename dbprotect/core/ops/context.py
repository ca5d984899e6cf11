"""What every operation resolves from configuration: stores, keys, the audit log and who acts.

The other ``ops`` modules build on these; nothing below ``ops`` calls them, so the engine modules
receive resolved stores and keys, never a ``Config`` to dig in.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyrage

from dbprotect.core.audit import AuditLog, AuditRecord
from dbprotect.core.config.model import Config, FilesystemStorageSpec, KeySpec, S3StorageSpec
from dbprotect.core.crypto import load_identity
from dbprotect.core.errors import (
    ConfigError,
    CredentialIsolationError,
    DbprotectError,
    NotFoundError,
    Refusals,
    RefusedError,
)
from dbprotect.core.pg.dsn import register_dsn
from dbprotect.core.pg.scratch import (
    ScratchServer,
    embedded_scratch_server,
)
from dbprotect.core.pg.swap import recover_and_sweep
from dbprotect.core.restore.staged import swap_recovery_recorder
from dbprotect.core.store import FilesystemStorage, S3Storage, Storage
from dbprotect.core.store.s3 import s3_credentials_from_env
from dbprotect.core.verify.integrity import IntegrityReport

#: The audit actor when a caller names none; the CLI passes ``cli:<user>``, Dagster ``dagster:<job>``.
DEFAULT_ACTOR = "dbprotect"


def cli_actor() -> str:
    """``cli:<login name>``: who ran a command, as the audit log records it."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container with an unknown uid)
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def audit_failure(audit: AuditLog, action: str, database: str, exc: DbprotectError, *, target: str = "") -> None:
    """Record a refused or failed action; a store too broken to record it must not hide ``exc``."""
    outcome = "refused" if isinstance(exc, RefusedError | CredentialIsolationError) else "failed"
    with contextlib.suppress(DbprotectError):
        audit.record(action, database=database, outcome=outcome, target=target, detail=exc.one_line(),
                     data={"error": exc.code})


def open_storage(config: Config, name: str, environ: Mapping[str, str] | None = None) -> Storage:
    """The store a configuration names; relative filesystem paths resolve against the config file.

    An S3 store's credentials come from the variables its spec names, read in ``environ``: the
    run's secrets (Dagster's ``dbprotect_secrets`` resource) or, when None, the process
    environment (the CLI's channel). Every function that opens a store takes the same ``environ``.
    """
    try:
        spec = config.storage[name]
    except KeyError:
        raise NotFoundError(f"no storage target {name!r} in {config.source}") from None
    if isinstance(spec, FilesystemStorageSpec):
        path = Path(spec.path).expanduser()
        if not path.is_absolute():
            path = config.base_dir() / path
        return FilesystemStorage(path)
    assert isinstance(spec, S3StorageSpec)
    access, secret = s3_credentials_from_env(spec.access_key_env, spec.secret_key_env, environ)
    return S3Storage(spec.bucket, spec.prefix, region=spec.region, endpoint_url=spec.endpoint_url,
                     access_key=access, secret_key=secret)


def primary_store(config: Config, database: str, environ: Mapping[str, str] | None = None) -> Storage:
    return open_storage(config, config.primary_storage(database), environ)


def raw_identity(config: Config, environ: Mapping[str, str] | None = None,
                 identity: pyrage.x25519.Identity | None = None) -> pyrage.x25519.Identity:
    """The raw-backup identity: ``identity`` when the caller resolved it (Dagster, from its resource),
    else read from ``config.keys.raw.identity_env`` in ``environ`` (the CLI's channel).

    A passed identity is used as it is: the environment is not consulted behind the caller's back.
    """
    if identity is not None:
        return identity
    return load_identity(config.keys.raw.identity_env, environ)


#: Deployments that may hold the development identity (a production or verification deployment
#: refuses to load with it set: :func:`dbprotect.core.config.isolation.check_credential_isolation`).
DEVELOPMENT_KEY_DEPLOYMENTS = frozenset({"development", "demo"})


@dataclass(frozen=True)
class BackupKeys:
    """Which key a backup is encrypted to, chosen by the store folder it sits in (never by its manifest).

    ``key`` is ``raw`` or ``development``; ``spec`` the configured key; ``safety_folder`` where a
    restore from this backup puts its own safety backup (encrypted to the same key).
    """

    key: str
    spec: KeySpec
    safety_folder: str


def backup_keys(config: Config, database: str, folder: str) -> BackupKeys:
    """The one rule for every command that takes a backup id (verify, restore, compare, drill, the jobs).

    A promotion's safety backup (``<database>-development-safety``) and a sanitized copy
    (``<database>-sanitized``) are encrypted to the development key: they belong to the
    development side, read there with the development identity (the raw one is refused on that
    side), and a restore from one puts its own safety backup in ``<database>-development-safety``,
    to the same key. Every other folder holds raw backups, whose undo goes to
    ``<database>-safety``. The folder decides, not the manifest: the manifest is untrusted and
    is read only after the key is chosen.
    """
    if folder in (f"{database}-development-safety", f"{database}-sanitized"):
        if config.keys.development is None:
            raise ConfigError(f"{config.source}: keys.development is missing",
                              hint=f"backups in {folder} are encrypted to the development key")
        return BackupKeys("development", config.keys.development, f"{database}-development-safety")
    return BackupKeys("raw", config.keys.raw, f"{database}-safety")


def backup_identity(config: Config, database: str, folder: str, environ: Mapping[str, str] | None = None, *,
                    raw: pyrage.x25519.Identity | None = None,
                    development: pyrage.x25519.Identity | None = None) -> pyrage.x25519.Identity:
    """The identity that decrypts a backup kept in ``folder`` (:func:`backup_keys` chooses the key).

    ``raw``/``development``: identities the caller already resolved (Dagster, from its
    resources); a passed raw identity is never used for a development-key backup. Otherwise the
    key's variable is read in ``environ`` (the CLI's process environment; Dagster's secrets
    resource). A deployment that may not hold the development identity refuses a
    development-key backup in one line (DBP934) instead of failing to decrypt it with the raw key.
    """
    keys = backup_keys(config, database, folder)
    if keys.key == "raw":
        return raw_identity(config, environ, raw)
    if development is not None:
        return development
    if config.deployment not in DEVELOPMENT_KEY_DEPLOYMENTS:
        raise RefusedError(f"backup folder {folder} is encrypted to the development key, which a "
                           f"{config.deployment} deployment never holds",
                           hint="restore or verify it from the development deployment (the undo of a promotion "
                           "belongs to the development side)", refusal=Refusals.DEVELOPMENT_KEY_NOT_HELD)
    return load_identity(keys.spec.identity_env, environ)


def audit_report(audit: AuditLog, database: str, report: IntegrityReport) -> None:
    audit.record("verify", database=database, outcome="ok" if report.ok else "failed", target=report.backup_id,
                 detail=report.summary(), data={r.rung: r.ok for r in report.results})


def retention_timezone(config: Config) -> tzinfo:
    """The zone whose days, weeks and months the retention period rules count in."""
    try:
        return ZoneInfo(config.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def target_store(config: Config, database: str, target: str, environ: Mapping[str, str] | None = None) -> Storage:
    """One of the database's storage targets; :class:`NotFoundError` names the ones it has."""
    names = config.storage_names(database)
    if target not in names:
        raise NotFoundError(f"database {database!r} is not stored on target {target!r}",
                            hint=f"its targets: {', '.join(names)}")
    return open_storage(config, target, environ)


class _TargetAuditLog(AuditLog):
    """The primary store's audit log, with the storage target each record is about in its data."""

    def __init__(self, storage: Storage, *, actor: str, target: str) -> None:
        super().__init__(storage, actor=actor)
        self.target_name = target

    def record(self, action: str, *, database: str, outcome: str, target: str = "", detail: str = "",
               data: dict[str, Any] | None = None) -> AuditRecord:
        return super().record(action, database=database, outcome=outcome, target=target, detail=detail,
                              data={"store": self.target_name, **(data or {})})


def audit_log(config: Config, database: str, *, actor: str, target: str | None = None,
              environ: Mapping[str, str] | None = None) -> AuditLog:
    """The audit log actions on ``database`` are recorded in: its primary store's, whatever the target."""
    storage = primary_store(config, database, environ)
    return _TargetAuditLog(storage, actor=actor, target=target) if target else AuditLog(storage, actor=actor)


@contextlib.contextmanager
def scratch_server_from_config(config: Config, environ: Mapping[str, str] | None = None, *,
                               audit: AuditLog | None = None, database: str = "") -> Iterator[ScratchServer]:
    """The scratch server ``config.scratch`` describes (default: embedded, under the config's folder).

    Every use first finishes or rolls back interrupted swaps and drops the scratch databases a
    killed run left (:func:`dbprotect.core.pg.swap.recover_and_sweep`: by marker, never by name):
    a drill or verification killed with SIGKILL cannot drop its own, so the next one sweeps them.
    Each recovered swap is recorded in ``audit`` (about ``database``), like a restore's.
    """
    on_recovered = swap_recovery_recorder(audit, database)
    environ = os.environ if environ is None else environ
    admin_env = config.scratch.admin_dsn_env
    if admin_env:
        dsn = environ.get(admin_env)
        if not dsn:
            raise ConfigError(f"${admin_env} is not set (the admin DSN of the scratch server)",
                              hint=f"export {admin_env}=postgresql://user:password@host:5432/postgres")
        server = ScratchServer(register_dsn(dsn))
        recover_and_sweep(server.admin_dsn, on_recovered=on_recovered)
        yield server
        return
    data_dir = Path(config.scratch.data_dir).expanduser()
    if not data_dir.is_absolute():
        data_dir = config.base_dir() / data_dir
    with embedded_scratch_server(data_dir) as server:
        recover_and_sweep(server.admin_dsn, on_recovered=on_recovered)
        yield server
