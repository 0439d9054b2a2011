"""Prometheus metrics of ``sdpipe worker`` (imported only when ``METRICS_PORT`` is set).

Process model (Dramatiq's CLI master forks every process; prometheus_client's multiprocess mode):

- **master** (:func:`~actors.worker.run_workers`): makes a fresh directory for this run and
  exports it, with the port, as ``dramatiq_prom_db``, ``dramatiq_prom_port`` and
  ``PROMETHEUS_MULTIPROC_DIR`` before it forks. Both Dramatiq's middleware module and
  prometheus_client read them at import (the latter picks its value class, in memory or
  per-process files, then), so the master imports neither, nor this module.
- **each worker process** (:func:`~actors.worker.setup`): :func:`worker_metrics` creates sdpipe's
  metrics (the SD request histogram, benched and checkpoint-load counters, fed as the pool's
  :class:`~pipeline.sd.pool.pool.PoolObserver`; step retries, counted by :class:`RetryMetrics`) and
  :func:`install` adds Dramatiq's own :class:`~dramatiq.middleware.prometheus.Prometheus`
  middleware. Every value is written to this process's files in the shared directory.
- **one exposition process**: Dramatiq's CLI starts a process for each function a middleware lists
  in ``forks`` (the first worker to boot hands their ``module:name`` paths to the master through
  its "canteen"; the master forks them once every worker is up). :class:`_Exposition` lists
  :func:`serve_metrics` instead of Dramatiq's own server, which sums every process's files
  (``MultiProcessCollector``) and adds what is read at scrape time: ``sdpipe_jobs`` by state from
  the status store, and each SD server's health and slots from the pool state.

Jobs by state is a scrape-time collector, not a gauge the workers set: it is one number for the
whole Redis, not a per-process value, so N workers refreshing it would cost N times the Redis
calls, be stale by the refresh period, and need a merge rule (``mostrecent``) across processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import prometheus as dramatiq_prometheus

from actors.steps import JOB_FAILED_ACTOR
from pipeline.errors import PipelineError
from pipeline.models import JobState
from pipeline.sd.backends import parse_backends
from pipeline.sd.pool.pool import open_pool_state
from pipeline.sd.pool.state import BackendStatus
from pipeline.settings import load_settings
from pipeline.store import open_store

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = [
    "SD_SECONDS_BUCKETS",
    "RetryMetrics",
    "ScrapeCollector",
    "WorkerMetrics",
    "install",
    "serve_metrics",
    "worker_metrics",
]

logger = logging.getLogger(__name__)

#: Buckets of ``sdpipe_sd_request_seconds``: a 512² image takes 1-10 s on a GPU, minutes when queued.
SD_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
#: Environment variable prometheus_client reads at import for its multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _use_multiprocess_dir() -> str:
    """Point prometheus_client at Dramatiq's metrics directory before it is imported (what the
    Prometheus middleware does in ``after_process_boot``, done earlier so sdpipe's metrics, created
    in ``setup``, land in the same files)."""
    directory = str(dramatiq_prometheus.DB_PATH)
    os.environ[MULTIPROC_ENV] = directory
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None and values.ValueClass is values.MutexValue:
        # Imported before the variable was set (in memory): switch to per-process files for the
        # metrics created from now on, or nothing this process counts is exported.
        values.ValueClass = values.get_value_class()
    return directory


class WorkerMetrics:
    """sdpipe's metrics in one process; also the SD pool's observer.

    Args:
        registry: where to register them (a private one by default: in multiprocess mode the values
            go to files whatever the registry; tests read this one).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        import prometheus_client as prom

        registry = registry if registry is not None else prom.CollectorRegistry()
        self.registry = registry
        self.sd_request_seconds = prom.Histogram(
            "sdpipe_sd_request_seconds",
            "Duration of txt2img calls per SD server; outcome ok, failed (transient) or rejected (permanent).",
            ["backend", "outcome"],
            buckets=SD_SECONDS_BUCKETS,
            registry=registry,
        )
        self.sd_benched = prom.Counter(
            "sdpipe_sd_benched", "Times an SD server was benched for a cool-down.", ["backend"], registry=registry
        )
        self.sd_model_loads = prom.Counter(
            "sdpipe_sd_model_loads",
            "Checkpoint loads per SD server and checkpoint: the pool's switches, and changes seen in answers.",
            ["backend", "model"],
            registry=registry,
        )
        self.step_retries = prom.Counter(
            "sdpipe_step_retries",
            "Step deliveries that failed and go back to the queue for a retry (not the last, exhausted one).",
            ["step"],
            registry=registry,
        )

    def sd_call(self, backend: str, elapsed_s: float, outcome: str) -> None:
        self.sd_request_seconds.labels(backend, outcome).observe(elapsed_s)

    def benched(self, backend: str) -> None:
        self.sd_benched.labels(backend).inc()

    def model_loaded(self, backend: str, model: str) -> None:
        self.sd_model_loads.labels(backend, model).inc()

    def step_retry(self, step: str) -> None:
        self.step_retries.labels(step).inc()


