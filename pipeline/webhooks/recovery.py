"""Deliveries whose messages were lost: found by their records and sent again, or given up.

A delivery's record says ``pending`` until it is delivered or given up, and the message that will
make its next attempt lives in the broker. Where that message can be lost, the record is what brings
it back (:func:`resend_pending`):

- Embedded mode: the broker is the process's memory. A command that exits with a retry still waiting
  takes the message with it; the next embedded command that opens alone on the ``OUTPUT_DIR`` (no
  other one alive, so none can be holding that message) resends every pending delivery, at the next
  try its record names.
- Redis mode: the messages live in Redis, but a process can die between writing a record and
  enqueuing its first message (an ``sdpipe cancel`` killed at that instant). Worker processes sweep now
  and then and resend a pending delivery only once it is *stale*: due more than ``WEBHOOK_STALE_AFTER_S``
  ago (5 minutes) and still not tried, which a delivery whose message is in Redis never is unless the
  webhook threads are that far behind (then one attempt may be doubled; receivers dedupe on
  ``webhook-id``).
- ``sdpipe webhooks retry``: every pending delivery, now (``now_too``), in both modes.

Either way the resent delivery keeps its id and its body, and one whose event is older than
``WEBHOOK_RETRY_WINDOW_S`` is given up instead of sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.webhooks.deliveries import Deliveries, Delivery
from pipeline.webhooks.urls import shown_url

__all__ = ["Resent", "resend_pending"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resent:
    """What :func:`resend_pending` did: the deliveries sent again, how many it gave up (past the window)
    and how many it left alone (not stale)."""

    sent: tuple[str, ...] = ()
    given_up: int = 0
    left: int = 0


def resend_pending(
    deliveries: Deliveries,
    *,
    send: Callable[[str, float], None],
    now: float,
    window_s: float,
    stale_after_s: float | None = None,
    now_too: bool = False,
) -> Resent:
    """Hand every pending delivery to ``send(id, delay_s)`` again (``delay_s``: until the next try its
    record names), or give it up when its event is more than ``window_s`` old.

    ``stale_after_s``: only deliveries due at least that long ago (Redis sweeps; None: all, as an
    embedded process opening alone does). ``now_too``: the next try is now, whatever the record says
    (``sdpipe webhooks retry``).
    """
    sent: list[str] = []
    given_up = left = 0
    for delivery in deliveries.pending():
        if now - delivery.event_at > window_s:
            _give_up(deliveries, delivery, window_s)
            given_up += 1
            continue
        due = delivery.next_try_at if delivery.next_try_at is not None else delivery.event_at
        if stale_after_s is not None and (now - due < stale_after_s or deliveries.blocked_by(delivery)):
            # Not stale: due lately, or waiting its turn behind an earlier event of its job (its message
            # looks again every ORDER_WAIT_S without touching the record).
            left += 1
            continue
        if now_too and delivery.next_try_at is not None and delivery.next_try_at > now:
            deliveries.save(delivery.model_copy(update={"next_try_at": now}))
            due = now
        send(delivery.id, max(due - now, 0.0))
        sent.append(delivery.id)
        logger.info(
            "job %s: webhook %s (%s -> %s) sent again after %d attempt(s)",
            delivery.job_id or delivery.batch_id or "-",
            delivery.id,
            delivery.event_type,
            shown_url(delivery.url),
            delivery.attempts,
        )
    return Resent(sent=tuple(sent), given_up=given_up, left=left)


def _give_up(deliveries: Deliveries, delivery: Delivery, window_s: float) -> None:
    reason = f"still pending {window_s:g} s after its event (WEBHOOK_RETRY_WINDOW_S) when it was found again"
    error = f"{delivery.last_error}; {reason}" if delivery.last_error else reason
    deliveries.save(delivery.model_copy(update={"state": "failed", "next_try_at": None, "last_error": error}))
    logger.warning(
        "job %s: webhook %s given up (%s -> %s): %s",
        delivery.job_id or delivery.batch_id or "-",
        delivery.id,
        delivery.event_type,
        shown_url(delivery.url),
        reason,
    )
