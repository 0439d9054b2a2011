"""The one place that builds the Dramatiq broker from settings.

Redis mode: :class:`actors.redis_broker.PatientRedisBroker`, Dramatiq's
:class:`~dramatiq.brokers.redis.RedisBroker` whose enqueue waits out a Redis outage and wakes an
idle consumer (idle consumers block on a wake list instead of polling: see that module), and whose
heartbeat and maintenance are tuned so that the messages of a killed worker come back within about
a minute (heartbeat timeout ``BROKER_HEARTBEAT_TIMEOUT_MS``, default 20 s, plus a maintenance pass)
(the defaults can take many minutes: see docs/dramatiq.md, "Recovering a dead worker's messages").
Embedded mode: a :class:`~dramatiq.brokers.stub.StubBroker` served by in-process worker threads,
running the same actors.

The broker is built and set (``dramatiq.set_broker``) before any actor is declared, and actors are
declared against it explicitly, so nothing binds to an accidental default broker.
"""

from __future__ import annotations

import logging
import sys

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Middleware, Pipelines, Retries, TimeLimit

from pipeline.connections import RedisSettings, create_client
from pipeline.settings import Settings

__all__ = [
    "BROKER_NAMESPACE",
    "CLI_ENQUEUE_PATIENCE_S",
    "CONSUMER_POLL_MAX_MS",
    "DELAY_QUEUE_POLL_MAX_MS",
    "IDLE_POLL_FIRST_EXPONENT",
    "WAKE_TOKENS_MAX",
    "WAKE_WAIT_MAX_S",
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
#: Dramatiq's default 1,000 (0.1%) makes recovery a lottery of many minutes: only a dispatch on the
#: dead worker's queue can return its messages. At 5% (consumers polling about once a second) we
#: measured a 75 s tail; at 20% a pass follows the heartbeat expiry within seconds in a busy run.
#: An idle consumer's fetch after a wake wait that timed out (about once per ``WAKE_WAIT_MAX_S``)
#: always runs maintenance. Maintenance uses KEYS on the broker's namespace for each dead worker:
#: keep sdpipe on its own Redis database.
MAINTENANCE_CHANCE = 200_000


#: How long a worker keeps trying to enqueue (a retry, the next step of a pipeline) while Redis is
#: unreachable, in seconds. Dramatiq itself retries acks until Redis is back; without the same for
#: enqueues, a message sent during an outage is lost and its job stops midway.
WORKER_ENQUEUE_PATIENCE_S = 600.0
#: The same for a CLI: short, so a command against a dead Redis says so quickly.
CLI_ENQUEUE_PATIENCE_S = 5.0


#: Longest wait of an idle consumer on its queue's wake list (BLPOP), in seconds, before it fetches
#: anyway: an enqueue ends the wait at once, so this bounds only what comes back without an enqueue
#: (a dead worker's messages requeued by another process's maintenance), how long a stopping worker
#: waits for its consumers, and the idle cost: one fetch per second per queue per worker process
#: (polling every 100 ms cost 10, and was the largest part of worker CPU per 512² job). Shorter
#: (a quarter) under a heartbeat timeout below 4 s: each fetch refreshes the process's heartbeat.
WAKE_WAIT_MAX_S = 1.0
#: Most tokens a wake list holds (LTRIM at each enqueue). A token wakes one idle consumer, and there
#: is one per queue per worker process: more tokens than processes wake nobody more. The list is
#: emptied whenever a consumer finds its queue empty, so stale tokens cost at most an empty fetch.
WAKE_TOKENS_MAX = 64
#: Longest pause of a consumer at capacity (as many messages prefetched or running as it may hold),
#: in ms. It takes no wake token (another process may use it) and sends nothing to Redis: it checks
#: again for room after this pause (Dramatiq's backoff from 5 ms up to it).
CONSUMER_POLL_MAX_MS = 100
#: Longest pause of a delay-queue consumer (retries, requeues) between polls while it holds delayed
#: messages, in ms: its loop is what moves a message back to its queue when due, so it cannot block
#: on its wake list for a second. Their delays are 0.5 s or more, so this costs little latency.
#: Holding nothing, it waits on its wake list like any idle consumer.
DELAY_QUEUE_POLL_MAX_MS = 500
#: First pause of a consumer at capacity or holding delayed messages right after a message, as a
#: power of two of Dramatiq's 5 ms (jittered up to twice that): 2 = 20-40 ms. Dramatiq starts at
#: 5-10 ms, so each message was followed by four or five checks within 150 ms.
IDLE_POLL_FIRST_EXPONENT = 2


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
        # here: embedded mode never loads redis-py
        from actors.redis_broker import HoldEnqueues, PatientRedisBroker

        broker = PatientRedisBroker(
            enqueue_patience_s=enqueue_patience_s,
            client=create_client(redis_settings),
            wake_client=create_client(redis_settings, blocking_s=WAKE_WAIT_MAX_S),
            namespace=BROKER_NAMESPACE,
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=MAINTENANCE_CHANCE,
            # last: a step's continuation goes with its ack (see actors.redis_broker)
            middleware=[*step_middleware(), HoldEnqueues()],
        )
        logger.debug("broker: Redis at %s", redis_settings.url_masked)
    else:
        broker = StubBroker(middleware=step_middleware())
        logger.debug("broker: embedded (in-process)")
    dramatiq.set_broker(broker)
    return broker
