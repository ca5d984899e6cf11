"""Continuous protection resolved from configuration: base backups, the WAL receiver, WAL fetch and
verification, status. The CLI (``dbprotect wal …``) calls these; later the Dagster definitions will.

Every entry refuses a database without ``continuous:`` (a :class:`ConfigError` naming the key), so a
logical-only database never gets a half-configured slot.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pyrage

from dbprotect.core.audit import AuditLog
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config, ContinuousSpec, S3StorageSpec
from dbprotect.core.continuous.base import (
    BaseBackupRecord,
    BaseVerification,
    list_base_backups,
    take_base_backup,
)
from dbprotect.core.continuous.drill import PitrDrillResult, run_pitr_drill
from dbprotect.core.continuous.heartbeat import Heartbeat, heartbeat_thread, prune_window, write_heartbeat
from dbprotect.core.continuous.pitr import PitrResult, restore_to_point
from dbprotect.core.continuous.rpo import (
    ContinuousRpo,
    evaluate_continuous_rpo,
    newest_stored_point,
    read_server_position,
    stored_timeline_switch_gaps,
)
from dbprotect.core.continuous.verdicts import verify_and_record
from dbprotect.core.continuous.wal import (
    ReceiverStats,
    WalVerification,
    fetch_wal,
    receive_wal,
    stored_segments,
    verify_wal,
    wal_gaps,
)
from dbprotect.core.errors import ConfigError, DbprotectError
from dbprotect.core.ops.context import DEFAULT_ACTOR, audit_failure, primary_store, raw_identity
from dbprotect.core.pg.dsn import register_dsn
from dbprotect.core.pg.tools import connect
from dbprotect.core.store.lock import StoreClock

#: The receiver's spool, under the configuration's folder unless ``--spool`` says otherwise.
SPOOL_FOLDER = ".dbprotect/wal-spool"


def continuous_spec(config: Config, database: str) -> ContinuousSpec:
    """The database's ``continuous:`` section; :class:`ConfigError` when it has none."""
    spec = config.database(database).continuous
    if spec is None:
        raise ConfigError(f"{config.source}: databases.{database} has no 'continuous:' section; it is protected "
                          "by logical backups only",
                          hint="add continuous: {slot: dbprotect_" + database + "} (the server must allow "
                               "replication connections)")
    return spec


def default_spool(config: Config, database: str) -> Path:
    return config.base_dir() / SPOOL_FOLDER / database


def base_backup_database(config: Config, database: str, *, environ: Mapping[str, str] | None = None,
                         actor: str = DEFAULT_ACTOR) -> BaseBackupRecord:
    """One base backup of the database's production server (incremental when configured and possible)."""
    spec = continuous_spec(config, database)
    storage = primary_store(config, database, environ)
    audit = AuditLog(storage, actor=actor)
    try:
        dsn = register_dsn(resolve_dsn(config, database, "production", environ))
        identity = raw_identity(config, environ) if spec.incremental and list_base_backups(storage, database) else None
        record = take_base_backup(database=database, dsn=dsn, storage=storage,
                                  recipients=config.keys.raw.recipients, incremental=spec.incremental,
                                  identity=identity, pg_bin_dir=config.tool_dirs,
                                  zstd_level=spec.base_compression_level, owner=actor)
    except DbprotectError as exc:
        audit_failure(audit, "base-backup", database, exc)
        raise
    audit.record("base-backup", database=database, outcome="ok", target=record.base_id,
                 detail=f"{record.kind} base backup {record.start_lsn}-{record.end_lsn}",
                 data={"kind": record.kind, "parent": record.parent, "stored_bytes": record.base["size"]})
    return record


def verify_base_backups(config: Config, database: str, *, base_id: str | None = None,
                        environ: Mapping[str, str] | None = None) -> list[BaseVerification]:
    """pg_verifybackup over one base backup, or every one of the database."""
    continuous_spec(config, database)
    storage = primary_store(config, database, environ)
    identity = raw_identity(config, environ)
    records = [r for r in list_base_backups(storage, database) if base_id is None or r.base_id == base_id]
    if base_id is not None and not records:
        raise ConfigError(f"no base backup {base_id} of {database}")
    results = []
    for record in records:
        # what retention's anchor needs: the verdict, written only once the check has finished
        results.append(verify_and_record(storage, record, identity, pg_bin_dir=config.tool_dirs,
                                         work_dir=config.scratch.work_dir))
    return results


