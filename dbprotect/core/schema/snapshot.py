"""Normalized schema snapshots: ``pg_dump --schema-only`` with the noise removed, and a SHA-256.

Why normalize: two databases with the same schema dump differently. pg_dump writes a version
header, ``SET`` lines, owner and ACL statements, per-object ``-- Name: ...; Owner: ...`` comment
headers, and (since 17.6/18) ``\\restrict`` lines carrying a random key; and it orders objects
partly by OID, so the order in which objects were *created* leaks into the text. A snapshot keeps
only the statements that define objects, one block per object, blocks sorted, so its hash changes
when, and only when, the schema changes.

The snapshot is for history (a new hash is a new materialization in the UI) and for a quick
"same or not"; the readable list of differences comes from :mod:`dbprotect.core.schema.drift`,
which asks ``results`` (not a differ of our own).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass

from dbprotect.core.errors import ToolError
from dbprotect.core.pg.dsn import mask_dsn
from dbprotect.core.pg.tools import connect, require_tool_for_server, server_major, split_password, tool_env

#: Lines that carry no schema: session settings, psql meta-commands, search_path resets.
_NOISE = re.compile(r"^(SET |SELECT pg_catalog\.set_config\(|\\(un)?restrict |\\connect )")


@dataclass(frozen=True)
class SchemaSnapshot:
    """A normalized schema: its text (object blocks, sorted), their count and the text's SHA-256."""

    text: str
    sha256: str
    objects: int
    server_version: str

    def to_dict(self) -> dict[str, object]:
        return {"sha256": self.sha256, "objects": self.objects, "server_version": self.server_version}


def normalize_schema_dump(dump: str) -> list[str]:
    """The object blocks of a plain-format schema dump: comments and noise removed, sorted.

    pg_dump separates objects by blank lines and ``--`` comment headers; a block is the run of
    statement lines between them. Statements inside a dollar-quoted function body may contain
    blank lines, so a block only ends on a blank line after a line ending in ``;``.
    """
    blocks: list[str] = []
    current: list[str] = []
    for raw in dump.splitlines():
        line = raw.rstrip()
        if _NOISE.match(line) or (line.startswith("--") and not current):
            continue
        if line.startswith("--") and current and current[-1].endswith(";"):
            blocks.append("\n".join(current))
            current = []
            continue
        if not line:
            if current and current[-1].endswith(";"):
                blocks.append("\n".join(current))
                current = []
            elif current:
                current.append(line)
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return sorted(block for block in blocks if block.strip())


def dump_schema(dsn: str, *, pg_bin_dir: str | None = None) -> tuple[str, str]:
    """``(pg_dump --schema-only SQL, server version)`` of ``dsn``: no owners, privileges, tablespaces.

    The one place schema work runs pg_dump: tools new enough for the server (and speaking TLS when
    the DSN requires it), the password handed over in the environment, never on the command line.
    """
    with connect(dsn, autocommit=True, application_name="dbprotect-schema") as conn:
        major = server_major(conn)
        version = str(conn.info.server_version)
    pg_dump = require_tool_for_server("pg_dump", major, pg_bin_dir, dsn=dsn)
    target, password = split_password(dsn)
    command = [str(pg_dump.path), "--schema-only", "--no-owner", "--no-privileges", "--no-tablespaces",
               "--no-security-labels", "--no-subscriptions", "--no-publications", "--dbname", target]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                              env=tool_env(password))
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"pg_dump --schema-only of {mask_dsn(dsn)} did not run: {exc}") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ToolError(f"pg_dump --schema-only of {mask_dsn(dsn)} failed: {mask_dsn(reason)}")
    return done.stdout, version


def take_snapshot(dsn: str, *, pg_bin_dir: str | None = None) -> SchemaSnapshot:
    """Dump the schema of ``dsn`` (no owners, no privileges, no tablespaces) and normalize it."""
    dump, version = dump_schema(dsn, pg_bin_dir=pg_bin_dir)
    blocks = normalize_schema_dump(dump)
    text = "\n\n".join(blocks) + "\n"
    return SchemaSnapshot(text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), objects=len(blocks),
                          server_version=version)
