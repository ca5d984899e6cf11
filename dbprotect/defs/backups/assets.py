"""The production snapshot asset: one materialization is one new backup in the primary store."""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from datetime import timedelta

import dagster as dg

from dbprotect.core.backup.stream import BackupResult
from dbprotect.core.config.isolation import resolve_dsn
from dbprotect.core.config.model import Config
from dbprotect.core.ops import backup_database
from dbprotect.core.pg.dsn import register_dsn, server_label
from dbprotect.defs.helpers import core_errors_as_failures, keyed_resource, numeric_metadata
from dbprotect.defs.names import dagster_actor, dagster_name, database_pool, postgres_resource_key, snapshot_key
from dbprotect.defs.resources import (
    CONFIG_RESOURCE,
    SECRETS_RESOURCE,
    DbprotectConfigResource,
    PostgresResource,
    SecretsResource,
)

#: Metrics that are counts; the rest of ``BackupResult.metrics()`` are measured floats.
_INT_METRICS = frozenset({"dump_bytes", "compressed_bytes", "stored_bytes", "tables", "total_rows"})


def snapshot_metadata(result: BackupResult, source: str) -> dict[str, dg.MetadataValue]:
    """Materialization metadata: identifiers as text, every measurement as a number the UI plots."""
    return {
        "backup_id": dg.MetadataValue.text(result.manifest.backup_id),
        "stored_uri": dg.MetadataValue.url(result.uri),
        "source": dg.MetadataValue.text(source),
        **numeric_metadata(result.metrics(), counts=_INT_METRICS),
        # Byte counts stay exact ints (``*_bytes``); these plot on a readable scale.
        **{name.removesuffix("_bytes") + "_mb": dg.MetadataValue.float(round(value / 1e6, 3))
           for name, value in result.metrics().items() if name.endswith("_bytes")},
    }


def build_snapshot_asset(config: Config, database: str) -> dg.AssetsDefinition:
    """The ``[<database>, production_snapshot]`` asset, fresh while its newest backup is within the RPO."""
    spec = config.database(database)
    postgres_key = postgres_resource_key(database)

    @dg.asset(
        pool=database_pool(database),
        key=snapshot_key(database),
        group_name=dagster_name(database),
        kinds={"postgres"},
        description=(
            f"An encrypted, compressed pg_dump of the production database {database!r} in the "
            f"{config.primary_storage(database)!r} store. Materializing takes one new backup."
        ),
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=spec.rpo_hours)),
        required_resource_keys={CONFIG_RESOURCE, SECRETS_RESOURCE, postgres_key},
        metadata={"database": database, "storage": config.primary_storage(database),
                  "rpo_target_hours": spec.rpo_hours},
    )
    def production_snapshot(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        # The DSN's resource key is computed per database, so this asset names its resources in the
        # decorator and takes them through keyed_resource (see there).
        settings = keyed_resource(context, CONFIG_RESOURCE, DbprotectConfigResource)
        postgres = keyed_resource(context, postgres_key, PostgresResource)
        secrets = keyed_resource(context, SECRETS_RESOURCE, SecretsResource)
        with core_errors_as_failures():
            loaded = settings.load()
            dsn = postgres.resolved() or resolve_dsn(loaded, database)  # unset: core's one-line error naming it
            source = server_label(register_dsn(dsn))  # database and host: never a DSN in the log
            context.log.info(f"backing up {database!r} from {source}")
            result = backup_database(loaded, database, dsn=dsn, environ=secrets.environ(),
                                     actor=dagster_actor(context.run.job_name, context.run.tags))
            context.log.info(f"stored backup {result.manifest.backup_id} at {result.uri}")
        return dg.MaterializeResult(metadata=snapshot_metadata(result, source))

    return production_snapshot
