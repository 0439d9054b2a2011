"""The webhook actor: queue ``webhooks``, threads of its own, at-least-once.

Each message carries a delivery id (its ``webhook-id``). The actor makes one attempt
(:func:`pipeline.webhooks.sending.attempt_delivery`) and, when the rule says "again in N s", sends
itself again with that delay: the pause between attempts is the retry policy's, not Dramatiq's.
A worker killed during an attempt leaves the message unacknowledged, so it comes back and the
same delivery (same id, same body) is tried again: receivers dedupe on the id.

The queue is consumed by a Dramatiq ``Worker`` of its own in every worker process
(:func:`start_webhook_worker`, ``WEBHOOK_THREADS`` threads), never by the threads of the image
queues: a receiver that hangs until its timeout holds webhook threads only, so it cannot delay
any image work.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import httpx

from pipeline.settings import Settings
from pipeline.webhooks.deliveries import Deliveries
from pipeline.webhooks.sending import attempt_delivery

__all__ = ["WEBHOOKS_QUEUE", "WEBHOOK_ACTOR", "declare_webhook_actor", "start_webhook_worker"]

logger = logging.getLogger(__name__)

#: The queue of webhook deliveries.
WEBHOOKS_QUEUE = "webhooks"
WEBHOOK_ACTOR = "sdpipe_webhook"
#: How often an idle webhook thread looks for a message, in ms.
_WORKER_TIMEOUT_MS = 200


def declare_webhook_actor(
    broker: dramatiq.Broker, settings: Settings, deliveries: Deliveries
) -> dramatiq.Actor[Any, Any]:
    """Declare the webhook actor on ``broker``; it posts with one shared HTTP client."""
    timeout = httpx.Timeout(settings.webhook_timeout_s)
    client = httpx.Client(timeout=timeout, follow_redirects=False)

    def deliver(delivery_id: str) -> None:
        again_in_s = attempt_delivery(deliveries, delivery_id, settings=settings, client=client)
        if again_in_s is not None:
            actor.send_with_options(args=(delivery_id,), delay=max(int(again_in_s * 1000), 1))

    actor: dramatiq.Actor[Any, Any] = dramatiq.actor(
        broker=broker,
        actor_name=WEBHOOK_ACTOR,
        queue_name=WEBHOOKS_QUEUE,
        # An attempt itself never raises for what a receiver does; these retries are for our own
        # outages (the store unreachable), with Dramatiq's backoff.
        max_retries=20,
        min_backoff=1000,
        max_backoff=60_000,
        time_limit=int((settings.webhook_timeout_s + 60) * 1000),
    )(deliver)
    return actor


def start_webhook_worker(broker: dramatiq.Broker, settings: Settings) -> dramatiq.Worker:
    """A Dramatiq worker for the ``webhooks`` queue only, with ``WEBHOOK_THREADS`` threads of its own."""
    worker = dramatiq.Worker(
        broker,
        queues={WEBHOOKS_QUEUE},
        worker_threads=settings.webhook_threads,
        worker_timeout=_WORKER_TIMEOUT_MS,
    )
    worker.start()
    logger.debug("webhook worker started (%d threads)", settings.webhook_threads)
    return worker
