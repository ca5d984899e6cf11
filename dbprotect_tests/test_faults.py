"""Every way a backup can go wrong (issue 2's list): a clear one-line error, and nothing lost.

"Nothing lost" is asserted on the store itself: no new backup is listed, nothing half-written
is left (no ``.partial-`` file, no open multipart upload), and the backup taken before the
failure is still the newest one, in the same state.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import psycopg
import pytest
import yaml

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.config.isolation import check_credential_isolation
from dbprotect.core.config.load import load_config
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import (
    ConfigError,
    CredentialIsolationError,
    CryptoError,
    DatabaseError,
    DbprotectError,
    StorageError,
    ToolError,
)
from dbprotect.core.ops import backup_database, verify_database_backup
from dbprotect.core.store import FilesystemStorage, S3Storage, Storage
from dbprotect.core.store.catalog import list_backups, recorded_verifications
from dbprotect.core.store.filesystem import PARTIAL_MARK
from dbprotect.core.store.manifest import dump_key
from dbprotect.core.verify.integrity import verify_backup
from dbprotect_tests.fixtures.fix_pg import PgServer, psql

DB = "shop"
SMALL_SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text, email text);
INSERT INTO customers (name, email) SELECT 'name ' || g, 'user' || g || '@example.com' FROM generate_series(1, 300) g;
"""
PART = 5 * 1024 * 1024  # the smallest part S3 accepts


# -- helpers ------------------------------------------------------------------------------------

def assert_clear(err: DbprotectError, *must_contain: str, secret: str | None = None) -> None:
    """One line, no secret, and it says what went wrong."""
    message = str(err)
    assert "\n" not in message, message
    assert "Traceback" not in message
    for part in must_contain:
        assert part.lower() in message.lower(), f"{part!r} not in {message!r}"
    if secret:
        assert secret not in message and secret not in (err.hint or "")


def assert_nothing_lost(storage: Storage, previous_id: str, previous_status: str = "unverified") -> None:
    entries = list_backups(storage, DB)
    assert [entry.backup_id for entry in entries] == [previous_id]
    assert entries[0].status == previous_status
    assert [e.backup_id for e in list_backups(storage, DB, include_incomplete=True)] == [previous_id]
    assert all(info.key.startswith(f"{DB}/{previous_id}/") for info in storage.list(f"{DB}/"))
    if isinstance(storage, FilesystemStorage):
        assert not [p for p in storage.root.rglob("*") if PARTIAL_MARK in p.name]
    if isinstance(storage, S3Storage):
        assert storage.open_multipart_uploads() == []


@pytest.fixture
def small_dsn(make_db: Callable[..., str]) -> str:
    return make_db(SMALL_SQL, prefix="small")


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "store")


@pytest.fixture
def previous(store: FilesystemStorage, small_dsn: str, age_keys: tuple[str, str]) -> str:
    """A good backup taken before the failure; it must survive untouched."""
    return run_backup(database=DB, dsn=small_dsn, storage=store, recipients=[age_keys[1]]).manifest.backup_id


@pytest.fixture(scope="module")
def big_dsn(pg: PgServer) -> Iterator[str]:
    """About 30 MB of hex text (half-compressible): several 5 MiB parts after zstd."""
    name = pg.create_database("big")
    dsn = pg.dsn(name)
    psql(dsn, "CREATE TABLE events AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS payload "
              "FROM generate_series(1, 400000) g")
    yield dsn
    pg.drop_database(name)


# -- connecting ---------------------------------------------------------------------------------

@pytest.fixture
def password_role(pg: PgServer) -> Iterator[tuple[str, str]]:
    """A role that must log in with a password (scram), via a temporary first line in pg_hba.conf."""
    role, password = f"dbp_pw_{secrets.token_hex(3)}", f"Right-{secrets.token_hex(6)}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
        original = hba.read_text()
        hba.write_text(f"local all {role} scram-sha-256\n{original}")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield role, password
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            hba.write_text(original)
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(f"DROP ROLE {role}")


