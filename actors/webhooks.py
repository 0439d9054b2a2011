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

:class:`WebhookOutbox` is a process's side of that queue. Embedded, the queue is the process's
memory, so the outbox remembers what it sent: :meth:`WebhookOutbox.settle` waits for those
deliveries before the command exits (``WEBHOOK_EXIT_WAIT_S``), and what a process could not finish
is resent from its records (:mod:`pipeline.webhooks.recovery`) by the next embedded runtime that
opens alone, or by ``sdpipe webhooks retry``. In Redis mode worker processes :meth:`~WebhookOutbox.sweep`
for deliveries whose first message was never enqueued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import httpx

from pipeline.settings import Settings
from pipeline.webhooks.deliveries import Deliveries, Delivery
from pipeline.webhooks.recovery import Resent, resend_pending
from pipeline.webhooks.sending import attempt_delivery

__all__ = ["WEBHOOKS_QUEUE", "WEBHOOK_ACTOR", "WebhookOutbox", "declare_webhook_actor", "start_webhook_worker"]

logger = logging.getLogger(__name__)

#: The queue of webhook deliveries.
WEBHOOKS_QUEUE = "webhooks"
WEBHOOK_ACTOR = "sdpipe_webhook"
#: How often an idle webhook thread looks for a message, in ms.
_WORKER_TIMEOUT_MS = 200
#: :meth:`WebhookOutbox.settle`: how often it looks at its deliveries, and after how long it says it waits.
_SETTLE_POLL_S = 0.1
_SETTLE_NOTE_AFTER_S = 0.5
#: Redis mode: how often one worker process (whichever claims ``_SWEEP_KEY`` first) sweeps for stale deliveries.
SWEEP_EVERY_S = 60.0
_SWEEP_KEY = "wh-sweep"


def declare_webhook_actor(
    broker: dramatiq.Broker, settings: Settings, deliveries: Deliveries
) -> dramatiq.Actor[Any, Any]:
    """Declare the webhook actor on ``broker``; it posts with one shared HTTP client, built at the first
    delivery (its TLS context reads the CA bundle, ~20 ms of CPU a command that only enqueues need not pay)."""
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def client() -> httpx.Client:
        with lock:
            if not clients:
                clients.append(httpx.Client(timeout=httpx.Timeout(settings.webhook_timeout_s), follow_redirects=False))
            return clients[0]

    def deliver(delivery_id: str) -> None:
        again_in_s = attempt_delivery(deliveries, delivery_id, settings=settings, client=client())
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


