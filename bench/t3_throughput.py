"""Target 3: throughput against a slow GPU.

``sdpipe mock-sd --latency-ms 500`` (one server, one generation at a time, like A1111), ``sdpipe
worker`` with its defaults (2 processes); after a warm-up, N jobs of 512² are submitted at once and
timed until the last one succeeded (median of runs). Baseline: N × 500 ms, the GPU's own time.

Also measured, to tell the orchestrator's share from the mock's: the mock's real time per image on
its own (a few sequential txt2img calls, no workers; it renders and PNG-encodes each image after
its 500 ms sleep), and from the jobs' records when each image was done: the time to the first image
after submitting, the gaps between images (server idle time), and the time after the last one.

Target: wall time ≤ 1.05 × N × 500 ms.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench._common import Row, median, services
from bench._jobs import redis_settings, specs, timed_runs
from bench._redis import private_redis
from pipeline.models import JobRecord

LIMIT = 1.05
SIZE = 512


def _timeline(records: list[JobRecord], submitted_epoch: float, server_s: float) -> dict[str, Any]:
    """When each SD image was done (the generate step's end), in order: the gaps show idle server time."""
    done = sorted(r.steps["generate"].finished_at or 0.0 for r in records)
    intervals = [b - a for a, b in zip(done, done[1:], strict=False)]
    return {
        "first_image_after_submit_s": round(done[0] - submitted_epoch, 3),
        "median_interval_s": round(median(intervals), 4) if intervals else None,
        "max_interval_s": round(max(intervals), 4) if intervals else None,
        "server_idle_s_est": round(sum(max(0.0, i - server_s) for i in intervals), 3),
        "after_last_image_s": round(max(r.updated_at for r in records) - done[-1], 3),
    }


def run(folder: Path, *, tiny: bool) -> list[Row]:
    from actors import open_runtime
    from pipeline.sd.client import SDClient

    jobs, latency_ms, runs = (4, 100, 1) if tiny else (40, 500, 3)
    with private_redis() as url, services(folder, url) as started:
        mock = started.mock_sd(latency_ms=latency_ms)
        started.worker(mock, processes=2)
        settings = redis_settings(url, mock, started.output_dir)
        with open_runtime(settings) as runtime:
            timeout_s = jobs * latency_ms / 1000 * 3 + 60
            timed = timed_runs(runtime, jobs=jobs, runs=runs, size=SIZE, warm=2, timeout_s=timeout_s)
        walls = [run.wall_s for run in timed]
        measured_runs = [(run.records, run.submitted_epoch) for run in timed]

        # The server's own time per image, nothing else running (after the runs: it must not delay them).
        client = SDClient(settings)
        try:
            floor = []
            for spec in specs(settings, 3, size=SIZE, seed=5000):
                assert spec.generation is not None
                begun = time.perf_counter()
                client.txt2img(spec.generation, job_id=spec.job_id)
                floor.append(time.perf_counter() - begun)
        finally:
            client.close()

    nominal_s = jobs * latency_ms / 1000
    server_s = median(floor)
    wall_s = median(walls)
    return [
        Row(
            target="3",
            name=f"{jobs} jobs, mock {latency_ms} ms/image, 1 server",
            unit="s",
            measured=wall_s,
            baseline=nominal_s,
            baseline_name=f"{jobs} × {latency_ms} ms (median of {runs} run(s))",
            limit=LIMIT,
            note=f"the mock's own time/image is {server_s * 1000:.0f} ms, so its floor is {jobs * server_s:.2f} s "
            f"and the run took {wall_s / (jobs * server_s):.3f}× that",
            details={
                "jobs": jobs,
                "runs_s": [round(w, 3) for w in walls],
                "server_s_per_image": round(server_s, 4),
                "ratio_vs_server_floor": round(wall_s / (jobs * server_s), 4),
                "timelines": [_timeline(records, epoch, server_s) for records, epoch in measured_runs],
            },
        )
    ]
