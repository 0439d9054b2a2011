"""sdpipe's Prometheus metrics in one process: SD calls, benchings, step retries, the scrape-time collector.

The values here live in a private registry in memory (prometheus_client is imported at collection,
before any multiprocess directory is set); the multiprocess path is tested end to end in
``tests/test_e2e/test_metrics.py``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors import Runtime, open_runtime
from actors.metrics import RetryMetrics, ScrapeCollector, WorkerMetrics, install, serve_metrics
from pipeline.errors import InputError, StoreUnavailable
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.models import JobRecord, JobState
from pipeline.sd.pool.state import BackendStatus
from pipeline.settings import Settings

Wait = Callable[[Runtime, list[str]], list[JobRecord]]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _submit(rt: Runtime) -> str:
    params = build_step_params(rt.settings, grid="2x2", band_px=8, sigma=2.0)
    (spec,) = plan_generate(
        rt.settings, GenerationRequest(prompt="a fox", width=64, height=64), params, now=time.time()
    )
    rt.submit([spec])
    return spec.job_id


def test_worker_metrics_sd_calls_by_backend_and_outcome() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.sd_call("http://gpu1:7860", 1.5, "ok")
    metrics.sd_call("http://gpu1:7860", 3.0, "ok")
    metrics.sd_call("http://gpu2:7860", 0.1, "failed")
    metrics.benched("http://gpu2:7860")
    gpu1_ok = {"backend": "http://gpu1:7860", "outcome": "ok"}
    assert _sample(registry, "sdpipe_sd_request_seconds_count", **gpu1_ok) == 2
    assert _sample(registry, "sdpipe_sd_request_seconds_sum", **gpu1_ok) == 4.5
    assert _sample(registry, "sdpipe_sd_request_seconds_bucket", **gpu1_ok, le="2.5") == 1
    assert _sample(registry, "sdpipe_sd_request_seconds_count", backend="http://gpu2:7860", outcome="failed") == 1
    assert _sample(registry, "sdpipe_sd_benched_total", backend="http://gpu2:7860") == 1
    assert _sample(registry, "sdpipe_sd_benched_total", backend="http://gpu1:7860") == 0


def test_retry_metrics_count_retries_but_not_the_exhausted_attempt(settings: Settings, wait_terminal: Wait) -> None:
    # Given a server that always answers out of memory, 2 retries, and the metrics wired as in a worker
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    failing = settings.model_copy(update={"sd_api_url": "mock://?fail_rate=1.0", "max_retries": 2})
    with open_runtime(failing, pool_observer=metrics) as rt:
        rt.broker.add_middleware(RetryMetrics(metrics))
        # When a job runs until its retries run out
        (record,) = wait_terminal(rt, [_submit(rt)])
    # Then 3 attempts failed, 2 of them went back for a retry, and the server was benched once
    assert record.state is JobState.FAILED
    backend = {"backend": "mock://?fail_rate=1.0"}
    assert _sample(registry, "sdpipe_sd_request_seconds_count", **backend, outcome="failed") == 3
    assert _sample(registry, "sdpipe_step_retries_total", step="generate") == 2
    assert _sample(registry, "sdpipe_sd_benched_total", **backend) == 1


def test_retry_metrics_ignore_permanent_errors(settings: Settings) -> None:
    registry = CollectorRegistry()
    middleware = RetryMetrics(WorkerMetrics(registry))
    with open_runtime(settings, start_embedded_worker=False) as rt:
        message = rt.actors.split.message("job-1")
        middleware.after_process_message(rt.broker, message, exception=InputError("bad grid"))
        middleware.after_process_message(rt.broker, message, exception=None)
        assert _sample(registry, "sdpipe_step_retries_total", step="split") == 0
        middleware.after_process_message(rt.broker, message, exception=RuntimeError("unexpected"))
        assert _sample(registry, "sdpipe_step_retries_total", step="split") == 1


def _scrape(collector: ScrapeCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    registry.register(collector)
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_scrape_collector_reads_jobs_and_backends_at_scrape_time() -> None:
    counts = dict.fromkeys(JobState, 0)
    statuses = [
        BackendStatus("http://gpu1:7860", 2, 1, True, None, 0, 0, 5, 0, 10.0, None, None),
        BackendStatus("http://gpu2:7860", 1, 0, False, time.time() + 30, 10, 3, 0, 3, 0.0, "refused", time.time()),
    ]
    collector = ScrapeCollector(lambda: dict(counts), lambda: statuses)
    counts[JobState.SUCCEEDED] = 7
    first = _scrape(collector)
    counts[JobState.SUCCEEDED] = 9  # read again at every scrape
    second = _scrape(collector)
    assert first["sdpipe_jobs"][(("state", "succeeded"),)] == 7
    assert second["sdpipe_jobs"][(("state", "succeeded"),)] == 9
    assert second["sdpipe_jobs"][(("state", "queued"),)] == 0
    assert second["sdpipe_sd_backend_healthy"] == {
        (("backend", "http://gpu1:7860"),): 1,
        (("backend", "http://gpu2:7860"),): 0,
    }
    assert second["sdpipe_sd_slots_in_use"][(("backend", "http://gpu1:7860"),)] == 1
    assert second["sdpipe_sd_slots"][(("backend", "http://gpu1:7860"),)] == 2


def test_scrape_collector_store_outage_leaves_values_out(caplog: pytest.LogCaptureFixture) -> None:
    def unreachable() -> dict[JobState, int]:
        raise StoreUnavailable("cannot reach Redis at redis://***@host:6379/0")

    assert _scrape(ScrapeCollector(unreachable, list)) == {}
    assert "cannot read the status store" in caplog.text


def test_install_adds_dramatiqs_middleware_whose_fork_serves_ours(settings: Settings) -> None:
    from dramatiq.middleware.prometheus import Prometheus

    with open_runtime(settings, start_embedded_worker=False) as rt:
        install(rt.broker, WorkerMetrics(CollectorRegistry()))
        exposition = [m for m in rt.broker.middleware if isinstance(m, Prometheus)]
        assert len(exposition) == 1
        assert any(isinstance(m, RetryMetrics) for m in rt.broker.middleware)
        # The Dramatiq CLI imports each fork as "module:name" in the process it forks
        assert [f"{fork.__module__}:{fork.__name__}" for fork in exposition[0].forks] == [
            "actors.metrics:serve_metrics"
        ]
        assert exposition[0].forks == [serve_metrics]


def test_worker_master_imports_no_prometheus() -> None:
    # The master must not import prometheus_client or Dramatiq's middleware before it exports their
    # environment (they read it at import); nor should anything without METRICS_PORT.
    code = (
        "import sys, cli.main, actors.worker; "
        "print(sorted(m for m in sys.modules if 'prometheus' in m or m == 'actors.metrics'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_worker_metrics_count_checkpoint_loads_by_backend_and_model() -> None:
    import uuid

    from tests.test_pipeline.test_sd.test_affinity import asking
    from tests.test_pipeline.test_sd.test_pool import make_settings, open_pool

    # Given the metrics observing a pool whose one server has checkpoint a loaded
    registry = CollectorRegistry()
    url = f"mock://metrics-{uuid.uuid4().hex[:8]}?models=a;b&model_load_ms=1"
    pool = open_pool(make_settings(url), observer=WorkerMetrics(registry))
    try:
        pool.check_all()
        # When two jobs name b and one names a
        for index, model in enumerate(["b", "b", "a"]):
            pool.txt2img(f"job{index}", asking(model, index))
    finally:
        pool.close()
    # Then one load of each is counted, under the server and the checkpoint
    assert _sample(registry, "sdpipe_sd_model_loads_total", backend=url, model="b") == 1
    assert _sample(registry, "sdpipe_sd_model_loads_total", backend=url, model="a") == 1
