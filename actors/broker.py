"""The one place that builds the Dramatiq broker from settings.

Redis mode: a :class:`~dramatiq.brokers.redis.RedisBroker` whose heartbeat and maintenance are tuned
so that the messages of a killed worker come back within about a minute (heartbeat timeout
``BROKER_HEARTBEAT_TIMEOUT_MS``, default 20 s, plus a maintenance pass) (the defaults can take many
minutes: see docs/dramatiq.md, "Recovering a dead worker's messages"). Embedded mode: a
:class:`~dramatiq.brokers.stub.StubBroker` served by in-process worker threads, running the same actors.

The broker is built and set (``dramatiq.set_broker``) before any actor is declared, and actors are
declared against it explicitly, so nothing binds to an accidental default broker.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.middleware import CurrentMessage, Middleware, Pipelines, Retries, TimeLimit

from pipeline.connections import RedisSettings, create_client, outage_retry
from pipeline.settings import Settings

__all__ = [
    "BROKER_NAMESPACE",
    "CLI_ENQUEUE_PATIENCE_S",
    "CONSUMER_POLL_MAX_MS",
    "DELAY_QUEUE_POLL_MAX_MS",
    "IDLE_POLL_FIRST_EXPONENT",
    "WORKER_ENQUEUE_PATIENCE_S",
    "MAINTENANCE_CHANCE",
    "build_broker",
    "step_middleware",
    "redis_errors",
]

logger = logging.getLogger(__name__)

#: Redis key prefix of Dramatiq's queues (the status store uses ``sdpipe:``).
BROKER_NAMESPACE = "sdpipe-dramatiq"
#: Chance per million that a dispatch call runs maintenance (requeueing dead workers' messages).
#: Dramatiq's default 1,000 (0.1%) makes recovery a lottery of many minutes. An idle consumer
#: polls its queue about once a second, and only a dispatch on the dead worker's queue can return
#: its messages: at 5% we measured a 75 s tail; at 20% a pass follows the heartbeat expiry within
#: seconds. Maintenance uses KEYS on the broker's namespace: keep sdpipe on its own Redis database.
MAINTENANCE_CHANCE = 200_000


#: How long a worker keeps trying to enqueue (a retry, the next step of a pipeline) while Redis is
#: unreachable, in seconds. Dramatiq itself retries acks until Redis is back; without the same for
#: enqueues, a message sent during an outage is lost and its job stops midway.
WORKER_ENQUEUE_PATIENCE_S = 600.0
#: The same for a CLI: short, so a command against a dead Redis says so quickly.
CLI_ENQUEUE_PATIENCE_S = 5.0


#: Longest pause between two polls of an empty queue, in ms. Dramatiq backs off up to its worker
#: timeout (1 s), so a job sent to idle workers, or the next step of a job after a quiet moment,
#: waited up to a second: measured, a 60-job run on 3 SD servers started 0.45 s late. Idle cost:
#: about 10 Redis calls per second per queue per worker process.
CONSUMER_POLL_MAX_MS = 100
#: The same for delay queues (retries, requeues): their messages are due 0.5 s or more after they
#: are sent, so a slower pace costs little latency and saves Redis calls during every run.
DELAY_QUEUE_POLL_MAX_MS = 500
#: First pause after a queue is found empty right after a message, as a power of two of Dramatiq's
#: 5 ms (jittered up to twice that): 2 = 20-40 ms. Dramatiq starts at 5-10 ms, so each message of a
#: busy run was followed by four or five polls of an empty queue within 150 ms (about 6 polls per
#: job in target 2, each a Lua call); a step's message now waits at most 40 ms longer for a consumer.
IDLE_POLL_FIRST_EXPONENT = 2


@functools.cache
def _patient_redis_broker() -> Any:
    """The Redis broker class, defined on first use: embedded mode never loads redis-py (start-up)."""
    from dramatiq.brokers.redis import RedisBroker, _RedisConsumer

    class _SteadyConsumer(_RedisConsumer):
        """Dramatiq's consumer, whose polls of an empty queue start at 20-40 ms, not 5-10 ms, after a
        message (:data:`IDLE_POLL_FIRST_EXPONENT`)."""

        def __next__(self) -> dramatiq.MessageProxy | None:
            message: dramatiq.MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
            if message is not None:
                self.misses = max(self.misses, IDLE_POLL_FIRST_EXPONENT)
            return message

    class _PatientRedisBroker(RedisBroker):
        """A RedisBroker whose enqueue waits out a Redis outage instead of dropping the message, and
        whose idle consumers poll at least every ``CONSUMER_POLL_MAX_MS``."""

        def __init__(self, *, enqueue_patience_s: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]
            self.enqueue_patience_s = enqueue_patience_s
            self._enqueue_retry = outage_retry(enqueue_patience_s)

        @property
        def consumer_class(self) -> type[_RedisConsumer]:
            return _SteadyConsumer

        def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> dramatiq.Consumer:
            idle_poll_ms = DELAY_QUEUE_POLL_MAX_MS if queue_name == dq_name(queue_name) else CONSUMER_POLL_MAX_MS
            return super().consume(queue_name, prefetch, min(timeout, idle_poll_ms))

        def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
            # The Retry's count bounds the attempts by their pauses; the deadline also bounds them when
            # each attempt is slow (a server that drops packets costs a connect timeout per attempt).
            deadline = time.monotonic() + self.enqueue_patience_s
            retries = self._enqueue_retry.get_retries()
            failures = 0

            def failed(exc: Exception) -> None:
                nonlocal failures
                failures += 1
                if failures > retries:
                    return  # the Retry raises exc itself
                if time.monotonic() >= deadline:
                    raise exc
                logger.warning(
                    "cannot enqueue %s of message %s (%s); retry %d of %d",
                    message.actor_name,
                    message.message_id,
                    exc,
                    failures,
                    retries,
                )

            return self._enqueue_retry.call_with_retry(
                lambda: super(_PatientRedisBroker, self).enqueue(message, delay=delay), failed
            )

    return _PatientRedisBroker


def step_middleware() -> list[Middleware]:
    """The middleware sdpipe's actors use, in Dramatiq's default order: time limits, pipelines
    (a job's steps), retries (with ``on_retry_exhausted``), and the current message.

    Dramatiq's defaults also install AgeLimit (``max_age``), ShutdownNotifications
    (``notify_shutdown``) and Callbacks (``on_success``/``on_failure``), which no sdpipe actor
    uses; each is called before and after every message (four hooks each per step message).
    """
    return [TimeLimit(), Pipelines(), Retries(), CurrentMessage()]


def redis_errors() -> tuple[type[Exception], ...]:
    """redis-py's error base for an ``except`` clause, once redis-py is loaded (nothing else raises it)."""
    module = sys.modules.get("redis")
    return (module.RedisError,) if module is not None else ()


def build_broker(settings: Settings, *, enqueue_patience_s: float = WORKER_ENQUEUE_PATIENCE_S) -> dramatiq.Broker:
    """Build the broker for ``settings`` (Redis mode or embedded) and make it the global one.

    ``enqueue_patience_s`` is how long an enqueue waits out a Redis outage before raising. The Redis
    client comes from :func:`pipeline.connections.create_client`, with every connection option of
    the settings (Dramatiq's own URL handling would drop them).

    Raises:
        ConfigError: REDIS_URL is not a Redis URL.
    """
    broker: dramatiq.Broker
    if settings.redis_mode:
        redis_settings = RedisSettings.from_settings(settings)
        broker = _patient_redis_broker()(
            enqueue_patience_s=enqueue_patience_s,
            client=create_client(redis_settings),
            namespace=BROKER_NAMESPACE,
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=MAINTENANCE_CHANCE,
            middleware=step_middleware(),
        )
        logger.debug("broker: Redis at %s", redis_settings.url_masked)
    else:
        broker = StubBroker(middleware=step_middleware())
        logger.debug("broker: embedded (in-process)")
    dramatiq.set_broker(broker)
    return broker
