"""Draining cancelled jobs: their queued messages are dropped quietly (DEBUG), whatever the store."""

from __future__ import annotations

import logging
import time

import pytest

from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.jobs.steps import StepContext, run_step, sd_slot
from pipeline.models import STEP_NAMES
from pipeline.settings import Settings
from pipeline.store import RedisStatusStore, StatusStore, open_store


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_drained_messages_of_cancelled_jobs_log_nothing_at_info(
    backend: str, settings: Settings, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    store: StatusStore = (
        RedisStatusStore.from_url(request.getfixturevalue("redis_url")) if backend == "redis" else open_store(settings)
    )
    params = build_step_params(settings, grid=None, band_px=None, sigma=None)
    specs = plan_generate(settings, GenerationRequest(prompt="drained"), params, count=3, now=time.time())
    store.create_jobs(specs)
    for spec in specs:
        store.mark_cancelled(spec.job_id, now=time.time())
    ctx = StepContext(settings=settings, store=store)
    # When the workers drain every step message of the cancelled jobs
    with caplog.at_level(logging.DEBUG):
        for spec in specs:
            for step in STEP_NAMES:
                with sd_slot(ctx, spec.job_id) if step == "generate" else _nothing():
                    assert not run_step(ctx, spec.job_id, step).ran
    # Then nothing reaches INFO: a 10,000-job batch cancelled does not write 10,000s of lines
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    assert any("not needed" in r.getMessage() for r in caplog.records)  # still there at DEBUG
    ctx.close()
    store.close()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
