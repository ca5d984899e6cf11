"""Where ``dbprotect demo`` keeps everything: one work folder, and its keys in ``keys/`` beside it.

One object knows the layout, so the server, the key files, the written configuration and the
result the CLI prints cannot disagree about a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKDIR = Path(".dbprotect") / "demo"
KEY_FILE = "raw-backups.agekey"
DEV_KEY_FILE = "development.agekey"
MASKING_KEY_FILE = "demo-masking.key"


@dataclass(frozen=True)
class DemoPaths:
    """Where everything lives; keys sit beside the work folder (``.dbprotect/keys``)."""

    workdir: Path

    @property
    def pgdata(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def store(self) -> Path:
        return self.workdir / "store"

    @property
    def config(self) -> Path:
        return self.workdir / "dbprotect.yaml"

    @property
    def env_file(self) -> Path:
        return self.workdir / "demo.env"

    @property
    def dagster_home(self) -> Path:
        return self.workdir / "dagster_home"

    @property
    def rules(self) -> Path:
        return self.workdir / "masking-rules.yaml"

    @property
    def key_file(self) -> Path:
        return self.workdir.parent / "keys" / KEY_FILE

    @property
    def dev_key_file(self) -> Path:
        return self.workdir.parent / "keys" / DEV_KEY_FILE

    @property
    def masking_key_file(self) -> Path:
        return self.workdir.parent / "keys" / MASKING_KEY_FILE

    @classmethod
    def at(cls, workdir: str | os.PathLike[str] | None) -> DemoPaths:
        return cls(Path(workdir or DEFAULT_WORKDIR).expanduser().resolve())