def receive_database_wal(config: Config, database: str, *, stop: threading.Event, log: Any,
                         spool: Path | None = None, environ: Mapping[str, str] | None = None,
                         poll_seconds: float = 0.5) -> ReceiverStats:
    """Run the database's WAL receiver until ``stop`` is set (SIGTERM/SIGINT in the CLI), and beside it the
    heartbeat writer (every ``continuous.heartbeat_seconds``; a failed insert is logged, never fatal)."""
    spec = continuous_spec(config, database)
    dsn = register_dsn(resolve_dsn(config, database, "production", environ))
    with heartbeat_thread(dsn, interval_seconds=spec.heartbeat_seconds, log=log,
                          keep=prune_window(spec.retention_days)):
        return receive_wal(database=database, dsn=dsn, storage=primary_store(config, database, environ),
                           recipients=config.keys.raw.recipients,
                           spool=spool or default_spool(config, database), slot=spec.slot,
                           partial_upload_seconds=spec.partial_upload_seconds, synchronous=spec.synchronous,
                           incremental=spec.incremental, pg_bin_dir=config.tool_dirs, stop=stop, log=log,
                           poll_seconds=poll_seconds)


def fetch_database_wal(config: Config, database: str, name: str, dest: Path, *,
                       environ: Mapping[str, str] | None = None) -> str:
    """``restore_command``: decrypt WAL file ``name`` of ``database`` to ``dest``."""
    continuous_spec(config, database)
    return fetch_wal(primary_store(config, database, environ), database, name, raw_identity(config, environ), dest)


def verify_database_wal(config: Config, database: str, *, environ: Mapping[str, str] | None = None) -> WalVerification:
    continuous_spec(config, database)
    return verify_wal(primary_store(config, database, environ), database, raw_identity(config, environ))


@dataclass(frozen=True)
class ContinuousStatus:
    database: str
    base_backups: list[dict[str, Any]] = field(default_factory=list)
    timelines: dict[int, dict[str, Any]] = field(default_factory=dict)
    gaps: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "base_backups": self.base_backups,
                "timelines": {str(k): v for k, v in self.timelines.items()},
                "gaps": [{"first_missing": a, "last_missing": b} for a, b in self.gaps]}


def continuous_status(config: Config, database: str, *, environ: Mapping[str, str] | None = None) -> ContinuousStatus:
    """What the store holds: base backups, WAL per timeline (first, newest, count), gaps."""
    continuous_spec(config, database)
    storage = primary_store(config, database, environ)
    bases = [{"base_id": r.base_id, "kind": r.kind, "parent": r.parent, "start_lsn": r.start_lsn,
              "end_lsn": r.end_lsn, "timeline": r.timeline, "stored_bytes": r.base["size"]}
             for r in list_base_backups(storage, database)]
    timelines = {tli: {"first": names[0], "newest": names[-1], "segments": len(names)}
                 for tli, names in stored_segments(storage, database).items()}
    return ContinuousStatus(database, bases, timelines, wal_gaps(storage, database))


def dbprotect_command() -> str:
    """How the restored server calls dbprotect back (``restore_command``): this installation's script."""
    beside = Path(sys.executable).parent / "dbprotect"
    return str(beside) if beside.is_file() else (shutil.which("dbprotect") or "dbprotect")


#: What a subprocess needs of this process's environment to run at all — find its tools (``runuser``,
#: ``pg_ctl``'s helpers), speak its locale, have a home and a temporary folder. None of it is secret.
BASIC_ENVIRONMENT = ("PATH", "LANG", "LANGUAGE", "HOME", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL")
#: The variables boto reads its credentials from when an S3 store names no ``access_key_env``.
AWS_DEFAULT_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                           "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION", "AWS_DEFAULT_REGION",
                           "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE")


