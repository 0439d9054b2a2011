"""``sdpipe worker``: Dramatiq's own worker processes, each loading sdpipe through :func:`setup`.

Each process reads the settings once (environment and ``.env``), builds the broker, opens its own
status-store connection and declares the actors. Dramatiq's CLI supplies what a production worker
needs: a process per core, graceful SIGTERM (running steps finish, prefetched messages go back),
exit codes, and logging from every process; :mod:`actors.supervisor` replaces a process that dies.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dramatiq import cli as dramatiq_cli

from actors.broker import WORKER_ENQUEUE_PATIENCE_S
from actors.runtime import WORKER_BEAT_S, Runtime, open_runtime
from actors.steps import QUEUES
from actors.supervisor import Supervisor
from actors.webhooks import SWEEP_EVERY_S
from pipeline.errors import ConfigError, PipelineError, StoreUnavailable
from pipeline.jobs.retention import remove_orphaned_work
from pipeline.settings import Settings, load_settings, mask_url

if TYPE_CHECKING:
    from actors.metrics import WorkerMetrics

__all__ = ["WORKER_SHUTDOWN_TIMEOUT_MS", "check_metrics_port", "die_with_parent", "run_workers", "setup"]

logger = logging.getLogger(__name__)

#: How long a stopping worker lets running steps finish before giving up on them.
WORKER_SHUTDOWN_TIMEOUT_MS = 600_000

_runtime: Runtime | None = None


def _return_freed_memory() -> None:
    """Tune glibc's allocator for image steps: huge buffers go back to the OS, ordinary ones are reused.

    Left alone, glibc raises its mmap threshold after the first large free, and a 4096² job's
    10-50 MB buffers then stay in the worker threads' arenas (peak RSS 8.4x the decoded image).
    Fixed thresholds fix that, but not too low: at 1 MB, every array of a 1024² image (3 MB) was a
    fresh mmap, page-faulted in on first touch and unmapped on free, and the heaps were trimmed
    after each job (trim threshold 128 KB once the mmap threshold is set), so a 1024² job's worker
    CPU was 1.8x the same image work in a plain loop (``python -m bench.t2_breakdown --size 1024``).
    With :data:`_MMAP_THRESHOLD_BYTES` and :data:`_TRIM_THRESHOLD_BYTES`: 1.3-1.4x, and a 4096² job's
    peak RSS 4.8x the decoded image, back to idle after (bench target 4).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        logger.debug("mallopt unavailable; leaving the allocator as it is")


#: glibc's ``mallopt`` parameter numbers for M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up are mmapped and returned to the OS when freed: a 2048² image's
#: 12 MB arrays and larger. Below it (up to a 1536² image's 7 MB), freed blocks are reused.
_MMAP_THRESHOLD_BYTES = 8 << 20
#: Free memory at the top of a thread's heap beyond this goes back to the OS: a few jobs' worth of
#: reusable blocks stay, so the next job of the same size does not page-fault them in again.
_TRIM_THRESHOLD_BYTES = 16 << 20


def die_with_parent() -> None:
    """Get SIGTERM (a graceful stop) when the ``sdpipe worker`` process that forked this one dies.

    Dramatiq's master stops its children when it is stopped, but a ``kill -9`` of the master left
    them running unsupervised: still taking jobs, and holding METRICS_PORT against the next
    ``sdpipe worker``. Linux's parent-death signal closes that gap; elsewhere nothing changes.
    """
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc
        logger.debug("prctl unavailable; this process will not follow its parent's death")
        return
    if parent is not None and not parent.is_alive():  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


#: Linux's ``prctl`` option number for PR_SET_PDEATHSIG.
_PR_SET_PDEATHSIG = 1


