"""Webhook deliveries: one per event and receiver, created when the event is announced, sent by the
webhook actor until delivered or given up, their state kept for ``sdpipe status`` and the API.

A delivery's id is its ``webhook-id`` (:func:`~pipeline.webhooks.signing.webhook_id` of the event's
key and the URL), and its body is fixed when it is created: every attempt, every re-announcement
of the same event, every worker sends the same id and the same bytes. Key-value layout::

    wh:<id>            Delivery JSON
    wh-job:<job id>    set of the job's delivery ids (and wh-batch:<batch id> for batch.completed)
    wh-pending         set of the ids of deliveries that may still be pending (:meth:`Deliveries.pending`)

Indexes are written before the record they point to and tidied after it changes, so a process that
dies in between leaves at worst a member whose record is gone or final (skipped and removed when
read), never a pending record that no index finds.

Webhooks of one job go out in event order: a delivery waits (:meth:`Deliveries.blocked_by`) while an
earlier delivery of the same job to the same URL is still pending.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from pipeline.errors import JobNotFound
from pipeline.events.model import BATCH_COMPLETED, WEBHOOK_TYPES, Event
from pipeline.store.base import StatusStore
from pipeline.store.keyvalue import KeyValue
from pipeline.webhooks.signing import webhook_id
from pipeline.webhooks.urls import shown_url

__all__ = [
    "PENDING_INDEX",
    "SIDECAR_FIELDS",
    "Deliveries",
    "Delivery",
    "DeliveryState",
    "delivery_listener",
    "payload",
]

logger = logging.getLogger(__name__)

DeliveryState = Literal["pending", "delivered", "failed"]
#: Sidecar fields a webhook repeats (the whole request is left out: it can be large, e.g. ControlNet images).
SIDECAR_FIELDS = (
    "seed",
    "subseed",
    "model_name",
    "model_hash",
    "sampler",
    "sd_version",
    "backend_url",
    "grid",
    "band_px",
    "sigma",
    "timings",
    "output",
    "infotext",
    "created_at",
    "finished_at",
)
#: How long a delivery's record is kept after its event (longer than the retry window).
RECORD_TTL_S = 8 * 24 * 3600
#: The set of deliveries that may still be pending: what a process that resends them (an embedded
#: command opening, ``sdpipe webhooks retry``, a worker's sweep) reads.
PENDING_INDEX = "wh-pending"


class Delivery(BaseModel):
    """One event on its way to one receiver."""

    id: str
    url: str
    event_type: str
    event_key: str
    job_id: str | None = None
    batch_id: str | None = None
    body: str
    #: When the event happened: the order of one job's deliveries, and the start of the retry window.
    event_at: float
    state: DeliveryState = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    next_try_at: float | None = None
    delivered_at: float | None = None

    def summary(self) -> dict[str, Any]:
        """What ``sdpipe status`` and ``GET /api/jobs/{id}`` show: never the body, nor the URL's query
        or credentials."""
        return {
            "webhook_id": self.id,
            "event": self.event_type,
            "url": shown_url(self.url),
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "next_try_at": self.next_try_at,
        }


def payload(event: Event, sidecar: dict[str, Any] | None = None) -> str:
    """The JSON body a receiver gets: ``type``, ``timestamp`` (ISO 8601) and ``data`` (ids and the event's data)."""
    data: dict[str, Any] = {"job_id": event.job_id, "batch_id": event.batch_id, **event.data}
    if data["job_id"] is None:
        del data["job_id"]
    if sidecar is not None:
        data["sidecar"] = {key: sidecar[key] for key in SIDECAR_FIELDS if key in sidecar}
    stamp = datetime.fromtimestamp(event.ts, tz=UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event.type, "timestamp": stamp, "data": data}, ensure_ascii=False)


