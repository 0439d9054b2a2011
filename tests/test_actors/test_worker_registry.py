"""Which ``sdpipe worker`` processes are alive: their own beats, not Dramatiq's heartbeats."""

from __future__ import annotations

import time
from pathlib import Path

from actors import open_runtime
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.settings import load_settings


def test_live_workers_counts_worker_beats_not_processes_that_enqueue(redis_url: str, tmp_path: Path) -> None:
    settings = load_settings(redis_url=redis_url, sd_api_url="mock://", output_dir=tmp_path)
    params = build_step_params(settings, grid="2x2", band_px=8, sigma=2.0)
    with open_runtime(settings) as watcher, open_runtime(settings) as submitter:
        assert watcher.live_workers() == 0
        # A process that only submits (a CLI, the API) writes Dramatiq heartbeats: not a worker
        submitter.submit(plan_generate(settings, GenerationRequest(prompt="x"), params, now=time.time()))
        assert watcher.live_workers() == 0
        # A worker process beats: it counts until it says it is gone
        submitter.worker_beat("gpu-box:4242")
        assert watcher.live_workers() == 1
        submitter.worker_beat("gpu-box:4242", gone=True)
        assert watcher.live_workers() == 0