class _SecondWorkerNotice(logging.Filter):
    """Drops Dramatiq's warning that a broker gets a second worker's middleware ("You're adding a
    middleware of the same type twice"): each worker's middleware only starts consumers for the
    queues that worker was given, so the image workers and this one never consume each other's."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg.startswith("You're adding a middleware") and args and _is_worker_middleware(args[0]))


def _is_worker_middleware(middleware: object) -> bool:
    return type(middleware).__name__ == "_WorkerMiddleware" and type(middleware).__module__ == "dramatiq.worker"


def start_webhook_worker(broker: dramatiq.Broker, settings: Settings) -> dramatiq.Worker:
    """A Dramatiq worker for the ``webhooks`` queue only, with ``WEBHOOK_THREADS`` threads of its own
    (beside the image queues' worker of the process, on the same broker)."""
    worker = dramatiq.Worker(
        broker,
        queues={WEBHOOKS_QUEUE},
        worker_threads=settings.webhook_threads,
        worker_timeout=_WORKER_TIMEOUT_MS,
    )
    # Kept on the broker's logger: a Redis-mode process's image queues' worker starts after this one.
    if not any(isinstance(f, _SecondWorkerNotice) for f in broker.logger.filters):
        broker.logger.addFilter(_SecondWorkerNotice())
    worker.start()  # adds the worker's middleware to the broker
    logger.debug("webhook worker started (%d threads)", settings.webhook_threads)
    return worker


class WebhookOutbox:
    """This process's side of the ``webhooks`` queue: sends deliveries to the actor, runs the queue's worker
    where the process has one, and (embedded) remembers what it sent so it can wait for it."""

    def __init__(self, broker: dramatiq.Broker, settings: Settings, deliveries: Deliveries) -> None:
        self.broker = broker
        self.settings = settings
        self.deliveries = deliveries
        self.actor = declare_webhook_actor(broker, settings, deliveries)
        self.worker: dramatiq.Worker | None = None
        self._sent: set[str] = set()
        self._lock = threading.Lock()

    @property
    def embedded(self) -> bool:
        return not self.settings.redis_mode

    def send(self, delivery_id: str, delay_s: float = 0.0) -> None:
        """Queue an attempt of ``delivery_id`` in ``delay_s``. Embedded, the queue's worker starts with the
        first send (a command that runs no jobs, such as ``cancel``, still delivers what it announces)."""
        if self.embedded:
            with self._lock:
                self._sent.add(delivery_id)
            self.start_worker()
        delay_ms = int(delay_s * 1000)
        self.actor.send_with_options(args=(delivery_id,), delay=delay_ms if delay_ms > 0 else None)

    def start_worker(self) -> None:
        """Start this process's worker of the ``webhooks`` queue, once."""
        with self._lock:
            if self.worker is None:
                self.worker = start_webhook_worker(self.broker, self.settings)

    def stop_worker(self) -> None:
        """Stop it: an attempt under way finishes (up to ``WEBHOOK_TIMEOUT_S``); embedded, queued ones are dropped
        (their records stay pending and are resent later, see :mod:`pipeline.webhooks.recovery`)."""
        with self._lock:
            worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop(timeout=int(self.settings.webhook_timeout_s * 1000) + 1000)

    def resend(self, *, now_too: bool = False, stale_after_s: float | None = None) -> Resent:
        """Send every pending delivery again (see :func:`~pipeline.webhooks.recovery.resend_pending`)."""
        resent = resend_pending(
            self.deliveries,
            send=self.send,
            now=time.time(),
            window_s=self.settings.webhook_retry_window_s,
            stale_after_s=stale_after_s,
            now_too=now_too,
        )
        if resent.sent or resent.given_up:
            logger.info("webhooks found pending: %d sent again, %d given up", len(resent.sent), resent.given_up)
        return resent

    def sweep(self, owner: str) -> Resent | None:
        """Redis mode: resend deliveries whose message was lost, if this process claims this round's sweep
        (one worker process per ``SWEEP_EVERY_S``); None when another one has it."""
        if self.deliveries.kv.put_if_absent(_SWEEP_KEY, owner, ttl_s=SWEEP_EVERY_S) is not None:
            return None
        return self.resend(stale_after_s=self.settings.webhook_stale_after_s)

    def pending(self) -> list[Delivery]:
        """The deliveries this process sent that are still pending (embedded; Redis mode: none are its own)."""
        with self._lock:
            sent = sorted(self._sent)
        found = [delivery for delivery in map(self.deliveries.get, sent) if delivery is not None]
        pending = [delivery for delivery in found if delivery.state == "pending"]
        with self._lock:
            self._sent -= set(sent) - {delivery.id for delivery in pending}
        return pending

    def settle(self, limit_s: float, *, on_wait: Callable[[int], None] | None = None) -> int:
        """Wait up to ``limit_s`` for the deliveries this process sent to be delivered or given up; return
        how many are still pending. ``on_wait(count)`` is called once, if it has to wait at all (beyond a
        moment). It stops early when none of them is due to be tried again before ``limit_s`` is up."""
        started = time.monotonic()
        deadline = time.time() + limit_s
        told = False
        while True:
            pending = self.pending()
            if not pending or time.time() >= deadline:
                return len(pending)
            if all(delivery.next_try_at is not None and delivery.next_try_at > deadline for delivery in pending):
                return len(pending)  # every next try is after the limit: waiting changes nothing
            if on_wait is not None and not told and time.monotonic() - started >= _SETTLE_NOTE_AFTER_S:
                on_wait(len(pending))
                told = True
            time.sleep(_SETTLE_POLL_S)
