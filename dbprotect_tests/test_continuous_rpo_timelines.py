"""The measured RPO across a timeline switch (issue 15, gap 5): the rule, on a store whose records are
forged consistently (a real promotion is too slow for what is a rule about positions).

Timeline 1 holds segments 1 to 3 and the partial of 4 (where the switch happened); ``00000002.history``;
timeline 2 continues with its own 4 and 5. The measured point follows the newest timeline; a hole
between the timelines, or a missing history file, fails the check whatever the age.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbprotect.core.continuous.base import format_lsn
from dbprotect.core.continuous.rpo import (
    ServerPosition,
    evaluate_continuous_rpo,
    newest_stored_point,
    stored_timeline_switch_gaps,
    timeline_switch_gaps,
)
from dbprotect.core.continuous.wal import (
    SegmentRecord,
    history_object_key,
    history_record_key,
    partial_record_key,
    segment_name,
    segment_record_key,
)
from dbprotect.core.store.filesystem import FilesystemStorage

SEG = 16 << 20
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
FRESH, OLD = NOW - timedelta(seconds=5), NOW - timedelta(hours=1)


def put(storage: FilesystemStorage, timeline: int, number: int, kind: str, at: datetime) -> None:
    name = segment_name(timeline, number)
    start = number * SEG
    end = start + (SEG if kind == "segment" else 4096)
    record = SegmentRecord(segment=name, kind=kind, timeline=timeline, start_lsn=format_lsn(start),
                           end_lsn=format_lsn(end), plain_bytes=end - start, plain_sha256="0" * 64,
                           object=f"shop/continuous/wal/{timeline:08X}/{name}.zst.age", size=1, sha256="0" * 64,
                           shipped_at=at.isoformat(), safe_time=at.isoformat(), safe_lsn=format_lsn(end - 16))
    key = segment_record_key("shop", name) if kind == "segment" else partial_record_key("shop", name)
    storage.put_bytes(key, record.to_json())


def put_history(storage: FilesystemStorage, timeline: int) -> None:
    name = f"{timeline:08X}.history"
    record = SegmentRecord(segment=name, kind="history", timeline=timeline, start_lsn="0/0", end_lsn="0/0",
                           plain_bytes=40, plain_sha256="0" * 64, object=history_object_key("shop", name), size=1,
                           sha256="0" * 64, shipped_at=OLD.isoformat())
    storage.put_bytes(history_record_key("shop", name), record.to_json())


def switched_store(tmp_path: Path, *, second_timeline: range = range(4, 6), history: bool = True) -> FilesystemStorage:
    storage = FilesystemStorage(tmp_path / "store")
    for number in (1, 2, 3):
        put(storage, 1, number, "segment", OLD)
    put(storage, 1, 4, "partial", OLD)  # the old timeline's last segment ends at the switch
    if history:
        put_history(storage, 2)
    for number in second_timeline:
        put(storage, 2, number, "segment", FRESH)
    return storage


def judge(storage: FilesystemStorage, *, from_timeline: int = 1):
    server = ServerPosition(now=NOW, current_lsn=9 * SEG + 100, timeline=2, slot_found=True,
                            slot_wal_status="reserved", slot_active=True)
    point = newest_stored_point(storage, "shop")
    return point, evaluate_continuous_rpo(
        "shop", target_seconds=30, point=point, server=server, store_now=None, tolerance=timedelta(minutes=5),
        newest_base="20261129T000000Z-abcd",
        gaps=stored_timeline_switch_gaps(storage, "shop", from_timeline=from_timeline))


def test_the_measured_point_follows_the_newest_timeline(tmp_path: Path) -> None:
    point, rpo = judge(switched_store(tmp_path))
    assert point is not None and point.timeline == 2 and point.segment == segment_name(2, 5)
    assert rpo.ok and rpo.measured_seconds == 5, rpo.reason


def test_a_hole_between_the_timelines_fails_whatever_the_age(tmp_path: Path) -> None:
    point, rpo = judge(switched_store(tmp_path, second_timeline=range(6, 8)))
    assert point is not None and point.timeline == 2 and point.safe_time == FRESH  # fresh, yet unreachable
    assert not rpo.ok and f"gap in the store ({segment_name(2, 5)}..{segment_name(2, 5)})" in rpo.reason


def test_a_missing_history_file_fails(tmp_path: Path) -> None:
    _point, rpo = judge(switched_store(tmp_path, history=False))
    assert not rpo.ok and "00000002.history" in rpo.reason


def test_a_base_on_the_new_timeline_needs_nothing_before_it(tmp_path: Path) -> None:
    _point, rpo = judge(switched_store(tmp_path, second_timeline=range(6, 8), history=False), from_timeline=2)
    assert rpo.ok, rpo.reason


@pytest.mark.parametrize(("segments", "partials", "histories", "gaps"), [
    ({1: ["1-3"], 2: ["4-5"]}, ["1:4"], {2}, []),
    ({1: ["1-3"], 2: ["4-5"]}, [], {2}, []),  # the switch at a segment's very start: no old partial
    ({1: ["1-3"], 2: ["5-5"]}, [], {2}, [(2, 4, 4)]),
    ({1: ["1-2"], 3: ["4-4"]}, ["1:3"], {3}, []),  # timeline 2 left no WAL (promoted and switched again)
    ({1: ["1-3"], 2: ["4-4"], 3: ["4-6"]}, [], {2, 3}, []),
    ({1: ["1-3"], 2: ["4-4"], 3: ["4-6"]}, [], {3}, [("00000002.history",)]),
])
def test_timeline_switch_gaps_rule(segments: dict, partials: list[str], histories: set[int], gaps: list) -> None:
    def expand(timeline: int, span: str) -> list[str]:
        first, last = (int(x) for x in span.split("-"))
        return [segment_name(timeline, n) for n in range(first, last + 1)]

    stored = {tl: [name for span in spans for name in expand(tl, span)] for tl, spans in segments.items()}
    partial_names = [segment_name(int(p.split(":")[0]), int(p.split(":")[1])) for p in partials]
    expected = [(g[0], g[0]) if len(g) == 1 else (segment_name(g[0], g[1]), segment_name(g[0], g[2])) for g in gaps]
    assert timeline_switch_gaps(stored, partial_names, histories, from_timeline=1) == expected
