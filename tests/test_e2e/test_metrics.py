"""Prometheus metrics end to end: ``sdpipe worker`` with METRICS_PORT, two mock SD servers over HTTP
(one always out of memory), a private redis-server; ``/metrics`` scraped over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, wait_until
from tests.test_e2e.conftest import Proc, run_sdpipe, start_mock, start_worker

pytestmark = pytest.mark.e2e

JOBS = 4

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _scrape(port: int) -> Samples:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.HTTPError:
        return {}
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    return sum(value for got, value in samples.get(name, []) if labels.items() <= got.items())


def test_worker_metrics_port_serves_dramatiq_and_sdpipe_metrics(
    e2e_env: dict[str, str], spawn: Callable[..., Proc]
) -> None:
    # Given two SD servers, one of which answers every txt2img with 500 OutOfMemoryError,
    good = start_mock(spawn, e2e_env, "--latency-ms", "200", name="mock-good")
    bad = start_mock(spawn, e2e_env, "--faults", "500:1.0", name="mock-oom")
    port = free_port()
    env = {**e2e_env, "SD_API_URL": f"{good},{bad}", "SD_COOLDOWN_MIN_S": "60", "METRICS_PORT": str(port)}
    # and workers exposing metrics on METRICS_PORT
    workers = start_worker(spawn, env, processes=2, threads=2)
    assert wait_until(lambda: bool(_scrape(port)), timeout_s=30), workers.output()
    # When jobs run
    result = run_sdpipe("generate", "a lighthouse", "--count", str(JOBS), "--width", "64", "--height", "64", env=env)
    assert result.returncode == 0, result.stdout + result.stderr + workers.output()

    # Then /metrics has every job's SD call by server and outcome, summed over the worker processes
    def complete() -> bool:
        samples = _scrape(port)
        return _value(samples, "sdpipe_sd_request_seconds_count", backend=good, outcome="ok") == JOBS

    assert wait_until(complete, timeout_s=10), _scrape(port)
    samples = _scrape(port)
    # the out-of-memory server failed its call, was benched, and the job was retried (on the good one)
    assert _value(samples, "sdpipe_sd_request_seconds_count", backend=bad, outcome="failed") >= 1
    assert _value(samples, "sdpipe_sd_request_seconds_bucket", backend=good, outcome="ok", le="+Inf") == JOBS
    assert _value(samples, "sdpipe_sd_benched_total", backend=bad) == 1
    assert _value(samples, "sdpipe_step_retries_total", step="generate") >= 1
    assert _value(samples, "sdpipe_step_retries_total", step="merge") == 0
    # Dramatiq's own metrics, from the same multiprocess files
    assert _value(samples, "dramatiq_messages_total", actor_name="sdpipe_merge", queue_name="images") == JOBS
    assert _value(samples, "dramatiq_messages_total", actor_name="sdpipe_generate", queue_name="sd") >= JOBS + 1
    # and what is read at scrape time: jobs by state, the servers' health
    assert _value(samples, "sdpipe_jobs", state="succeeded") == JOBS
    assert _value(samples, "sdpipe_jobs", state="failed") == 0
    assert _value(samples, "sdpipe_sd_backend_healthy", backend=good) == 1
    assert _value(samples, "sdpipe_sd_backend_healthy", backend=bad) == 0
    # `sdpipe backends` reads the same shared state
    backends = run_sdpipe("backends", "--json", env=env)
    assert backends.returncode == 0, backends.stdout + backends.stderr
    rows = {row["key"]: row for row in json.loads(backends.stdout)}
    assert rows[good]["healthy"] is True and rows[good]["done"] == JOBS
    assert rows[bad]["healthy"] is False and "OutOfMemoryError" in rows[bad]["last_error"]
    assert rows[bad]["health"].startswith("benched, back in")
    # Stopping the workers stops the metrics process too
    assert workers.stop() == 0, workers.output()
    assert wait_until(lambda: not _scrape(port), timeout_s=10)
