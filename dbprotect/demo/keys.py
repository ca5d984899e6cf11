"""The demo's secrets: two age key pairs and an HMAC masking key, each in its own 0600 file.

Each is created on the first run only and read back afterwards, so a second run can still
decrypt the first run's backups and sanitized copies keep the same pseudonyms.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dbprotect.core.crypto import identity_recipient, read_identity_file, write_key_file
from dbprotect.core.errors import DbprotectError


def ensure_key(path: Path) -> str:
    """An age recipient of the demo; creates the identity file (0600) on the first run only."""
    if not path.exists():
        return write_key_file(path)
    identity = read_identity_file(path)  # refused (DBP989) once its group or others may read it
    return identity_recipient(identity)


def ensure_masking_key(path: Path) -> str:
    """The HMAC masking key (64 hex digits), created once (0600) so pseudonyms stay stable across runs."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    value = path.read_text(encoding="utf-8").strip()
    if len(value) < 32:
        raise DbprotectError(f"{path} does not hold a masking key of at least 16 bytes",
                             hint=f"delete {path} and run the demo again")
    return value
