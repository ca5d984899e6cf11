"""``dbprotect wal …``: continuous protection (base backups, the WAL receiver, fetch for restore_command).

Thin calls into :mod:`dbprotect.core.ops.continuous`.
"""

from __future__ import annotations

import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from dbprotect.cli.ui.render import Ui, common_options, scrub
from dbprotect.core.errors import EXIT_OK, IntegrityError
from dbprotect.core.ops import cli_actor
from dbprotect.core.ops.continuous import (
    base_backup_database,
    continuous_status,
    fetch_database_wal,
    heartbeat_database,
    pitr_drill_database,
    receive_database_wal,
    restore_database_to_point,
    verify_base_backups,
    verify_database_wal,
)


@click.group("wal")
def wal() -> None:
    """Continuous protection: base backups and the WAL stream, for restores to a point in time.

    For databases with 'continuous:' in dbprotect.yaml, on servers that allow replication connections.
    """


@wal.command("base-backup")
@click.argument("database")
@common_options
@click.pass_obj
def base_backup_command(ui: Ui, database: str) -> int:
    """Take a base backup of DATABASE's server (pg_basebackup → zstd → age → store); incremental
    against the previous one when 'continuous.incremental' is on."""
    record = base_backup_database(ui.load(), database, actor=cli_actor())
    if ui.json:
        ui.emit({"database": database, "base_id": record.base_id, "kind": record.kind, "parent": record.parent,
                 "start_lsn": record.start_lsn, "end_lsn": record.end_lsn, "stored_bytes": record.base["size"]})
    else:
        click.echo(f"{record.kind} base backup {record.base_id} of {database}: {record.start_lsn}-{record.end_lsn}, "
                   f"{record.base['size']} bytes stored")
    return EXIT_OK


@wal.command("verify")
@click.argument("database")
@common_options
@click.pass_obj
def verify_command(ui: Ui, database: str) -> int:
    """Verify DATABASE's base backups (pg_verifybackup) and every stored WAL segment (SHA-256, decrypt),
    and that no segment is missing inside a timeline. Exits 7 on any failure."""
    config = ui.load()
    bases = verify_base_backups(config, database)
    wal_result = verify_database_wal(config, database)
    document: dict[str, Any] = {
        "database": database,
        "base_backups": [{"base_id": b.base_id, "ok": b.ok, "detail": b.detail} for b in bases],
        "wal": {"checked": wal_result.checked, "problems": wal_result.problems,
                "gaps": [{"first_missing": a, "last_missing": b} for a, b in wal_result.gaps]},
    }
    ok = all(b.ok for b in bases) and wal_result.ok
    if ui.json:
        ui.emit({**document, "ok": ok})
    else:
        for b in bases:
            click.echo(f"base {b.base_id}: {'ok' if b.ok else 'FAILED'} ({scrub(b.detail)})")
        click.echo(f"WAL: {wal_result.checked} segments checked, {len(wal_result.problems)} problems, "
                   f"{len(wal_result.gaps)} gaps")
        for line in wal_result.problems[:5]:
            click.echo(f"  {scrub(line)}")
    if not ok:
        first = next((b.detail for b in bases if not b.ok), None) or next(iter(wal_result.problems), None)
        raise IntegrityError(f"continuous backups of {database} failed verification: "
                             f"{first or 'segments missing inside a timeline'}")
    return EXIT_OK


@wal.command("status")
@click.argument("database")
@common_options
@click.pass_obj
def status_command(ui: Ui, database: str) -> int:
    """What the store holds for DATABASE: base backups, WAL per timeline, gaps."""
    status = continuous_status(ui.load(), database)
    if ui.json:
        ui.emit(status.to_dict())
    else:
        for base in status.base_backups:
            click.echo(f"base {base['base_id']} {base['kind']} {base['start_lsn']}-{base['end_lsn']}")
        for timeline, info in status.timelines.items():
            click.echo(f"timeline {timeline}: {info['segments']} segments, {info['first']} .. {info['newest']}")
        for first, last in status.gaps:
            click.echo(f"GAP: {first} .. {last} missing")
    return EXIT_OK


@wal.command("receive")
@click.argument("database")
@click.option("--spool", type=click.Path(file_okay=False, path_type=Path),
              help="Private folder pg_receivewal writes into [default: .dbprotect/wal-spool/DATABASE beside "
                   "the configuration].")
@common_options
@click.pass_obj
def receive_command(ui: Ui, database: str, spool: Path | None) -> int:
    """Stream DATABASE's WAL into the store until stopped (SIGTERM or Ctrl-C): a long-running process,
    one per server, supervised by the deployment (not a Dagster run)."""
    config = ui.load()
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def log(line: str) -> None:
        click.echo(scrub(line), err=True)
        sys.stderr.flush()

    stats = receive_database_wal(config, database, stop=stop, log=log, spool=spool)
    summary = {"database": database, "segments_shipped": stats.segments_shipped,
               "duplicates_skipped": stats.duplicates_skipped, "partials_shipped": stats.partials_shipped,
               "restarts": stats.restarts}
    if ui.json:
        ui.emit(summary)
    else:
        click.echo(f"receiver stopped: {stats.segments_shipped} segments and {stats.partials_shipped} partial "
                   f"uploads shipped, {stats.restarts} restarts of pg_receivewal")
    return EXIT_OK


