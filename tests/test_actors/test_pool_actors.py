"""The generate actor on an SD pool: a busy pool requeues without spending retries or attempts."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from actors import Runtime, open_runtime
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.models import JobRecord, JobState
from pipeline.sd.mock.http import get_mock_server
from pipeline.settings import Settings
from pipeline.store import open_store

Wait = Callable[[Runtime, list[str]], list[JobRecord]]


@pytest.fixture
def one_slot_runtime(settings: Settings) -> Iterator[Runtime]:
    """Embedded, 4 worker threads, one slow mock server with one slot, no retries allowed."""
    url = f"mock://busy-{uuid.uuid4().hex[:8]}?latency_ms=200"
    pooled = settings.model_copy(update={"sd_api_url": url, "worker_threads": 4, "max_retries": 0})
    with open_runtime(pooled) as rt:
        rt.context.pool.slot_wait_s = 0.05  # give up waiting at once: exercise the requeue path
        yield rt


def test_generate_busy_pool_requeues_without_spending_retries(
    one_slot_runtime: Runtime, wait_terminal: Wait, caplog: pytest.LogCaptureFixture
) -> None:
    rt = one_slot_runtime
    params = build_step_params(rt.settings, grid="2x2", band_px=4, sigma=1.0)
    specs = plan_generate(
        rt.settings, GenerationRequest(prompt="p", seed=1, width=64, height=64), params, count=4, now=time.time()
    )
    with caplog.at_level(logging.INFO, logger="actors.steps"):
        rt.submit(specs)
        records = wait_terminal(rt, [spec.job_id for spec in specs])
    # With max_retries=0 a single counted failure would fail a job: all succeed
    assert Counter(r.state for r in records) == {JobState.SUCCEEDED: 4}
    # Waiting for the slot recorded no attempt: one generate attempt each
    assert [r.steps["generate"].attempts for r in records] == [1, 1, 1, 1]
    # The pool really was busy and messages went back to the queue
    assert any("busy" in message and "requeued" in message for message in caplog.messages)
    stats = get_mock_server(rt.settings.sd_api_url).stats()
    assert stats["txt2img_completed"] == 4 and stats["max_in_flight"] == 1


def test_embedded_runtime_close_cancels_jobs_that_never_started(settings: Settings) -> None:
    # One slow server, one thread: most jobs are still queued when the runtime closes
    slow = settings.model_copy(
        update={"sd_api_url": f"mock://slow-{uuid.uuid4().hex[:8]}?latency_ms=300", "worker_threads": 1}
    )
    rt = open_runtime(slow)
    params = build_step_params(rt.settings, grid="2x2", band_px=4, sigma=1.0)
    specs = plan_generate(
        rt.settings, GenerationRequest(prompt="p", seed=1, width=64, height=64), params, count=5, now=time.time()
    )
    rt.submit(specs)
    rt.close()
    store = open_store(slow)
    states = Counter(store.get(spec.job_id).state for spec in specs)
    store.close()
    # Nothing stays "queued" forever (its queue died with the process), and so takes no room
    assert states[JobState.QUEUED] == 0 and states[JobState.CANCELLED] >= 3


def test_embedded_queue_depth_counts_only_this_process_jobs(settings: Settings) -> None:
    capped = settings.model_copy(
        update={"max_queue_depth": 2, "sd_api_url": "mock://?latency_ms=2000", "worker_threads": 1}
    )
    # Given a queued job another (ended) embedded process left in the database
    store = open_store(capped)
    params = build_step_params(capped, grid="2x2", band_px=4, sigma=1.0)
    orphan = plan_generate(capped, GenerationRequest(prompt="o", seed=1, width=64, height=64), params, now=time.time())
    store.create_jobs(orphan)
    store.close()
    with open_runtime(capped) as rt:
        assert rt.queue_depth() == 0
        rt.make_room(2)  # does not raise: the orphan can never run and takes no room
