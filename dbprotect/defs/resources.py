"""Resources: where the configuration lives, the production DSNs and the raw-backup identity.

Secrets are ``dagster.EnvVar`` references, resolved only when a run uses them (never at import or
definitions load); the UI shows a variable's *name*, never its value. Each resource hands plain
values to :mod:`dbprotect.core` as arguments (an identity, a key, a DSN): nothing is copied into
``os.environ``, and core does not look there for a secret it was given. The other connection
DSNs (restore targets, the warm copy, the scratch server's admin DSN, schema and sanitize
lookups, the pre-migration sensor's production DSN), the S3 stores' credentials and, in a
development deployment, the development identity reach core as one ``environ=`` mapping from
:class:`SecretsResource`, holding only the variables the configuration names. An S3 store whose
configuration names no credential variables uses boto3's own chain (an instance role, say):
name ``access_key_env``/``secret_key_env`` for keys to travel this channel.

The configuration path and the identities are plain objects, not ``ConfigurableResource``s:
Dagster writes a configurable resource's values into the launchpad form of every job that uses it
(``resources: ... config: identity: env: ...``), plumbing the person launching a restore must
not see. Plain objects are bound as they are, with no run config.
"""

from __future__ import annotations

import dagster as dg
import pyrage

from dbprotect.core.config.isolation import (
    check_credential_isolation,
    protected_databases,
    reachable_environments,
    warm_copy_databases,
)
from dbprotect.core.config.load import config_file, load_config
from dbprotect.core.config.model import Config, S3StorageSpec
from dbprotect.core.crypto import load_identity
from dbprotect.core.ops import DEVELOPMENT_KEY_DEPLOYMENTS
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.defs.names import postgres_resource_key

#: Resource keys shared by every database's assets and checks. Assets, checks and ops take these
#: resources as parameters named exactly so (``dbprotect_config: dg.ResourceParam[DbprotectConfigResource]``,
#: ``raw_backup_identity: dg.ResourceParam[AgeIdentityResource]``): Dagster binds a resource by parameter name.
CONFIG_RESOURCE = "dbprotect_config"
IDENTITY_RESOURCE = "raw_backup_identity"
SECRETS_RESOURCE = "dbprotect_secrets"


class DbprotectConfigResource:
    """The `dbprotect.yaml` a run works from.

    Runs re-read the file (as the CLI does) instead of receiving a pickled copy, so a run launched
    from the UI and `dbprotect status` on a laptop see the same configuration, and the
    credential-isolation rule is enforced again in the process that touches the data.

    Not a `ConfigurableResource`: Dagster would write its path into every launchpad form as a
    `resources:` block; this object is bound as it is, with no run config.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"DbprotectConfigResource(path={self.path!r})"

    def load(self) -> Config:
        config = load_config(self.path)
        check_credential_isolation(config)
        return config

    @classmethod
    def of(cls, config: Config) -> DbprotectConfigResource:
        """The resource that re-reads the file `config` came from, by absolute path (runs may start elsewhere)."""
        return cls(path=config_file(config))


def resolve_secret(value: str) -> str | None:
    """An `EnvVar`'s value read now (None when unset), or the value a caller put in itself."""
    return value.get_value() if isinstance(value, dg.EnvVar) else value


