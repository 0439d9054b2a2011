"""Target 6 (issue 6): a pool of SD servers is kept busy, one request per server at a time.

Three ``sdpipe mock-sd --latency-ms 300`` servers (each renders one image at a time, like A1111),
``SD_API_URL`` listing all three with one slot each, and ``sdpipe worker`` with 2 processes × 3
threads (6 threads for 3 slots). After a warm-up, N jobs are submitted at once and timed until the
last one succeeded. Baseline: N × 300 ms / 3, the three GPUs' own time.

Also read from the mocks: the most requests each held at once (running or waiting on its lock),
which the pool must keep at exactly 1, and from the jobs' records the gaps between generations.

Target: wall time ≤ 1.1 × N × 300 ms / 3.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from bench._common import Row, median, services
from bench._jobs import redis_settings, timed_runs
from bench._redis import private_redis

LIMIT = 1.1
SERVERS = 3
SIZE = 256


def run(folder: Path, *, tiny: bool) -> list[Row]:
    from actors import open_runtime

    jobs, latency_ms, runs = (6, 100, 1) if tiny else (60, 300, 3)
    in_flight: dict[str, int] = {}
    with private_redis() as url, services(folder, url) as started:
        mocks = [started.mock_sd(latency_ms=latency_ms) for _ in range(SERVERS)]
        pool_url = ",".join(mocks)
        started.worker(pool_url, processes=2, threads=3)
        settings = redis_settings(url, pool_url, started.output_dir)
        with open_runtime(settings) as runtime:
            timeout_s = jobs * latency_ms / 1000 + 120
            walls = [
                r.wall_s
                for r in timed_runs(runtime, jobs=jobs, runs=runs, size=SIZE, warm=2 * SERVERS, timeout_s=timeout_s)
            ]
        for mock in mocks:
            in_flight[mock] = int(httpx.get(f"{mock}/mock/stats", timeout=10).json()["max_in_flight"])

    nominal_s = jobs * latency_ms / 1000 / SERVERS
    wall_s = median(walls)
    most = max(in_flight.values())
    rows = [
        Row(
            target="6",
            name=f"{jobs} jobs, {SERVERS} mock servers at {latency_ms} ms/image, 6 threads",
            unit="s",
            measured=wall_s,
            baseline=nominal_s,
            baseline_name=f"{jobs} × {latency_ms} ms / {SERVERS} (median of {runs} run(s))",
            limit=LIMIT,
            details={"jobs": jobs, "runs_s": [round(w, 3) for w in walls]},
        ),
        Row(
            target="6",
            name="most requests one server held at once",
            unit="",
            measured=float(most),
            limit=1.0,
            limit_on="measured",
            note="running or waiting on the server's lock; the pool's cap is 1 per server",
            details={"max_in_flight": in_flight},
        ),
    ]
    return rows
