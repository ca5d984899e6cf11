"""Promotion: the newest sanitized copy that passed every blocking check, restored into development.

Runs on the development side with the development key (the raw-backup key and the production DSN
are refused there by :func:`dbprotect.core.config.isolation.check_credential_isolation`). The restore is the
guarded on-call restore of :mod:`dbprotect.core.restore.oncall`: the development database's environment
marker must say ``development``, a safety backup of it is taken first (encrypted to the
development key), the copy is restored into a staging database, verified against its manifest and
swapped in. A copy whose lineage lacks a passed result for any blocking check is never promoted.

The undo is an ordinary restore on the development side: the safety backup sits in
``<database>-development-safety`` (``list --all`` names it ``safety``), ``dbprotect restore
<database> <its id> --target development:<name> --confirm <name>`` decrypts it with the development
identity (:func:`dbprotect.core.ops.restores.restore_database` picks the key by that folder), and
``promote`` prints that exact command.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbprotect.core.errors import Refusals, RefusedError
from dbprotect.core.sanitize.build import LINEAGE_FIELD, sanitized_name
from dbprotect.core.sanitize.checks import BLOCKING_CHECKS
from dbprotect.core.store import Storage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.core.store.manifest import Manifest


@dataclass(frozen=True)
class Promotable:
    """The artifact to promote, or why there is none (``manifest`` None, ``reason`` says why)."""

    manifest: Manifest | None
    reason: str

    @property
    def artifact_id(self) -> str | None:
        return self.manifest.backup_id if self.manifest else None


def failed_checks(manifest: Manifest) -> list[str]:
    """Blocking checks without a recorded pass in the artifact's lineage (all of them if it has none)."""
    lineage = (manifest.model_extra or {}).get(LINEAGE_FIELD) or {}
    checks = lineage.get("checks") or {}
    return [name for name in BLOCKING_CHECKS if not (checks.get(name) or {}).get("ok")]


def newest_promotable(storage: Storage, database: str) -> Promotable:
    """The newest sanitized copy of ``database`` whose every blocking check passed."""
    entries = list_backups(storage, sanitized_name(database))
    if not entries:
        return Promotable(None, f"no sanitized copy of {database!r} exists in {storage.uri}")
    for entry in entries:
        manifest = load_manifest(storage, entry.database, entry.backup_id)
        if not failed_checks(manifest):
            return Promotable(manifest, f"sanitized copy {entry.backup_id} passed "
                                        f"{', '.join(BLOCKING_CHECKS)}")
    return Promotable(None, f"no sanitized copy of {database!r} passed its blocking checks")


def require_promotable(manifest: Manifest) -> None:
    failed = failed_checks(manifest)
    if failed:
        raise RefusedError(f"refused: sanitized copy {manifest.backup_id} did not pass {', '.join(failed)}; "
                           "it is never promoted", hint="fix the masking rules and build a new sanitized copy",
                           refusal=Refusals.SANITIZED_COPY_FAILED_CHECKS)