def setup() -> None:
    """Entry point Dramatiq calls in each worker process (``actors.worker:setup``)."""
    global _runtime
    die_with_parent()
    _return_freed_memory()
    settings = load_settings()
    metrics: WorkerMetrics | None = None
    if settings.metrics_port is not None:  # only then is anything of Prometheus imported
        from actors.metrics import worker_metrics

        metrics = worker_metrics()
    _runtime = open_runtime(
        settings, start_embedded_worker=False, enqueue_patience_s=WORKER_ENQUEUE_PATIENCE_S, pool_observer=metrics
    )
    if metrics is not None:
        from actors.metrics import install

        install(_runtime.broker, metrics)
    try:  # Redis restarted without persistence: folders of jobs no record names any more
        context = _runtime.context
        remove_orphaned_work(context.store, context.storage(), now=context.clock())
    except PipelineError as exc:
        logger.warning("could not look for orphaned work folders: %s", exc)
    pool = _runtime.context.pool
    for key, problem in pool.check_all().items():
        if problem is not None:  # benched, not fatal: the others take its jobs and a probe brings it back
            logger.warning("SD server %s is down (%s): benched until it answers", key, problem)
    pool.start()
    # The webhooks queue has threads of its own (never the image queues'): see actors.webhooks.
    _runtime.webhooks.start_worker()
    atexit.register(_runtime.webhooks.stop_worker)
    _start_beating(_runtime)
    logger.info("worker ready: Redis %s, SD %s", settings.redis_dsn_masked(), mask_url(settings.sd_api_url))


def _start_beating(runtime: Runtime) -> None:
    """Tell Redis this worker process is alive every ``WORKER_BEAT_S`` (what ``doctor`` and
    ``generate`` read), and that it stopped when it exits normally. Every ``SWEEP_EVERY_S`` it also
    offers to sweep for webhook deliveries whose message was lost (one process per round does)."""
    member = f"{socket.gethostname()}:{os.getpid()}"

    def beat_forever() -> None:
        next_sweep = time.monotonic() + WORKER_BEAT_S  # not at once: the deliveries of a restart settle first
        while True:
            try:
                runtime.worker_beat(member)
            except StoreUnavailable as exc:  # Dramatiq's consumers report the outage; retry next beat
                logger.debug("worker beat not recorded: %s", exc)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_EVERY_S
                try:
                    runtime.webhooks.sweep(member)
                except PipelineError as exc:
                    logger.warning("webhook sweep failed: %s", exc)
            time.sleep(WORKER_BEAT_S)

    def gone() -> None:
        with contextlib.suppress(StoreUnavailable):
            runtime.worker_beat(member, gone=True)

    threading.Thread(target=beat_forever, name="sdpipe-worker-beat", daemon=True).start()
    atexit.register(gone)


def _prepare_metrics_dir(port: int) -> Path:
    """Before forking: a fresh directory for this run's metrics, exported with the port to every child.

    Dramatiq's Prometheus middleware reads ``dramatiq_prom_db``/``dramatiq_prom_port`` and
    prometheus_client ``PROMETHEUS_MULTIPROC_DIR`` when imported, which only the children do (see
    :mod:`actors.metrics`). Fresh, because multiprocess counters sum every file in the directory:
    an earlier run's files would be counted again.
    """
    directory = Path(tempfile.mkdtemp(prefix="sdpipe-metrics-"))
    os.environ["dramatiq_prom_db"] = os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    os.environ["dramatiq_prom_port"] = str(port)
    return directory


def check_metrics_port(settings: Settings) -> None:
    """Refuse to start when METRICS_PORT is set and taken (e.g. by a worker left from an earlier run).

    Raises:
        ConfigError: the port cannot be bound.
    """
    port = settings.metrics_port
    if port is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the metrics server does
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise ConfigError(
                f"METRICS_PORT {port} is not free: {exc.strerror or exc}",
                field="METRICS_PORT",
                value=port,
            ) from exc


def run_workers(
    *,
    processes: int,
    threads: int,
    queues: Sequence[str] = QUEUES,
    verbose: bool = False,
    settings: Settings | None = None,
) -> int:
    """Run Dramatiq worker processes until stopped, replacing any that dies (:mod:`actors.supervisor`);
    returns Dramatiq's exit code, or :data:`~actors.supervisor.RET_CRASH_LOOP` after a crash loop.

    ``settings``: what the processes will read (default: loaded again, as each process does);
    with ``METRICS_PORT`` set, an extra process serves Prometheus metrics on that port.
    """
    settings = settings if settings is not None else load_settings()
    argv = [
        "actors.worker:setup",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(WORKER_SHUTDOWN_TIMEOUT_MS),
        "--queues",
        *queues,
    ]
    if verbose:
        argv.append("--verbose")
    args = dramatiq_cli.make_argument_parser().parse_args(argv)  # type: ignore[no-untyped-call]
    metrics_dir = _prepare_metrics_dir(settings.metrics_port) if settings.metrics_port is not None else None
    try:
        return Supervisor(args).run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
