"""Schema protection (issue 6): snapshots, drift, sync, migration lint, guarded commands, markers.

Modules, one concept each::

    snapshot   pg_dump --schema-only, normalized, with a SHA-256 (history in the UI)
    drift      readable differences between two live schemas, computed by ``results``
    lint       squawk + dbprotect's data-loss rules, inline waivers with reasons
    protect    a fresh verified backup before a destructive change
    sync       plan (results) and push with the direction rules
    guard      run a destructive command only after a verified backup
    targets    mark a database's environment; check a DSN's marker (test isolation)

No Dagster here: ``dbprotect.defs.schema`` and ``dbprotect.cli.commands.schema`` call these.
"""

from __future__ import annotations

__all__: list[str] = []
