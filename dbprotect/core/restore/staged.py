"""Rung 3 of the verification ladder, *restored*: a backup restored into a scratch database and compared.

The pipeline: the stored object is checked and decrypted (:mod:`dbprotect.core.restore.decrypt`),
restored with ``pg_restore -j`` (:mod:`dbprotect.core.pg.pg_restore`) while each committed table
is already being read back (:mod:`dbprotect.core.verify.tables`), then the whole database is
compared with the manifest and the archive's table of contents (:mod:`dbprotect.core.verify.compare`).
The result is recorded as the backup's ``restored`` rung and audited.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyrage

from dbprotect.core.errors import CryptoError, DbprotectError
from dbprotect.core.pg.pg_restore import Progress, list_archive, run_pg_restore
from dbprotect.core.pg.scratch import ScratchServer, scratch_database
from dbprotect.core.restore.decrypt import decrypted_archive
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import record_verification
from dbprotect.core.store.manifest import Manifest, Verification
from dbprotect.core.verify.compare import parse_toc_listing, verify_restored_database
from dbprotect.core.verify.integrity import summarize_problems
from dbprotect.core.verify.tables import TableVerifier

if TYPE_CHECKING:
    from dbprotect.core.audit import AuditLog

CHUNK = 1 << 20


# -- decrypting into a private, always-deleted file ------------------------------------------


# -- pg_restore --------------------------------------------------------------------------------


# -- the table of contents and the catalog, as comparable sets -------------------------------


# -- comparing a restored database with the manifest and the archive ---------------------------


# -- rung 3 ------------------------------------------------------------------------------------

@dataclass
class RestoreVerification:
    """The outcome of restoring one backup into a scratch database and comparing it."""

    database: str
    backup_id: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tables: int = 0
    rows: int = 0
    objects: int = 0
    scratch_database: str = ""

    @property
    def detail(self) -> str:
        if self.ok:
            return (f"restored and verified: {self.tables} tables, {self.rows} rows, {self.objects} schema "
                    f"objects, sequences and large objects match the manifest")
        return "restore verification failed: " + summarize_problems(self.problems)

    def metrics(self) -> dict[str, float]:
        return {**self.timings, "tables": self.tables, "rows": self.rows, "objects": self.objects,
                "problems": len(self.problems)}

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "backup_id": self.backup_id, "ok": self.ok, "detail": self.detail,
                "problems": self.problems, "metrics": self.metrics(), "scratch_database": self.scratch_database}


class _Clock:
    """Per-phase wall-clock timings: ``with clock('restore'): ...`` adds ``restore_seconds``."""

    def __init__(self, progress: Progress | None) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self._progress:
            self._progress(phase)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[f"{phase}_seconds"] = round(time.perf_counter() - started, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def verify_restore(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                   server: ScratchServer, *, pg_bin_dir: str | None = None, jobs: int | None = None,
                   work_dir: str | os.PathLike[str] | None = None, by: str = "dbprotect",
                   record: bool = True, progress: Progress | None = None,
                   audit: AuditLog | None = None) -> RestoreVerification:
    """Restore ``manifest``'s backup into a new scratch database, compare it, drop it, record the result.

    Refuses (:class:`RefusedError`) a scratch server of another major version, and raises
    :class:`CryptoError` for a wrong identity; neither is recorded, since the backup may be fine.
    A backup that does not decrypt, restore or compare is a failed ``restored`` rung.
    """
    server.require_major(int(manifest.source["server_major"]))
    result = RestoreVerification(manifest.database, manifest.backup_id, ok=False)
    clock = _Clock(progress)
    try:
        _restore_and_compare(storage, manifest, identity, server, clock, result,
                             pg_bin_dir=pg_bin_dir, jobs=jobs, work_dir=work_dir, progress=progress)
    except CryptoError:
        raise
    except DbprotectError as exc:
        result.problems.append(exc.one_line())
    result.ok = not result.problems
    result.timings = {**clock.timings, "total_seconds": clock.total()}
    if record:
        record_verification(storage, manifest, Verification(
            rung="restored", ok=result.ok, at=datetime.now(UTC), detail=result.detail, by=by,
            metrics=result.metrics()))
    if audit:
        audit.record("verify", database=manifest.database, outcome="ok" if result.ok else "failed",
                     target=manifest.backup_id, detail=result.detail,
                     data={"rung": "restored", "metrics": result.metrics()})
    return result


def _restore_and_compare(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity,
                         server: ScratchServer, clock: _Clock, result: RestoreVerification, *,
                         pg_bin_dir: str | None, jobs: int | None, work_dir: str | os.PathLike[str] | None,
                         progress: Progress | None) -> None:
    major = int(manifest.source["server_major"])
    with scratch_database(server, encoding=manifest.source.get("encoding")) as scratch:
        result.scratch_database = scratch.name
        with TableVerifier(scratch.dsn, manifest, workers=jobs, server_major=major, pg_bin_dir=pg_bin_dir) as tables:
            with contextlib.ExitStack() as plaintext:
                with clock("decrypt"):
                    archive = plaintext.enter_context(decrypted_archive(storage, manifest, identity, work_dir))
                    listing = list_archive(archive, server_major=major, pg_bin_dir=pg_bin_dir)
                    expected = parse_toc_listing(listing)
                    tables.expect(listing)
                with clock("restore"):
                    run_pg_restore(archive, scratch.dsn, server_major=major, jobs=jobs, pg_bin_dir=pg_bin_dir,
                                   progress=progress, on_table_data=tables.release)
            clock.timings["tables_released_during_restore"] = tables.released_early
            with clock("verify"):
                problems, result.objects = verify_restored_database(scratch.dsn, manifest, expected, tables=tables)
        result.problems.extend(problems)
        result.tables = len(manifest.tables)
        result.rows = manifest.total_rows
