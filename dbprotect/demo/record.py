"""The demo's results, recorded in its own Dagster instance so the UI it points to shows them.

The events are built by :mod:`dbprotect.defs.report` (the metadata rules of the assets and
checks themselves); this module only opens the demo's instance (``dagster_home/``, the folder
``DAGSTER_HOME`` names in demo.env) and reports them there.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster._core.instance import InstanceRef

from dbprotect.core.backup.stream import BackupResult
from dbprotect.core.config.model import Config
from dbprotect.core.verify.integrity import IntegrityReport
from dbprotect.defs.report import backup_events, drill_events, report_events, schema_events


def record_in_dagster(dagster_home: Path, config: Config, database: str, backup: BackupResult,
                      integrity: IntegrityReport, dsn: str, environ: dict[str, str]) -> int:
    """Report the backup, its checks, the schema snapshots and a drill of the backup (``--all``).

    Returns how many events were recorded. The drill is read from the store: ``--all`` ran it on
    this backup before this is called; without ``--all`` there is none to report.
    """
    events = (backup_events(config, database, backup, integrity, dsn) + schema_events(config, database, environ)
              + drill_events(config, database, backup.manifest.backup_id))
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
        report_events(instance, events)
    return len(events)
