"""Webhook deliveries whose message was lost are sent again: Redis mode's worker sweep (a process killed
between writing a delivery's record and enqueuing it); embedded mode's runtime opening alone."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import open_runtime
from actors.webhooks import WEBHOOKS_QUEUE
from pipeline.settings import Settings, load_settings
from pipeline.webhooks.deliveries import Delivery
from tests.helpers import wait_until
from tests.receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _orphan(url: str, *, event_at: float, name: str = "orphan") -> Delivery:
    """A delivery as a process leaves it when it dies right after writing the record: pending, never tried."""
    return Delivery(
        id=f"msg_{name}",
        url=url,
        event_type="job.cancelled",
        event_key=f"key-{name}",
        job_id=f"job-{name}",
        body='{"type": "job.cancelled"}',
        event_at=event_at,
    )


def _state(delivery: Delivery | None) -> str | None:
    return None if delivery is None else delivery.state


def test_worker_sweep_resends_a_delivery_whose_message_was_never_enqueued(
    redis_url: str, tmp_path: Path, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    settings = load_settings(
        redis_url=redis_url, sd_api_url="mock://", output_dir=tmp_path, webhook_secret=SECRET, webhook_stale_after_s=20
    )
    with open_runtime(settings) as first, open_runtime(settings) as second:
        now = time.time()
        first.deliveries.create(_orphan(receiver.url, event_at=now - 25))  # due longer than WEBHOOK_STALE_AFTER_S ago
        first.deliveries.create(_orphan(receiver.url, event_at=now - 15, name="fresh"))  # its message may be queued
        swept = first.webhooks.sweep("host:1")
        assert swept is not None and swept.sent == ("msg_orphan",) and swept.left == 1
        assert second.webhooks.sweep("host:2") is None  # one worker process sweeps per round
        first.webhooks.start_worker()
        assert wait_until(lambda: "msg_orphan" in receiver.answered(), timeout_s=30)
        # The receiver notes its answer before the sender reads it and records the delivery: wait for the record.
        assert wait_until(lambda: _state(first.deliveries.get("msg_orphan")) == "delivered", timeout_s=30)
        assert [delivery.id for delivery in first.deliveries.pending()] == ["msg_fresh"]


def test_embedded_runtime_opening_alone_resends_pending_deliveries(
    settings: Settings, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    hooked = settings.model_copy(update={"webhook_secret": load_settings(webhook_secret=SECRET).webhook_secret})
    with open_runtime(hooked, start_embedded_worker=False) as ended:  # a command that ended (no job threads)
        ended.deliveries.create(_orphan(receiver.url, event_at=time.time() - 60))
        too_old = _orphan(receiver.url, event_at=time.time() - hooked.webhook_retry_window_s - 1, name="old")
        ended.deliveries.create(too_old)
    assert not receiver.deliveries  # a runtime without job threads resends nothing
    with open_runtime(hooked) as rt:
        assert wait_until(lambda: "msg_orphan" in receiver.answered(), timeout_s=30)
        assert rt.settle_webhooks(5) == 0
        old = rt.deliveries.get("msg_old")
        assert old is not None and old.state == "failed" and "WEBHOOK_RETRY_WINDOW_S" in (old.last_error or "")
    assert [headers["webhook-id"] for headers, _body, _status in receiver.deliveries] == ["msg_orphan"]


def test_webhook_worker_beside_the_image_worker_starts_without_dramatiqs_duplicate_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an embedded runtime (its image queues' worker running on the broker)
    with caplog.at_level(logging.WARNING), open_runtime(settings) as runtime:
        # When the webhooks queue's own worker starts on the same broker
        runtime.webhooks.start_worker()
        worker = runtime.webhooks.worker
        assert worker is not None
        consumed = set(worker.consumers)
    # Then nothing warns about a second worker's middleware, and that worker consumes only its queue
    assert [r.getMessage() for r in caplog.records if "same type twice" in r.getMessage()] == []
    assert consumed and {name.removesuffix(".DQ") for name in consumed} == {WEBHOOKS_QUEUE}