def test_wrong_password(pg: PgServer, password_role: tuple[str, str], small_dsn: str, store: FilesystemStorage,
                        previous: str, age_keys: tuple[str, str]) -> None:
    role, password = password_role
    dbname = small_dsn.split("@/")[1].split("?")[0]
    wrong = f"Wrong-{secrets.token_hex(6)}"
    with pytest.raises(DatabaseError) as err:
        run_backup(database=DB, dsn=pg.dsn(dbname, role, wrong), storage=store, recipients=[age_keys[1]])
    assert_clear(err.value, "password authentication failed", role, secret=wrong)
    assert "****" in str(err.value)  # the DSN is shown, masked
    assert "password" in (err.value.hint or "")
    assert_nothing_lost(store, previous)
    # The right password works, and reaches pg_dump (through PGPASSWORD, not its command line).
    good = run_backup(database=DB, dsn=pg.dsn(dbname, role, password), storage=store, recipients=[age_keys[1]])
    assert good.manifest.tables["public.customers"].rows == 300
    assert password not in good.manifest.to_json().decode()


def test_unreachable_host(store: FilesystemStorage, previous: str, age_keys: tuple[str, str]) -> None:
    secret = f"Pw-{secrets.token_hex(6)}"
    with pytest.raises(DatabaseError) as err:
        run_backup(database=DB, dsn=f"postgresql://admin:{secret}@127.0.0.1:1/shop", storage=store,
                   recipients=[age_keys[1]])
    assert_clear(err.value, "cannot connect to postgresql://admin:****@127.0.0.1:1/shop", "refused", secret=secret)
    assert "host and port" in (err.value.hint or "")
    assert_nothing_lost(store, previous)


# -- pg_dump ------------------------------------------------------------------------------------

def test_pg_dump_missing(tmp_path: Path, small_dsn: str, store: FilesystemStorage, previous: str,
                         age_keys: tuple[str, str]) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    with pytest.raises(ToolError) as err:
        run_backup(database=DB, dsn=small_dsn, storage=store, recipients=[age_keys[1]], pg_bin_dir=str(empty))
    assert_clear(err.value, f"pg_dump not found in {empty}")
    assert "pg_bin_dir" in (err.value.hint or "")
    assert_nothing_lost(store, previous)


def test_pg_dump_too_old(tmp_path: Path, small_dsn: str, store: FilesystemStorage, previous: str,
                         age_keys: tuple[str, str]) -> None:
    old = tmp_path / "pg12"
    old.mkdir()
    fake = old / "pg_dump"  # a stand-in for an old binary: it only answers --version
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.0'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(ToolError) as err:
        run_backup(database=DB, dsn=small_dsn, storage=store, recipients=[age_keys[1]], pg_bin_dir=str(old))
    assert_clear(err.value, "pg_dump 12.0", "older than the server (PostgreSQL 18)")
    assert "pg_dump 18 or newer" in (err.value.hint or "")
    assert_nothing_lost(store, previous)


