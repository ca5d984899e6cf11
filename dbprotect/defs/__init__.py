"""Dagster definitions for dbprotect: thin wiring over :mod:`dbprotect.core`.

Loaded by ``dagster dev -m dbprotect.defs`` or ``workspace.yaml`` (``python_module:
dbprotect.defs``). ``defs`` is lazy (``@dagster.definitions``): importing this package reads no
file and no secret; Dagster calls it when the code location loads, which reads the configuration
at ``$DBPROTECT_CONFIG`` (default ``./dbprotect.yaml``) and refuses to load a deployment that can
see another deployment's credentials.

Layout (as in dagster-open-platform): one folder per domain, one file per kind::

    defs/
      names.py        every asset key, check, job and schedule name
      resources.py    config path, production DSNs, connection secrets by variable name, identities (EnvVar)
      helpers.py      core errors as Failures, numeric metadata, phase logging, per-database resources
      backups/        assets.py, checks.py, schedules.py
      copies/         a backup-copy asset per extra storage target, copy_integrity_verified, copy jobs
      retention/      retention_compliant, <db>_cleanup_job and its weekly schedule
      restores/       checks.py (restore_verified, drills), schedules.py, jobs.py (the restore job)
      schema/         schema snapshots, drift check, schema_sync job, pre-migration backup sensor
      sanitize/       sanitized development copies, blocking PII checks, promotion sensor and job
      verification.py a split deployment's verification location: readability jobs and sensors
      continuous/     point-in-time drills, continuous_rpo (a sensor reports it, no runs), base-backup job + schedule
"""

from __future__ import annotations

import os

import dagster as dg

from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.config.model import Config
from dbprotect.defs.alerts import build_alert_definitions
from dbprotect.defs.backups import build_backup_definitions
from dbprotect.defs.continuous import build_continuous_definitions
from dbprotect.defs.copies import build_copy_definitions
from dbprotect.defs.resources import build_resources
from dbprotect.defs.restores import build_restore_definitions
from dbprotect.defs.retention import build_retention_definitions
from dbprotect.defs.sanitize import build_sanitize_definitions
from dbprotect.defs.schema import build_pre_migration_definitions, build_schema_definitions
from dbprotect.defs.verification import build_verification_definitions


def build_definitions(config: Config) -> dg.Definitions:
    """Every definition for a validated configuration; pure (reads no environment variable)."""
    return dg.Definitions.merge(build_backup_definitions(config), build_restore_definitions(config),
                                build_copy_definitions(config), build_retention_definitions(config),
                                build_schema_definitions(config), build_pre_migration_definitions(config),
                                build_sanitize_definitions(config), build_alert_definitions(config),
                                build_continuous_definitions(config),
                                build_verification_definitions(config),
                                dg.Definitions(resources=build_resources(config)))


def load_definitions(path: str | os.PathLike[str] | None = None) -> dg.Definitions:
    """Read the configuration, enforce credential isolation, build the definitions.

    Raises the core errors unchanged (:class:`~dbprotect.core.errors.ConfigError`,
    :class:`~dbprotect.core.errors.CredentialIsolationError`): their messages name files, keys and
    variables, never a secret's value.
    """
    config = load_config(path)
    check_credential_isolation(config)
    return build_definitions(config)


@dg.definitions
def defs() -> dg.Definitions:
    """The code location's definitions, built when Dagster loads it (not at import)."""
    return load_definitions()


__all__ = ["build_definitions", "defs", "load_definitions"]
