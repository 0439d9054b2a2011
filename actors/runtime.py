"""Broker + status store + actors, opened together, for the CLI and the worker processes.

Embedded mode (no Redis configured) also starts in-process worker threads on the
:class:`~dramatiq.brokers.stub.StubBroker`, so ``sdpipe generate`` works with nothing else running:
the same actors, the same middleware (retries, time limits, pipelines), the same code paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import dramatiq
import redis

from actors.broker import BROKER_NAMESPACE, HEARTBEAT_TIMEOUT_MS, build_broker
from actors.steps import StepActors, declare_actors
from pipeline.errors import StoreUnavailable
from pipeline.models import JobSpec
from pipeline.settings import Settings, mask_url
from pipeline.steps import StepContext
from pipeline.store import StatusStore, open_store

__all__ = ["EMBEDDED_WORKER_TIMEOUT_MS", "Runtime", "open_runtime"]

logger = logging.getLogger(__name__)

#: How long an idle embedded worker thread waits for a message before checking again.
EMBEDDED_WORKER_TIMEOUT_MS = 100


@dataclass
class Runtime:
    """An open broker, status store and set of actors (and, embedded, the worker running them)."""

    settings: Settings
    broker: dramatiq.Broker
    store: StatusStore
    context: StepContext
    actors: StepActors
    worker: dramatiq.Worker | None = field(default=None)

    @property
    def embedded(self) -> bool:
        return not self.settings.redis_mode

    def submit(self, specs: Sequence[JobSpec]) -> None:
        """Record ``specs`` in the status store, then enqueue their pipelines.

        Raises:
            StoreUnavailable: Redis cannot be reached (nothing was enqueued).
        """
        self.store.create_jobs(specs)
        try:
            self.actors.enqueue(specs)
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"cannot enqueue on Redis at {mask_url(self.settings.redis_dsn())}: {exc}",
                hint="is redis-server running? check REDIS_URL",
            ) from exc
        logger.info("enqueued %d job(s)", len(specs))

    def live_workers(self) -> int:
        """How many worker processes sent a heartbeat to Redis lately (embedded: the in-process one)."""
        if self.embedded:
            return 1 if self.worker is not None else 0
        client = self.broker.client  # type: ignore[attr-defined]
        since_ms = int(time.time() * 1000) - HEARTBEAT_TIMEOUT_MS
        try:
            alive = client.zrangebyscore(f"{BROKER_NAMESPACE}:__heartbeats__", since_ms, "+inf")
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {mask_url(self.settings.redis_dsn())}: {exc}",
                hint="is redis-server running? check REDIS_URL",
            ) from exc
        # This process's own broker heartbeats too when it enqueues: do not count it.
        own = self.broker.broker_id.encode()  # type: ignore[attr-defined]
        return sum(1 for broker_id in alive if broker_id != own)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.broker.close()
        self.context.close()
        self.store.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_runtime(settings: Settings, *, start_embedded_worker: bool = True) -> Runtime:
    """Open everything for ``settings``; in embedded mode also start the in-process workers.

    Raises:
        StoreUnavailable: Redis mode and Redis cannot be reached.
    """
    broker = build_broker(settings)
    store = open_store(settings)
    try:
        store.ping()
        context = StepContext(settings=settings, store=store)
        actors = declare_actors(broker, context)
    except BaseException:
        store.close()
        broker.close()
        raise
    runtime = Runtime(settings=settings, broker=broker, store=store, context=context, actors=actors)
    if runtime.embedded and start_embedded_worker:
        broker.emit_after("process_boot")
        worker = dramatiq.Worker(
            broker, worker_threads=settings.worker_threads, worker_timeout=EMBEDDED_WORKER_TIMEOUT_MS
        )
        worker.start()
        runtime.worker = worker
    return runtime
