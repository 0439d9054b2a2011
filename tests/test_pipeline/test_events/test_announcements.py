"""What a job's end announces: its own end once, and its batch's completion once per round."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.events.hub import EventHub
from pipeline.events.jobs import announce_end, reopen_batches
from pipeline.events.sqlite_log import SqliteEventLog
from pipeline.models import ErrorInfo, JobResult, JobSpec, StepParams
from pipeline.store import SqliteStatusStore
from pipeline.store.keyvalue import SqliteKeyValue

T0 = 1_700_000_000.0


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[EventHub, SqliteStatusStore]]:
    path = tmp_path / "status.sqlite3"
    store = SqliteStatusStore(path)
    kv = SqliteKeyValue(path)
    ticks = iter(range(1_000))
    hub = EventHub(SqliteEventLog(path, max_len=1000), kv=kv, clock=lambda: T0 + next(ticks))
    yield hub, store
    hub.close()
    kv.close()
    store.close()


def _spec(job_id: str) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        kind="process",
        batch_id="b1",
        step_params=StepParams(),
        output_name=f"out/{job_id}",
        source_name="in.png",
        created_at=T0,
    )


def _completions(hub: EventHub) -> list[dict[str, object]]:
    return [event.data for event in hub.log.read(None, batch_id="b1").events if event.type == "batch.completed"]


def test_batch_completed_is_announced_again_after_a_retry_with_the_same_counts(
    parts: tuple[EventHub, SqliteStatusStore],
) -> None:
    hub, store = parts
    store.create_jobs([_spec("j1"), _spec("j2")])
    result = JobResult(image="out/j1.png")
    error = ErrorInfo(step="generate", type="SDServerError", message="CUDA out of memory", transient=True, at=T0)
    store.mark_succeeded("j1", result, now=T0 + 1)
    announce_end(hub, store, store.get("j1"))
    store.mark_failed("j2", error, now=T0 + 2)
    announce_end(hub, store, store.get("j2"))
    announce_end(hub, store, store.get("j2"))  # a redelivered end: no second completion
    assert _completions(hub) == [{"counts": {"succeeded": 1, "failed": 1, "cancelled": 0}, "total": 2}]
    # A retry of j2 that fails again: the same counts, but a new completion
    assert store.requeue("j2", now=T0 + 3) is not None
    reopen_batches(hub, ["b1"])
    announce_end(hub, store, store.get("j1"))  # a late announcement of the first completion: nothing
    assert len(_completions(hub)) == 1
    store.mark_failed("j2", error, now=T0 + 4)
    announce_end(hub, store, store.get("j2"))
    announce_end(hub, store, store.get("j1"))
    assert _completions(hub) == [{"counts": {"succeeded": 1, "failed": 1, "cancelled": 0}, "total": 2}] * 2
