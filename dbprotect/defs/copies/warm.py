"""The warm copy asset ``[<db>, warm_copy]`` and its check ``warm_copy_verified``.

Materializing refreshes the standby database on the backup server from the newest verified
backup (:func:`dbprotect.core.restore.warm.refresh_warm_copy`: staged restore, content verified against
the manifest, swapped in by renaming), or records why nothing was needed. The metadata is numeric
where the UI should plot it: the age of the data the standby holds, tables and rows verified,
and the seconds of each phase. The check compares the *live* warm copy with the manifest of the
backup it holds, so a standby that someone wrote to (or that rotted) turns red.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from collections.abc import Mapping

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.errors import NotFoundError
from dbprotect.core.ops import refresh_warm_copy, target_holdings, verify_warm_copy
from dbprotect.core.restore.warm import WarmCopyOutcome
from dbprotect.core.store.catalog import BackupEntry
from dbprotect.defs.copies.assets import holdings_markdown
from dbprotect.defs.helpers import core_errors_as_failures, phase_logger, safe_text
from dbprotect.defs.names import (
    WARM_COPY_CHECK,
    dagster_actor,
    dagster_name,
    database_pool,
    snapshot_key,
    warm_copy_key,
)
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource

#: The holdings table's column for the warm copy (the store targets are named by their config names).
WARM_COLUMN = "warm copy"
#: Phases every materialization reports (0.0 when skipped), so the UI's plots have no gaps.
PHASES = ("decrypt_seconds", "restore_seconds", "verify_seconds", "analyze_seconds", "swap_seconds",
          "warm_swap_seconds", "total_seconds")


def warm_holdings_markdown(config: Config, database: str, held: str | None,
                           environ: Mapping[str, str] | None = None) -> str:
    """The "which targets hold which backups" table, with a column for the backup the warm copy holds."""
    holdings = target_holdings(config, database, environ=environ)
    primary = holdings[config.primary_storage(database)]
    column: dict[str, BackupEntry] = {held: primary[held]} if held and held in primary else {}
    return holdings_markdown({**holdings, WARM_COLUMN: column})


def warm_copy_metadata(outcome: WarmCopyOutcome) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "refreshed": dg.MetadataValue.bool(outcome.refreshed),
        "reason": dg.MetadataValue.text(outcome.reason),
        "backup_id": dg.MetadataValue.text(outcome.backup_id),
        "previous_backup_id": dg.MetadataValue.text(outcome.previous or "-"),
        "warm_database": dg.MetadataValue.text(outcome.warm_database),
        "server": dg.MetadataValue.text(outcome.server),
        "backup_age_hours": dg.MetadataValue.float(outcome.backup_age_hours()),
        "tables_verified": dg.MetadataValue.int(outcome.tables if outcome.refreshed else 0),
        "rows_verified": dg.MetadataValue.int(outcome.rows if outcome.refreshed else 0),
        "objects_verified": dg.MetadataValue.int(outcome.objects),
    }
    for phase in PHASES:
        metadata[phase] = dg.MetadataValue.float(float(outcome.timings.get(phase, 0.0)))
    return metadata


def build_warm_copy_asset(database: str) -> dg.AssetsDefinition:
    """``[<database>, warm_copy]``, refreshed after each snapshot whose blocking checks passed."""

    @dg.asset(
        pool=database_pool(database),
        key=warm_copy_key(database),
        deps=[snapshot_key(database)],
        group_name=dagster_name(database),
        kinds={"postgres"},
        description=(
            f"The warm copy of {database!r}: its newest verified backup restored into the backup server's database "
            "(marked 'backup'), verified against the manifest table by table, and swapped in by renaming. "
            "Materializing does nothing when it already holds the newest verified backup."
        ),
        automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
        metadata={"database": database},
    )
    def warm_copy(context: dg.AssetExecutionContext,
                  dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                  dbprotect_secrets: dg.ResourceParam[SecretsResource],
                  raw_backup_identity: dg.ResourceParam[AgeIdentityResource]) -> dg.MaterializeResult:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
            environ = dbprotect_secrets.environ()
            outcome = refresh_warm_copy(loaded, database, actor=actor, progress=phase_logger(context.log, "warm copy"),
                                        environ=environ, identity=raw_backup_identity.parsed())
            holdings = warm_holdings_markdown(loaded, database, outcome.backup_id, environ)
        context.log.info(outcome.reason)
        return dg.MaterializeResult(metadata={**warm_copy_metadata(outcome),
                                              "holdings": dg.MetadataValue.md(holdings)})

    return warm_copy


def build_warm_copy_check(database: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        pool=database_pool(database),
        asset=warm_copy_key(database),
        name=WARM_COPY_CHECK,
        description=f"The live warm copy of {database!r}: every table's row count and content checksum, the "
        "sequences and large objects equal the manifest of the backup it holds.",
    )
    def warm_copy_verified(context: dg.AssetCheckExecutionContext,
                           dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                           dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            try:
                report = verify_warm_copy(dbprotect_config.load(), database, actor=actor,
                                          environ=dbprotect_secrets.environ())
            except NotFoundError as exc:  # no warm copy yet: red and visible, not a crashed run
                return dg.AssetCheckResult(passed=False, description=safe_text(exc.one_line()))
        return dg.AssetCheckResult(
            passed=report.ok, description=report.detail,
            metadata={"backup_id": dg.MetadataValue.text(report.backup_id),
                      "tables": dg.MetadataValue.int(report.tables), "rows": dg.MetadataValue.int(report.rows),
                      "problems": dg.MetadataValue.int(len(report.problems)),
                      "seconds": dg.MetadataValue.float(report.seconds)})

    return warm_copy_verified
