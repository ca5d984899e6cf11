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
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql

from dbprotect.core.config.model import Config, SanitizeSpec
from dbprotect.core.errors import ConfigError, CredentialIsolationError, ToolError
from dbprotect.core.pg.tools import connect, require_tool_for_server, split_password, tool_env
from dbprotect.core.sanitize.checks import (
    CheckResult,
    constraints_hold,
    no_pii_leaked,
    row_counts_match,
)
from dbprotect.core.sanitize.coverage import columns_from_manifest, require_coverage, source_columns
from dbprotect.core.sanitize.rules import RuleSet, load_rules, qualify
from dbprotect.core.sanitize.stream import TableStats, sanitize_table, stream_order
from dbprotect.core.sanitize.subset import SubsetPlan, plan_subset
from dbprotect.core.sanitize.transformers import Masker
from dbprotect.core.store import Storage
from dbprotect.core.store.manifest import Manifest, manifest_key

SANITIZED_SUFFIX = "-sanitized"
LINEAGE_FIELD = "sanitized"


def sanitized_name(database: str) -> str:
    """The store folder of a database's sanitized copies (apart from its raw backups)."""
    return f"{database}{SANITIZED_SUFFIX}"


def sanitize_spec(config: Config, database: str) -> SanitizeSpec:
    spec = config.database(database).sanitize
    if spec is None:
        raise ConfigError(f"{config.source}: databases.{database} has no sanitize: section",
                          hint="add sanitize: {rules: FILE, hmac_key_env: VAR} to make sanitized copies")
    return spec


def rules_for(config: Config, database: str) -> RuleSet:
    path = Path(sanitize_spec(config, database).rules).expanduser()
    return load_rules(path if path.is_absolute() else config.base_dir() / path)


def masking_key(config: Config, database: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The masking key from its variable (production side only); its value never reaches a message."""
    environ = os.environ if environ is None else environ
    spec = sanitize_spec(config, database)
    if config.deployment == "development":
        raise CredentialIsolationError("a development deployment never holds the masking key",
                                       hint="sanitized copies are built by the production deployment")
    value = environ.get(spec.hmac_key_env)
    if not value:
        raise ConfigError(f"${spec.hmac_key_env} is not set (the masking key of database {database!r})",
                          hint=f"export {spec.hmac_key_env}=<64 hex digits, e.g. from secrets.token_hex(32)>")
    return value.encode()


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
                "unreviewed": self.unreviewed, "metrics": self.metrics()}


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
        reason = next((line for line in lines if "ERROR:" in line), None) or next(
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
            dst.execute(sql.SQL("SELECT setval({}, %s)").format(sql.Literal(f'"{schema}"."{name}"')), (value,))
    return len(rows)


def build_sanitized_copy(config: Config, database: str, *, backup_id: str | None = None,
                         environ: Mapping[str, str] | None = None, by: str = "dbprotect",
                         progress: Callable[[str], None] | None = None) -> SanitizeResult:
    """Build, check and (if every check passed) store the sanitized copy of ``database``.

    The coverage gate runs first, from the backup's manifest, so an unclassified column stops the
    run before anything is decrypted or restored.
    """
    from dbprotect.core.backup.stream import run_backup
    from dbprotect.core.ops.operations import newest_verified_backup, primary_store, raw_identity
    from dbprotect.core.pg.scratch import scratch_database, scratch_server_from_config
    from dbprotect.core.restore.staged import decrypted_archive, run_pg_restore
    from dbprotect.core.store.catalog import load_manifest

    say = progress or (lambda phase: None)
    if config.keys.development is None:
        raise ConfigError(f"{config.source}: keys.development is missing",
                          hint="sanitized copies are encrypted to the development key, never the raw-backup key")
    spec = sanitize_spec(config, database)
    rules = rules_for(config, database)
    key = masking_key(config, database, environ)
    masker = Masker(key)
    storage = primary_store(config, database)
    backup_id = backup_id or newest_verified_backup(storage, database)
    manifest = load_manifest(storage, database, backup_id)
    require_coverage(rules, columns_from_manifest(manifest), database=database)
    identity = raw_identity(config, environ)
    major = int(manifest.source["server_major"])
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[f"{name}_seconds"] = round(now - clock, 3)
        clock = now

    with scratch_server_from_config(config, environ) as server:
        server.require_major(major)
        encoding = manifest.source.get("encoding")
        with decrypted_archive(storage, manifest, identity, config.scratch.work_dir) as archive, \
                scratch_database(server, encoding=encoding) as source, \
                scratch_database(server, encoding=encoding) as target:
            say("restore_source")
            run_pg_restore(archive, source.dsn, server_major=major, pg_bin_dir=config.pg_bin_dir)
            restore_section(archive, target.dsn, "pre-data", server_major=major, pg_bin_dir=config.pg_bin_dir)
            lap("restore")
            say("stream")
            with connect(source.dsn) as src, connect(target.dsn) as dst:
                columns = source_columns(src)
                coverage = require_coverage(rules, {t: [c.name for c in cs] for t, cs in columns.items()},
                                            database=database)
                plan = plan_subset(src, {qualify(t): s.model_dump(exclude_none=True) for t, s in spec.subset.items()},
                                   sorted(columns)) if spec.subset else SubsetPlan()
                stats = []
                for table in stream_order(columns, rules):
                    stats.append(sanitize_table(src, dst, table, columns[table], rules, masker, plan.where(table)))
                dst.commit()
            copy_sequences(source.dsn, target.dsn)
            lap("stream")
            say("post_data")
            restore_section(archive, target.dsn, "post-data", server_major=major, pg_bin_dir=config.pg_bin_dir)
            lap("post_data")
            say("checks")
            with connect(source.dsn, autocommit=True) as src, connect(target.dsn, autocommit=True) as dst:
                checks = [no_pii_leaked(src, dst, columns, rules, stats, key),
                          constraints_hold(src, dst),
                          row_counts_match(dst, manifest, sorted(columns), plan.rows)]
            lap("checks")
            result = SanitizeResult(database, backup_id, rules.sha256, masker.key_id(), checks, stats,
                                    timings, coverage.unreviewed)
            if not result.ok:
                _audit(storage, by, result)
                return result
            say("store")
            backup = run_backup(database=sanitized_name(database), dsn=target.dsn, storage=storage,
                                recipients=config.keys.development.recipients, environment="development",
                                pg_bin_dir=config.pg_bin_dir)
            lap("store")
    stored = _with_lineage(backup.manifest, result, by)
    storage.put_bytes(manifest_key(stored.database, stored.backup_id), stored.to_json())
    result.artifact_id = stored.backup_id
    _audit(storage, by, result)
    return result


def _audit(storage: Storage, by: str, result: SanitizeResult) -> None:
    from dbprotect.core.audit import AuditLog

    failed = [c for c in result.checks if not c.ok]
    AuditLog(storage, actor=by).record(
        "sanitize", database=result.database, outcome="failed" if failed else "ok",
        target=result.artifact_id or result.source_backup_id,
        detail="; ".join(f"{c.name}: {c.detail}" for c in failed) if failed
        else f"sanitized copy {result.artifact_id} of backup {result.source_backup_id}",
        data={"source_backup_id": result.source_backup_id, "rules_sha256": result.rules_sha256,
              "masking_key_id": result.key_id, "metrics": result.metrics()})


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
        "built_at": datetime.now(UTC).isoformat(),
        "built_by": by,
        "rows": result.rows,
    }
    return Manifest.model_validate(data)
