"""How many messages wait in each Dramatiq queue (the dashboard's and ``GET /api/overview``'s queue depth).

Redis mode reads Dramatiq's own keys (``<namespace>:<queue>`` is the list of waiting message ids,
``<queue>.DQ`` the delay queue of retries, ``<queue>.msgs`` every unacknowledged message, so its
size less the waiting ones is what workers hold now). Embedded mode reads the in-process queues.
"""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name

from pipeline.errors import StoreUnavailable

__all__ = ["QueueDepth", "queue_depths"]


@dataclass(frozen=True)
class QueueDepth:
    """One queue: messages waiting for a worker, retries waiting for their time, and messages a
    worker holds (prefetched or running; None where the broker does not say)."""

    queue: str
    waiting: int
    delayed: int
    held: int | None


def queue_depths(broker: dramatiq.Broker) -> list[QueueDepth]:
    """Every declared queue of ``broker`` (delay queues folded into their queue), by name.

    Raises:
        StoreUnavailable: Redis does not answer.
    """
    names = sorted(name for name in broker.get_declared_queues() if not name.endswith(".DQ"))
    if isinstance(broker, RedisBroker):
        client = broker.client
        prefix = broker.namespace
        try:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.llen(f"{prefix}:{name}")
                pipe.llen(f"{prefix}:{dq_name(name)}")
                pipe.hlen(f"{prefix}:{name}.msgs")
            counts = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot read the queues on Redis: {exc}", field="REDIS_URL") from exc
        depths = []
        for index, name in enumerate(names):
            waiting, delayed, unacked = (int(value) for value in counts[3 * index : 3 * index + 3])
            depths.append(QueueDepth(queue=name, waiting=waiting, delayed=delayed, held=max(0, unacked - waiting)))
        return depths
    if isinstance(broker, StubBroker):
        return [
            QueueDepth(
                queue=name,
                waiting=broker.queues[name].qsize(),
                delayed=broker.queues[dq_name(name)].qsize() if dq_name(name) in broker.queues else 0,
                held=None,
            )
            for name in names
        ]
    return [QueueDepth(queue=name, waiting=0, delayed=0, held=None) for name in names]
