"""The priority rule in the SD pool (README "Priority"): tickets, outranking, aging."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from pipeline.errors import Outranked
from pipeline.sd.pool.pool import SDPool
from tests.test_pipeline.test_sd.test_pool import make_settings, open_pool

HIGH, NORMAL, LOW = 0, 1, 2
AGING_S = 600.0


@pytest.fixture
def pool() -> Iterator[SDPool]:
    made = open_pool(make_settings(f"mock://gpu-{uuid.uuid4().hex[:8]}", priority_aging_s=AGING_S))
    yield made
    made.close()


def test_pool_priority_low_defers_to_a_queued_normal_job_and_takes_the_slot_once_it_is_served(pool: SDPool) -> None:
    pool.state.ticket(["normal-1"], NORMAL, ttl_s=60)  # queued, not yet picked up by a worker
    with pytest.raises(Outranked):
        with pool.slot("low-1", priority=LOW, since=time.time()):
            pass
    with pool.slot("normal-2", priority=NORMAL, since=time.time()):  # its own class holds no one back
        pass
    with pool.slot("normal-1", priority=NORMAL, since=time.time()):  # it gets a server: ticket dropped
        pass
    with pool.slot("low-1", priority=LOW, since=time.time()):
        pass


def test_pool_priority_normal_defers_to_high_and_a_dropped_ticket_holds_no_one_back(pool: SDPool) -> None:
    pool.state.ticket(["high-1"], HIGH, ttl_s=60)
    for klass in (NORMAL, LOW):
        with pytest.raises(Outranked):
            with pool.slot(f"job-{klass}", priority=klass, since=time.time()):
                pass
    pool.drop_ticket("high-1", HIGH)  # cancelled, paused, or found finished
    with pool.slot("job-1", priority=NORMAL, since=time.time()):
        pass


def test_pool_priority_ages_a_waiting_job_up_one_class_per_aging_period(pool: SDPool) -> None:
    pool.state.ticket(["high-1"], HIGH, ttl_s=60)
    pool.state.ticket(["normal-1"], NORMAL, ttl_s=60)
    # A low job waiting one period is normal: it defers to high work only
    with pytest.raises(Outranked):
        with pool.slot("low-1", priority=LOW, since=time.time() - AGING_S - 1):
            pass
    pool.drop_ticket("high-1", HIGH)
    with pool.slot("low-1", priority=LOW, since=time.time() - AGING_S - 1):
        pass
    # Two periods: high, so no ticket holds it back any more (low work never starves)
    pool.state.ticket(["high-2"], HIGH, ttl_s=60)
    with pool.slot("low-2", priority=LOW, since=time.time() - 2 * AGING_S - 1):
        pass


def test_pool_priority_tickets_expire(pool: SDPool) -> None:
    pool.state.ticket(["lost"], HIGH, ttl_s=0.05)  # a job whose message was lost holds others back a while only
    time.sleep(0.1)
    with pool.slot("job-1", priority=NORMAL, since=time.time()):
        pass
