"""Resources: where the configuration lives, the production DSNs and the raw-backup identity.

Secrets are ``dagster.EnvVar`` fields, so Dagster resolves them only when a run initializes the
resource (never at import or definitions load) and the UI shows the variable's *name*, never its
value. Each resource hands plain values to :mod:`dbprotect.core`, which does the work.
"""

from __future__ import annotations

import os

import dagster as dg
import pyrage

from dbprotect.core.config.isolation import check_credential_isolation, protected_databases
from dbprotect.core.config.load import config_file, load_config
from dbprotect.core.config.model import Config
from dbprotect.core.crypto import load_identity
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.defs.names import postgres_resource_key

#: Resource keys shared by every database's assets and checks. Assets, checks and ops take these
#: resources as typed parameters named exactly so (``dbprotect_config: DbprotectConfigResource``,
#: ``raw_backup_identity: AgeIdentityResource``): Dagster binds a resource by parameter name.
CONFIG_RESOURCE = "dbprotect_config"
IDENTITY_RESOURCE = "raw_backup_identity"


class DbprotectConfigResource(dg.ConfigurableResource):
    """The `dbprotect.yaml` a run works from.

    Runs re-read the file (as the CLI does) instead of receiving a pickled copy, so a run launched
    from the UI and `dbprotect status` on a laptop see the same configuration, and the
    credential-isolation rule is enforced again in the process that touches the data.
    """

    path: str

    def load(self) -> Config:
        config = load_config(self.path)
        check_credential_isolation(config)
        return config

    @classmethod
    def of(cls, config: Config) -> DbprotectConfigResource:
        """The resource that re-reads the file `config` came from, by absolute path (runs may start elsewhere)."""
        return cls(path=config_file(config))


class PostgresResource(dg.ConfigurableResource):
    """One environment of one database; `dsn` is an `EnvVar` naming the variable that holds it."""

    dsn: str

    def masked(self) -> str:
        """The DSN with its password hidden: the only form that may reach logs and metadata."""
        return mask_dsn(self.dsn)


class AgeIdentityResource(dg.ConfigurableResource):
    """The raw-backup age identity, needed only by checks that decrypt (rung *readable*).

    `identity` holds the key itself or `@/path/to/key.txt`; `identity_env` is the name of
    the variable it came from, used in error messages instead of the value.
    """

    identity: str
    identity_env: str

    def parsed(self) -> pyrage.x25519.Identity:
        # Reuse core's reader (key text or @path) with the value Dagster resolved from EnvVar.
        return load_identity(self.identity_env, {self.identity_env: self.identity})


def build_resources(config: Config) -> dict[str, dg.ConfigurableResource]:
    """Every resource the definitions of ``config`` need, secrets as ``EnvVar`` references only."""
    resources: dict[str, dg.ConfigurableResource] = {
        CONFIG_RESOURCE: DbprotectConfigResource.of(config),
    }
    databases = protected_databases(config)
    if databases:  # only a deployment that backs up production may hold the raw-backup identity
        resources[IDENTITY_RESOURCE] = AgeIdentityResource(
            identity=dg.EnvVar(config.keys.raw.identity_env), identity_env=config.keys.raw.identity_env,
        )
    for database in databases:
        dsn_env = config.databases[database].environments["production"].dsn_env
        resources[postgres_resource_key(database)] = PostgresResource(dsn=dg.EnvVar(dsn_env))
    return resources


def run_environ(identity: AgeIdentityResource, **secrets: str) -> dict[str, str]:
    """The run's environment with the secrets Dagster resolved from their ``EnvVar`` resources.

    Core reads some settings (the scratch server's admin DSN, DSN variables) from the environment at
    run time, as the CLI does; identities and keys come from resources so that the UI names them.
    ``secrets`` maps further variable names to resolved values (e.g. the masking key).
    """
    return {**os.environ, identity.identity_env: identity.identity, **secrets}
