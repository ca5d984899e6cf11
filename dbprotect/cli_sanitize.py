"""The `dbprotect` commands of the sanitize domain, registered onto the main group by :mod:`dbprotect.cli`.

Kept in their own module so each domain's commands read in one place; they are thin calls into
:mod:`dbprotect.core`, like every command.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this domain's commands to ``group`` (none yet)."""
    del group
