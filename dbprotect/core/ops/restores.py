"""Restores, restore verification (rung 3) and drills (rung 4) of a configured database.

Every guard is :func:`dbprotect.core.restore.oncall.restore`'s and every comparison is core's; this
module only resolves the store, keys, scratch server and targets from the configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import pyrage

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.errors import (
    Refusals,
    RefusedError,
)
from dbprotect.core.ops.catalog import backup_folders
from dbprotect.core.ops.context import (
    backup_identity,
    backup_keys,
    primary_store,
    scratch_server_from_config,
)
from dbprotect.core.pg.dsn import with_dbname
from dbprotect.core.pg.pg_restore import Progress
from dbprotect.core.restore.drill import DrillResult, newest_complete_backup, run_drill
from dbprotect.core.restore.interrupts import terminate_as_interrupt
from dbprotect.core.restore.oncall import RestorePlan, RestoreResult, RestoreTarget, restore
from dbprotect.core.restore.staged import (
    ENVIRONMENT_FAILURES,
    RestoreVerification,
    record_environment_failure,
    verify_restore,
)
from dbprotect.core.store.catalog import find_backup, load_manifest, newest_verified_backup
from dbprotect.core.store.lock import database_lock
from dbprotect.core.verify.compare import Comparison, compare_database


def default_restore_name(database: str, backup_id: str) -> str:
    """``<database>_restored_<backup id>``, lower case: a new database's name that says what it holds."""
    return f"{database}_restored_{backup_id}".lower().replace("-", "_")[:63]


def restore_target(config: Config, database: str, *, environment: str = "production", existing: bool = False,
                   name: str | None = None, environ: Mapping[str, str] | None = None) -> RestoreTarget:
    """Where a restore goes, from the configured DSN of ``environment`` (read from its variable now).

    ``existing``: the database the environment's DSN names (or ``name`` on the same server) is
    overwritten, behind core's guards. Otherwise a new database ``name`` is created on that
    environment's server. Credential isolation applies: a deployment reaches only its own DSNs.
    """
    dsn = resolve_dsn(config, database, environment, environ)
    if existing:
        return RestoreTarget(with_dbname(dsn, name) if name else dsn, environment, existing=True)
    if not name:
        raise RefusedError("a restore to a new database needs the new database's name",
                           hint=f"name it, e.g. {database}_restored",
                           refusal=Refusals.TARGET_NAME_MISSING)
    return RestoreTarget(with_dbname(dsn, name), environment, existing=False)


def restore_database(config: Config, database: str, backup_id: str | None = None, *, environment: str = "production",
                     existing: bool = False, target_name: str | None = None, confirmation: str | None = None,
                     dry_run: bool = False, by: str = "dbprotect", environ: Mapping[str, str] | None = None,
                     identity: pyrage.x25519.Identity | None = None,
                     development_identity: pyrage.x25519.Identity | None = None,
                     progress: Callable[[str], None] | None = None,
                     analyze: bool | None = None) -> RestorePlan | RestoreResult:
    """The on-call restore of a configured database: what ``dbprotect restore`` and the ``restore`` job call.

    ``backup_id`` defaults to the newest verified backup (:func:`newest_verified_backup`); any
    other id may be a backup of any kind of ``database`` (a safety backup, a guard backup: the undo
    path, :func:`~dbprotect.core.ops.catalog.backup_folders`), decrypted with the key its folder
    says (:func:`~dbprotect.core.ops.context.backup_keys`; ``identity`` is the raw identity,
    ``development_identity`` the development one, when the caller resolved them). A new database's name defaults to
    :func:`default_restore_name`. Every guard is
    :func:`dbprotect.core.restore.oncall.restore`'s; this resolves the store, keys, tools and work folder
    from the configuration and audits the outcome (refusals included) in the store.
    """
    storage = primary_store(config, database, environ)
    folder = database
    if backup_id is None:
        backup_id = newest_verified_backup(storage, database)
    else:
        entry = find_backup(storage, [database] if backup_id == "latest" else backup_folders(database), backup_id)
        backup_id, folder = entry.backup_id, entry.database
    keys = backup_keys(config, database, folder)
    identity = backup_identity(config, database, folder, environ, raw=identity, development=development_identity)
    if not existing and not target_name:
        target_name = default_restore_name(database, backup_id)
    target = restore_target(config, database, environment=environment, existing=existing, name=target_name,
                            environ=environ)
    manifest = load_manifest(storage, folder, backup_id)
    # A restore writes the store too (its safety backup, its records): it holds the database's lock,
    # so a cleanup cannot delete the backup being restored; a dry run writes nothing and takes none.
    # SIGTERM arrives as an exception, so the lock is released like any other exit.
    with terminate_as_interrupt(), contextlib.ExitStack() as held:
        if not dry_run:
            held.enter_context(database_lock(storage, database, owner=by))
        return restore(storage, manifest, identity, target, confirmation=confirmation,
                       recipients=keys.spec.recipients, dry_run=dry_run,
                       audit=AuditLog(storage, actor=by), pg_bin_dir=config.tool_dirs,
                       work_dir=config.scratch.work_dir, by=by, progress=progress, analyze=analyze,
                       safety_database=keys.safety_folder)


