"""A job's step events as run_step publishes them: the same stream with either backend; in Redis
mode the store's step transitions append them (no round trip of their own), in order, once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.events.hub import EventHub
from pipeline.events.log import EventLog
from pipeline.events.model import Event
from pipeline.events.redis_log import RedisEventLog
from pipeline.events.sqlite_log import SqliteEventLog
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.jobs.steps import StepContext, run_step
from pipeline.models import STEP_NAMES
from pipeline.settings import Settings
from pipeline.store import RedisStatusStore, SqliteStatusStore, StatusStore


class _CountingLog(EventLog):
    """An event log that counts what it was asked to publish itself."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.published: list[str] = []

    def publish(self, event: Event, *, once: str | None = None) -> Event | None:
        self.published.append(event.type)
        return self.inner.publish(event, once=once)

    def read(self, after: str | None, **kwargs: object) -> object:  # type: ignore[override]
        return self.inner.read(after, **kwargs)  # type: ignore[arg-type]

    def latest_id(self) -> str:
        return self.inner.latest_id()

    def inline_stream(self) -> tuple[str, str, int] | None:
        return self.inner.inline_stream()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(params=["redis", "sqlite"])
def context(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Iterator[StepContext]:
    store: StatusStore
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        store = RedisStatusStore.from_url(url)
        log: EventLog = RedisEventLog(redis.Redis.from_url(url), max_len=1000)
    else:
        store = SqliteStatusStore(tmp_path / "status.sqlite3")
        log = SqliteEventLog(tmp_path / "events.sqlite3", max_len=1000)
    ctx = StepContext(settings=settings, store=store, events=EventHub(_CountingLog(log)))
    yield ctx
    ctx.close()
    store.close()


def _job(ctx: StepContext, batch_id: str | None = None) -> str:
    params = build_step_params(ctx.settings, grid=None, band_px=None, sigma=None)
    request = GenerationRequest(prompt="a fox", width=256, height=256)
    (spec,) = plan_generate(ctx.settings, request, params, now=time.time())
    spec = spec.model_copy(update={"batch_id": batch_id})
    ctx.store.create_jobs([spec])
    return spec.job_id


def test_step_events_reach_the_log_in_order_with_either_backend(context: StepContext) -> None:
    assert context.events is not None
    heard: list[Event] = []
    context.events.add_listener(heard.append)
    job_id = _job(context, batch_id="b1")

    for step in STEP_NAMES:
        assert run_step(context, job_id, step).ran

    events = context.events.log.read(None).events
    expected = [(f"job.step.{phase}", step) for step in STEP_NAMES for phase in ("started", "finished")]
    assert [(e.type, e.data.get("step")) for e in events[:-2]] == expected
    assert [e.type for e in events[-2:]] == ["job.succeeded", "batch.completed"]
    assert all(e.job_id == job_id for e in events[:-1]) and {e.batch_id for e in events} == {"b1"}
    started = [e for e in events if e.type == "job.step.started"]
    assert [e.data["attempt"] for e in started] == [1, 1, 1, 1]
    assert [e.data["state"] for e in started] == ["generating", "splitting", "blurring", "merging"]
    assert events[-3].data["duration_s"] is not None and events[-3].data["skipped"] is False
    record = context.store.get(job_id)
    succeeded = events[-2]
    assert succeeded.data["state"] == "succeeded" and succeeded.data["ended_at"] == record.updated_at
    assert succeeded.data["result"]["sha256"] == record.result.sha256  # type: ignore[union-attr]
    assert succeeded.key == f"{job_id}:succeeded:{record.updated_at!r}"
    # listeners heard every event with the id it has in the log
    assert [(e.id, e.type) for e in heard] == [(e.id, e.type) for e in events]
    published = context.events.log.published  # type: ignore[attr-defined]
    if isinstance(context.store, RedisStatusStore):
        # only the batch's completion needed a round trip of its own
        assert published == ["batch.completed"]
    else:
        assert published == [e.type for e in events]


def test_a_redelivered_step_counts_its_attempt_in_its_start_event(context: StepContext) -> None:
    assert context.events is not None
    job_id = _job(context)
    assert run_step(context, job_id, "generate").ran
    context.store.start_step(job_id, "split", now=time.time())  # a delivery that died at once

    assert run_step(context, job_id, "split").ran  # the next delivery (a death is counted, not fatal)

    started = [e for e in context.events.log.read(None).events if e.type == "job.step.started"]
    assert [(e.data["step"], e.data["attempt"]) for e in started] == [("generate", 1), ("split", 2)]


def test_a_last_step_redelivered_after_the_end_announces_the_end_once(context: StepContext) -> None:
    assert context.events is not None
    job_id = _job(context)
    for step in STEP_NAMES:
        run_step(context, job_id, step)

    assert not run_step(context, job_id, "merge").ran  # a duplicate delivery of the last step

    ended = [e for e in context.events.log.read(None).events if e.type == "job.succeeded"]
    assert len(ended) == 1