def restore_server_environment(config: Config, database: str, environ: Mapping[str, str] | None, *,
                               relayed: bool) -> dict[str, str]:
    """The environment of the restored server (and so of its ``restore_command``).

    Always this process's non-secret basics (:data:`BASIC_ENVIRONMENT`, ``LC_*``): a run's ``environ``
    holds secrets only (Dagster's secrets resource), and a server started with it alone has no ``PATH``
    (``runuser`` not found). Plus exactly the secrets ``dbprotect wal fetch`` needs — the raw identity
    and the primary store's credentials, taken from ``environ`` (or this process's environment) — and
    none when this process relays the WAL (the server then fetches nothing itself). Never the DSNs.
    """
    env = {name: value for name, value in os.environ.items() if name in BASIC_ENVIRONMENT or name.startswith("LC_")}
    if relayed:
        return env
    source = os.environ if environ is None else environ
    names = [config.keys.raw.identity_env]
    store = config.storage[config.primary_storage(database)]
    if isinstance(store, S3StorageSpec):
        explicit = [name for name in (store.access_key_env, store.secret_key_env) if name]
        names += explicit or list(AWS_DEFAULT_CREDENTIALS)
    env.update({name: source[name] for name in names if name in source})
    return env


def restore_database_to_point(config: Config, database: str, *, data_dir: Path, to_time: datetime | None = None,
                              to_lsn: str | None = None, environ: Mapping[str, str] | None = None,
                              actor: str = DEFAULT_ACTOR,
                              identity: pyrage.x25519.Identity | None = None) -> PitrResult:
    """Restore ``database``'s server to ``to_time``/``to_lsn`` into the new ``data_dir``, started and promoted.

    The server's ``restore_command`` is ``dbprotect --config <this file> wal fetch %f %p --database DB``;
    the identity reaches it through the server's environment (:func:`restore_server_environment`), never a
    file we write. A caller that holds the identity itself (Dagster, from its resource) passes
    ``identity``: this process then relays the WAL and the server gets no secret at all.
    """
    continuous_spec(config, database)
    storage = primary_store(config, database, environ)
    audit = AuditLog(storage, actor=actor)
    relayed = identity is not None
    try:
        identity = raw_identity(config, environ, identity)
        result = restore_to_point(storage=storage, database=database, identity=identity,
                                  data_dir=data_dir, restore_command=fetch_command(config, database),
                                  to_time=to_time, to_lsn=to_lsn, pg_bin_dir=config.tool_dirs,
                                  server_environ=restore_server_environment(config, database, environ,
                                                                            relayed=relayed),
                                  work_dir=config.scratch.work_dir, relay=relayed)
    except DbprotectError as exc:
        audit_failure(audit, "pitr-restore", database, exc)
        raise
    passed_over = f"; newer bases passed over: {'; '.join(result.skipped)}" if result.skipped else ""
    audit.record("pitr-restore", database=database, outcome="ok", target=str(data_dir),
                 detail=f"restored to {result.target} from {', '.join(result.chain)}{passed_over}",
                 data={"seconds": round(result.seconds, 3), "chain": result.chain, "skipped": list(result.skipped),
                       "content_check": result.smoke.to_dict() if result.smoke else None})
    return result


def fetch_command(config: Config, database: str) -> str:
    """The ``restore_command`` a restored server runs: ``dbprotect --config <file> wal fetch %f %p --database DB``."""
    parts = (dbprotect_command(), "--config", str(Path(config.source).resolve()), "wal", "fetch")
    return " ".join(shlex.quote(part) for part in parts) + f" %f %p --database {shlex.quote(database)}"


def heartbeat_database(config: Config, database: str, *, environ: Mapping[str, str] | None = None) -> Heartbeat:
    """``dbprotect wal heartbeat DB``: one heartbeat row on the production server, now."""
    continuous_spec(config, database)
    return write_heartbeat(register_dsn(resolve_dsn(config, database, "production", environ)))


