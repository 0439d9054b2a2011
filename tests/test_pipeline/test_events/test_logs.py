"""Both event logs: append, read after an id, filters, once-keys, blocking, bounds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.events.log import EventLog
from pipeline.events.model import Event
from pipeline.events.redis_log import RedisEventLog
from pipeline.events.sqlite_log import SqliteEventLog


@pytest.fixture(params=["sqlite", "redis"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param == "sqlite":
        made: EventLog = SqliteEventLog(tmp_path / "events.sqlite3", max_len=1000)
    else:
        import redis

        url = request.getfixturevalue("redis_url")
        made = RedisEventLog(redis.Redis.from_url(url), max_len=1000)
    yield made
    made.close()


def _event(n: int, *, job: str = "j1", batch: str | None = "b1", type: str = "job.step.started") -> Event:
    return Event(type=type, ts=float(n), job_id=job, batch_id=batch, data={"n": n})


def test_event_log_reads_after_an_id_in_order(log: EventLog) -> None:
    ids = [published.id for n in range(5) if (published := log.publish(_event(n))) is not None]
    page = log.read(None)
    assert [event.data["n"] for event in page.events] == [0, 1, 2, 3, 4]
    assert [event.id for event in page.events] == ids
    assert [event.data["n"] for event in log.read(ids[2]).events] == [3, 4]
    assert log.read(ids[-1]).events == [] and log.latest_id() == ids[-1]


def test_event_log_filters_by_batch_and_job(log: EventLog) -> None:
    log.publish(_event(1, job="a", batch="x"))
    log.publish(_event(2, job="b", batch="y"))
    log.publish(_event(3, job="c", batch="x"))
    assert [e.job_id for e in log.read(None, batch_id="x").events] == ["a", "c"]
    assert [e.job_id for e in log.read(None, job_id="b").events] == ["b"]
    # the cursor moves past what the filter skipped
    page = log.read(None, batch_id="y")
    assert log.read(page.cursor, batch_id="y").events == []


def test_event_log_publishes_a_once_key_once(log: EventLog) -> None:
    assert log.publish(_event(1, type="job.succeeded"), once="j1:succeeded:1.0") is not None
    assert log.publish(_event(1, type="job.succeeded"), once="j1:succeeded:1.0") is None
    assert len(log.read(None).events) == 1


def test_event_log_blocking_read_returns_when_empty(log: EventLog) -> None:
    page = log.read(log.latest_id(), block_s=0.2)
    assert page.events == []


def test_event_log_blocked_read_returns_an_event_another_thread_appends(log: EventLog) -> None:
    cursor = log.latest_id()
    appender = threading.Timer(0.1, lambda: log.publish(_event(7)))
    appender.start()
    page = log.read(cursor, block_s=30)
    appender.join()
    assert [event.data["n"] for event in page.events] == [7]
