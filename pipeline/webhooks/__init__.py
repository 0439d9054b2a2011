"""Signed webhooks: what is sent, how it is signed, when it is retried, and the state of each delivery.

Its concepts::

    urls        which URLs may receive webhooks (http/https; WEBHOOK_ALLOW_HOSTS over the API)
    signing     webhook ids and Standard Webhooks signatures (the standardwebhooks package)
    policy      the retry rule, as pure functions: backoff, Retry-After, 4xx ends it, the window
    deliveries  a delivery per event and receiver, its state, per-job order; the event listener
    sending     one attempt and its outcome (what the webhook actor runs)
    recovery    pending deliveries whose message was lost (a process that exited): sent again or given up

The actor itself (queue ``webhooks``, threads of its own) is ``actors.webhooks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.webhooks.deliveries import Deliveries, Delivery, delivery_listener, payload
    from pipeline.webhooks.policy import Decision, RetryPolicy, parse_retry_after, retryable
    from pipeline.webhooks.recovery import Resent, resend_pending
    from pipeline.webhooks.sending import Attempt, attempt_delivery, post, retry_policy
    from pipeline.webhooks.signing import sign_headers, webhook_id
    from pipeline.webhooks.urls import check_webhook_url, host_allowed, shown_url

__all__ = [
    # URLs
    "check_webhook_url",
    "host_allowed",
    "shown_url",
    # Signing
    "sign_headers",
    "webhook_id",
    # Retry rule
    "Decision",
    "RetryPolicy",
    "parse_retry_after",
    "retryable",
    # Deliveries
    "Deliveries",
    "Delivery",
    "delivery_listener",
    "payload",
    # Sending
    "Attempt",
    "attempt_delivery",
    "post",
    "retry_policy",
    # Recovery
    "Resent",
    "resend_pending",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".urls": ["check_webhook_url", "host_allowed", "shown_url"],
        ".signing": ["sign_headers", "webhook_id"],
        ".policy": ["Decision", "RetryPolicy", "parse_retry_after", "retryable"],
        ".deliveries": ["Deliveries", "Delivery", "delivery_listener", "payload"],
        ".sending": ["Attempt", "attempt_delivery", "post", "retry_policy"],
        ".recovery": ["Resent", "resend_pending"],
    },
)
