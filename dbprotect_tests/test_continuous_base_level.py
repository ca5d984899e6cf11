"""Base backups' own zstd level (``continuous.base_compression_level``): bounded, recorded, and really
the level zstd used, whatever the logical backups' ``compression_level`` says.

Why: a level that is parsed and recorded but never reaches the compressor would pass every check
that reads the record; comparing the stored sizes of two levels over the same server catches it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
import yaml
from pydantic import ValidationError

from dbprotect.core.config.load import load_config
from dbprotect.core.config.model import ContinuousSpec
from dbprotect.core.continuous.base import DEFAULT_BASE_ZSTD_LEVEL, verify_base_backup
from dbprotect.core.ops.continuous import base_backup_database
from dbprotect.core.store.filesystem import FilesystemStorage


def test_the_level_is_bounded_and_defaults_to_1() -> None:
    assert ContinuousSpec(slot="s").base_compression_level == DEFAULT_BASE_ZSTD_LEVEL == 1
    assert ContinuousSpec(slot="s", base_compression_level=-5).base_compression_level == -5
    for wrong in (-8, 20):
        with pytest.raises(ValidationError, match="base_compression_level"):
            ContinuousSpec(slot="s", base_compression_level=wrong)


@pytest.mark.slow
def test_the_configured_level_reaches_zstd_not_the_logical_level(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path,
        identity: pyrage.x25519.Identity) -> None:
    path = write_config(wal_server)
    sizes = {}
    for level in (-5, 3):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["databases"]["shop"]["compression_level"] = 19  # the logical backups' level: not the base's
        doc["databases"]["shop"]["continuous"] = {"slot": "dbprotect_test_level", "incremental": False,
                                                  "base_compression_level": level}
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        record = base_backup_database(load_config(path), "shop")
        assert record.base["compression"] == {"algorithm": "zstd", "level": level}
        result = verify_base_backup(FilesystemStorage(tmp_path / "store"), record, identity)
        assert result.ok, result.detail
        sizes[level] = record.base["size"]
    assert sizes[-5] > sizes[3] * 1.05, sizes
