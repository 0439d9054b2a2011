"""The scheduler's daily task (RETENTION_DAYS' prune): once a UTC day, across every scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.batches.schedules import DAY_S, Scheduler
from pipeline.models import ScheduleRecord
from pipeline.store import SqliteStatusStore

MIDNIGHT = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStatusStore]:
    made = SqliteStatusStore(tmp_path / "state.db")
    yield made
    made.close()


def _never_fire(schedule: ScheduleRecord, fire_time: float) -> str:
    raise AssertionError("no schedule is due")


def test_daily_task_runs_once_a_day_across_schedulers(store: SqliteStatusStore) -> None:
    runs: list[float] = []
    now = {"t": MIDNIGHT + 3600}
    # Two schedulers share one store
    schedulers = [
        Scheduler(store, _never_fire, clock=lambda: now["t"], daily=lambda: runs.append(now["t"])) for _ in range(2)
    ]
    for scheduler in schedulers:
        scheduler.tick()
        scheduler.tick()
    assert runs == [MIDNIGHT + 3600]  # once that day, by one of them
    now["t"] = MIDNIGHT + DAY_S + 10
    for scheduler in schedulers:
        scheduler.tick()
    assert runs == [MIDNIGHT + 3600, MIDNIGHT + DAY_S + 10]  # and again the next day


def test_a_failing_daily_task_does_not_stop_the_schedules(store: SqliteStatusStore) -> None:
    def broken() -> None:
        raise OSError("disk gone")

    scheduler = Scheduler(store, _never_fire, clock=lambda: MIDNIGHT, daily=broken)
    assert scheduler.tick() == []  # logged, not raised
