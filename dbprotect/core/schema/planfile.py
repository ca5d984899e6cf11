"""Plan files: a schema plan made on the development side, reviewed, and pushed by production.

Development and production deployments are isolated, so the plan taking production to
development's schema is made where development is: against the newest production schema
snapshot in the store (:mod:`dbprotect.core.schema.stored`), never against production itself.
The file carries what production needs to judge it without reaching development:

- ``source_snapshot_sha256``: the normalized hash of the production schema the plan was made
  against. ``schema push --plan`` recomputes production's current hash and refuses a plan made
  against any other schema: a plan is only ever proven on the schema it was written for;
- ``source_schema``: development's schema (``pg_dump --schema-only``, no data), so production can
  prove the plan on a scratch copy of itself and re-diff against what development has;
- ``sql`` and ``unplannable``: the plan a reviewer reads, and what it cannot express.

A plan file is read as untrusted: strict fields and types, a size bound, and the development
schema is parsed and allow-listed (:func:`~dbprotect.core.schema.stored.check_loadable`) before
it is loaded into a scratch database.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dbprotect.core.errors import IntegrityError, NotFoundError
from dbprotect.core.schema.stored import MAX_SNAPSHOT_BYTES, check_loadable

PLAN_FILE_FORMAT = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PlanFile:
    """One development-made plan, bound to the production snapshot it was made against."""

    database: str
    source_snapshot_sha256: str
    source_snapshot_backup_id: str
    sql: str
    unplannable: tuple[str, ...]
    proof: str
    source_schema: str
    source: str = "development"
    target: str = "production"

    @property
    def empty(self) -> bool:
        return not self.sql.strip() and not self.unplannable

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FILE_FORMAT, **asdict(self), "unplannable": list(self.unplannable)}


def write_plan_file(plan: PlanFile, path: str | Path) -> Path:
    """Write ``plan`` as indented JSON (readable in a review), never over an existing file."""
    target = Path(path)
    with target.open("x", encoding="utf-8") as out:
        json.dump(plan.to_dict(), out, indent=2)
        out.write("\n")
    return target


def read_plan_file(path: str | Path) -> PlanFile:
    """Read and check a plan file; any doubt is an :class:`IntegrityError` naming the file."""
    source = Path(path)
    try:
        if source.stat().st_size > 2 * MAX_SNAPSHOT_BYTES:
            raise IntegrityError(f"plan file {source} is larger than {2 * MAX_SNAPSHOT_BYTES} bytes; refusing it")
        document: Any = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(f"plan file {source} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"plan file {source} is not readable JSON ({type(exc).__name__})") from None
    fields: dict[str, type] = {"format": int, "database": str, "source": str, "target": str,
                               "source_snapshot_sha256": str, "source_snapshot_backup_id": str, "sql": str,
                               "unplannable": list, "proof": str, "source_schema": str}
    if not isinstance(document, dict) or set(document) != set(fields) or \
            not all(isinstance(document[name], kind) for name, kind in fields.items()):
        raise IntegrityError(f"plan file {source} is not a dbprotect plan file (fields: {', '.join(fields)})")
    if document["format"] != PLAN_FILE_FORMAT:
        raise IntegrityError(f"plan file {source} has format {document['format']}, this dbprotect reads "
                             f"{PLAN_FILE_FORMAT}")
    if (document["source"], document["target"]) != ("development", "production"):
        raise IntegrityError(f"plan file {source} goes {document['source']} -> {document['target']}; "
                             "plan files go development -> production")
    if not _SHA256.match(document["source_snapshot_sha256"]):
        raise IntegrityError(f"plan file {source}: source_snapshot_sha256 is not a SHA-256")
    if not all(isinstance(item, str) for item in document["unplannable"]):
        raise IntegrityError(f"plan file {source}: unplannable must list strings")
    check_loadable(document["source_schema"], where=f"plan file {source} (source_schema)")
    return PlanFile(database=document["database"], source_snapshot_sha256=document["source_snapshot_sha256"],
                    source_snapshot_backup_id=document["source_snapshot_backup_id"], sql=document["sql"],
                    unplannable=tuple(document["unplannable"]), proof=document["proof"],
                    source_schema=document["source_schema"])


__all__ = ["PLAN_FILE_FORMAT", "PlanFile", "read_plan_file", "write_plan_file"]