def pitr_drill_database(config: Config, database: str, *, environ: Mapping[str, str] | None = None,
                        actor: str = DEFAULT_ACTOR, rng: random.Random | None = None,
                        identity: pyrage.x25519.Identity | None = None) -> PitrDrillResult:
    """A point-in-time drill of ``database`` (:mod:`dbprotect.core.continuous.drill`): restore to a random
    moment between two heartbeats into a private scratch data directory, prove the landing, record RTO
    and achieved RPO (audit + check record), remove the scratch server. A failed proof returns
    ``ok=False``; environment failures and refusals are raised and audited as what they are. The WAL is
    always relayed from this process (``relay=True``): the scratch server never holds the identity."""
    spec = continuous_spec(config, database)
    storage = primary_store(config, database, environ)
    audit = AuditLog(storage, actor=actor)
    try:
        identity = raw_identity(config, environ, identity)
        source = register_dsn(resolve_dsn(config, database, "production", environ))
        command = fetch_command(config, database)

        def restore(to_time: datetime, data_dir: Path) -> PitrResult:
            return restore_to_point(storage=storage, database=database, identity=identity, data_dir=data_dir,
                                    restore_command=command, to_time=to_time, pg_bin_dir=config.tool_dirs,
                                    server_environ=restore_server_environment(config, database, environ,
                                                                              relayed=True),
                                    work_dir=config.scratch.work_dir, relay=True)

        result = run_pitr_drill(storage=storage, database=database, source_dsn=source, restore=restore,
                                heartbeat_seconds=spec.heartbeat_seconds, work_dir=config.scratch.work_dir,
                                by=actor, rng=rng, pg_bin_dir=config.tool_dirs)
    except DbprotectError as exc:
        audit_failure(audit, "pitr-drill", database, exc)
        raise
    audit.record("pitr-drill", database=database, outcome="ok" if result.ok else "failed",
                 target=result.target_time, detail=result.detail,
                 data={"metrics": result.metrics(), "chain": result.chain})
    return result


def continuous_rpo(config: Config, database: str, *, environ: Mapping[str, str] | None = None,
                   now_store: StoreClock | None = None) -> ContinuousRpo:
    """The measured RPO of ``database`` (``continuous_rpo``): reads WAL and base records and asks the server.

    Holds no private key. A store or server that cannot be read is a failed result naming why, never
    a pass: the check must say red when it cannot see. The store's clock is probed (a tiny object,
    written and deleted, as locks do); where the credential may not write, the server's clock alone
    judges, with a note.
    """
    spec = continuous_spec(config, database)
    storage = primary_store(config, database, environ)
    target = spec.rpo_seconds
    notes: list[str] = []
    try:
        bases = list_base_backups(storage, database)
        point = newest_stored_point(storage, database, notes)
        gaps = wal_gaps(storage, database)
        if bases:  # recovery starts on the newest base's timeline and must follow every switch after it
            gaps += stored_timeline_switch_gaps(storage, database, from_timeline=bases[-1].timeline)
        dsn = register_dsn(resolve_dsn(config, database, "production", environ))
        with contextlib.closing(connect(dsn, autocommit=True, application_name="dbprotect-rpo")) as conn:
            server = read_server_position(conn, spec.slot)
    except (DbprotectError, psycopg.Error) as exc:
        reason = exc.one_line() if isinstance(exc, DbprotectError) else " ".join(str(exc).split())
        return ContinuousRpo(database, target, None, None, None, None, None, None, None, False,
                             f"cannot measure: {reason}", tuple(notes))
    try:
        store_now = (now_store or StoreClock(storage, database)).now()
    except DbprotectError as exc:  # a read-only credential: judged by the server's clock alone, and said so
        store_now = None
        notes.append(f"the store's clock could not be probed ({exc.one_line()}): judged by the server's clock only")
    return evaluate_continuous_rpo(database, target_seconds=target, point=point, server=server,
                                   store_now=store_now, tolerance=config.clock_skew_tolerance,
                                   newest_base=bases[-1].base_id if bases else None, gaps=gaps,
                                   notes=tuple(notes))


@dataclass(frozen=True)
class ProtectionKind:
    """What protects a database: logical backups only, or logical plus continuous (base + WAL)."""

    database: str
    kind: str  # "logical" | "logical+continuous"
    newest_base: str | None = None
    newest_lsn: str | None = None
    safe_through: datetime | None = None
    rpo: ContinuousRpo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "newest_base": self.newest_base, "newest_stored_lsn": self.newest_lsn,
                "safe_through": self.safe_through.isoformat() if self.safe_through else None,
                "measured_rpo": self.rpo.to_dict() if self.rpo else None}


def protection_kind(config: Config, database: str, *, environ: Mapping[str, str] | None = None) -> ProtectionKind:
    """``status``: the kind of protection, and for continuous its newest base, stored LSN/time and measured RPO."""
    if config.database(database).continuous is None:
        return ProtectionKind(database, "logical")
    rpo = continuous_rpo(config, database, environ=environ)
    return ProtectionKind(database, "logical+continuous", rpo.newest_base, rpo.newest_lsn, rpo.safe_time, rpo)
