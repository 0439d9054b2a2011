"""Poison jobs: deliveries that end without any outcome (the worker died) are counted, then quarantined."""

from __future__ import annotations

import time

from pipeline.jobs import steps
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.jobs.steps import StepContext
from pipeline.models import ErrorInfo, JobState
from pipeline.settings import Settings
from pipeline.store import open_store


def _job(settings: Settings, clock_offset_s: float = 3600.0) -> tuple[StepContext, str]:
    store = open_store(settings)
    params = build_step_params(settings, grid=None, band_px=None, sigma=None)
    (spec,) = plan_generate(settings, GenerationRequest(prompt="poison"), params, now=time.time())
    store.create_jobs([spec])
    # the context's clock runs an hour ahead: every earlier delivery is older than the heartbeat
    return StepContext(settings=settings, store=store, clock=lambda: time.time() + clock_offset_s), spec.job_id


def _deliver(ctx: StepContext, job_id: str) -> bool:
    """One delivery of generate as run_step begins it: start (one store call), then the death count.

    True if the step would run; False if the job was quarantined.
    """
    started, previous = ctx.store.start_step_after(job_id, "generate", now=time.time())
    assert started is not None
    return steps._unless_quarantined(ctx, started, "generate", previous) is not None


def test_deliveries_that_kill_the_worker_are_quarantined_after_max(settings: Settings) -> None:
    ctx, job_id = _job(settings)
    # Given three deliveries of generate that each started and then died with their worker
    for expected_deaths in (0, 1, 2):
        assert _deliver(ctx, job_id)
        error = ctx.store.get(job_id).error
        assert (error.deaths if error else 0) == expected_deaths
    # When the fourth delivery arrives
    assert not _deliver(ctx, job_id)
    # Then the job is failed as quarantined, with the reason
    record = ctx.store.get(job_id)
    assert record.state is JobState.FAILED
    assert record.error is not None and record.error.type == "Quarantined"
    assert "3 deliveries of generate ended without an outcome" in record.error.message


def test_a_counted_death_is_the_error_the_step_runs_with(settings: Settings) -> None:
    ctx, job_id = _job(settings)
    ctx.store.start_step(job_id, "generate", now=time.time())  # a delivery that died
    started, previous = ctx.store.start_step_after(job_id, "generate", now=time.time())
    assert started is not None and previous is not None and previous.finished_at is None
    record = steps._unless_quarantined(ctx, started, "generate", previous)
    assert record is not None and record.error is not None and record.error.type == "WorkerDied"
    assert record.steps["generate"].attempts == 2


def test_deliveries_that_failed_or_finished_are_not_deaths(settings: Settings) -> None:
    ctx, job_id = _job(settings)
    for _ in range(5):
        assert _deliver(ctx, job_id)
        # each delivery ends with an outcome: an error the retry policy handles
        ctx.store.record_error(
            job_id, ErrorInfo(step="generate", type="SDServerError", message="500", transient=True, at=time.time())
        )
    assert _deliver(ctx, job_id)
    ctx.store.finish_step(job_id, "generate", now=time.time())
    assert _deliver(ctx, job_id)
    record = ctx.store.get(job_id)
    assert record.state is JobState.GENERATING
    assert record.error is not None and record.error.type == "SDServerError"


def test_a_delivery_sooner_than_the_heartbeat_is_a_duplicate_not_a_death(settings: Settings) -> None:
    ctx, job_id = _job(settings, clock_offset_s=0.0)
    for _ in range(5):
        # each delivery arrives while the previous one may still be running (no heartbeat expiry)
        assert _deliver(ctx, job_id)
    assert ctx.store.get(job_id).error is None
