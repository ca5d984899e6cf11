"""A stored backup opens with the stock tools alone: ``age -d | zstd -d | pg_restore``.

This is the emergency path documented in docs/store-format.md, for the day dbprotect itself is
unavailable. Skipped when the ``age`` binary is not installed (``apt-get install age``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dbprotect.core.backup.stream import BackupResult, run_backup
from dbprotect.core.store import FilesystemStorage
from dbprotect_tests.fixtures.fix_pg import pg_bin, table_counts

AGE = shutil.which("age")
ZSTD = shutil.which("zstd")

# Slow, so not in the fast lane: backs up Chinook once for the stock age, zstd and pg_restore CLIs (~2.5 s).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(AGE is None or ZSTD is None, reason="the stock 'age' and 'zstd' CLIs are not on PATH"),
]


@pytest.fixture(scope="module")
def chinook_backup(chinook_dsn: str, tmp_path_factory: pytest.TempPathFactory,
                   age_keys: tuple[str, str]) -> tuple[Path, Path, BackupResult]:
    """One backup for the module: the tests only read it (list, restore elsewhere, a wrong key)."""
    tmp_path = tmp_path_factory.mktemp("age-interop")
    storage = FilesystemStorage(tmp_path / "store")
    result = run_backup(database="chinook", dsn=chinook_dsn, storage=storage, recipients=[age_keys[1]])
    key_file = tmp_path / "raw.key"
    key_file.write_text(f"# public key: {age_keys[1]}\n{age_keys[0]}\n")
    key_file.chmod(0o600)
    dump = storage.root / "chinook" / result.manifest.backup_id / "dump.zst.age"
    return dump, key_file, result


def _pipeline(dump: Path, key_file: Path, tail: str) -> tuple[list[int], str, str]:
    """Run the documented pipeline; return every stage's exit status (no failure hides in a pipe)."""
    script = f'"{AGE}" -d -i "{key_file}" "{dump}" | "{ZSTD}" -d -c | {tail}; echo "status: ${{PIPESTATUS[*]}}" >&2'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    err_lines = done.stderr.rstrip("\n").splitlines()
    statuses = [int(code) for code in err_lines[-1].removeprefix("status: ").split()]
    return statuses, done.stdout, "\n".join(err_lines[:-1])


def test_stock_age_zstd_and_pg_restore_list_the_tables(chinook_backup: tuple[Path, Path, BackupResult]) -> None:
    dump, key_file, result = chinook_backup
    statuses, listing, errors = _pipeline(dump, key_file, f'"{pg_bin() / "pg_restore"}" --list')
    # pg_restore --list stops reading after the table of contents: the stages before it may
    # then end with SIGPIPE (141), which is not a failure.
    assert statuses[-1] == 0 and all(code in (0, 141) for code in statuses[:-1]), (statuses, errors)
    listed = {line.split()[-2] for line in listing.splitlines() if " TABLE DATA public " in line}
    assert listed == {name.split(".", 1)[1] for name in result.manifest.tables}
    assert {"track", "invoice_line", "customer"} <= listed


def test_stock_tools_restore_to_the_manifest_counts(chinook_backup: tuple[Path, Path, BackupResult],
                                                     make_db: Callable[..., str]) -> None:
    dump, key_file, result = chinook_backup
    target = make_db(prefix="age_restore")
    statuses, _, errors = _pipeline(dump, key_file,
                                    f'"{pg_bin() / "pg_restore"}" --no-owner --exit-on-error --dbname="{target}"')
    assert statuses == [0, 0, 0], (statuses, errors)
    assert table_counts(target) == {name: record.rows for name, record in result.manifest.tables.items()}


def test_stock_age_refuses_another_key(chinook_backup: tuple[Path, Path, BackupResult],
                                       other_age_keys: tuple[str, str], tmp_path: Path) -> None:
    dump, _key_file, _ = chinook_backup
    wrong = tmp_path / "wrong.key"
    wrong.write_text(other_age_keys[0] + "\n")
    done = subprocess.run([str(AGE), "-d", "-i", str(wrong), str(dump)], capture_output=True, timeout=60)
    assert done.returncode != 0 and done.stdout == b""
    assert b"no identity matched" in done.stderr
