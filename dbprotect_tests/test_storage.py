"""One conformance suite for every backup store (the contract in ``core/storage/base.py``).

Each test runs against the filesystem store and against S3 over HTTP (moto's server), so a
backend that behaves differently from the contract fails here, not in a restore at 3 a.m.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbprotect.core.errors import StorageError
from dbprotect.core.store import FilesystemStorage, ObjectNotFound, S3Storage, Storage
from dbprotect.core.store.filesystem import PARTIAL_MARK
from dbprotect_tests.fixtures.fix_storage import STORE_KINDS

SMALL_PART = 5 * 1024 * 1024  # S3's minimum part size: keeps the multipart test quick


class Boom(Exception):
    """Raised inside a writer to simulate a failure in the middle of a backup."""


@pytest.fixture(params=STORE_KINDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "filesystem":
        yield FilesystemStorage(tmp_path / "store")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        yield S3Storage(bucket, "pfx", endpoint_url=endpoint, region="us-east-1", part_size=SMALL_PART)


def _keys(storage: Storage, prefix: str = "") -> list[str]:
    return [info.key for info in storage.list(prefix)]


def _no_leftovers(storage: Storage) -> None:
    """Nothing half-written anywhere: no partial files, no open multipart uploads."""
    if isinstance(storage, FilesystemStorage):
        on_disk = [p.name for p in storage.root.rglob("*")] if storage.root.exists() else []
        assert not [name for name in on_disk if PARTIAL_MARK in name]
    if isinstance(storage, S3Storage):
        assert storage.open_multipart_uploads() == []


class TestStorageConformance:
    def test_put_get_stat_list_delete_round_trip(self, storage: Storage) -> None:
        data = b"manifest \x00\xff bytes\n" * 10
        storage.put_bytes("db/20261123T020000Z-abcdef/manifest.json", data)
        assert storage.get_bytes("db/20261123T020000Z-abcdef/manifest.json") == data
        with storage.open_reader("db/20261123T020000Z-abcdef/manifest.json") as reader:
            assert reader.read() == data
        info = storage.stat("db/20261123T020000Z-abcdef/manifest.json")
        assert (info.key, info.size) == ("db/20261123T020000Z-abcdef/manifest.json", len(data))
        assert [(i.key, i.size) for i in storage.list("db/")] == [(info.key, len(data))]
        storage.delete("db/20261123T020000Z-abcdef/manifest.json")
        assert _keys(storage) == []
        with pytest.raises(ObjectNotFound):
            storage.get_bytes("db/20261123T020000Z-abcdef/manifest.json")

    def test_put_replaces_an_object_whole(self, storage: Storage) -> None:
        storage.put_bytes("a/x", b"first version, longer")
        storage.put_bytes("a/x", b"second")
        assert storage.get_bytes("a/x") == b"second"
        assert storage.stat("a/x").size == 6

    def test_list_is_in_key_order_and_filters_by_prefix(self, storage: Storage) -> None:
        keys = ["shop/2/b", "shop/1/a", "shopping/1/a", "crm/1/a", "shop/10/c", "shop/1/checks/z"]
        for key in keys:
            storage.put_bytes(key, key.encode())
        assert _keys(storage) == sorted(keys)
        assert _keys(storage, "shop/") == ["shop/1/a", "shop/1/checks/z", "shop/10/c", "shop/2/b"]
        assert _keys(storage, "shop/1/") == ["shop/1/a", "shop/1/checks/z"]
        assert _keys(storage, "shop") == sorted(k for k in keys if k.startswith("shop"))
        assert _keys(storage, "nothing/") == []
        assert {i.key: i.size for i in storage.list("crm/")} == {"crm/1/a": len(b"crm/1/a")}

    def test_missing_key_raises_object_not_found(self, storage: Storage) -> None:
        for call in (storage.get_bytes, storage.open_reader, storage.stat):
            with pytest.raises(ObjectNotFound) as err:
                call("db/absent/manifest.json")
            assert "db/absent/manifest.json" in str(err.value)
            assert "\n" not in str(err.value)

    def test_delete_of_a_missing_key_is_fine(self, storage: Storage) -> None:
        storage.delete("db/never/written")
        storage.put_bytes("db/once", b"1")
        storage.delete("db/once")
        storage.delete("db/once")
        assert _keys(storage) == []

    def test_streaming_writer_commits_on_success(self, storage: Storage) -> None:
        with storage.open_writer("db/b1/dump.zst.age") as writer:
            for i in range(100):
                writer.write(bytes([i]) * 1000)
            assert _keys(storage) == []  # not visible until commit
        assert storage.get_bytes("db/b1/dump.zst.age") == b"".join(bytes([i]) * 1000 for i in range(100))
        _no_leftovers(storage)

    def test_aborted_writer_leaves_nothing_listable(self, storage: Storage) -> None:
        storage.put_bytes("db/b0/manifest.json", b"{}")
        with pytest.raises(Boom), storage.open_writer("db/b1/dump.zst.age") as writer:
            writer.write(os.urandom(300_000))
            raise Boom
        assert _keys(storage) == ["db/b0/manifest.json"]
        with pytest.raises(ObjectNotFound):
            storage.stat("db/b1/dump.zst.age")
        _no_leftovers(storage)

    def test_writer_aborted_after_several_parts_leaves_nothing(self, storage: Storage) -> None:
        payload = os.urandom(SMALL_PART)
        with pytest.raises(Boom), storage.open_writer("db/b1/dump.zst.age") as writer:
            for _ in range(3):
                writer.write(payload)
            raise Boom
        assert _keys(storage) == []
        _no_leftovers(storage)

    def test_large_multipart_write_round_trips_byte_exactly(self, storage: Storage) -> None:
        # More than the default 8 MiB part size and 3+ parts of the 5 MiB test part size, in odd chunks.
        data = os.urandom(SMALL_PART * 3 + 12345)
        step = 777_777
        with storage.open_writer("db/big/dump.zst.age") as writer:
            for start in range(0, len(data), step):
                writer.write(memoryview(data)[start:start + step])
        assert storage.stat("db/big/dump.zst.age").size == len(data)
        with storage.open_reader("db/big/dump.zst.age") as reader:
            assert reader.read() == data
        _no_leftovers(storage)

    def test_object_uri_names_the_key_without_secrets(self, storage: Storage) -> None:
        uri = storage.object_uri("db/b1/manifest.json")
        assert uri.endswith("db/b1/manifest.json")
        assert "testing" not in uri  # moto's fake secret key

    def test_put_if_absent_creates_once_and_never_replaces(self, storage: Storage) -> None:
        assert storage.put_if_absent("_locks/db/000000000001.json", b"first") is True
        assert storage.put_if_absent("_locks/db/000000000001.json", b"second") is False
        assert storage.get_bytes("_locks/db/000000000001.json") == b"first"
        assert _keys(storage) == ["_locks/db/000000000001.json"]
        _no_leftovers(storage)

    def test_put_if_absent_does_not_replace_an_object_written_by_put_bytes(self, storage: Storage) -> None:
        storage.put_bytes("db/b1/manifest.json", b"{}")
        assert storage.put_if_absent("db/b1/manifest.json", b"other") is False
        assert storage.get_bytes("db/b1/manifest.json") == b"{}"

    def test_racing_put_if_absent_has_exactly_one_winner(self, storage: Storage) -> None:
        import threading

        results: dict[int, bool] = {}
        barrier = threading.Barrier(6)

        def race(n: int) -> None:
            barrier.wait()
            results[n] = storage.put_if_absent("_locks/db/000000000007.json", f"writer {n}".encode())

        threads = [threading.Thread(target=race, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [n for n, won in results.items() if won]
        assert len(winners) == 1
        assert storage.get_bytes("_locks/db/000000000007.json") == f"writer {winners[0]}".encode()
        _no_leftovers(storage)


def _old_partial(storage: FilesystemStorage, key: str, *, age_seconds: float) -> Path:
    path = storage.root / f"{key}{PARTIAL_MARK}{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a dump")
    stamp = path.stat().st_mtime - age_seconds
    os.utime(path, (stamp, stamp))
    return path


class TestSweepPartialWrites:
    def test_filesystem_sweep_removes_dead_partials_under_the_prefix_only(self, tmp_path: Path) -> None:
        from dbprotect.core.store.filesystem import PARTIAL_GRACE_SECONDS

        storage = FilesystemStorage(tmp_path / "store")
        storage.put_bytes("shop/b0/dump.zst.age", b"committed")
        dead = _old_partial(storage, "shop/b1/dump.zst.age", age_seconds=PARTIAL_GRACE_SECONDS + 60)
        live = _old_partial(storage, "shop/b2/dump.zst.age", age_seconds=5)
        other = _old_partial(storage, "crm/b1/dump.zst.age", age_seconds=PARTIAL_GRACE_SECONDS + 60)
        removed = storage.sweep_partial_writes("shop/")
        assert removed == [dead.relative_to(storage.root).as_posix()]
        assert not dead.exists() and live.exists() and other.exists()
        assert storage.get_bytes("shop/b0/dump.zst.age") == b"committed"
        assert storage.sweep_partial_writes("nothing-here/") == []

    @pytest.mark.slow
    def test_s3_sweep_aborts_only_multipart_uploads_older_than_the_grace(
            self, s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
        from datetime import timedelta

        from dbprotect.core.store import s3 as s3_module

        storage = S3Storage(s3_bucket, "pfx", endpoint_url=s3_endpoint, region="us-east-1")
        storage.client.create_multipart_upload(Bucket=s3_bucket, Key="pfx/shop/b1/dump.zst.age")
        storage.client.create_multipart_upload(Bucket=s3_bucket, Key="pfx/crm/b1/dump.zst.age")
        # moto reports every upload as initiated in November 2010: a grace reaching back before
        # that keeps them (a young upload may still be alive), the real one-day grace does not.
        monkeypatch.setattr(s3_module, "MULTIPART_GRACE", timedelta(days=365 * 30))
        assert storage.sweep_partial_writes("shop/") == []
        assert len(storage.open_multipart_uploads()) == 2
        monkeypatch.setattr(s3_module, "MULTIPART_GRACE", timedelta(days=1))
        assert storage.sweep_partial_writes("shop/") == ["shop/b1/dump.zst.age"]
        assert storage.open_multipart_uploads() == ["pfx/crm/b1/dump.zst.age"]


class TestFilesystemWriter:
    def test_partial_file_exists_while_writing_but_is_never_listed(self, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "store")
        with storage.open_writer("db/b1/dump.zst.age") as writer:
            writer.write(b"x" * 1000)
            writer.flush()
            partials = [p for p in storage.root.rglob("*") if PARTIAL_MARK in p.name]
            assert len(partials) == 1 and partials[0].stat().st_size == 1000
            assert _keys(storage) == []
        assert _keys(storage) == ["db/b1/dump.zst.age"]
        _no_leftovers(storage)

    def test_crash_like_abort_removes_the_partial_file(self, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "store")
        with pytest.raises(KeyboardInterrupt), storage.open_writer("db/b1/dump.zst.age") as writer:
            writer.write(b"y" * 5000)
            raise KeyboardInterrupt  # not an Exception: the writer must abort on any BaseException
        assert not [p for p in storage.root.rglob("*") if p.is_file()]

    def test_a_leftover_partial_from_a_dead_process_is_not_listed(self, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "store")
        folder = storage.root / "db" / "20261123T020000Z-abcdef"
        folder.mkdir(parents=True)
        (folder / f"dump.zst.age{PARTIAL_MARK}{secrets.token_hex(4)}").write_bytes(b"half")
        assert _keys(storage) == []

    def test_listing_a_store_that_does_not_exist_yet_is_empty(self, tmp_path: Path) -> None:
        (tmp_path / "sibling.txt").write_bytes(b"not in the store")
        storage = FilesystemStorage(tmp_path / "store")
        assert _keys(storage) == [] and _keys(storage, "db/") == [] and _keys(storage, "db") == []

    def test_keys_cannot_escape_the_root(self, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "store")
        with pytest.raises(StorageError, match="escapes"):
            storage.put_bytes("../outside", b"no")
        assert not (tmp_path / "outside").exists()

    def test_delete_prunes_empty_backup_folders_but_not_the_root(self, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "store")
        storage.put_bytes("db/b1/checks/one.json", b"1")
        storage.delete("db/b1/checks/one.json")
        assert storage.root.is_dir() and list(storage.root.iterdir()) == []
