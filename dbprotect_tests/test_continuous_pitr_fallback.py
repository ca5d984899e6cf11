"""A newer base backup that cannot serve must not block a restore an older one can (issue 15, gap 1).

Against the embedded PostgreSQL 18: two full base backups with the receiver running, rows before and
after a moment T after the newer base's end. The newer base's object is corrupted: ``restore
--to-time T`` still holds exactly the rows committed before T, from the older base, and names the
newer one as passed over. Then the newer base's ``base.json`` is made unreadable, and a failed
verdict is recorded: the restore to an LSN still lands on the older base and says why each time.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dbprotect.cli.app import run
from dbprotect.core.config.load import load_config
from dbprotect.core.continuous.base import BaseVerification, take_base_backup
from dbprotect.core.continuous.objects import BASE_OBJECT, BASE_RECORD, base_folder
from dbprotect.core.continuous.pitr import PitrResult, smoke_check, stop_restored
from dbprotect.core.continuous.verdicts import record_base_verdict
from dbprotect.core.errors import IntegrityError
from dbprotect.core.ops.continuous import restore_database_to_point
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect.defs import load_definitions
from dbprotect.defs.resources import AgeIdentityResource, DbprotectConfigResource, SecretsResource
from dbprotect_tests.fixtures.cli import run_json
from dbprotect_tests.test_continuous_pitr import _insert, _notes, _open_for_server
from dbprotect_tests.test_continuous_wal import (
    continuous_config,
    start_receiver,
    stop_receiver,
    switch_and_wait_shipped,
    wait_streaming,
)

pytestmark = pytest.mark.slow



def test_a_corrupt_newer_base_falls_back_to_the_older_one_and_says_so(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], instance: dg.DagsterInstance) -> None:
    slot = "dbprotect_test_pitr_fallback"
    config_path = continuous_config(write_config, wal_server, slot)
    _open_for_server(tmp_path)
    storage = FilesystemStorage(tmp_path / "store")
    config = load_config(config_path)
    receiver = start_receiver(config_path, tmp_path / "receiver.log")
    try:
        wait_streaming(wal_server, slot)
        older = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                 recipients=config.keys.raw.recipients, incremental=False)
        _insert(wal_server, "fb-a", range(600_000, 600_400))
        time.sleep(1.1)
        newer = take_base_backup(database="shop", dsn=wal_server, storage=storage,
                                 recipients=config.keys.raw.recipients, incremental=False)
        assert newer.base_id > older.base_id
        time.sleep(1.1)  # the newer base's finished_at stays before the target
        _, lsn_after_b = _insert(wal_server, "fb-b", range(600_400, 600_500))
        target_time, _ = _insert(wal_server, "fb-c", range(600_500, 600_530))
        time.sleep(1.1)
        _insert(wal_server, "fb-d", range(600_530, 600_560))
        switch_and_wait_shipped(wal_server, storage)
    finally:
        stop_receiver(receiver, wal_server, slot)
    _open_for_server(tmp_path / "store")
    for path in (tmp_path / "store").rglob("*"):
        path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))

    # one flipped byte in the newer base's object: its SHA-256 no longer matches its record
    stored = tmp_path / "store" / base_folder("shop", newer.base_id) / BASE_OBJECT
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    code, document, err = run_json(capsys, "restore", "shop", "--to-time", target_time.isoformat(),
                                   "--data-dir", str(tmp_path / "by-time"))
    assert code == 0, err
    by_time = PitrResult(Path(document["data_dir"]), document["port"], Path(document["socket_dir"]),
                         document["base_backups"], document["target"], document["seconds"], False)
    try:
        assert by_time.chain == [older.base_id]
        [skipped] = document["skipped_base_backups"]
        assert skipped.startswith(f"{newer.base_id}: base backup {newer.base_id}"), skipped
        assert _notes(by_time.dsn(), "fb-") == {"fb-a": 400, "fb-b": 100, "fb-c": 30}
        # the content check says what it is, and read the table the rows are in
        check = document["content_check"]
        assert check["kind"] == "smoke check (not a comparison)" and check["tables"] >= 1
        assert check["rows"] >= 530
    finally:
        stop_restored(by_time)

    # the text output names the check and the base passed over
    code = run(["restore", "shop", "--to-time", target_time.isoformat(), "--data-dir", str(tmp_path / "by-text")])
    out = capsys.readouterr().out
    assert code == 0
    assert "smoke check, not a comparison: every table of" in out
    assert f"passed over newer base backup {newer.base_id}: " in out
    answering = re.search(r"host=(\S+)&port=(\d+)", out)
    assert answering is not None, out
    stop_restored(PitrResult(tmp_path / "by-text", int(answering[2]), Path(answering[1]), [], "", 0, False))

    # a failed verdict: the newer base is not even fetched
    record_base_verdict(storage, newer, BaseVerification(newer.base_id, False, "checksum mismatch", 0.1))
    by_verdict = restore_database_to_point(config, "shop", data_dir=tmp_path / "by-verdict", to_lsn=lsn_after_b)
    try:
        assert by_verdict.chain == [older.base_id]
        assert by_verdict.skipped == (f"{newer.base_id}: pg_verifybackup failed on {newer.base_id}",)
        assert _notes(by_verdict.dsn(), "fb-") == {"fb-a": 400, "fb-b": 100}
    finally:
        stop_restored(by_verdict)

    # an unreadable base.json: passed over and named
    record_path = tmp_path / "store" / base_folder("shop", newer.base_id) / BASE_RECORD
    record_path.write_text(json.dumps({"base_id": newer.base_id}))
    by_lsn = restore_database_to_point(config, "shop", data_dir=tmp_path / "by-lsn", to_lsn=lsn_after_b)
    try:
        assert by_lsn.chain == [older.base_id]
        [skipped] = by_lsn.skipped
        assert skipped.startswith(f"{newer.base_id}: base.json unreadable")
        assert _notes(by_lsn.dsn(), "fb-") == {"fb-a": 400, "fb-b": 100}
        # the smoke check fails on a table the restored server cannot read (its heap file gone)
        with psycopg.connect(by_lsn.dsn(), autocommit=True) as conn:
            relation_file = conn.execute("SELECT pg_relation_filepath('events')").fetchone()[0]
        (by_lsn.data_dir / relation_file).unlink()
        with pytest.raises(IntegrityError, match=r"smoke check: table public\.events of database postgres cannot"):
            smoke_check(by_lsn.dsn)
    finally:
        stop_restored(by_lsn)

    # Under Dagster (resources only: the secrets resource's environ holds secrets, no PATH) the restore
    # still starts its server — through runuser when root — and that server holds no secret: this
    # process relays the WAL with the identity from its resource.
    landed: dict[str, object] = {}

    @dg.op
    def restore_under_dagster(dbprotect_config: dg.ResourceParam[DbprotectConfigResource],
                              raw_backup_identity: dg.ResourceParam[AgeIdentityResource],
                              dbprotect_secrets: dg.ResourceParam[SecretsResource]) -> None:
        environ = dbprotect_secrets.environ()
        assert "PATH" not in environ
        result = restore_database_to_point(dbprotect_config.load(), "shop", data_dir=tmp_path / "by-dagster",
                                           to_lsn=lsn_after_b, environ=environ, actor="dagster:test",
                                           identity=raw_backup_identity.parsed())
        pid = (result.data_dir / "postmaster.pid").read_text().splitlines()[0]
        server_env = dict(line.split("=", 1) for line in
                          Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in line)
        landed.update(result=result, server_env=server_env)

    definitions = load_definitions(config_path)
    job = dg.GraphDefinition(name="restore_under_dagster", node_defs=[restore_under_dagster]).to_job()
    dagster_run = job.execute_in_process(instance=instance, resources=definitions.resources)
    assert dagster_run.success
    by_dagster = landed["result"]
    assert isinstance(by_dagster, PitrResult)
    try:
        assert by_dagster.chain == [older.base_id]
        assert _notes(by_dagster.dsn(), "fb-") == {"fb-a": 400, "fb-b": 100}
        server_env = landed["server_env"]
        assert isinstance(server_env, dict) and server_env.get("PATH")
        assert config.keys.raw.identity_env not in server_env  # relayed: the server fetches nothing itself
        assert not any(name.endswith("_DSN") for name in server_env), sorted(server_env)
    finally:
        stop_restored(by_dagster)
