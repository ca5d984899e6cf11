"""Deployments: which environments' credentials each may hold, and reading a DSN.

Seed 000: "Production credentials NEVER in development environment; development credentials
NEVER in production environment". A deployment that can see another's credentials refuses to
load (:func:`check_credential_isolation`), a DSN is read only for an environment the deployment
may reach (:func:`resolve_dsn`, :func:`reachable_environments`), only a deployment that may hold
production credentials protects (backs up) anything (:func:`protected_databases`), and each side
of sanitizing runs where its credentials may be (:func:`sanitized_databases`). Only variable *names* reach a message;
a value never does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dbprotect.core.config.model import Config
from dbprotect.core.errors import ConfigError, CredentialIsolationError, Refusals, RefusedError
from dbprotect.core.pg.dsn import mask_dsn, register_dsn
from dbprotect.core.pg.tools import dsn_sends_plaintext

#: Which environments' credentials each deployment may hold. A deployment that sees the DSN
#: variable of any other environment refuses to load.
ALLOWED_ENVIRONMENTS: dict[str, frozenset[str]] = {
    "production": frozenset({"production"}),
    "development": frozenset({"development"}),
    "demo": frozenset({"production", "development"}),
    # Reads raw backups with the identity (readability, drills) and connects to no database it protects.
    "verification": frozenset(),
}


def protected_databases(config: Config) -> list[str]:
    """Databases whose production snapshot this deployment takes, sorted.

    A deployment that may not hold production credentials (``development``) protects none: it
    gets no backups at all, rather than backups that would fail on every run.
    """
    if "production" not in ALLOWED_ENVIRONMENTS[config.deployment]:
        return []
    return sorted(name for name, spec in config.databases.items() if "production" in spec.environments)


def reachable_environments(config: Config, database: str) -> list[str]:
    """The environments of ``database`` this deployment may connect to, sorted."""
    allowed = ALLOWED_ENVIRONMENTS[config.deployment]
    return sorted(env for env in config.database(database).environments if env in allowed)


def holds_raw_identity(config: Config) -> bool:
    """Whether this deployment holds the raw-backup identity, so may run what decrypts a raw backup.

    A split deployment (``keys.raw.held_in: verification``) gives it to the verification location
    only; its production location encrypts and checks rung *stored*, and every definition that
    decrypts (restore verification, drills, the warm copy, sanitized builds, the on-call restore)
    is defined where the key is, or not at all, never where it can only fail with DBP008.
    """
    if config.deployment == "verification":
        return True
    if config.deployment == "development":
        return False
    return config.keys.raw.held_in == "this_deployment"


def may_reach_warm_copy(config: Config) -> bool:
    """Whether this deployment may hold a warm copy's DSN (a server holding restored production data).

    Any deployment that may hold production credentials, and a verification location, which holds
    the raw identity (the same production data) and refreshes the warm copy in a split deployment.
    """
    return "production" in ALLOWED_ENVIRONMENTS[config.deployment] or config.deployment == "verification"


def split_verification(config: Config) -> bool:
    """Whether this configuration's decrypting work runs in a separate verification location."""
    return config.keys.raw.held_in == "verification"


def warm_copy_databases(config: Config) -> list[str]:
    """Databases whose warm copy this deployment refreshes and checks, sorted.

    The refresh decrypts the newest verified backup, so it runs where the raw identity is: a
    single deployment that backs up production, or a split deployment's *verification* location
    (which then holds the warm copy's DSN, a server holding a restored backup, and still no
    production DSN). A split deployment's production location defines no warm copy.
    """
    if not holds_raw_identity(config):
        return []
    return sorted(name for name, spec in config.databases.items()
                  if spec.warm_copy is not None and "production" in spec.environments)


def sanitized_databases(config: Config, environment: str) -> list[str]:
    """Databases with a ``sanitize:`` section whose ``environment`` side this deployment runs, sorted.

    The production side builds sanitized copies, the development side promotes them; a
    deployment runs a side only if it may hold that environment's credentials. The production
    side decrypts a raw backup, so a split deployment's production location (no identity) builds
    none in Dagster: there, ``dbprotect sanitize build`` runs where the identity and the masking
    key are held.
    """
    if environment not in ALLOWED_ENVIRONMENTS[config.deployment]:
        return []
    if environment == "production" and not holds_raw_identity(config):
        return []
    return sorted(name for name, spec in config.databases.items()
                  if spec.sanitize and environment in spec.environments)


