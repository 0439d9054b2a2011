"""Pending deliveries found again by their records: the pending index, resending (next try, window,
staleness) and an early message waiting for its next try."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.settings import Settings
from pipeline.store.keyvalue import SqliteKeyValue
from pipeline.webhooks.deliveries import PENDING_INDEX, Deliveries, Delivery
from pipeline.webhooks.recovery import Resent, resend_pending
from pipeline.webhooks.sending import attempt_delivery

NOW = 1_800_000_000.0
WINDOW_S = 86_400.0
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def deliveries(tmp_path: Path) -> Iterator[Deliveries]:
    kv = SqliteKeyValue(tmp_path / "kv.sqlite")
    yield Deliveries(kv)
    kv.close()


def _delivery(name: str, *, event_at: float, job_id: str | None = None, **fields: object) -> Delivery:
    return Delivery(
        id=f"msg_{name}",
        url="https://hooks.example.com/in",
        event_type="job.succeeded",
        event_key=f"key-{name}",
        job_id=job_id or f"job-{name}",
        body="{}",
        event_at=event_at,
        **fields,
    )


def _resend(deliveries: Deliveries, **options: object) -> tuple[dict[str, float], Resent]:
    sent: dict[str, float] = {}
    result = resend_pending(
        deliveries,
        send=lambda delivery_id, delay_s: sent.__setitem__(delivery_id, delay_s),
        now=NOW,
        window_s=WINDOW_S,
        **options,  # type: ignore[arg-type]
    )
    return sent, result


def test_deliveries_pending_lists_pending_ones_and_drops_ended_ones_from_the_index(deliveries: Deliveries) -> None:
    first, _ = deliveries.create(_delivery("a", event_at=NOW - 2))
    second, _ = deliveries.create(_delivery("b", event_at=NOW - 1))
    deliveries.save(first.model_copy(update={"state": "delivered"}))
    deliveries.kv.add_member(PENDING_INDEX, "msg_being_created")  # a record another process is writing
    assert [delivery.id for delivery in deliveries.pending()] == [second.id]
    assert deliveries.kv.members(PENDING_INDEX) == ["msg_b", "msg_being_created"]
    again, new = deliveries.create(_delivery("a", event_at=NOW - 2))  # the same event announced again
    assert not new and again.state == "delivered" and "msg_a" not in deliveries.kv.members(PENDING_INDEX)


def test_resend_pending_honours_the_next_try_and_gives_up_past_the_window(deliveries: Deliveries) -> None:
    deliveries.create(_delivery("never_tried", event_at=NOW - 60))
    deliveries.create(_delivery("backing_off", event_at=NOW - 60, attempts=3, next_try_at=NOW + 30))
    deliveries.create(_delivery("overdue", event_at=NOW - 600, attempts=1, next_try_at=NOW - 500))
    deliveries.create(_delivery("too_old", event_at=NOW - WINDOW_S - 1, attempts=9, last_error="HTTP 503"))
    sent, result = _resend(deliveries)
    assert sent == {"msg_never_tried": 0.0, "msg_backing_off": 30.0, "msg_overdue": 0.0}
    old = deliveries.get("msg_too_old")
    assert old is not None and old.state == "failed" and old.next_try_at is None
    assert old.last_error is not None and old.last_error.startswith("HTTP 503; ")
    assert "WEBHOOK_RETRY_WINDOW_S" in old.last_error
    assert result.given_up == 1
    assert sorted(d.id for d in deliveries.pending()) == sorted(sent)


def test_resend_pending_when_sweeping_resends_only_deliveries_whose_message_was_lost(
    deliveries: Deliveries,
) -> None:
    deliveries.create(_delivery("just_announced", event_at=NOW - 10))
    deliveries.create(_delivery("retry_due_lately", event_at=NOW - 900, attempts=2, next_try_at=NOW - 20))
    deliveries.create(_delivery("lost", event_at=NOW - 400))  # never tried in 400 s: its message never went
    # Waiting its turn behind an earlier pending event of its job (to the same URL): not lost
    deliveries.create(_delivery("earlier", event_at=NOW - 900, job_id="job-x", attempts=5, next_try_at=NOW + 600))
    deliveries.create(_delivery("later", event_at=NOW - 800, job_id="job-x"))
    sent, result = _resend(deliveries, stale_after_s=300.0)
    assert sent == {"msg_lost": 0.0}
    assert (result.given_up, result.left) == (0, 4)


def test_resend_pending_now_too_moves_every_next_try_to_now(deliveries: Deliveries) -> None:
    deliveries.create(_delivery("backing_off", event_at=NOW - 60, attempts=3, next_try_at=NOW + 1800))
    sent, _ = _resend(deliveries, now_too=True)
    assert sent == {"msg_backing_off": 0.0}
    record = deliveries.get("msg_backing_off")
    assert record is not None and record.next_try_at == NOW and record.attempts == 3


def test_attempt_delivery_ahead_of_its_next_try_waits_for_it(deliveries: Deliveries, tmp_path: Path) -> None:
    posted: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(200)

    settings = Settings(output_dir=tmp_path, webhook_secret=SECRET)  # type: ignore[arg-type]
    deliveries.create(_delivery("a", event_at=NOW - 60, attempts=1, next_try_at=NOW + 20))
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        again_in_s = attempt_delivery(deliveries, "msg_a", settings=settings, client=client, now=NOW)
        assert again_in_s == 20 and not posted  # no attempt before the backoff is over
        assert attempt_delivery(deliveries, "msg_a", settings=settings, client=client, now=NOW + 20) is None
    assert len(posted) == 1 and posted[0].headers["webhook-id"] == "msg_a"
    record = deliveries.get("msg_a")
    assert record is not None and (record.state, record.attempts) == ("delivered", 2)
