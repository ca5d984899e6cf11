"""``dbprotect demo``: a whole protected setup on one machine, from nothing, in under a minute.

What it builds (all under a work folder, ``.dbprotect/demo/`` by default, git-ignored)::

    .dbprotect/demo/pgdata/          an embedded PostgreSQL 18 ("production"), left running
    .dbprotect/demo/store/           the filesystem backup store
    .dbprotect/demo/dbprotect.yaml   deployment: demo, database ``fintech``
    .dbprotect/demo/demo.env         the variables the configuration names (no secret values),
                                     plus DBPROTECT_CONFIG and DAGSTER_HOME for the UI
    .dbprotect/demo/dagster_home/    the demo's Dagster instance (default local storage)
    .dbprotect/demo/masking-rules.yaml   the masking rules of the demo schema (package data, copied)
    .dbprotect/keys/raw-backups.agekey   the age identity for raw backups (mode 0600), beside it
    .dbprotect/keys/development.agekey   a second, different identity for sanitized copies (0600)
    .dbprotect/keys/demo-masking.key     the HMAC masking key of sanitized copies (0600)

On the one embedded server it keeps three databases: ``fintech_prod`` (marked production, with the
data), ``fintech_dev`` (marked development, the same schema and no rows) and ``fintech_standby``,
the warm copy, which is left for ``dbprotect warm-copy fintech`` to create and mark. The
configuration names both environments, the same server as the scratch server of restore
verification and drills, a retention policy, the warm copy and sanitized copies, so every Dagster
domain and every README command has something to work on.

Then it takes one backup through the real pipeline and runs both checks (integrity, RPO), exactly
as the CLI and the Dagster definitions would, through :mod:`dbprotect.core.ops`. The slow steps (a
drill, a warm copy refresh, a sanitized build) run only with ``run_all``: CI runs the demo on every
push, and each of them is one printed command away.

This module is the orchestration and the files it writes; the server is :mod:`.server`, the
databases and their data :mod:`.data`, the key files :mod:`.keys`, the folder layout :mod:`.paths`.
Running twice works: the data directory, the loaded data and the keys are reused.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dbprotect.core.backup.stream import BackupResult, ProgressCallback
from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.config.model import Config
from dbprotect.core.errors import DbprotectError
from dbprotect.core.ops import (
    backup_database,
    build_sanitized_copy,
    database_status,
    drill_database,
    refresh_warm_copy,
    verify_database_backup,
)
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.verify.integrity import IntegrityReport
from dbprotect.core.verify.rpo import RpoStatus
from dbprotect.demo.data import (
    DEV_PG_DATABASE,
    MIN_ROWS,
    PG_DATABASE,
    WARM_PG_DATABASE,
    StepCallback,
    count_rows,
    demo_rules_yaml,
    ensure_demo_data,
    ensure_dev_database,
)
from dbprotect.demo.keys import ensure_key, ensure_masking_key
from dbprotect.demo.paths import DemoPaths
from dbprotect.demo.server import start_server, with_database

# Re-exported: the CLI reaches ``stop_demo_server`` through this module until it imports from
# ``dbprotect.demo``; then this line can go.
from dbprotect.demo.server import stop_demo_server as stop_demo_server

DEMO_DATABASE = "fintech"  # the name in dbprotect.yaml
DSN_ENV = "DBPROTECT_DEMO_PROD_DSN"
IDENTITY_ENV = "DBPROTECT_DEMO_RAW_IDENTITY"
DEV_DSN_ENV = "DBPROTECT_DEMO_DEV_DSN"
WARM_DSN_ENV = "DBPROTECT_DEMO_STANDBY_DSN"
SCRATCH_DSN_ENV = "DBPROTECT_DEMO_SCRATCH_ADMIN_DSN"
DEV_IDENTITY_ENV = "DBPROTECT_DEMO_DEV_IDENTITY"
MASKING_KEY_ENV = "DBPROTECT_DEMO_MASKING_KEY"
#: The seeds' rules: "keep the last 10", "kept 30 days".
RETENTION = "keep_last=10, max_age=30d"
#: Commands worth trying next; none runs during the demo unless ``--all`` asks (they take a while).
NEXT_COMMANDS = (f"dbprotect drill {DEMO_DATABASE}", f"dbprotect warm-copy {DEMO_DATABASE}",
                 f"dbprotect sanitize build {DEMO_DATABASE}", f"dbprotect schema drift {DEMO_DATABASE}")


@dataclass
class DemoResult:
    """What one demo run built, took and checked: the CLI prints it, ``--json`` emits :meth:`to_dict`."""

    paths: DemoPaths
    dsn: str
    loaded_now: bool
    load_seconds: float
    table_rows: dict[str, int]
    backup: BackupResult
    integrity: IntegrityReport
    rpo: RpoStatus
    backups_in_store: int
    recipient: str
    ui_command: str
    dev_dsn: str = ""
    dev_recipient: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: ``--all`` only: one line per extra step (drill, warm copy, sanitized copy) and whether it passed.
    extras: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.table_rows.values())

    def to_dict(self) -> dict[str, Any]:
        """For ``dbprotect demo --json``: paths, numbers and results; never the private key."""
        return {
            "workdir": str(self.paths.workdir),
            "config": str(self.paths.config),
            "env_file": str(self.paths.env_file),
            "key_file": str(self.paths.key_file),
            "dev_key_file": str(self.paths.dev_key_file),
            "masking_key_file": str(self.paths.masking_key_file),
            "rules": str(self.paths.rules),
            "recipient": self.recipient,
            "dev_recipient": self.dev_recipient,
            "dsn": mask_dsn(self.dsn),
            "dev_dsn": mask_dsn(self.dev_dsn),
            "data": {"loaded_now": self.loaded_now, "load_seconds": round(self.load_seconds, 3),
                     "tables": self.table_rows, "total_rows": self.total_rows},
            "backup": {"backup_id": self.backup.manifest.backup_id, "uri": self.backup.uri,
                       **self.backup.metrics()},
            "integrity": self.integrity.to_dict(),
            "rpo": self.rpo.to_dict(),
            "backups_in_store": self.backups_in_store,
            "ui_command": self.ui_command,
            "next_commands": list(NEXT_COMMANDS),
            "extras": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in self.extras.items()},
            "seconds": round(self.seconds, 3),
        }


def run_demo(workdir: str | os.PathLike[str] | None = None, *, rows: int | None = None,
             on_step: StepCallback | None = None, progress: ProgressCallback | None = None,
             run_all: bool = False) -> DemoResult:
    """Build (or reuse) the demo setup, take one backup and run both checks.

    ``rows`` is the approximate total number of generated rows (default :data:`.data.DEFAULT_ROWS`);
    when it differs from what an earlier run loaded, the demo database is reloaded. ``run_all``
    also runs a restore drill, a warm copy refresh and a sanitized build (slow: off by default).
    """
    if rows is not None and rows < MIN_ROWS:
        raise DbprotectError(f"--rows must be at least {MIN_ROWS} (got {rows})")
    step = on_step or (lambda _message: None)
    started = time.perf_counter()
    paths = DemoPaths.at(workdir)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    step(f"starting the embedded PostgreSQL in {paths.pgdata}")
    admin_dsn = start_server(paths.pgdata)
    dsn = with_database(admin_dsn, PG_DATABASE)
    load_started = time.perf_counter()
    loaded_now = ensure_demo_data(admin_dsn, dsn, rows, step)
    load_seconds = time.perf_counter() - load_started
    table_rows = count_rows(dsn)
    dev_dsn = with_database(admin_dsn, DEV_PG_DATABASE)
    ensure_dev_database(admin_dsn, dev_dsn, step)
    recipient = ensure_key(paths.key_file)
    dev_recipient = ensure_key(paths.dev_key_file)
    if dev_recipient == recipient:  # cannot happen with fresh keys; a copied file would defeat the split
        raise DbprotectError(f"{paths.dev_key_file} holds the raw-backup key; sanitized copies need a different one",
                             hint=f"delete {paths.dev_key_file} and run the demo again")
    masking_key = ensure_masking_key(paths.masking_key_file)
    environ = write_demo_files(paths, dsn, recipient, admin_dsn=admin_dsn, dev_dsn=dev_dsn,
                               dev_recipient=dev_recipient, masking_key=masking_key)
    config = load_config(paths.config)
    full_environ = {**os.environ, **environ}
    check_credential_isolation(config, full_environ)
    step("backing up fintech: pg_dump -> zstd -> age -> filesystem store")
    backup = backup_database(config, DEMO_DATABASE, progress=progress, environ=full_environ)
    step("checking integrity (SHA-256, decrypt, decompress, pg_restore --list)")
    integrity = verify_database_backup(config, DEMO_DATABASE, backup.manifest.backup_id,
                                       by="dbprotect demo", environ=full_environ)
    extras = run_extras(config, full_environ, step) if run_all and integrity.ok else {}
    step("recording the backup, its checks and the schema snapshots in the demo's Dagster instance")
    # Dagster costs ~1.5 s to import; the CLI (which imports this module for every command) pays it here only.
    from dbprotect.demo.record import record_in_dagster

    record_in_dagster(paths.dagster_home, config, DEMO_DATABASE, backup, integrity, dsn, full_environ)
    status = database_status(config, DEMO_DATABASE)
    return DemoResult(
        paths=paths, dsn=dsn, loaded_now=loaded_now, load_seconds=load_seconds, table_rows=table_rows,
        backup=backup, integrity=integrity, rpo=status.rpo, backups_in_store=status.backups,
        recipient=recipient, ui_command=ui_command(paths), dev_dsn=dev_dsn, dev_recipient=dev_recipient,
        extras=extras, seconds=time.perf_counter() - started,
    )


def run_extras(config: Config, environ: dict[str, str], step: StepCallback) -> dict[str, tuple[bool, str]]:
    """``--all``: a drill, a warm copy refresh and a sanitized build, each as its CLI command runs it.

    A failure of one is reported (its message only, never a value) and the next still runs, so
    the summary shows every domain's state at once.
    """
    outcomes: dict[str, tuple[bool, str]] = {}
    step("restore drill: newest backup -> scratch database on the same server -> verified")
    try:
        drill = drill_database(config, DEMO_DATABASE, by="dbprotect demo", environ=environ)
        outcomes["drill"] = (drill.ok, drill.reason)
    except DbprotectError as exc:
        outcomes["drill"] = (False, str(exc))
    step(f"warm copy: newest verified backup -> {WARM_PG_DATABASE}")
    try:
        warm = refresh_warm_copy(config, DEMO_DATABASE, actor="dbprotect demo", environ=environ)
        outcomes["warm_copy"] = (True, warm.reason)
    except DbprotectError as exc:
        outcomes["warm_copy"] = (False, str(exc))
    step("sanitized copy: newest verified backup -> scratch -> masked -> checks -> store")
    try:
        built = build_sanitized_copy(config, DEMO_DATABASE, environ=environ, by="dbprotect demo")
        failed = [check.name for check in built.checks if not check.ok]
        outcomes["sanitized_copy"] = (built.ok, f"stored as {built.artifact_id}" if built.ok
                                      else f"checks failed: {', '.join(failed)}")
    except DbprotectError as exc:
        outcomes["sanitized_copy"] = (False, str(exc))
    return outcomes


# --- the files it writes ------------------------------------------------------------------------

def write_demo_files(paths: DemoPaths, dsn: str, recipient: str, *, admin_dsn: str, dev_dsn: str,
                     dev_recipient: str, masking_key: str) -> dict[str, str]:
    """Write dbprotect.yaml, the rule file and demo.env; return the variables demo.env sets.

    ``sanitize.promote`` stays off (seed 000: no automatic sync by default); the scratch server
    is the demo's own, by admin DSN, so drills need no second embedded server.
    """
    config = {
        "deployment": "demo",
        "databases": {DEMO_DATABASE: {
            "environments": {"production": {"dsn_env": DSN_ENV}, "development": {"dsn_env": DEV_DSN_ENV}},
            "storage": ["demo_store"],
            "backup_schedule": "0 2 * * *",
            "rpo_hours": 24,
            "retention": RETENTION,
            "warm_copy": {"dsn_env": WARM_DSN_ENV},
            "sanitize": {"rules": paths.rules.name, "hmac_key_env": MASKING_KEY_ENV, "promote": False},
        }},
        "storage": {"demo_store": {"type": "filesystem", "path": str(paths.store)}},
        "keys": {"raw": {"recipients": [recipient], "identity_env": IDENTITY_ENV},
                 "development": {"recipients": [dev_recipient], "identity_env": DEV_IDENTITY_ENV}},
        "scratch": {"admin_dsn_env": SCRATCH_DSN_ENV},
    }
    header = ("# Written by 'dbprotect demo' (rewritten on every run). Secrets are not in this file:\n"
              "# the DSNs, identities and masking key are set by demo.env beside it.\n")
    paths.config.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    paths.rules.write_text("# Copied by 'dbprotect demo' on every run (edits are overwritten).\n" + demo_rules_yaml(),
                           encoding="utf-8")
    _write_dagster_home(paths.dagster_home)
    environ = {DSN_ENV: dsn, DEV_DSN_ENV: dev_dsn, WARM_DSN_ENV: with_database(admin_dsn, WARM_PG_DATABASE),
               SCRATCH_DSN_ENV: admin_dsn, IDENTITY_ENV: f"@{paths.key_file}",
               DEV_IDENTITY_ENV: f"@{paths.dev_key_file}", MASKING_KEY_ENV: masking_key,
               "DBPROTECT_CONFIG": str(paths.config), "DAGSTER_HOME": str(paths.dagster_home)}
    lines = ["# Written by 'dbprotect demo'. Load with: set -a; . demo.env; set +a",
             "# The DSNs have no password (the embedded server trusts its Unix socket); the identities",
             "# are references (@path) to the key files, never the keys themselves. The masking key is",
             f"# the value itself (sanitize reads no @path), copied from {paths.masking_key_file}:",
             "# this file is mode 0600 and lives in the git-ignored .dbprotect folder."]
    lines += [f"{name}={shlex.quote(value)}" for name, value in environ.items()]
    fd = os.open(paths.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return environ


#: The demo instance's dagster.yaml: default local storage in its folder, no telemetry, no
#: "Join the community" pop-up over the UI, and the deployment's run queue and pool limits
#: (one run and one step per database at a time, as in the repository's dagster.yaml).
DEMO_INSTANCE_YAML = """\
# Dagster instance of 'dbprotect demo' (rewritten on every run): default local storage in this folder.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: dbprotect/database
        value:
          applyLimitPerUniqueValue: true
        limit: 1
  pools:
    default_limit: 1
"""


def _write_dagster_home(folder: Path) -> None:
    """A Dagster instance of the demo's own, with Dagster's default local storage.

    Without ``DAGSTER_HOME``, ``dagster dev`` started from the repository root would pick up the
    repository's ``dagster.yaml`` (storage in PostgreSQL, for deployments) and fail for want of
    its variables; with it, the demo's run history also survives restarts of the UI.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(DEMO_INSTANCE_YAML, encoding="utf-8")


def ui_command(paths: DemoPaths) -> str:
    """The shell command that opens the Dagster UI on the demo's own configuration."""
    env_file = display_path(paths.env_file)
    config = display_path(paths.config)
    return (f"set -a; . {shlex.quote(env_file)}; set +a; "
            f"DBPROTECT_CONFIG={shlex.quote(config)} {shlex.quote(executable('dagster'))} dev -m dbprotect.defs")


def executable(name: str) -> str:
    """``name`` if the shell finds it, else its path in this interpreter's venv (not activated)."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return display_path(beside) if beside.exists() else name


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
