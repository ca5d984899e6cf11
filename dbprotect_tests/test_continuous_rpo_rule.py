"""The measured-RPO rule (pure): every way a stored record could overstate safety fails the check."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dbprotect.core.continuous.rpo import ServerPosition, StoredPoint, evaluate_continuous_rpo

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
