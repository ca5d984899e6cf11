"""Backups of real databases restore with plain pg_restore to exactly what the manifest recorded."""

from __future__ import annotations

import subprocess

import pyrage
import zstandard

from dbprotect.core.backup.stream import run_backup
from dbprotect.core.crypto import parse_identity
from dbprotect.core.store import FilesystemStorage, S3Storage
from dbprotect.core.store.catalog import list_backups, load_manifest
from dbprotect.core.verify.integrity import verify_backup
from dbprotect_tests.fixtures.fix_pg import pg_bin, table_counts


def _restore_plain(storage, manifest, identity: str, target_dsn: str) -> None:
    """Restore the way docs/store-format.md tells a human to: age -d | zstd -d | pg_restore."""
    key = f"{manifest.database}/{manifest.backup_id}/dump.zst.age"
    ident = parse_identity(identity, source="test")
    with storage.open_reader(key) as src:
        proc = subprocess.Popen([str(pg_bin() / "pg_restore"), "--no-owner", "--exit-on-error",
                                 f"--dbname={target_dsn}"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        writer = zstandard.ZstdDecompressor().stream_writer(proc.stdin, closefd=False)
        pyrage.decrypt_io(src, writer, [ident])
        writer.flush()
        proc.stdin.close()
        assert proc.wait() == 0, proc.stderr.read()


def test_chinook_to_filesystem_restores_to_manifest_counts(chinook_dsn, make_db, tmp_path, age_keys):
    storage = FilesystemStorage(tmp_path / "store")
    result = run_backup(database="chinook", dsn=chinook_dsn, storage=storage, recipients=[age_keys[1]])
    manifest = load_manifest(storage, "chinook", result.manifest.backup_id)
    assert manifest.tables["public.track"].rows == 3503
    assert manifest.tables["public.invoice_line"].rows == 2240
    target = make_db(prefix="restored")
    _restore_plain(storage, manifest, age_keys[0], target)
    restored = table_counts(target)
    assert restored == {name: record.rows for name, record in manifest.tables.items()}


def test_northwind_to_s3_lists_and_verifies(northwind_dsn, make_db, s3_endpoint, s3_bucket, age_keys):
    storage = S3Storage(s3_bucket, "backups", endpoint_url=s3_endpoint, region="us-east-1")
    result = run_backup(database="northwind", dsn=northwind_dsn, storage=storage, recipients=[age_keys[1]])
    entries = list_backups(storage, "northwind")
    assert [entry.backup_id for entry in entries] == [result.manifest.backup_id]
    assert entries[0].status == "unverified"
    report = verify_backup(storage, "northwind", result.manifest.backup_id, parse_identity(age_keys[0], source="t"))
    assert report.ok, report.summary()
    assert list_backups(storage, "northwind")[0].status == "verified:readable"
    target = make_db(prefix="restored")
    _restore_plain(storage, result.manifest, age_keys[0], target)
    assert table_counts(target)["public.orders"] == result.manifest.tables["public.orders"].rows == 830


def test_excluded_table_data_is_left_out_of_the_archive_and_manifest(chinook_dsn, make_db, tmp_path, age_keys):
    """``exclude_table_data`` keeps the table's definition and drops its rows, as pg_dump does."""
    storage = FilesystemStorage(tmp_path / "store")
    result = run_backup(database="chinook", dsn=chinook_dsn, storage=storage, recipients=[age_keys[1]],
                        exclude_table_data=["public.invoice_line"])
    manifest = result.manifest
    assert "public.invoice_line" not in manifest.tables
    assert manifest.tables["public.track"].rows == 3503
    assert "--exclude-table-data=public.invoice_line" in manifest.pg_dump["args"]
    target = make_db(prefix="restored")
    _restore_plain(storage, manifest, age_keys[0], target)
    counts = table_counts(target)
    assert counts["public.invoice_line"] == 0
    assert counts["public.invoice"] == 412


def test_configured_compression_level_is_used_and_recorded(chinook_dsn, write_config):
    """``compression_level`` reaches the stream; the manifest says which level a backup used."""
    import yaml

    from dbprotect.core.config.load import load_config
    from dbprotect.core.ops import backup_database

    path = write_config(chinook_dsn)
    document = yaml.safe_load(path.read_text())
    document["databases"]["shop"]["compression_level"] = 2
    path.write_text(yaml.safe_dump(document))
    level2 = backup_database(load_config(path), "shop").manifest
    document["databases"]["shop"]["compression_level"] = 1
    path.write_text(yaml.safe_dump(document))
    level1 = backup_database(load_config(path), "shop").manifest
    assert (level1.compression["level"], level2.compression["level"]) == (1, 2)
    assert level1.bytes["dump"] == level2.bytes["dump"]
    assert level1.bytes["compressed"] != level2.bytes["compressed"]