@wal.command("fetch")
@click.argument("segment")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--database", required=True, help="The database whose WAL to read.")
@common_options
@click.pass_obj
def fetch_command(ui: Ui, segment: str, dest: Path, database: str) -> int:
    """Decrypt WAL file SEGMENT to DEST: PostgreSQL's restore_command
    ('dbprotect wal fetch %f %p --database DB'). Exits 10 when the store does not hold it."""
    served = fetch_database_wal(ui.load(), database, segment, dest)
    if ui.json:
        ui.emit({"segment": segment, "served": served})
    return EXIT_OK


@wal.command("heartbeat")
@click.argument("database")
@common_options
@click.pass_obj
def heartbeat_command(ui: Ui, database: str) -> int:
    """Write one heartbeat row into dbprotect.heartbeat on DATABASE's server (the receiver writes one every
    'continuous.heartbeat_seconds'); point-in-time drills prove restores against these rows."""
    beat = heartbeat_database(ui.load(), database)
    if ui.json:
        ui.emit({"database": database, "id": beat.id, "at": beat.at.isoformat(), "lsn": beat.lsn})
    else:
        click.echo(f"heartbeat {beat.id} at {beat.at.isoformat()} (LSN {beat.lsn})")
    return EXIT_OK


def pitr_drill(ui: Ui, database: str) -> int:
    """``dbprotect drill DATABASE --pitr``: exits 7 when the restore did not land where it was asked to."""
    result = pitr_drill_database(ui.load(), database, actor=cli_actor())
    if ui.json:
        ui.emit(result.to_dict())
    else:
        click.echo(scrub(f"point-in-time drill of {database}: {'passed' if result.ok else 'FAILED'}: {result.detail}"))
        if result.ok:
            click.echo(f"  RTO {result.rto_seconds:.1f} s (to promoted and proved); achieved RPO "
                       f"{result.rpo_seconds:.1f} s; bases {', '.join(result.chain)}")
    if not result.ok:
        raise IntegrityError(result.detail, hint=f"'dbprotect wal verify {database}' checks every stored object")
    return EXIT_OK


def point_in_time_options(func: Any) -> Any:
    """``--to-time``, ``--to-lsn`` and ``--data-dir`` for ``dbprotect restore`` (registered there)."""
    func = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                        help="Point-in-time restore: the NEW data directory to restore the server into.")(func)
    func = click.option("--to-lsn", metavar="LSN", help="Point-in-time restore: replay WAL up to this LSN.")(func)
    func = click.option("--to-time", metavar="TIME",
                        help="Point-in-time restore: replay WAL up to this moment (ISO 8601 with a zone, "
                             "e.g. 2026-11-29T06:30:00+00:00).")(func)
    return func


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint="'--to-time'") from None
    if value.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone: add +00:00 or Z (an ambiguous moment is not a "
                                 "recovery target)", param_hint="'--to-time'")
    return value


def point_in_time_restore(ui: Ui, database: str, *, backup_id: str | None, to_time: str | None,
                          to_lsn: str | None, data_dir: Path | None) -> int:
    """``dbprotect restore DATABASE --to-time T --data-dir D``: the server as it was at T, started."""
    if backup_id:
        raise click.BadParameter("a point-in-time restore chooses its base backup itself; give no BACKUP_ID")
    if bool(to_time) == bool(to_lsn):
        raise click.BadParameter("give exactly one of --to-time and --to-lsn", param_hint="'--to-time'")
    if data_dir is None:
        raise click.BadParameter("a point-in-time restore needs --data-dir (a new folder)", param_hint="'--data-dir'")
    result = restore_database_to_point(ui.load(), database, data_dir=data_dir.resolve(),
                                       to_time=_parse_time(to_time) if to_time else None, to_lsn=to_lsn,
                                       actor=cli_actor())
    document = {"database": database, "data_dir": str(result.data_dir), "port": result.port,
                "socket_dir": str(result.socket_dir), "dsn": result.dsn(), "base_backups": result.chain,
                "target": result.target, "seconds": round(result.seconds, 3),
                "skipped_base_backups": list(result.skipped),
                "content_check": result.smoke.to_dict() if result.smoke else None}
    if ui.json:
        ui.emit(document)
    else:
        click.echo(f"restored {database} to {result.target} into {result.data_dir} in {result.seconds:.1f} s "
                   f"(bases {', '.join(result.chain)}); promoted and answering at {result.dsn()}")
        if result.smoke:
            click.echo(f"  {result.smoke.describe()}")
        for skipped in result.skipped:
            click.echo(f"  passed over newer base backup {skipped}")
        click.echo(f"  stop it with: pg_ctl -D {result.data_dir} stop")
    return EXIT_OK
