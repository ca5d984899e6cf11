"""The sanitized copy of a database, built on the production side from its newest verified backup.

Never from the live production database under load: the backup is restored into a scratch
database (the *source*), and a second scratch database (the *target*) receives the schema's
pre-data section only (types, tables, functions: no indexes, constraints or triggers). Each table
is streamed source → transformers → target with COPY (:mod:`.stream`), sequences are set, and only
then does the post-data section build indexes and constraints, as ``pg_restore`` does: a
constraint that the masked data violated fails right there. The blocking checks (:mod:`.checks`)
run next; only if all pass is the target dumped with the ordinary backup pipeline, encrypted to the
**development** key (never the raw-backup key), under ``<database>-sanitized`` in the same store.
Its manifest carries the lineage: source backup id, rule-file SHA-256, masking key id (an HMAC of
a constant: it identifies the key version and reveals nothing of it), the check results.

Both scratch databases are dropped however the build ends.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyrage
from psycopg import sql

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.model import SanitizeSpec
from dbprotect.core.errors import ToolError
from dbprotect.core.pg.pg_restore import run_pg_restore
from dbprotect.core.pg.scratch import ScratchServer, scratch_database
from dbprotect.core.pg.tools import connect, require_tool_for_server, split_password, tool_env
from dbprotect.core.restore.decrypt import decrypted_archive
from dbprotect.core.sanitize.checks import (
    CheckResult,
    constraints_hold,
    fingerprint_capacity,
    fixed_fingerprints,
    no_pii_leaked,
    production_fingerprints,
    row_counts_match,
)
from dbprotect.core.sanitize.coverage import (
    large_object_count,
    partition_parents,
    require_coverage,
    require_large_object_rule,
    require_rules_fit,
    source_columns,
    unique_keys,
)
from dbprotect.core.sanitize.fingerprints import Fingerprinter, WrittenCheck
from dbprotect.core.sanitize.rules import ColumnRule, RuleSet, qualify
from dbprotect.core.sanitize.stream import TableStats, sanitize_table, stream_order
from dbprotect.core.sanitize.subset import SubsetPlan, plan_subset
from dbprotect.core.sanitize.transformers import Masker, SanitizeError
from dbprotect.core.store import Storage
from dbprotect.core.store.manifest import Manifest

SANITIZED_SUFFIX = "-sanitized"
LINEAGE_FIELD = "sanitized"


def sanitized_name(database: str) -> str:
    """The store folder of a database's sanitized copies (apart from its raw backups)."""
    return f"{database}{SANITIZED_SUFFIX}"


@dataclass
class SanitizeResult:
    """One build: the checks, and the stored artifact's id when (and only when) every check passed."""

    database: str
    source_backup_id: str
    rules_sha256: str
    key_id: str
    checks: list[CheckResult]
    tables: list[TableStats]
    timings: dict[str, float] = field(default_factory=dict)
    unreviewed: list[str] = field(default_factory=list)
    artifact_id: str | None = None
    #: ``keep`` rules with a ``waiver:`` (column -> reason): decisions to copy personal data, audited.
    waivers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def metrics(self) -> dict[str, float]:
        stream = self.timings.get("stream_seconds", 0.0)
        return {"rows": self.rows, "tables": len(self.tables),
                "masked_columns": sum(t.masked_columns for t in self.tables),
                "collisions_resolved": sum(t.retries for t in self.tables),
                "rows_per_second": round(self.rows / stream, 1) if stream else 0.0,
                "unreviewed_rules": len(self.unreviewed), **self.timings}

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "source_backup_id": self.source_backup_id,
                "artifact_id": self.artifact_id, "ok": self.ok, "rules_sha256": self.rules_sha256,
                "key_id": self.key_id, "checks": [c.to_dict() for c in self.checks],
                "unreviewed": self.unreviewed, "waivers": self.waivers, "metrics": self.metrics()}


