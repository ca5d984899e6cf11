"""The measured-RPO rule (pure): every way a stored record could overstate safety fails the check."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dbprotect.core.config.load import load_config
from dbprotect.core.continuous.base import format_lsn
from dbprotect.core.continuous.rpo import ServerPosition, StoredPoint, evaluate_continuous_rpo, newest_stored_point
from dbprotect.core.continuous.wal import SegmentRecord, progress_record_key, segment_number, segment_record_key
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect.defs import build_definitions
from dbprotect.defs.names import (
    CONTINUOUS_RPO_CHECK,
    base_backup_schedule_name,
    continuous_rpo_sensor_name,
    snapshot_key,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SERVER = ServerPosition(now=NOW, current_lsn=0x3000000, timeline=1, slot_found=True, slot_wal_status="reserved",
                        slot_active=True)
POINT = StoredPoint("shop/continuous/wal/partial/000000010000000000000002.json", "partial",
                    "000000010000000000000002", 1, end_lsn=0x2FF0000, safe_time=NOW - timedelta(seconds=10),
                    safe_lsn=0x2FE0000, modified=NOW - timedelta(seconds=5))


def judge(point: StoredPoint | None = POINT, server: ServerPosition = SERVER, store_now: datetime | None = NOW,
          base: str | None = "20261129T000000Z-abcd", gaps: list[tuple[str, str]] | None = None):
    return evaluate_continuous_rpo("shop", target_seconds=30, point=point, server=server, store_now=store_now,
                                   tolerance=timedelta(minutes=5), newest_base=base, gaps=gaps or [])


def test_a_fresh_covered_point_passes_with_its_lag() -> None:
    rpo = judge()
    # the lag counts from the sampled LSN the object is known to hold (its end may be page-rounded)
    assert rpo.ok and rpo.measured_seconds == 10 and rpo.lag_bytes == 0x20000
    assert rpo.to_dict()["slot_wal_status"] == "reserved"


@pytest.mark.parametrize(("change", "reason"), [
    ({"point": replace(POINT, safe_time=NOW - timedelta(seconds=31))}, "over the target"),
    ({"point": replace(POINT, safe_time=NOW + timedelta(seconds=1))}, "after the server's now"),
    ({"point": replace(POINT, end_lsn=0x3000001)}, "beyond the server's current"),
    ({"point": replace(POINT, end_lsn=0x3004000), "server": replace(SERVER, current_lsn=0x3000010)},
     "beyond the server's current"),
    ({"point": replace(POINT, end_lsn=0x3002000, safe_lsn=0x3000011),
      "server": replace(SERVER, current_lsn=0x3000010)}, "beyond the server's current"),
    ({"point": replace(POINT, safe_lsn=0x2FF0001)}, "beyond the object's end"),
    ({"point": replace(POINT, modified=NOW + timedelta(minutes=6))}, "after the store's now"),
    # a record the store stamped 40 s ago whose sample claims 1 s: the store's clock wins
    ({"point": replace(POINT, safe_time=NOW - timedelta(seconds=1), modified=NOW - timedelta(seconds=40))},
     "over the target"),
    ({"point": None}, "no stored WAL record"),
    ({"base": None}, "no base backup"),
    ({"gaps": [("000000010000000000000001", "000000010000000000000001")]}, "gap"),
    ({"server": replace(SERVER, slot_found=False)}, "does not exist"),
    ({"server": replace(SERVER, slot_wal_status="lost")}, "lost"),
])
def test_each_way_to_overstate_safety_fails(change: dict, reason: str) -> None:
    rpo = judge(**change)
    assert not rpo.ok and reason in rpo.reason


def test_a_partial_rounded_up_to_its_wal_page_is_not_taken_for_forged() -> None:
    server = replace(SERVER, current_lsn=0x3000010)
    assert judge(point=replace(POINT, end_lsn=0x3002000, safe_lsn=0x3000010), server=server).ok


def test_a_store_without_times_is_judged_by_the_server_clock_alone() -> None:
    assert judge(point=replace(POINT, modified=None), store_now=None).ok
    assert not judge(point=replace(POINT, safe_time=NOW - timedelta(seconds=31), modified=None), store_now=None).ok


def _segment(storage, name: str, safe_time: str) -> SegmentRecord:
    start = segment_number(name) * (16 << 20)
    record = SegmentRecord(segment=name, kind="segment", timeline=1, start_lsn=format_lsn(start),
                           end_lsn=format_lsn(start + (16 << 20)), plain_bytes=16 << 20, plain_sha256="0" * 64,
                           object=f"shop/continuous/wal/00000001/{name}.zst.age", size=1, sha256="0" * 64,
                           shipped_at=safe_time, safe_time=safe_time, safe_lsn=format_lsn(start + 100))
    storage.put_bytes(segment_record_key("shop", name), record.to_json())
    return record


def test_progress_refreshes_only_the_segment_it_names_within_its_end(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "store")
    old, fresh = "2026-11-29T11:00:00+00:00", "2026-11-29T11:59:50+00:00"
    _segment(storage, "000000010000000000000001", old)
    record = _segment(storage, "000000010000000000000002", old)
    progress = {"segment": record.segment, "timeline": 1, "end_lsn": record.end_lsn, "safe_time": fresh,
                "safe_lsn": record.end_lsn, "written_at": fresh}
    storage.put_bytes(progress_record_key("shop"), json.dumps(progress).encode())
    point = newest_stored_point(storage, "shop")
    assert point is not None and point.safe_time == datetime.fromisoformat(fresh)
    assert point.record_key == progress_record_key("shop")
    for forged, note in (({"segment": "000000010000000000000001"}, None),
                         ({"safe_lsn": "0/3000001"}, "beyond the segment"),
                         ({"safe_time": "yesterday"}, "unreadable")):
        storage.put_bytes(progress_record_key("shop"), json.dumps({**progress, **forged}).encode())
        notes: list[str] = []
        point = newest_stored_point(storage, "shop", notes)
        assert point is not None and point.safe_time == datetime.fromisoformat(old), forged
        assert (note is None and not notes) or (note is not None and note in notes[0]), (forged, notes)


@pytest.mark.parametrize(("end_lsn", "reason"), [
    ("FF/0", "beyond the server's current"),  # what the receiver test forges when progress.json is newest
    ("0/2FFFFFF", "forged or corrupt"),  # another end for the same segment, within the server's LSN
])
def test_a_progress_record_naming_the_segment_with_another_end_fails_as_forged(
        tmp_path: Path, end_lsn: str, reason: str) -> None:
    """Once set aside as "about another segment", which let the check fall back to older evidence and
    fail (or pass) for an unrelated reason: which record was newest then decided the verdict's reason
    (a partial after an idle WAL switch appears only when the server logs its next standby snapshot)."""
    storage = FilesystemStorage(tmp_path / "store")
    fresh = "2026-11-29T11:59:50+00:00"
    record = _segment(storage, "000000010000000000000002", fresh)
    progress = {"segment": record.segment, "timeline": 1, "end_lsn": end_lsn, "safe_time": fresh,
                "safe_lsn": record.end_lsn, "written_at": fresh}
    storage.put_bytes(progress_record_key("shop"), json.dumps(progress).encode())
    point = newest_stored_point(storage, "shop")
    assert point is not None and point.record_key == progress_record_key("shop")
    rpo = judge(point=replace(point, modified=NOW - timedelta(seconds=1)))
    assert not rpo.ok and reason in rpo.reason, rpo.reason


def test_only_continuous_databases_get_the_rpo_sensor_check_and_base_backup_schedule(
        write_config, tmp_path: Path) -> None:
    path = write_config("postgresql://nobody@127.0.0.1:1/shop")
    logical = build_definitions(load_config(path))
    assert not [s for s in logical.sensors or [] if s.name == continuous_rpo_sensor_name("shop")]
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["databases"]["shop"]["continuous"] = {"slot": "dbprotect_shop", "base_backup_schedule": "0 3 * * 6"}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    config = load_config(path)
    assert config.database("shop").continuous.rpo_seconds == 60  # the "under a minute"
    definitions = build_definitions(config)
    sensor = definitions.get_sensor_def(continuous_rpo_sensor_name("shop"))
    assert 30 <= sensor.minimum_interval_seconds <= 60 and not sensor.targets  # launches no run
    schedule = definitions.get_schedule_def(base_backup_schedule_name("shop"))
    assert schedule.cron_schedule == "0 3 * * 6"
    assert definitions.resolve_asset_graph().asset_check_keys >= {
        dg.AssetCheckKey(snapshot_key("shop"), CONTINUOUS_RPO_CHECK)}
