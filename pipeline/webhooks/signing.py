"""Webhook ids and signatures in the Standard Webhooks format, signed by the ``standardwebhooks`` package.

Headers: ``webhook-id`` (the same on every attempt of one delivery: receivers dedupe on it),
``webhook-timestamp`` (epoch seconds of this attempt) and ``webhook-signature`` (``v1,`` + base64
HMAC-SHA256 of ``id.timestamp.body`` keyed with the base64 part of the ``whsec_`` secret).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from standardwebhooks import Webhook

__all__ = ["sign_headers", "webhook_id"]


def webhook_id(event_key: str, url: str) -> str:
    """The id of the delivery of the event ``event_key`` to ``url``: the same whoever computes it, whenever."""
    digest = hashlib.sha256(f"{event_key}\n{url}".encode()).hexdigest()[:32]
    return f"msg_{digest}"


def sign_headers(secret: str, msg_id: str, timestamp: float, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers (plus the JSON content type) for one attempt."""
    when = datetime.fromtimestamp(int(timestamp), tz=UTC)
    signature = Webhook(secret).sign(msg_id, when, body)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature,
    }