def restore_section(archive: Path, dsn: str, section: str, *, server_major: int, pg_bin_dir: str | None) -> None:
    """``pg_restore --section=SECTION`` (pre-data: tables; post-data: indexes, constraints, triggers)."""
    tool = require_tool_for_server("pg_restore", server_major, pg_bin_dir)
    target, password = split_password(dsn)
    env = tool_env(password)
    args = [str(tool.path), "--exit-on-error", "--no-owner", "--no-acl", "--no-password", f"--section={section}",
            f"--dbname={target}", str(archive)]
    if section == "post-data":
        args.insert(1, f"--jobs={min(4, os.cpu_count() or 1)}")
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        error = next((line for line in lines if "ERROR:" in line), None)
        if section == "post-data" and error is not None:
            # The server refused an index or constraint over the masked rows: a sanitize failure (the
            # rules broke it), told by the ERROR line alone; its DETAIL line would quote the values.
            raise SanitizeError(f"the masked data violates a constraint of the source: "
                                f"{error.partition('ERROR:')[2].strip()}; nothing was stored",
                                hint="check the rules of the columns of the index or constraint it names")
        reason = error or next(
            (line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        raise ToolError(f"pg_restore --section={section} into the sanitized database failed: "
                        f"{reason.removeprefix('pg_restore: ')}",
                        hint="after post-data this means the masked data violates a constraint; check the rules "
                        "of the columns it names")


def copy_sequences(src_dsn: str, dst_dsn: str) -> int:
    """Set every sequence of the target to the source's value (the stream copies no SEQUENCE SET)."""
    with connect(src_dsn, autocommit=True) as src, connect(dst_dsn, autocommit=True) as dst:
        rows = src.execute("SELECT schemaname, sequencename, last_value FROM pg_sequences "
                           "WHERE last_value IS NOT NULL").fetchall()
        for schema, name, value in rows:
            # The sequence's regclass from its identifiers, never a hand-quoted name (a name holding
            # a double quote would otherwise break out of it).
            dst.execute(sql.SQL("SELECT setval({}::regclass, %s)").format(
                sql.Literal(sql.Identifier(schema, name).as_string(dst))), (value,))
    return len(rows)


def mask_large_objects(src: psycopg.Connection, dst: psycopg.Connection, rule: ColumnRule) -> int:
    """Apply the rule file's ``large_objects:`` rule to the copy; returns how many the source holds.

    The target's large objects (the pre-data section creates them empty) are removed; with
    ``fixed`` every one of the source's is created again, same OID, holding only the constant.
    """
    oids = [int(oid) for (oid,) in src.execute("SELECT oid FROM pg_largeobject_metadata").fetchall()]
    dst.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
    if rule.transformer == "fixed" and oids:
        value = str(rule.options().get("value", "")).encode()
        dst.execute("SELECT lo_from_bytea(o, %s) FROM unnest(%s::oid[]) o", (value, oids))
    return len(oids)


_QUOTED = re.compile(r'"[^"]*"')


def database_failure(database: str, exc: psycopg.Error) -> SanitizeError:
    """One line for a database error outside the stream: its primary message only, quoted parts blanked.

    Why: psycopg's text carries DETAIL lines such as ``Key (email)=(alice@…) already exists``:
    production values, which must not reach a terminal, a log or the audit record.
    """
    primary = (getattr(exc.diag, "message_primary", None) or type(exc).__name__).splitlines()[0]
    reason = _QUOTED.sub('"…"', primary)
    return SanitizeError(f"{database}: the sanitized copy could not be built: {reason}; nothing was stored",
                         hint="the previous sanitized copy is still the newest")


def _with_lineage(manifest: Manifest, result: SanitizeResult, by: str) -> Manifest:
    """The artifact's manifest with where it came from and what it passed (never the key itself)."""
    data = manifest.model_dump(mode="json")
    data[LINEAGE_FIELD] = {
        "source_database": result.database,
        "source_backup_id": result.source_backup_id,
        "rules_sha256": result.rules_sha256,
        "masking_key_id": result.key_id,
        "checks": {check.name: {"ok": check.ok, "detail": check.detail, "metrics": check.metrics}
                   for check in result.checks},
        "unreviewed_rules": result.unreviewed,
        "waivers": result.waivers,
        "built_at": datetime.now(UTC).isoformat(),
        "built_by": by,
        "rows": result.rows,
    }
    return Manifest.model_validate(data)


def build_sanitized(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, server: ScratchServer, *,
                    rules: RuleSet, spec: SanitizeSpec, key: bytes, development_recipients: list[str],
                    pg_bin_dir: str | None, work_dir: str | None, by: str,
                    progress: Callable[[str], None] | None = None) -> SanitizeResult:
    """Build and check the sanitized copy of the backup ``manifest`` describes; store it if every check passed.

    ``identity`` decrypts the raw backup; the artifact is encrypted to ``development_recipients``
    only. The caller has run the coverage gate already (from the manifest, before decrypting).
    """
    database = manifest.database
    say = progress or (lambda phase: None)
    masker = Masker(key)
    major = int(manifest.source["server_major"])
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[f"{name}_seconds"] = round(now - clock, 3)
        clock = now

    server.require_major(major)
    try:
        return _build(storage, manifest, identity, server, rules=rules, spec=spec, masker=masker, key=key,
                      development_recipients=development_recipients, pg_bin_dir=pg_bin_dir, work_dir=work_dir,
                      by=by, say=say, timings=timings, lap=lap)
    except psycopg.Error as exc:
        raise database_failure(database, exc) from None


def _build(storage: Storage, manifest: Manifest, identity: pyrage.x25519.Identity, server: ScratchServer, *,
           rules: RuleSet, spec: SanitizeSpec, masker: Masker, key: bytes, development_recipients: list[str],
           pg_bin_dir: str | None, work_dir: str | None, by: str, say: Callable[[str], None],
           timings: dict[str, float], lap: Callable[[str], None]) -> SanitizeResult:
    database, backup_id = manifest.database, manifest.backup_id
    major = int(manifest.source["server_major"])
    encoding = manifest.source.get("encoding")
    with decrypted_archive(storage, manifest, identity, work_dir) as archive, \
            scratch_database(server, encoding=encoding) as source, \
            scratch_database(server, encoding=encoding) as target:
        say("restore_source")
        run_pg_restore(archive, source.dsn, server_major=major, pg_bin_dir=pg_bin_dir)
        restore_section(archive, target.dsn, "pre-data", server_major=major, pg_bin_dir=pg_bin_dir)
        lap("restore")
        say("plan")
        with connect(source.dsn) as src, connect(target.dsn) as dst:
            columns = source_columns(src)
            # The backup's own catalog decides: partitions take their parents' rules, every column
            # is classified, every masked column's output loads into its type, large objects have
            # a rule; all before a row moves.
            rules = rules.inherited(partition_parents(src))
            coverage = require_coverage(rules, {t: [c.name for c in cs] for t, cs in columns.items()},
                                        database=database)
            require_rules_fit(src, columns, rules)
            large_objects = large_object_count(src)
            require_large_object_rule(rules, large_objects, database=database)
            plan = plan_subset(src, {qualify(t): s.model_dump(exclude_none=True) for t, s in spec.subset.items()},
                               sorted(columns)) if spec.subset else SubsetPlan()
            lap("plan")
            say("fingerprints")
            fingerprinter = Fingerprinter(key)
            rows = {table: record.rows for table, record in manifest.tables.items()}
            production = production_fingerprints(src, columns, rules, fingerprinter,
                                                 fingerprint_capacity(columns, rules, rows))
            lap("fingerprint")
            say("stream")

            written = WrittenCheck(fingerprinter, production, fixed_fingerprints(rules, fingerprinter))
            stats = []
            keys = unique_keys(src)
            for table in stream_order(columns, rules):
                stats.append(sanitize_table(src, dst, table, columns[table], rules, masker, plan.where(table),
                                            written=written, unique_keys=keys.get(table)))
            if rules.large_objects is not None:
                mask_large_objects(src, dst, rules.large_objects)
            dst.commit()
        copy_sequences(source.dsn, target.dsn)
        lap("stream")
        say("post_data")
        restore_section(archive, target.dsn, "post-data", server_major=major, pg_bin_dir=pg_bin_dir)
        lap("post_data")
        say("checks")
        with connect(source.dsn, autocommit=True) as src, connect(target.dsn, autocommit=True) as dst:
            checks = [no_pii_leaked(dst, columns, rules, stats, fingerprinter, production),
                      constraints_hold(src, dst),
                      row_counts_match(dst, manifest, sorted(columns), plan.rows)]
        lap("checks")
        result = SanitizeResult(database, backup_id, rules.sha256, masker.key_id(), checks, stats,
                                timings, coverage.unreviewed, waivers=rules.waivers())
        if not result.ok:
            return result
        say("store")
        backup = run_backup(database=sanitized_name(database), dsn=target.dsn, storage=storage,
                            recipients=development_recipients, environment="development",
                            pg_bin_dir=pg_bin_dir, finish=lambda manifest: _with_lineage(manifest, result, by))
        lap("store")
    result.artifact_id = backup.manifest.backup_id
    return result
