"""Submitting generate jobs to Redis-mode workers from the benchmark process, and waiting for them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.jobs import GenerationRequest, build_step_params, new_id, plan_generate
from pipeline.models import JobSpec
from pipeline.settings import Settings, load_settings
from pipeline.store import StatusStore

__all__ = ["redis_settings", "specs", "wait_batch"]


def redis_settings(redis_url: str, sd_url: str, output_dir: Path) -> Settings:
    return load_settings(redis_url=redis_url, sd_api_url=sd_url, output_dir=output_dir)


def specs(
    settings: Settings, count: int, *, size: int = 512, seed: int = 1, prompt: str = "a lighthouse"
) -> list[JobSpec]:
    """``count`` generate jobs of one new batch (seeds ``seed…``), at ``size``², grid 2x2."""
    params = build_step_params(settings, grid="2x2", band_px=16, sigma=4.0)
    request = GenerationRequest(prompt=prompt, seed=seed, width=size, height=size)
    return plan_generate(settings, request, params, count=count, batch_id=new_id(), now=time.time())


def wait_batch(
    store: StatusStore, batch_id: str, count: int, *, timeout_s: float, interval_s: float = 0.01, on_poll: Any = None
) -> dict[str, int]:
    """Wait until ``count`` jobs of the batch are terminal; return the counts per state.

    ``on_poll(done)`` is called after every poll (e.g. to sample a worker's memory).

    Raises:
        RuntimeError: the jobs did not finish in time, or some did not succeed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        counts = store.count_by_state(batch_id=batch_id)
        done = sum(n for state, n in counts.items() if state.terminal)
        if on_poll is not None:
            on_poll(done)
        if done >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {count} jobs finished in {timeout_s:.0f} s: {counts}")
        time.sleep(interval_s)
    summary = {state.value: n for state, n in counts.items() if n}
    if summary.get("succeeded", 0) != count:
        raise RuntimeError(f"not every job succeeded: {summary}")
    return summary