class PostgresResource:
    """One environment of one database; `dsn` is an `EnvVar` naming the variable that holds it.

    A plain object (no run config, so no `resources:` block in the backup's launchpad); the DSN is
    read when a run needs it (:meth:`resolved`) and passed to core as an argument.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def __repr__(self) -> str:
        name = self.dsn.env_var_name if isinstance(self.dsn, dg.EnvVar) else "<given>"
        return f"PostgresResource(dsn_env={name!r})"

    def resolved(self) -> str | None:
        return resolve_secret(self.dsn)

    def masked(self) -> str:
        """The DSN with its password hidden: the only form that may reach logs and metadata."""
        return mask_dsn(self.resolved() or "")


class AgeIdentityResource:
    """An age identity (raw-backup or development), resolved only where it decrypts.

    `identity` is an `EnvVar` (or, where a caller holds the key itself, its text or `@/path`);
    `identity_env` names the variable for messages. Deliberately not a `ConfigurableResource`:
    Dagster writes a configurable resource's values into every launchpad form that uses it
    (`resources: raw_backup_identity: config: identity: env: ...`), plumbing an on-call person
    must not see or edit. Dagster binds this object as it is, with no run config.

    The value reaches core as an argument (:meth:`parsed`), never through `os.environ`.
    """

    def __init__(self, identity: str, identity_env: str) -> None:
        self.identity = identity
        self.identity_env = identity_env

    def __repr__(self) -> str:  # the variable's name, never a value the caller put in
        return f"AgeIdentityResource(identity_env={self.identity_env!r})"

    def parsed(self) -> pyrage.x25519.Identity:
        """The identity, read now: from its variable when `identity` is an `EnvVar`, else the text given.

        Core's reader gets a mapping holding only this one value, so it never looks in `os.environ`.
        """
        value = resolve_secret(self.identity)
        return load_identity(self.identity_env, {self.identity_env: value} if value else {})


class SecretsResource:
    """The secrets a run hands core as its `environ=` argument: DSNs and store credentials by variable name.

    Keyed by the variable names the configuration gives (each environment's `dsn_env` this
    deployment may reach, `warm_copy.dsn_env`, `scratch.admin_dsn_env`, each S3 store's
    `access_key_env`/`secret_key_env`, and the development identity's variable where this
    deployment reaches development only and reads the production schema snapshot), each value an
    `EnvVar` (or, where a caller holds the secret itself, its text). `environ()` reads them
    now into a fresh mapping holding only those names, so core, which looks a secret up in the
    `environ` it is given, never falls back to `os.environ` and nothing is written there.
    A plain object, for the same reason as `AgeIdentityResource`: no launchpad plumbing.
    """

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def __repr__(self) -> str:  # names only, never a value
        return f"SecretsResource(names={sorted(self.values)!r})"

    def environ(self) -> dict[str, str]:
        """`{variable: value}` for each named secret that is set; unset ones are left out, so
        core's one-line "$VAR is not set" names the variable the run lacks."""
        resolved = {name: resolve_secret(value) for name, value in self.values.items()}
        return {name: value for name, value in resolved.items() if value}

    @classmethod
    def of(cls, config: Config) -> SecretsResource:
        """`EnvVar` references for every connection secret this deployment may use."""
        names: set[str] = set()
        for database in config.databases:
            spec = config.database(database)
            names.update(spec.environments[env].dsn_env for env in reachable_environments(config, database))
            if database in warm_copy_databases(config):
                names.add(spec.warm_copy.dsn_env)
            if reachable_environments(config, database) == ["development"] and config.keys.development is not None:
                names.add(config.keys.development.identity_env)  # the snapshot drift check reads with it
        if config.deployment in DEVELOPMENT_KEY_DEPLOYMENTS and config.keys.development is not None:
            # the restore job reads development-key backups (a promotion's undo) with it (core's backup_keys)
            names.add(config.keys.development.identity_env)
        if config.scratch.admin_dsn_env:
            names.add(config.scratch.admin_dsn_env)
        for spec in config.storage.values():
            if isinstance(spec, S3StorageSpec):
                names.update(name for name in (spec.access_key_env, spec.secret_key_env) if name)
        return cls({name: dg.EnvVar(name) for name in sorted(names)})


def build_resources(config: Config) -> dict[str, object]:
    """Every resource the definitions of ``config`` need, secrets as ``EnvVar`` references only."""
    resources: dict[str, object] = {
        CONFIG_RESOURCE: DbprotectConfigResource.of(config),
        SECRETS_RESOURCE: SecretsResource.of(config),
    }
    databases = protected_databases(config)
    # Only a deployment that backs up production, or a split deployment's verification location,
    # may hold the raw-backup identity (a production location with keys.raw.held_in: verification
    # keeps the resource, a reference to a variable it does not have: its checks never read it).
    if databases or config.deployment == "verification":
        resources[IDENTITY_RESOURCE] = AgeIdentityResource(
            identity=dg.EnvVar(config.keys.raw.identity_env), identity_env=config.keys.raw.identity_env,
        )
    for database in databases:
        dsn_env = config.databases[database].environments["production"].dsn_env
        resources[postgres_resource_key(database)] = PostgresResource(dsn=dg.EnvVar(dsn_env))
    return resources
