"""Backup-copy assets: one per storage target beyond the primary, downstream of the snapshot.

Materializing ``[<db>, backup_copy_<target>]`` copies the newest verified backup to ``<target>``
unless it is already there (:func:`dbprotect.core.ops.copy_to_target`): the encrypted
object as it is, verified on the target before its manifest commits it. The metadata says what
was copied and how (bytes, seconds, server-side or streamed) and carries a table of which
targets hold which backups, so the asset page answers "where are my backups?".
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
from collections.abc import Mapping

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.ops import CopyOutcome, copy_to_target, target_holdings
from dbprotect.core.store.catalog import BackupEntry
from dbprotect.defs.helpers import core_errors_as_failures
from dbprotect.defs.names import copy_key, dagster_actor, dagster_name, database_pool, snapshot_key
from dbprotect.defs.resources import DbprotectConfigResource, SecretsResource

#: Rows in the holdings table: the newest backups (older ones are in 'dbprotect list').
HOLDINGS_ROWS = 20


def holdings_markdown(holdings: dict[str, dict[str, BackupEntry]], rows: int = HOLDINGS_ROWS) -> str:
    """A row per backup id (newest first), a column per target: ``verified``, ``FAILED: <rungs>``, ``-``..."""
    targets = list(holdings)
    ids = sorted({backup_id for held in holdings.values() for backup_id in held}, reverse=True)
    lines = ["| backup id | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for backup_id in ids[:rows]:
        cells = []
        for target in targets:
            entry = holdings[target].get(backup_id)
            if entry is None:
                cells.append("-")
            elif entry.integrity_ok:
                cells.append("verified")
            elif entry.failed_rungs:
                cells.append("FAILED: " + ",".join(entry.failed_rungs))
            else:
                cells.append(entry.status)
        lines.append(f"| {backup_id} | " + " | ".join(cells) + " |")
    if len(ids) > rows:
        lines.append(f"\n{len(ids) - rows} older backup id(s) not shown ('dbprotect list' shows them)")
    return "\n".join(lines)


def holdings_metadata(config: Config, database: str,
                      environ: Mapping[str, str] | None = None) -> dict[str, dg.MetadataValue]:
    """The "who holds what" table and, per target, how many verified backups it holds (plotted)."""
    holdings = target_holdings(config, database, environ=environ)
    metadata: dict[str, dg.MetadataValue] = {"holdings": dg.MetadataValue.md(holdings_markdown(holdings))}
    for target, held in holdings.items():
        metadata[f"verified_on_{dagster_name(target)}"] = dg.MetadataValue.int(
            sum(1 for entry in held.values() if entry.integrity_ok))
    return metadata


def copy_metadata(outcome: CopyOutcome) -> dict[str, dg.MetadataValue]:
    result = outcome.result
    metadata: dict[str, dg.MetadataValue] = {
        "copied": dg.MetadataValue.bool(result is not None),
        "reason": dg.MetadataValue.text(outcome.plan.reason),
    }
    if result is not None:
        metadata.update({
            "backup_id": dg.MetadataValue.text(result.backup_id),
            "bytes": dg.MetadataValue.int(result.bytes),
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "verify_seconds": dg.MetadataValue.float(round(result.verify_seconds, 3)),
            "throughput_mb_per_s": dg.MetadataValue.float(result.throughput_mb_per_s),
            "server_side_copy": dg.MetadataValue.bool(result.server_side),
        })
    else:
        metadata["bytes"] = dg.MetadataValue.int(0)
    return metadata


def build_copy_asset(config: Config, database: str, target: str) -> dg.AssetsDefinition:
    """``[<database>, backup_copy_<target>]``, run after each snapshot whose blocking checks passed."""
    spec = config.storage[target]

    @dg.asset(
        pool=database_pool(database),
        key=copy_key(database, target),
        deps=[snapshot_key(database)],
        group_name=dagster_name(database),
        kinds={"s3" if spec.type == "s3" else "filesystem"},
        description=(
            f"Copies of {database!r}'s backups on the {target!r} store: the encrypted object, never decrypted, "
            f"SHA-256-verified on {target!r} before it counts. Materializing copies the newest verified backup "
            "if the target does not hold it yet."
        ),
        automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
        metadata={"database": database, "storage": target},
    )
    def backup_copy(context: dg.AssetExecutionContext,
                    dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                    dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.MaterializeResult:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            loaded = dbprotect_config.load()
            environ = dbprotect_secrets.environ()
            outcome = copy_to_target(loaded, database, target, actor=actor, environ=environ)
            holdings = holdings_metadata(loaded, database, environ)
        context.log.info(outcome.plan.reason)
        return dg.MaterializeResult(metadata={**copy_metadata(outcome), **holdings})

    return backup_copy
