"""Submitting generate jobs to Redis-mode workers from the benchmark process, and waiting for them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.jobs.planning import GenerationRequest, build_step_params, new_id, plan_generate
from pipeline.models import JobRecord, JobSpec
from pipeline.settings import Settings, load_settings
from pipeline.store import StatusStore

if TYPE_CHECKING:
    from actors import Runtime

__all__ = ["TimedRun", "redis_settings", "specs", "timed_runs", "wait_batch"]


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


@dataclass(frozen=True)
class TimedRun:
    """One timed batch: wall time from submitting to the last job succeeded, and its jobs."""

    wall_s: float
    submitted_epoch: float
    records: list[JobRecord]


def timed_runs(runtime: Runtime, *, jobs: int, runs: int, size: int, warm: int, timeout_s: float) -> list[TimedRun]:
    """Warm the workers up with ``warm`` jobs, then ``runs`` times submit ``jobs`` at once and time
    them until the last one succeeded (a new batch and new seeds each time)."""
    settings = runtime.settings
    warm_specs = specs(settings, warm, size=size, seed=1)
    runtime.submit(warm_specs)
    wait_batch(runtime.store, warm_specs[0].batch_id or "", warm, timeout_s=120)
    timed = []
    for index in range(runs):
        batch = specs(settings, jobs, size=size, seed=100 + index * jobs)
        batch_id = batch[0].batch_id or ""
        started_at, submitted_epoch = time.perf_counter(), time.time()
        runtime.submit(batch)
        wait_batch(runtime.store, batch_id, jobs, timeout_s=timeout_s)
        wall_s = time.perf_counter() - started_at
        timed.append(TimedRun(wall_s, submitted_epoch, runtime.store.list_jobs(batch_id=batch_id, limit=jobs)))
    return timed