def check_credential_isolation(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to run when this deployment can see another deployment's credentials.

    Only the variable *names* are inspected and reported; a value is never read into a message.
    """
    environ = os.environ if environ is None else environ
    allowed = ALLOWED_ENVIRONMENTS[config.deployment]
    for db_name, db in sorted(config.databases.items()):
        for env_name, env in sorted(db.environments.items()):
            if env_name not in allowed and environ.get(env.dsn_env):
                raise CredentialIsolationError(
                    f"{config.deployment} deployment refuses to load: ${env.dsn_env} "
                    f"({env_name} DSN of database {db_name!r}) is set here",
                    hint=f"a {config.deployment} deployment must never hold {env_name} credentials; "
                    f"unset {env.dsn_env}",
                )
        if db.warm_copy and not may_reach_warm_copy(config) and environ.get(db.warm_copy.dsn_env):
            raise CredentialIsolationError(
                f"{config.deployment} deployment refuses to load: ${db.warm_copy.dsn_env} "
                f"(the warm copy DSN of database {db_name!r}, which holds production data) is set here",
                hint=f"only a deployment that holds production credentials may reach it; unset "
                f"{db.warm_copy.dsn_env}",
            )
    if config.deployment == "development" and environ.get(config.keys.raw.identity_env):
        raise CredentialIsolationError(
            f"development deployment refuses to load: ${config.keys.raw.identity_env} "
            "(the raw-backup identity) is set here",
            hint="raw backups hold production data; only the production deployment may decrypt them",
        )
    if (config.deployment == "production" and config.keys.raw.held_in == "verification"
            and environ.get(config.keys.raw.identity_env)):
        raise CredentialIsolationError(
            f"production deployment refuses to load: ${config.keys.raw.identity_env} (the raw-backup identity) "
            "is set here, but keys.raw.held_in says only the verification deployment holds it",
            hint=f"unset {config.keys.raw.identity_env} here; it belongs to the verification code location",
        )
    development_key = config.keys.development
    if config.deployment == "verification" and development_key and environ.get(development_key.identity_env):
        raise CredentialIsolationError(
            f"verification deployment refuses to load: ${development_key.identity_env} (the development "
            "identity) is set here",
            hint=f"the verification location reads raw backups only; unset {development_key.identity_env}",
        )
    if config.deployment == "production" and development_key and environ.get(development_key.identity_env):
        raise CredentialIsolationError(
            f"production deployment refuses to load: ${development_key.identity_env} (the development identity, "
            "which decrypts sanitized copies) is set here",
            hint="development credentials never belong in production; production encrypts sanitized copies "
            f"to the development recipients only; unset {development_key.identity_env}",
        )
    for db_name, db in sorted(config.databases.items()):
        if config.deployment == "development" and db.sanitize and environ.get(db.sanitize.hmac_key_env):
            raise CredentialIsolationError(
                f"development deployment refuses to load: ${db.sanitize.hmac_key_env} (the masking key of "
                f"database {db_name!r}) is set here",
                hint="with the masking key, pseudonyms can be tested against guesses; only the production "
                f"deployment may hold it; unset {db.sanitize.hmac_key_env}",
            )


def resolve_dsn(config: Config, database: str, environment: str = "production",
                environ: Mapping[str, str] | None = None) -> str:
    """The DSN of one environment of a database, read from its environment variable now."""
    environ = os.environ if environ is None else environ
    spec = config.database(database)
    env = spec.environments.get(environment)  # type: ignore[call-overload]
    if env is None:
        raise ConfigError(f"{config.source}: databases.{database}.environments has no {environment!r}")
    if environment not in ALLOWED_ENVIRONMENTS[config.deployment]:
        raise CredentialIsolationError(
            f"a {config.deployment} deployment may not connect to the {environment} database of {database!r}"
        )
    value = environ.get(env.dsn_env)
    if not value:
        raise ConfigError(
            f"${env.dsn_env} is not set (the {environment} DSN of database {database!r})",
            hint=f"export {env.dsn_env}=postgresql://user:password@host:5432/dbname",
        )
    register_dsn(value)  # its password (and $PGPASSWORD) are redacted from all output
    if (config.deployment == "production" and environment == "production" and not spec.allow_plaintext
            and dsn_sends_plaintext(value)):
        raise RefusedError(
            f"refused: the production DSN of {database!r} (${env.dsn_env}, {mask_dsn(value)}) does not require "
            "TLS: its credentials and data would cross the network in plaintext",
            hint=f"add sslmode=verify-full (with sslrootcert) or sslmode=require to ${env.dsn_env}, or set "
                 f"databases.{database}.allow_plaintext: true for a trusted network",
            refusal=Refusals.PLAINTEXT_PRODUCTION_DSN)
    return value


__all__ = ["ALLOWED_ENVIRONMENTS", "check_credential_isolation", "holds_raw_identity", "may_reach_warm_copy",
           "protected_databases",
           "reachable_environments", "resolve_dsn", "sanitized_databases", "split_verification",
           "warm_copy_databases"]
