"""The one place that builds the Dramatiq broker from settings.

Redis mode: a :class:`~dramatiq.brokers.redis.RedisBroker` whose heartbeat and maintenance are tuned
so that the messages of a killed worker come back within about a minute (the defaults can take many
minutes: see ``dramatiq-notes.md`` §2). Embedded mode: a :class:`~dramatiq.brokers.stub.StubBroker`
served by in-process worker threads, running the same actors.

The broker is built and set (``dramatiq.set_broker``) before any actor is declared, and actors are
declared against it explicitly, so nothing binds to an accidental default broker.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from pipeline.errors import ConfigError
from pipeline.settings import Settings

__all__ = [
    "BROKER_NAMESPACE",
    "HEARTBEAT_TIMEOUT_MS",
    "MAINTENANCE_CHANCE",
    "build_broker",
]

logger = logging.getLogger(__name__)

#: Redis key prefix of Dramatiq's queues (the status store uses ``sdpipe:``).
BROKER_NAMESPACE = "sdpipe-dramatiq"
#: A worker process whose heartbeat is older than this is dead and its unacked messages are
#: requeued. Heartbeats are refreshed by every dispatch call (about once a second per queue even
#: when busy), so 20 s is far above any pause while a third of Dramatiq's 60 s default.
HEARTBEAT_TIMEOUT_MS = 20_000
#: Chance per million that a dispatch call runs maintenance (requeueing dead workers' messages).
#: Dramatiq's default 1,000 (0.1%) makes recovery a lottery of many minutes; at 50,000 (5%) and
#: about 2 calls per second per queue per process, maintenance runs within seconds of the heartbeat
#: expiring. Maintenance uses KEYS on the broker's namespace: keep sdpipe on its own Redis database.
MAINTENANCE_CHANCE = 50_000


def build_broker(settings: Settings) -> dramatiq.Broker:
    """Build the broker for ``settings`` (Redis mode or embedded) and make it the global one."""
    broker: dramatiq.Broker
    if settings.redis_mode:
        try:
            broker = RedisBroker(  # type: ignore[no-untyped-call]
                url=settings.redis_dsn(),
                namespace=BROKER_NAMESPACE,
                heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
                maintenance_chance=MAINTENANCE_CHANCE,
                socket_connect_timeout=5,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(
                f"invalid Redis URL {settings.redis_dsn_masked()}: {exc}", hint="check REDIS_URL"
            ) from exc
        logger.debug("broker: Redis at %s", settings.redis_dsn_masked())
    else:
        broker = StubBroker()
        logger.debug("broker: embedded (in-process)")
    broker.add_middleware(CurrentMessage())
    dramatiq.set_broker(broker)
    return broker
