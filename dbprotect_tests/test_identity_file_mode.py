"""A key file (``@path``) that its group or others may access is refused (DBP989), as ssh refuses such a
private key: in ``dbprotect wal fetch`` (the server's ``restore_command``), in every reader of
``identity_env`` and in the demo's own key files. A 0600 file is read as before."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dbprotect.core.crypto import identity_recipient, load_identity, read_identity_file
from dbprotect.core.errors import CryptoError, Refusals, RefusedError
from dbprotect.demo.keys import ensure_key
from dbprotect_tests.test_continuous_wal import DBPROTECT, continuous_config

SEGMENT = "000000010000000000000042"


def _key_file(folder: Path, text: str, mode: int) -> Path:
    path = folder / f"key-{mode:04o}.agekey"
    path.write_text(f"# public key: ...\n{text}\n", encoding="utf-8")
    path.chmod(mode)
    return path


def test_a_key_file_only_its_owner_may_access_is_read(tmp_path: Path, age_keys: tuple[str, str]) -> None:
    for mode in (0o600, 0o400, 0o700):
        path = _key_file(tmp_path, age_keys[0], mode)
        assert identity_recipient(load_identity("K", {"K": f"@{path}"})) == age_keys[1]
        assert identity_recipient(read_identity_file(path)) == age_keys[1]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o610, 0o601, 0o666])
def test_a_key_file_its_group_or_others_may_access_is_refused(tmp_path: Path, age_keys: tuple[str, str],
                                                               mode: int) -> None:
    path = _key_file(tmp_path, age_keys[0], mode)
    with pytest.raises(RefusedError) as refused:
        load_identity("TEST_KEY", {"TEST_KEY": f"@{path}"})
    assert refused.value.refusal is Refusals.IDENTITY_FILE_TOO_OPEN and refused.value.code == "DBP989"
    assert refused.value.exit_code == 9
    line = refused.value.one_line()
    assert str(path) in line and "$TEST_KEY" in line and f"{mode:04o}" in line and "\n" not in str(refused.value)
    assert age_keys[0] not in line and refused.value.hint == f"chmod 600 {path}"
    with pytest.raises(RefusedError):
        read_identity_file(path)


def test_a_missing_or_unreadable_key_file_is_still_a_key_problem(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="cannot be read"):
        load_identity("K", {"K": f"@{tmp_path / 'absent.agekey'}"})
    binary = tmp_path / "binary.agekey"
    binary.write_bytes(b"\xff\xfe\x00")
    binary.chmod(0o600)
    with pytest.raises(CryptoError, match="not a text file"):
        load_identity("K", {"K": f"@{binary}"})


def test_the_demo_refuses_its_own_key_file_once_others_may_read_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "raw-backups.agekey"
    recipient = ensure_key(path)  # created 0600
    assert ensure_key(path) == recipient
    path.chmod(0o644)
    with pytest.raises(RefusedError) as refused:
        ensure_key(path)
    assert refused.value.code == "DBP989"


def test_wal_fetch_refuses_a_key_file_others_may_read_in_one_line(
        write_config: Callable[..., Path], tmp_path: Path, age_keys: tuple[str, str]) -> None:
    """``restore_command`` as the server runs it: a 0644 key stops at the key (exit 9, one line, nothing
    written); the same key at 0600 gets past it to the store (which does not hold the segment: exit 10)."""
    config = continuous_config(write_config, "postgresql://nobody@/shop", "dbprotect_test_key_mode")
    dest = tmp_path / "pg_wal" / SEGMENT
    dest.parent.mkdir()
    key = _key_file(tmp_path, age_keys[0], 0o644)
    environ = {**os.environ, "TEST_RAW_IDENTITY": f"@{key}"}

    def fetch() -> subprocess.CompletedProcess[str]:
        return subprocess.run([DBPROTECT, "--config", str(config), "wal", "fetch", SEGMENT, str(dest),
                               "--database", "shop"], capture_output=True, text=True, env=environ, timeout=120)

    refused = fetch()
    assert refused.returncode == 9, refused.stderr
    [error, *rest] = refused.stderr.strip().splitlines()
    assert error.startswith("error[DBP989]: key file ") and "mode 0644" in error
    assert all(line.startswith("hint: ") for line in rest) and "Traceback" not in refused.stderr
    assert age_keys[0] not in refused.stdout + refused.stderr and not dest.exists()

    key.chmod(0o600)
    served = fetch()
    assert served.returncode == 10, served.stderr  # past the key: the store simply does not hold it
    assert "DBP989" not in served.stderr and not dest.exists()
