"""The ``[<db>, sanitized_copy]`` asset and its blocking checks, on the production side.

One materialization is one build (:func:`dbprotect.core.sanitize.build_sanitized_copy`): the
newest verified backup restored into a scratch database, streamed through the masking rules,
checked, and stored encrypted to the development key. The three checks are reported from the build
itself (they need both the source and the copy, which exist only inside it), as blocking checks:
when one fails nothing is stored, the step fails with the reason, and the red check says why in
the UI.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from collections.abc import Iterator

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.ops import build_sanitized_copy
from dbprotect.core.sanitize.build import SanitizeResult, sanitized_name
from dbprotect.core.sanitize.checks import BLOCKING_CHECKS
from dbprotect.defs.helpers import core_errors_as_failures, keyed_resource, numeric_metadata, phase_logger
from dbprotect.defs.names import DATABASE_TAG, dagster_actor, dagster_name, database_pool, snapshot_key
from dbprotect.defs.resources import (
    CONFIG_RESOURCE,
    IDENTITY_RESOURCE,
    SECRETS_RESOURCE,
    AgeIdentityResource,
    DbprotectConfigResource,
    SecretsResource,
    resolve_secret,
)

SANITIZED_ASSET = "sanitized_copy"
_INT_METRICS = frozenset({"rows", "tables", "masked_columns", "collisions_resolved", "unreviewed_rules"})


def sanitized_copy_key(database: str) -> dg.AssetKey:
    return dg.AssetKey([dagster_name(database), SANITIZED_ASSET])


def sanitize_job_name(database: str) -> str:
    return f"{dagster_name(database)}_sanitize_job"


def masking_key_resource_key(database: str) -> str:
    return f"{dagster_name(database)}_masking_key"


class MaskingKeyResource:
    """The masking (HMAC) key of one database, as an `EnvVar`: the UI shows its name, never its value.

    A plain object, like the other secrets' resources (no run config in any launchpad form).
    """

    def __init__(self, key: str, key_env: str) -> None:
        self.key = key
        self.key_env = key_env

    def __repr__(self) -> str:
        return f"MaskingKeyResource(key_env={self.key_env!r})"

    def resolved(self) -> str | None:
        return resolve_secret(self.key)


def masking_key_resources(config: Config, databases: list[str]) -> dict[str, object]:
    resources: dict[str, object] = {}
    for database in databases:
        spec = config.databases[database].sanitize
        assert spec is not None
        resources[masking_key_resource_key(database)] = MaskingKeyResource(
            key=dg.EnvVar(spec.hmac_key_env), key_env=spec.hmac_key_env)
    return resources


def _metadata(result: SanitizeResult) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "source_backup_id": dg.MetadataValue.text(result.source_backup_id),
        "rules_sha256": dg.MetadataValue.text(result.rules_sha256),
        "masking_key_id": dg.MetadataValue.text(result.key_id),
    }
    if result.artifact_id:
        metadata["artifact_id"] = dg.MetadataValue.text(result.artifact_id)
    if result.unreviewed:
        metadata["unreviewed_rules"] = dg.MetadataValue.int(len(result.unreviewed))
    return {**metadata, **numeric_metadata(result.metrics(), counts=_INT_METRICS)}


def build_sanitized_copy_asset(config: Config, database: str) -> dg.AssetsDefinition:
    key = sanitized_copy_key(database)
    key_resource = masking_key_resource_key(database)

    @dg.asset(
        pool=database_pool(database),
        key=key,
        deps=[snapshot_key(database)],
        group_name=dagster_name(database),
        kinds={"postgres"},
        description=(f"A sanitized copy of {database!r} for development: its newest verified backup, every column "
                     f"masked by the rule file, stored as {sanitized_name(database)!r} encrypted to the "
                     "development key. Stored only when every blocking check passes."),
        check_specs=[dg.AssetCheckSpec(name, asset=key, blocking=True, description=_CHECK_TEXT[name])
                     for name in BLOCKING_CHECKS],
        required_resource_keys={CONFIG_RESOURCE, IDENTITY_RESOURCE, SECRETS_RESOURCE, key_resource},
        metadata={"database": database, "store_folder": sanitized_name(database)},
    )
    def sanitized_copy(context: dg.AssetExecutionContext) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        # The masking key's resource key is computed per database, so this asset names its resources in
        # the decorator and takes them through keyed_resource (see there).
        settings = keyed_resource(context, CONFIG_RESOURCE, DbprotectConfigResource)
        identity = keyed_resource(context, IDENTITY_RESOURCE, AgeIdentityResource)
        masking = keyed_resource(context, key_resource, MaskingKeyResource)
        secrets = keyed_resource(context, SECRETS_RESOURCE, SecretsResource)
        with core_errors_as_failures():
            result = build_sanitized_copy(settings.load(), database, identity=identity.parsed(),
                                          key_value=masking.resolved(), environ=secrets.environ(),
                                          by=dagster_actor(context.run.job_name, context.run.tags),
                                          progress=phase_logger(context.log, "sanitize phase"))
        checks = [dg.AssetCheckResult(check_name=c.name, passed=c.ok, description=c.detail,
                                      severity=dg.AssetCheckSeverity.ERROR,
                                      metadata=numeric_metadata(c.metrics))
                  for c in result.checks]
        if not result.ok:
            yield from checks
            failed = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
            raise dg.Failure(description=f"sanitized copy of {database!r} not stored: {failed}",
                             metadata={"source_backup_id": result.source_backup_id})
        if result.unreviewed:
            context.log.warning(f"{len(result.unreviewed)} masking rule(s) still marked review: true")
        yield dg.MaterializeResult(metadata=_metadata(result), check_results=checks)

    return sanitized_copy


_CHECK_TEXT = {
    "no_pii_leaked": "No masked value equals its source; no text-like value of the copy (by base type: domains, "
                     "arrays, composites, hstore, JSON leaves) equals a personal production value in any normalized "
                     "form (keyed fingerprints); no e-mail, phone or card number in keep columns.",
    "constraints_hold": "Primary keys, unique and foreign key constraints of the source hold in the copy.",
    "row_counts_match": "Every table holds the rows of the source backup.",
}


def build_sanitize_job(database: str) -> "dg.UnresolvedAssetJobDefinition":
    return dg.define_asset_job(
        sanitize_job_name(database),
        selection=dg.AssetSelection.assets(sanitized_copy_key(database)),
        tags={DATABASE_TAG: database},
        description=f"Build, check and store the sanitized development copy of {database!r}.",
    )