def restore_verify_database(config: Config, database: str, backup_id: str | None = None, *,
                            by: str = "dbprotect", environ: Mapping[str, str] | None = None,
                            identity: pyrage.x25519.Identity | None = None,
                            progress: Progress | None = None, audit: AuditLog | None = None) -> RestoreVerification:
    """Rung 3 for one backup of a configured database (default: the newest complete one)."""
    storage = primary_store(config, database, environ)
    manifest = load_manifest(storage, database, backup_id or newest_complete_backup(storage, database))
    log = audit or AuditLog(storage, actor=by)
    decrypting = backup_identity(config, database, database, environ, raw=identity)  # its own folder: the raw key
    try:
        with terminate_as_interrupt(), scratch_server_from_config(config, environ, audit=log,
                                                                  database=database) as server:
            return verify_restore(storage, manifest, decrypting, server,
                                  pg_bin_dir=config.tool_dirs, work_dir=config.scratch.work_dir, by=by,
                                  progress=progress, audit=audit)
    except ENVIRONMENT_FAILURES as exc:
        record_environment_failure(log, "verify", database=database, backup_id=manifest.backup_id, failure=exc)
        raise


def drill_database(config: Config, database: str, *, by: str = "drill", environ: Mapping[str, str] | None = None,
                   identity: pyrage.x25519.Identity | None = None,
                   progress: Progress | None = None, audit: AuditLog | None = None) -> DrillResult:
    """A drill of a configured database against its ``rto_minutes``."""
    storage = primary_store(config, database, environ)
    backup_id = newest_complete_backup(storage, database)
    log = audit or AuditLog(storage, actor=by)
    decrypting = backup_identity(config, database, database, environ, raw=identity)  # its own folder: the raw key
    try:
        with terminate_as_interrupt(), scratch_server_from_config(config, environ, audit=log,
                                                                  database=database) as server:
            return run_drill(storage, database, decrypting, server,
                             rto_minutes=config.database(database).rto_minutes, backup_id=backup_id,
                             pg_bin_dir=config.tool_dirs, work_dir=config.scratch.work_dir, by=by,
                             progress=progress, audit=audit)
    except ENVIRONMENT_FAILURES as exc:  # the scratch server or the tools failed: the backup was not judged
        record_environment_failure(log, "drill", database=database, backup_id=backup_id, failure=exc)
        raise




def compare_with_backup(config: Config, database: str, backup_id: str, *, environment: str = "production",
                        target_name: str | None = None, owners: bool = True,
                        environ: Mapping[str, str] | None = None) -> tuple[str, Comparison]:
    """``dbprotect compare``: a database against one backup of a configured database, with core's one comparison.

    The compared database is the one ``environment``'s configured DSN names, or ``target_name`` on
    that server (e.g. a database restored with ``--target new:NAME``). ``backup_id`` may be a
    backup of any kind (a safety backup: was the undo complete?); only its manifest is read, so no
    key is needed. Reads only: nothing is
    written to the store or the database. Returns (the backup id, the comparison).
    """
    storage = primary_store(config, database, environ)
    entry = find_backup(storage, [database] if backup_id == "latest" else backup_folders(database), backup_id)
    manifest = load_manifest(storage, entry.database, entry.backup_id)
    target = restore_target(config, database, environment=environment, existing=True, name=target_name,
                            environ=environ)
    with terminate_as_interrupt():
        return entry.backup_id, compare_database(target.dsn, manifest, owners=owners, pg_bin_dir=config.pg_bin_dir,
                                                settings=True)