def _pg_dump_children() -> list[int]:
    """pg_dump processes started by this test process (found in /proc: no psutil needed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(status.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"--snapshot=" in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.slow
def test_pg_dump_killed_mid_stream(big_dsn: str, store: FilesystemStorage, previous: str,
                                   age_keys: tuple[str, str]) -> None:
    killed: list[int] = []

    def kill_after_2mb(done: int, _total: int) -> None:
        if done > 2 * 1024 * 1024 and not killed:
            for pid in _pg_dump_children():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with pytest.raises(ToolError) as err:
        run_backup(database=DB, dsn=big_dsn, storage=store, recipients=[age_keys[1]], progress=kill_after_2mb)
    assert len(killed) == 1
    assert_clear(err.value, f"pg_dump was killed by signal {int(signal.SIGKILL)}")
    assert "discarded" in (err.value.hint or "")
    assert_nothing_lost(store, previous)
    assert _pg_dump_children() == []  # no orphan left behind


@pytest.mark.slow
def test_pg_dump_killed_while_uploading_to_s3(big_dsn: str, small_dsn: str, s3_endpoint: str, s3_bucket: str,
                                              age_keys: tuple[str, str]) -> None:
    """A failure that is not S3's own still aborts the multipart upload already under way.

    To be sure pg_dump is still alive when the first part goes up, it is paused (SIGSTOP) after
    20 MB, and killed when the first UploadPart request starts; a timer ends it if that never comes.
    Single-threaded zstd here: multi-threaded zstd holds ~18 MB of input in its job buffers, so
    the first part of this 30 MB dump would only leave once pg_dump had finished.
    """
    storage = S3Storage(s3_bucket, "backups", endpoint_url=s3_endpoint, region="us-east-1", part_size=PART)
    previous_id = run_backup(database=DB, dsn=small_dsn, storage=storage,
                             recipients=[age_keys[1]]).manifest.backup_id
    events: list[str] = []

    def signal_pg_dump(sig: signal.Signals, event: str) -> None:
        for pid in _pg_dump_children():
            os.kill(pid, sig)
            events.append(event)

    def pause_after_20mb(done: int, _total: int) -> None:
        if done > 20 * 1024 * 1024 and not events:
            signal_pg_dump(signal.SIGSTOP, "paused")

    def kill_on_first_part(**_: Any) -> None:
        if "killed" not in events:
            signal_pg_dump(signal.SIGKILL, "killed")

    storage.client.meta.events.register("before-call.s3.UploadPart", kill_on_first_part)
    guard = threading.Timer(60, signal_pg_dump, (signal.SIGKILL, "timed out"))
    guard.start()
    try:
        with pytest.raises(ToolError) as err:
            run_backup(database=DB, dsn=big_dsn, storage=storage, recipients=[age_keys[1]],
                       progress=pause_after_20mb, zstd_threads=0)
    finally:
        guard.cancel()
    assert "killed" in events and "timed out" not in events, events
    assert_clear(err.value, f"pg_dump was killed by signal {int(signal.SIGKILL)}")
    assert_nothing_lost(storage, previous_id)


# -- the store ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("zstd_threads", [0, 2], ids=["while-pg_dump-streams", "after-pg_dump-ended"])
def test_s3_fails_in_the_middle_of_an_upload(big_dsn: str, small_dsn: str, s3_endpoint: str, s3_bucket: str,
                                             age_keys: tuple[str, str], zstd_threads: int) -> None:
    """The second part fails. With single-threaded zstd the parts leave while pg_dump still writes;
    multi-threaded zstd buffers enough of this small dump that they leave after it ended."""
    storage = S3Storage(s3_bucket, "backups", endpoint_url=s3_endpoint, region="us-east-1", part_size=PART)
    previous_id = run_backup(database=DB, dsn=small_dsn, storage=storage,
                             recipients=[age_keys[1]]).manifest.backup_id
    parts: list[int] = []
    lock = threading.Lock()

    def fail_second_part(**_: Any) -> None:
        with lock:
            parts.append(len(parts) + 1)
            if len(parts) == 2:
                raise botocore.exceptions.EndpointConnectionError(endpoint_url=s3_endpoint)

    storage.client.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    with pytest.raises(StorageError) as err:
        run_backup(database=DB, dsn=big_dsn, storage=storage, recipients=[age_keys[1]], zstd_threads=zstd_threads)
    assert len(parts) >= 2, (parts, str(err.value))
    assert_clear(err.value, "s3://", "failed", "Could not connect to the endpoint URL")
    assert_nothing_lost(storage, previous_id)
    assert not [info for info in storage.list(f"{DB}/") if info.key.endswith("manifest.json")
                and not info.key.startswith(f"{DB}/{previous_id}/")]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs): writes beyond it fail with ENOSPC."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_disk_full(full_disk: Path, small_dsn: str, big_dsn: str, age_keys: tuple[str, str]) -> None:
    storage = FilesystemStorage(full_disk / "store")
    previous_id = run_backup(database=DB, dsn=small_dsn, storage=storage, recipients=[age_keys[1]]).manifest.backup_id
    with pytest.raises(StorageError) as err:
        run_backup(database=DB, dsn=big_dsn, storage=storage, recipients=[age_keys[1]])
    assert_clear(err.value, "file store: cannot write", "No space left on device")
    assert "full" in (err.value.hint or "")
    assert_nothing_lost(storage, previous_id)
    assert os.statvfs(full_disk).f_bfree > 0.9 * os.statvfs(full_disk).f_blocks  # the partial file is gone


# -- integrity ----------------------------------------------------------------------------------

def _identity(keys: tuple[str, str]) -> Any:
    return parse_identity(keys[0], source="test")


def test_one_flipped_byte(store: FilesystemStorage, previous: str, age_keys: tuple[str, str]) -> None:
    path = store.root / dump_key(DB, previous)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_backup(store, DB, previous, _identity(age_keys))
    assert not report.ok
    results = {r.rung: r for r in report.results}
    assert not results["stored"].ok and "SHA-256 mismatch" in results["stored"].detail
    assert not results["readable"].ok and "decryption failed" in results["readable"].detail
    assert all("\n" not in r.detail for r in report.results)
    assert list_backups(store, DB)[0].status == "failed:stored,readable"
    assert not list_backups(store, DB)[0].integrity_ok
    recorded = recorded_verifications(store, DB, previous)
    assert [(v.rung, v.ok) for v in recorded] == [("stored", False), ("readable", False)]


def test_truncated_object(store: FilesystemStorage, previous: str, age_keys: tuple[str, str]) -> None:
    path = store.root / dump_key(DB, previous)
    full = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(full // 2)
    report = verify_backup(store, DB, previous, _identity(age_keys))
    results = {r.rung: r for r in report.results}
    assert not results["stored"].ok
    assert results["stored"].detail.startswith(f"size {full // 2} bytes, manifest says {full} (truncated")
    assert not results["readable"].ok
    assert list_backups(store, DB)[0].status == "failed:stored,readable"


def test_missing_object(store: FilesystemStorage, previous: str, age_keys: tuple[str, str]) -> None:
    store.delete(dump_key(DB, previous))
    report = verify_backup(store, DB, previous, _identity(age_keys))
    assert [(r.rung, r.ok) for r in report.results] == [("stored", False)]
    assert "is missing" in report.results[0].detail
    assert list_backups(store, DB)[0].status == "missing-object"


def test_a_good_backup_verifies(store: FilesystemStorage, previous: str, age_keys: tuple[str, str]) -> None:
    """The control for the corruption tests above: untouched, the same backup passes both rungs."""
    report = verify_backup(store, DB, previous, _identity(age_keys))
    assert report.ok, report.summary()
    assert list_backups(store, DB)[0].status == "verified:readable"


def test_wrong_age_identity(store: FilesystemStorage, previous: str, other_age_keys: tuple[str, str]) -> None:
    with pytest.raises(CryptoError) as err:
        verify_backup(store, DB, previous, _identity(other_age_keys))
    assert_clear(err.value, "is not a recipient of backup", previous, secret=other_age_keys[0])
    assert "keys.raw.recipients" in (err.value.hint or "")
    assert_nothing_lost(store, previous, "unverified")  # nothing recorded: the backup is not blamed
    assert recorded_verifications(store, DB, previous) == []


def test_wrong_identity_through_the_configuration(write_config: Callable[..., Path], small_dsn: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  other_age_keys: tuple[str, str]) -> None:
    config = load_config(write_config(small_dsn))
    backup_id = backup_database(config, DB).manifest.backup_id
    monkeypatch.setenv("TEST_RAW_IDENTITY", other_age_keys[0])
    with pytest.raises(CryptoError):
        verify_database_backup(config, DB)
    monkeypatch.setenv("TEST_RAW_IDENTITY", "AGE-SECRET-KEY-1NOTAKEY")
    with pytest.raises(CryptoError) as err:
        verify_database_backup(config, DB)
    assert_clear(err.value, "$TEST_RAW_IDENTITY does not hold a valid age identity", secret="NOTAKEY")
    entries = list_backups(FilesystemStorage(config.base_dir() / "store"), DB)
    assert [(e.backup_id, e.status) for e in entries] == [(backup_id, "unverified")]


# -- configuration ------------------------------------------------------------------------------

def test_invalid_configuration(write_config: Callable[..., Path], small_dsn: str, tmp_path: Path) -> None:
    path = write_config(small_dsn)
    doc = yaml.safe_load(path.read_text())
    doc["databases"]["shop"]["rpo_hours"] = "one day"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_config()
    assert_clear(err.value, f"{path}: databases.shop.rpo_hours: input should be a valid number")
    assert list(FilesystemStorage(tmp_path / "store").list("")) == []


def test_production_dsn_in_a_development_deployment(write_config: Callable[..., Path], pg: PgServer,
                                                    small_dsn: str, tmp_path: Path) -> None:
    secret = f"Prod-{secrets.token_hex(6)}"
    dsn_with_password = small_dsn.replace("postgres:@", f"postgres:{secret}@")
    config = load_config(write_config(dsn_with_password, deployment="development"))
    with pytest.raises(CredentialIsolationError) as err:
        check_credential_isolation(config)
    assert_clear(err.value, "development deployment refuses to load", "$TEST_SHOP_PROD_DSN", secret=secret)
    with pytest.raises(CredentialIsolationError) as err:  # and the backup path refuses on its own too
        backup_database(config, DB)
    assert_clear(err.value, "development", secret=secret)
    _assert_no_backup_and_no_secret(tmp_path / "store", secret)


def _assert_no_backup_and_no_secret(root: Path, secret: str) -> None:
    """No backup was taken, and whatever the store holds (an audit record of the refusal, say)
    does not hold the secret."""
    storage = FilesystemStorage(root)
    assert list_backups(storage, DB, include_incomplete=True) == []
    assert not [info.key for info in storage.list(f"{DB}/")]
    for info in storage.list(""):
        assert secret.encode() not in storage.get_bytes(info.key), info.key
