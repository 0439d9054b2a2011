"""One attempt of a webhook delivery, and what follows it (:func:`attempt_delivery`, the actor's body).

An attempt POSTs the delivery's fixed body, signed for this attempt's time, with ``WEBHOOK_TIMEOUT_S``;
redirects are not followed. The outcome (status, error, next try) is saved in the delivery before
the caller schedules the next attempt, so ``sdpipe status`` shows it. The secret never leaves the
signature: not in a log line, a record or an error.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import httpx

from pipeline.settings import Settings
from pipeline.webhooks.deliveries import Deliveries, Delivery
from pipeline.webhooks.policy import RetryPolicy, parse_retry_after
from pipeline.webhooks.signing import sign_headers
from pipeline.webhooks.urls import shown_url

__all__ = ["EARLY_TOLERANCE_S", "ORDER_WAIT_S", "Attempt", "attempt_delivery", "post", "retry_policy"]

logger = logging.getLogger(__name__)

#: How long a delivery waiting for an earlier one of the same job looks again.
ORDER_WAIT_S = 1.0
#: A message this much earlier than its delivery's next try waits for it (clocks of two hosts may differ a bit).
EARLY_TOLERANCE_S = 0.5
#: Characters of a receiver's answer kept (``sdpipe webhooks test`` shows them).
_BODY_KEPT = 500


@dataclass(frozen=True)
class Attempt:
    """What a receiver did with one attempt: its status (None: no answer), the error, its Retry-After."""

    status: int | None
    error: str | None = None
    retry_after: str | None = None
    body: str = ""
    elapsed_s: float = 0.0


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        min_s=settings.webhook_retry_min_s,
        max_s=settings.webhook_retry_max_s,
        window_s=settings.webhook_retry_window_s,
    )


def post(client: httpx.Client, url: str, msg_id: str, body: str, *, secret: str, now: float) -> Attempt:
    """POST ``body`` to ``url`` signed as ``msg_id`` at ``now``; a timeout or connection error is status None."""
    headers = {**sign_headers(secret, msg_id, now, body), "user-agent": "sdpipe-webhooks"}
    started = time.perf_counter()
    try:
        response = client.post(url, content=body.encode(), headers=headers, follow_redirects=False)
    except httpx.TimeoutException:
        return Attempt(None, "timed out", elapsed_s=time.perf_counter() - started)
    except httpx.HTTPError as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}", elapsed_s=time.perf_counter() - started)
    return Attempt(
        response.status_code,
        None if response.is_success else f"HTTP {response.status_code}",
        response.headers.get("retry-after"),
        response.text[:_BODY_KEPT],
        time.perf_counter() - started,
    )


def attempt_delivery(
    deliveries: Deliveries, delivery_id: str, *, settings: Settings, client: httpx.Client, now: float | None = None
) -> float | None:
    """Make the next attempt of a pending delivery, save its outcome, and return in how many seconds to
    call again (None: done, delivered or given up, or nothing to do)."""
    delivery = deliveries.get(delivery_id)
    if delivery is None or delivery.state != "pending":
        return None
    earlier = deliveries.blocked_by(delivery)
    if earlier is not None:
        logger.debug("webhook %s waits for %s (same job, earlier event)", delivery.id, earlier.id)
        return ORDER_WAIT_S
    if settings.webhook_secret is None:
        logger.warning("webhook %s not sent: WEBHOOK_SECRET is not set", delivery.id)
        return None
    now = time.time() if now is None else now
    if delivery.next_try_at is not None and delivery.next_try_at - now > EARLY_TOLERANCE_S:
        # A message ahead of the delivery's backoff (one redelivered after its worker died, one resent
        # when a process opened): it waits for the next try the record names instead of attempting now.
        return delivery.next_try_at - now
    result = post(
        client, delivery.url, delivery.id, delivery.body, secret=settings.webhook_secret.get_secret_value(), now=now
    )
    decision = retry_policy(settings).decide(
        result.status,
        attempts=delivery.attempts + 1,
        first_at=delivery.event_at,
        now=now,
        retry_after_s=parse_retry_after(result.retry_after, now=now),
        jitter=random.random(),
    )
    update: dict[str, object] = {
        "attempts": delivery.attempts + 1,
        "last_status": result.status,
        "last_error": result.error,
    }
    if decision.outcome == "delivered":
        update |= {"state": "delivered", "delivered_at": now, "next_try_at": None, "last_error": None}
    elif decision.outcome == "give_up":
        update |= {"state": "failed", "next_try_at": None, "last_error": f"{result.error}; {decision.reason}"}
    else:
        update |= {"next_try_at": now + decision.delay_s}
    saved = delivery.model_copy(update=update)
    deliveries.save(saved)
    _log(saved, decision.outcome, decision.delay_s)
    return decision.delay_s if decision.outcome == "retry" else None


def _log(delivery: Delivery, outcome: str, delay_s: float) -> None:
    where = f"{delivery.event_type} -> {shown_url(delivery.url)}"
    who = delivery.job_id or delivery.batch_id or "-"
    if outcome == "delivered":
        logger.info("job %s: webhook %s delivered (%s, attempt %d)", who, delivery.id, where, delivery.attempts)
    elif outcome == "give_up":
        logger.warning("job %s: webhook %s given up (%s): %s", who, delivery.id, where, delivery.last_error)
    else:
        logger.info(
            "job %s: webhook %s attempt %d failed (%s: %s); next in %.1f s",
            who,
            delivery.id,
            delivery.attempts,
            where,
            delivery.last_error,
            delay_s,
        )
