"""The Redis broker's pauses: a consumer at capacity rechecks quickly, a delay queue holding retries more slowly."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from pydantic import SecretStr

from actors.broker import CONSUMER_POLL_MAX_MS, DELAY_QUEUE_POLL_MAX_MS, build_broker
from actors.steps import IMAGES_QUEUE, SD_QUEUE
from pipeline.settings import Settings


def test_redis_broker_pauses_briefly_on_work_queues_and_longer_on_delay_queues(settings: Settings) -> None:
    # Building the broker and its consumers sends nothing to Redis: no server is needed here
    broker = build_broker(settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:1/0")}))
    try:
        timeouts = {
            queue: broker.consume(queue, 1, 1000).timeout  # type: ignore[attr-defined]
            for queue in (SD_QUEUE, IMAGES_QUEUE, dq_name(SD_QUEUE), dq_name(IMAGES_QUEUE))
        }
    finally:
        broker.close()
        dramatiq.set_broker(StubBroker())
    assert timeouts == {
        SD_QUEUE: CONSUMER_POLL_MAX_MS,
        IMAGES_QUEUE: CONSUMER_POLL_MAX_MS,
        dq_name(SD_QUEUE): DELAY_QUEUE_POLL_MAX_MS,
        dq_name(IMAGES_QUEUE): DELAY_QUEUE_POLL_MAX_MS,
    }
    assert CONSUMER_POLL_MAX_MS < DELAY_QUEUE_POLL_MAX_MS < 1000
