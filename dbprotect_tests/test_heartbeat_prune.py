"""Heartbeat rows are pruned: older than the retention window plus a margin, in LIMITed batches, by the
server's clock, from the writer itself; and every moment a drill may pick inside retention keeps its
heartbeats. Against a real PostgreSQL (a database of its own, not the shared WAL server)."""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest

from dbprotect.core.continuous.drill import choose_moment
from dbprotect.core.continuous.heartbeat import (
    PRUNE_MARGIN,
    TABLE,
    prune_heartbeats,
    prune_window,
    read_heartbeats,
    run_heartbeats,
    write_heartbeat,
)
from dbprotect.core.errors import RefusedError
from dbprotect_tests.continuous_helpers import stop_after_lines


def _seed(dsn: str, *, every_minutes: int, days: float) -> None:
    """Rows every ``every_minutes`` from ``days`` ago up to now, oldest first (ids in time order)."""
    write_heartbeat(dsn)  # creates the table
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")
        conn.execute(f"INSERT INTO {TABLE} (at) SELECT clock_timestamp() - make_interval(mins => m) "
                     "FROM generate_series(%s, 0, -%s) AS m", (int(days * 24 * 60), every_minutes))


def _ages(dsn: str) -> list[float]:
    """Each row's age in days, by the server's clock, in id order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f"SELECT extract(epoch FROM clock_timestamp() - at) / 86400 FROM {TABLE} "
                            "ORDER BY id").fetchall()
    return [float(r[0]) for r in rows]


def test_prune_deletes_only_rows_older_than_what_it_keeps_a_batch_at_a_time(make_db: Callable[..., str]) -> None:
    dsn = make_db(prefix="hbprune")
    _seed(dsn, every_minutes=60, days=10)  # 241 rows
    before = _ages(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert prune_heartbeats(conn, keep=timedelta(days=4), limit=50) == 50  # one LIMITed batch
        assert min(_ages(dsn)) < 4 < max(_ages(dsn))
        while prune_heartbeats(conn, keep=timedelta(days=4), limit=50):
            pass
    after = _ages(dsn)
    assert max(after) < 4 and len(after) == sum(1 for age in before if age < 4) == 96
    assert after == sorted(after, reverse=True), "the newest rows are the ones left"


def test_prune_of_a_missing_table_is_nothing(make_db: Callable[..., str]) -> None:
    with psycopg.connect(make_db(prefix="hbnone"), autocommit=True) as conn:
        assert prune_heartbeats(conn, keep=timedelta(days=1)) == 0


def test_the_writer_prunes_while_it_keeps_writing(make_db: Callable[..., str]) -> None:
    dsn = make_db(prefix="hbwriter")
    _seed(dsn, every_minutes=30, days=3)
    stop = threading.Event()
    lines: list[str] = []
    thread = threading.Thread(target=run_heartbeats, kwargs={
        "dsn": dsn, "interval_seconds": 0.1, "stop": stop, "log": lines.append, "keep": timedelta(days=1),
        "prune_every_seconds": 0.3})
    thread.start()
    try:
        for _ in range(100):
            if max(_ages(dsn)) < 1 and sum(1 for age in _ages(dsn) if age < 1 / 24 / 60) >= 3:
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    ages = _ages(dsn)
    assert max(ages) < 1 + 1 / 24 / 60, "rows older than what is kept are gone"
    assert sum(1 for age in ages if age > 1 / 24) >= 40, "rows inside what is kept stay"
    assert sum(1 for age in ages if age < 1 / 24 / 60) >= 3, "the writer kept writing"
    assert lines == []


def test_a_failing_prune_logs_one_line_and_the_writer_carries_on(make_db: Callable[..., str]) -> None:
    dsn = make_db(prefix="hbfail")
    _seed(dsn, every_minutes=60, days=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION dbprotect.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$BEGIN RAISE EXCEPTION 'no deletes here'; END$$")
        conn.execute(f"CREATE TRIGGER refuse BEFORE DELETE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION dbprotect.refuse()")
    stop, lines, log = stop_after_lines(2)
    written = run_heartbeats(dsn, interval_seconds=0.05, stop=stop, log=log, keep=timedelta(days=1),
                             prune_every_seconds=0.1)
    assert written >= 2 and len(lines) == 2
    assert all(line.startswith("old heartbeats not pruned (no deletes here") for line in lines), lines
    assert max(_ages(dsn)) > 1.9, "nothing was deleted"


@pytest.mark.parametrize("retention_days", [0.5, 2, 14])
def test_every_moment_inside_retention_keeps_its_heartbeats_for_a_drill(make_db: Callable[..., str],
                                                                      retention_days: float) -> None:
    """Prune as the receiver does (``prune_window``), then: every pair of consecutive heartbeats around a
    moment inside the retention window (and its margin) is still there, and the drill's choice over what
    is left finds a moment for every seed, inside the window's reach."""
    dsn = make_db(prefix="hbdrill")
    days = retention_days + PRUNE_MARGIN / timedelta(days=1) + 3
    every = 60 if retention_days > 1 else 10
    _seed(dsn, every_minutes=every, days=days)
    keep = prune_window(retention_days)
    assert keep == timedelta(days=retention_days) + PRUNE_MARGIN
    with psycopg.connect(dsn, autocommit=True) as conn:
        seeded = read_heartbeats(conn)
        while prune_heartbeats(conn, keep=keep, limit=500):
            pass
        left = read_heartbeats(conn)
        server_now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    keep_from = server_now - keep
    assert {h.id for h in seeded if h.at > keep_from + timedelta(minutes=1)} <= {h.id for h in left}
    assert all(h.at >= keep_from - timedelta(minutes=1) for h in left)
    earliest = server_now - timedelta(days=retention_days)
    window_pairs = [(a.id, b.id) for a, b in itertools.pairwise(seeded) if a.at > earliest]
    kept_pairs = {(a.id, b.id) for a, b in itertools.pairwise(left)}
    assert window_pairs and set(window_pairs) <= kept_pairs
    for seed in range(20):
        with contextlib.suppress(RefusedError):
            moment = choose_moment(left, earliest=earliest, stored_end=1 << 62, max_gap_seconds=every * 60 + 1,
                                   rng=random.Random(seed))
            assert earliest < moment.target < server_now
            continue
        pytest.fail("the drill found no heartbeats inside retention after pruning")
