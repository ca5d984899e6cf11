"""``copy_integrity_verified``: the newest copy on a target still matches its manifest's SHA-256.

The check reads the object back from the target (rung *stored*; no key needed) and records the
result there, so a copy that rotted or was tampered with turns ``failed:stored`` on that target:
it stops counting as a verified backup there, and the next copy run copies it again.
"""

# No "from __future__ import annotations": Dagster reads the context and resource annotations at runtime.
import dagster as dg

from dbprotect.core.errors import NotFoundError
from dbprotect.core.ops import verify_target_copy
from dbprotect.defs.copies.assets import holdings_metadata
from dbprotect.defs.helpers import core_errors_as_failures, safe_text
from dbprotect.defs.names import COPY_INTEGRITY_CHECK, copy_key, dagster_actor, database_pool
from dbprotect.defs.resources import DbprotectConfigResource, SecretsResource


def copy_check_key(database: str, target: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(copy_key(database, target), COPY_INTEGRITY_CHECK)


def build_copy_check(database: str, target: str) -> dg.AssetChecksDefinition:
    key = copy_check_key(database, target)

    @dg.asset_check(
        pool=database_pool(database),
        asset=key.asset_key,
        name=COPY_INTEGRITY_CHECK,
        description=f"The newest copy on {target!r} exists and its SHA-256 matches the manifest; the result is "
        f"recorded on {target!r}.",
    )
    def copy_integrity(context: dg.AssetCheckExecutionContext,
                       dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                       dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> dg.AssetCheckResult:
        actor = dagster_actor(context.run.job_name, dict(context.run.tags))
        with core_errors_as_failures():
            config = dbprotect_config.load()
            environ = dbprotect_secrets.environ()
            try:
                report = verify_target_copy(config, database, target, actor=actor, environ=environ)
            except NotFoundError as exc:  # nothing copied yet: red, visible, not a crashed run
                return dg.AssetCheckResult(passed=False, description=safe_text(exc.one_line()))
            holdings = holdings_metadata(config, database, environ)
        stored = report.results[0]
        return dg.AssetCheckResult(
            passed=report.ok, description=f"{report.backup_id}: {report.summary()}",
            metadata={"backup_id": dg.MetadataValue.text(report.backup_id),
                      "seconds": dg.MetadataValue.float(round(stored.seconds, 3)), **holdings})

    return copy_integrity
