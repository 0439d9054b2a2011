"""Target 10 (issue 18): a webhook receiver that never answers does not slow a batch down.

The same batch twice against ``sdpipe mock-sd`` (one server, one generation at a time) with ``sdpipe
worker`` (2 processes): first with no webhook (the baseline), then with ``WEBHOOK_URL`` set to a
receiver of the benchmark's own that accepts each connection and never answers (every delivery
hangs until ``WEBHOOK_TIMEOUT_S``, then is retried). Wall time from submitting to the last job
succeeded, median of runs.

Target: wall time with the hanging receiver ≤ 1.10 × without (deliveries run on the ``webhooks``
queue's own threads, never on the image threads).
"""

from __future__ import annotations

from pathlib import Path

from bench._common import Row, median, services
from bench._jobs import redis_settings, timed_runs
from bench._redis import private_redis
from tests.receiver import Receiver

LIMIT = 1.10
SIZE = 512
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _walls(folder: Path, url: str, *, jobs: int, latency_ms: int, runs: int, webhook: str | None) -> list[float]:
    from actors import open_runtime

    folder.mkdir(parents=True, exist_ok=True)
    hook = {"WEBHOOK_URL": webhook, "WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT_S": "30"} if webhook else {}
    with services(folder, url) as started:
        mock = started.mock_sd(latency_ms=latency_ms)
        started.worker(mock, processes=2, extra_env=hook)
        settings = redis_settings(url, mock, started.output_dir)
        with open_runtime(settings) as runtime:
            timeout_s = jobs * latency_ms / 1000 * 3 + 60
            timed = timed_runs(runtime, jobs=jobs, runs=runs, size=SIZE, warm=2, timeout_s=timeout_s)
    return [run.wall_s for run in timed]


def run(folder: Path, *, tiny: bool) -> list[Row]:
    jobs, latency_ms, runs = (4, 100, 1) if tiny else (30, 300, 3)
    receiver = Receiver(hang=True)
    try:
        with private_redis() as url:
            plain = _walls(folder / "plain", url, jobs=jobs, latency_ms=latency_ms, runs=runs, webhook=None)
            hanging = _walls(folder / "hanging", url, jobs=jobs, latency_ms=latency_ms, runs=runs, webhook=receiver.url)
        with receiver.lock:
            deliveries = len(receiver.deliveries)
    finally:
        receiver.close()
    return [
        Row(
            target="10",
            name=f"{jobs} jobs, mock {latency_ms} ms/image, webhook receiver that never answers",
            unit="s",
            measured=median(hanging),
            baseline=median(plain),
            baseline_name=f"the same without a webhook (median of {runs} run(s))",
            limit=LIMIT,
            note=f"{deliveries} delivery attempt(s) were hanging at the receiver",
            details={
                "jobs": jobs,
                "runs_s": [round(w, 3) for w in hanging],
                "baseline_runs_s": [round(w, 3) for w in plain],
                "hanging_deliveries": deliveries,
            },
        )
    ]