def worker_metrics() -> WorkerMetrics:
    """In a worker process, before its runtime opens: sdpipe's metrics, in the multiprocess files."""
    _use_multiprocess_dir()
    return WorkerMetrics()


class RetryMetrics(dramatiq.Middleware):
    """Counts the step deliveries Dramatiq's ``Retries`` middleware will deliver again.

    The same rule as ``Retries``: an exception not in the actor's ``throws`` is retried while fewer
    than ``max_retries`` retries happened. Hooks run in reverse order of addition, so this one
    (added after the broker's defaults) sees the message before ``Retries`` counts the retry.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def after_process_message(
        self, broker: dramatiq.Broker, message: MessageProxy, *, result: Any = None, exception: Any = None
    ) -> None:
        name = message.actor_name
        if exception is None or not name.startswith("sdpipe_") or name == JOB_FAILED_ACTOR:
            return
        actor = broker.get_actor(name)
        throws = message.options.get("throws") or actor.options.get("throws")
        if throws and isinstance(exception, throws):
            return
        max_retries = message.options.get("max_retries", actor.options.get("max_retries"))
        if max_retries is None or int(message.options.get("retries", 0)) < int(max_retries):
            self.metrics.step_retry(name.removeprefix("sdpipe_"))


class _Exposition(dramatiq_prometheus.Prometheus):
    """Dramatiq's Prometheus middleware, its metrics unchanged, served by :func:`serve_metrics`."""

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_metrics]


def install(broker: dramatiq.Broker, metrics: WorkerMetrics) -> None:
    """Add Dramatiq's metrics and sdpipe's retry counting to a worker process's broker."""
    broker.add_middleware(_Exposition())
    broker.add_middleware(RetryMetrics(metrics))


class ScrapeCollector:
    """What is read at scrape time: jobs per state, and each SD server's health and slots in use.

    Args:
        count_by_state: the status store's counts (raises PipelineError when unreachable).
        pool_status: the pool state of each configured server.
    """

    def __init__(
        self,
        count_by_state: Callable[[], dict[JobState, int]],
        pool_status: Callable[[], Iterable[BackendStatus]],
    ) -> None:
        self._count_by_state = count_by_state
        self._pool_status = pool_status

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: collecting would touch Redis

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            counts = self._count_by_state()
            statuses = list(self._pool_status())
        except PipelineError as exc:  # an outage: leave the values out (unknown) rather than fail the scrape
            logger.warning("metrics: cannot read the status store or pool state: %s", exc.message)
            return
        jobs = GaugeMetricFamily("sdpipe_jobs", "Jobs in each state (status store, at scrape time).", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state.value], count)
        yield jobs
        healthy = GaugeMetricFamily(
            "sdpipe_sd_backend_healthy", "1 if the SD server is in the pool, 0 while benched.", labels=["backend"]
        )
        in_use = GaugeMetricFamily("sdpipe_sd_slots_in_use", "Slots of the SD server in use.", labels=["backend"])
        slots = GaugeMetricFamily("sdpipe_sd_slots", "Slots of the SD server (;max=N).", labels=["backend"])
        for status in statuses:
            healthy.add_metric([status.key], 1 if status.healthy else 0)
            in_use.add_metric([status.key], status.in_use)
            slots.add_metric([status.key], status.max_slots)
        yield from (healthy, in_use, slots)


def serve_metrics() -> int:
    """The exposition process (a Dramatiq fork function): serve ``/metrics`` until stopped.

    Returns an exit code: 1 when the port cannot be bound, after asking ``sdpipe worker`` to stop:
    running without the metrics that were asked for would go unnoticed (or, with a stale process
    on the port, serve another worker's figures).
    """
    from actors.worker import die_with_parent

    die_with_parent()
    directory = _use_multiprocess_dir()
    from prometheus_client import CollectorRegistry, MetricsHandler
    from prometheus_client.multiprocess import MultiProcessCollector

    settings = load_settings()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    host, port = str(dramatiq_prometheus.HTTP_HOST), settings.metrics_port or int(dramatiq_prometheus.HTTP_PORT)
    try:
        server = ThreadingHTTPServer((host, port), MetricsHandler.factory(registry))
    except OSError as exc:
        logger.error("cannot serve metrics on %s:%d: %s (is METRICS_PORT in use?); stopping", host, port, exc)
        master = multiprocessing.parent_process()  # Dramatiq's (not a forkserver's): it stops the workers
        os.kill(master.pid if master is not None and master.pid else os.getppid(), signal.SIGTERM)
        return 1
    store = open_store(settings, create=False)
    pool_state = open_pool_state(settings)
    backends = parse_backends(settings.sd_api_url)
    registry.register(ScrapeCollector(store.count_by_state, lambda: pool_state.status(backends)))
    logger.info("metrics on http://%s:%d/metrics", host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        pool_state.close()
        store.close()
    return 0
