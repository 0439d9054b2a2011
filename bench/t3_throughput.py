"""Target 3: throughput against a slow GPU.

``sdpipe mock-sd --latency-ms 500`` (one server, one generation at a time, like A1111), ``sdpipe
worker`` with its defaults (2 processes); after a warm-up, N jobs of 512² are submitted at once and
timed until the last one succeeded. Baseline: N × 500 ms, the GPU's own time. Also measured, for
the record: the mock's real time per image on its own (a few sequential txt2img calls, no workers),
which adds rendering and PNG encoding to the 500 ms sleep.

Target: wall time ≤ 1.05 × N × 500 ms.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench._common import Row, median, services
from bench._jobs import redis_settings, specs, wait_batch
from bench._redis import private_redis

LIMIT = 1.05
SIZE = 512


def run(folder: Path, *, tiny: bool) -> list[Row]:
    from actors import open_runtime
    from pipeline.sd_client import SDClient

    jobs, latency_ms = (4, 100) if tiny else (40, 500)
    with private_redis() as url, services(folder, url) as started:
        mock = started.mock_sd(latency_ms=latency_ms)
        started.worker(mock, processes=2)
        settings = redis_settings(url, mock, started.output_dir)
        with open_runtime(settings) as runtime:
            warm = specs(settings, 2, size=SIZE, seed=1)
            runtime.submit(warm)
            wait_batch(runtime.store, warm[0].batch_id or "", len(warm), timeout_s=120)
            measured = specs(settings, jobs, size=SIZE, seed=100)
            started_at, submitted_epoch = time.perf_counter(), time.time()
            runtime.submit(measured)
            wait_batch(runtime.store, measured[0].batch_id or "", jobs, timeout_s=jobs * latency_ms / 1000 * 3 + 60)
            wall_s = time.perf_counter() - started_at
            records = runtime.store.list_jobs(batch_id=measured[0].batch_id, limit=jobs)

        # The server's own time per image, nothing else running (after the run: it must not delay it).
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
    # When each SD image was done (the generate step's end), in order: the gaps show idle server time.
    done = sorted(r.steps["generate"].finished_at or 0.0 for r in records)
    intervals = [b - a for a, b in zip(done, done[1:], strict=False)]
    timeline = {
        "first_image_after_submit_s": round(done[0] - submitted_epoch, 3),
        "median_interval_s": round(median(intervals), 4) if intervals else None,
        "max_interval_s": round(max(intervals), 4) if intervals else None,
        "server_idle_s_est": round(sum(max(0.0, i - server_s) for i in intervals), 3),
        "after_last_image_s": round(max(r.updated_at for r in records) - done[-1], 3),
    }
    return [
        Row(
            target="3",
            name=f"{jobs} jobs, mock {latency_ms} ms/image, 1 server",
            unit="s",
            measured=wall_s,
            baseline=nominal_s,
            baseline_name=f"{jobs} × {latency_ms} ms",
            limit=LIMIT,
            note=f"mock's own time/image {server_s * 1000:.0f} ms -> floor {jobs * server_s:.2f} s "
            f"({wall_s / (jobs * server_s):.3f}×)",
            details={
                "jobs": jobs,
                "server_s_per_image": round(server_s, 4),
                "ratio_vs_server_floor": round(wall_s / (jobs * server_s), 4),
                **timeline,
            },
        )
    ]