class Deliveries:
    """Delivery records in the shared key-value store."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def create(self, delivery: Delivery) -> tuple[Delivery, bool]:
        """Store ``delivery`` unless one with its id exists; returns the stored one and whether it is new."""
        # Indexed first: a process that dies before the record is written leaves only a member to skip.
        self.kv.add_member(PENDING_INDEX, delivery.id)
        if delivery.job_id is not None:
            self.kv.add_member(f"wh-job:{delivery.job_id}", delivery.id)
        elif delivery.batch_id is not None:
            self.kv.add_member(f"wh-batch:{delivery.batch_id}", delivery.id)
        existing = self.kv.put_if_absent(f"wh:{delivery.id}", delivery.model_dump_json(), ttl_s=RECORD_TTL_S)
        if existing is not None:
            stored = Delivery.model_validate_json(existing)
            if stored.state != "pending":
                self.kv.remove_member(PENDING_INDEX, stored.id)
            return stored, False
        return delivery, True

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self.kv.get(f"wh:{delivery_id}")
        return Delivery.model_validate_json(raw) if raw is not None else None

    def save(self, delivery: Delivery) -> None:
        self.kv.put(f"wh:{delivery.id}", delivery.model_dump_json(), ttl_s=RECORD_TTL_S)
        if delivery.state != "pending":
            self.kv.remove_member(PENDING_INDEX, delivery.id)

    def pending(self) -> list[Delivery]:
        """Every delivery still pending, oldest event first; index members whose record has ended are removed
        on the way (a member without a record is kept: its record may be being created right now)."""
        ids = self.kv.members(PENDING_INDEX)
        raws = self.kv.get_many([f"wh:{delivery_id}" for delivery_id in ids])
        found = []
        for raw in raws:
            delivery = Delivery.model_validate_json(raw) if raw is not None else None
            if delivery is not None and delivery.state != "pending":
                self.kv.remove_member(PENDING_INDEX, delivery.id)
            elif delivery is not None:
                found.append(delivery)
        return sorted(found, key=lambda delivery: (delivery.event_at, delivery.id))

    def of_job(self, job_id: str) -> list[Delivery]:
        """The job's deliveries, oldest event first."""
        return self._load(self.kv.members(f"wh-job:{job_id}"))

    def of_batch(self, batch_id: str) -> list[Delivery]:
        """The batch's own deliveries (``batch.completed``), oldest first."""
        return self._load(self.kv.members(f"wh-batch:{batch_id}"))

    def blocked_by(self, delivery: Delivery) -> Delivery | None:
        """An earlier delivery of the same job to the same URL that is still pending (this one waits for it)."""
        if delivery.job_id is None:
            return None
        for other in self.of_job(delivery.job_id):
            if other.id != delivery.id and other.url == delivery.url and other.state == "pending":
                if (other.event_at, other.id) < (delivery.event_at, delivery.id):
                    return other
        return None

    def _load(self, ids: list[str]) -> list[Delivery]:
        raws = self.kv.get_many([f"wh:{delivery_id}" for delivery_id in ids])
        found = [Delivery.model_validate_json(raw) for raw in raws if raw is not None]
        return sorted(found, key=lambda delivery: (delivery.event_at, delivery.id))


def delivery_listener(
    deliveries: Deliveries,
    store: StatusStore,
    *,
    default_url: str | None,
    can_sign: bool,
    send: Callable[[str], None],
) -> Callable[[Event], None]:
    """A listener of the :class:`~pipeline.events.hub.EventHub` that turns each webhook-worthy event into
    deliveries (``WEBHOOK_URL``, and the job's or batch's own webhook) and hands each new or still
    pending one to ``send`` (the webhook actor's queue). Idempotent: an event announced again
    re-sends only deliveries that are still pending."""

    def on_event(event: Event) -> None:
        if event.type not in WEBHOOK_TYPES or event.key is None:
            return
        urls = [default_url] if default_url else []
        own = _own_webhook(store, event)
        if own and own not in urls:
            urls.append(own)
        if not urls:
            return
        if not can_sign:
            logger.warning("job %s: webhook for %s not sent: WEBHOOK_SECRET is not set", event.job_id, event.type)
            return
        sidecar = _sidecar(event)
        body = payload(event, sidecar)
        for url in urls:
            delivery, new = deliveries.create(
                Delivery(
                    id=webhook_id(event.key, url),
                    url=url,
                    event_type=event.type,
                    event_key=event.key,
                    job_id=event.job_id,
                    batch_id=event.batch_id if event.job_id is None else None,
                    body=body,
                    event_at=event.ts,
                )
            )
            if delivery.state == "pending":
                send(delivery.id)
                if new:
                    logger.debug("job %s: webhook %s of %s queued", event.job_id or "-", delivery.id, event.type)

    return on_event


def _own_webhook(store: StatusStore, event: Event) -> str | None:
    """The webhook the event's job (or, for ``batch.completed``, the batch's jobs) was submitted with."""
    try:
        if event.job_id is not None:
            return store.get(event.job_id).spec.webhook_url
        if event.type == BATCH_COMPLETED and event.batch_id is not None:
            job_ids = store.get_batch(event.batch_id).job_ids
            return store.get(job_ids[0]).spec.webhook_url if job_ids else None
    except JobNotFound:
        return None
    return None


def _sidecar(event: Event) -> dict[str, Any] | None:
    """The succeeded job's sidecar (what a receiver would otherwise fetch), if readable."""
    result = event.data.get("result")
    path = result.get("sidecar") if isinstance(result, dict) else None
    if not isinstance(path, str):
        return None
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.debug("job %s: sidecar not read for the webhook: %s", event.job_id, exc)
        return None
    return loaded if isinstance(loaded, dict) else None
