"""The SD pool's shared state: slot caps, leases, health, probes; in memory and in a real Redis."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis

from pipeline.sd.backends import Backend
from pipeline.sd.pool.redis_state import RedisPoolState
from pipeline.sd.pool.state import HealthPolicy, LoadedModel, MemoryPoolState, PoolState
from tests.helpers import wait_until

POLICY = HealthPolicy(failure_threshold=3, cooldown_min_s=0.2, cooldown_max_s=0.5)
LEASE_S = 30.0


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> Iterator[PoolState]:
    if request.param == "memory":
        yield MemoryPoolState()
        return
    url: str = request.getfixturevalue("redis_url")
    pool_state = RedisPoolState(redis.Redis.from_url(url))
    yield pool_state
    pool_state.close()


@pytest.fixture
def servers() -> Callable[..., list[Backend]]:
    """Backends with names unique to the test, with the given slot caps."""
    tag = uuid.uuid4().hex[:6]

    def make(*max_slots: int) -> list[Backend]:
        return [
            Backend(url=f"http://gpu{i}-{tag}:7860", key=f"http://gpu{i}-{tag}:7860", max_slots=m)
            for i, m in enumerate(max_slots)
        ]

    return make


def _fill(state: PoolState, backends: list[Backend], count: int, *, lease_s: float = LEASE_S) -> list[str | None]:
    return [state.acquire(backends, f"h{i}", lease_s=lease_s, avoid=None) for i in range(count)]


def test_pool_state_never_gives_a_server_more_than_its_slots(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    backends = servers(1, 2)
    taken = _fill(state, backends, 4)
    assert Counter(taken) == {backends[0].key: 1, backends[1].key: 2, None: 1}
    assert [s.in_use for s in state.status(backends)] == [1, 2]


def test_pool_state_equal_servers_take_turns(state: PoolState, servers: Callable[..., list[Backend]]) -> None:
    backends = servers(1, 1, 1)
    used = []
    for i in range(9):
        key = state.acquire(backends, f"h{i}", lease_s=LEASE_S, avoid=None)
        assert key is not None
        used.append(key)
        state.release(key, f"h{i}")
    assert Counter(used) == {b.key: 3 for b in backends}


def test_pool_state_release_frees_the_slot(state: PoolState, servers: Callable[..., list[Backend]]) -> None:
    backends = servers(1)
    assert _fill(state, backends, 2) == [backends[0].key, None]
    state.release(backends[0].key, "h0")
    assert state.acquire(backends, "next", lease_s=LEASE_S, avoid=None) == backends[0].key


def test_pool_state_expired_lease_frees_the_slot(state: PoolState, servers: Callable[..., list[Backend]]) -> None:
    # A holder that never releases (a killed worker) loses its slot when the lease ends.
    backends = servers(1)
    assert _fill(state, backends, 1, lease_s=0.3) == [backends[0].key]
    assert state.acquire(backends, "other", lease_s=LEASE_S, avoid=None) is None
    assert wait_until(lambda: state.acquire(backends, "other", lease_s=LEASE_S, avoid=None) is not None, timeout_s=3)


def test_pool_state_renewed_lease_keeps_the_slot(state: PoolState, servers: Callable[..., list[Backend]]) -> None:
    backends = servers(1)
    _fill(state, backends, 1, lease_s=0.3)
    for _ in range(6):
        assert state.renew(backends[0].key, "h0", lease_s=0.3)
        assert state.acquire(backends, "other", lease_s=LEASE_S, avoid=None) is None
        wait_until(lambda: False, timeout_s=0.1)


def test_pool_state_benches_after_threshold_failures_in_a_row(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    sick, well = servers(1, 1)
    assert not state.record_failure(sick.key, "boom", bench=False, policy=POLICY)
    assert not state.record_failure(sick.key, "boom", bench=False, policy=POLICY)
    assert state.record_failure(sick.key, "boom", bench=False, policy=POLICY)
    status = state.status([sick])[0]
    assert not status.healthy and status.consecutive_failures == 3 and status.failures == 3
    assert status.last_error == "boom" and status.cooldown_s == pytest.approx(POLICY.cooldown_min_s)
    # Its jobs go to the other server, even when the other is the more used one.
    assert {state.acquire([sick, well], f"h{i}", lease_s=LEASE_S, avoid=None) for i in range(2)} == {well.key, None}


def test_pool_state_success_resets_the_failure_streak(state: PoolState, servers: Callable[..., list[Backend]]) -> None:
    (server,) = servers(1)
    for _ in range(2):
        state.record_failure(server.key, "boom", bench=False, policy=POLICY)
    state.record_success(server.key, 1.5)
    assert not state.record_failure(server.key, "boom", bench=False, policy=POLICY)
    status = state.status([server])[0]
    assert status.healthy and status.consecutive_failures == 1 and status.done == 1
    assert status.mean_s == pytest.approx(1.5)


def test_pool_state_out_of_memory_benches_at_once(state: PoolState, servers: Callable[..., list[Backend]]) -> None:
    (server,) = servers(1)
    assert state.record_failure(server.key, "CUDA out of memory", bench=True, policy=POLICY)
    assert not state.status([server])[0].healthy


def test_pool_state_failed_probes_double_the_cooldown_up_to_the_cap(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    (server,) = servers(1)
    state.record_failure(server.key, "down", bench=True, policy=POLICY)
    # Not probed before its cool-down is over.
    assert state.claim_probes([server.key], claim_s=5) == []
    cooldowns = []
    for _ in range(3):
        assert wait_until(lambda: state.claim_probes([server.key], claim_s=5) == [server.key], timeout_s=3)
        # One prober at a time: a second claim is refused while the first holds it.
        assert state.claim_probes([server.key], claim_s=5) == []
        state.probe_result(server.key, ok=False, error="still down", policy=POLICY)
        cooldowns.append(state.status([server])[0].cooldown_s)
    assert cooldowns == pytest.approx([0.4, 0.5, 0.5])
    assert state.status([server])[0].last_error == "still down"


def test_pool_state_successful_probe_brings_the_server_back(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    (server,) = servers(1)
    state.record_failure(server.key, "down", bench=True, policy=POLICY)
    assert wait_until(lambda: state.claim_probes([server.key], claim_s=5) == [server.key], timeout_s=3)
    state.probe_result(server.key, ok=True, error=None, policy=POLICY)
    status = state.status([server])[0]
    assert status.healthy and status.consecutive_failures == 0


def test_pool_state_with_every_server_benched_uses_the_one_due_back_first(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    first, second = servers(1, 1)
    state.record_failure(second.key, "down", bench=True, policy=POLICY)
    time.sleep(0.02)  # the Redis clock counts milliseconds: make "due back first" unambiguous
    state.record_failure(first.key, "down", bench=True, policy=POLICY)
    assert state.acquire([first, second], "h", lease_s=LEASE_S, avoid=None) == second.key


def test_pool_state_busy_healthy_server_is_waited_for_not_a_benched_one(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    healthy, benched = servers(1, 1)
    state.record_failure(benched.key, "down", bench=True, policy=POLICY)
    assert state.acquire([healthy, benched], "h0", lease_s=LEASE_S, avoid=None) == healthy.key
    assert state.acquire([healthy, benched], "h1", lease_s=LEASE_S, avoid=None) is None


def test_pool_state_avoided_server_is_used_only_without_alternative(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    first, second = servers(1, 1)
    assert state.acquire([first, second], "h0", lease_s=LEASE_S, avoid=first.key) == second.key
    assert state.acquire([first, second], "h1", lease_s=LEASE_S, avoid=first.key) == first.key


def test_pool_state_release_tells_the_checkpoint_recorded_for_the_server(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    (server,) = servers(1)
    assert state.acquire([server], "h1", lease_s=LEASE_S, avoid=None) == server.key
    assert state.release(server.key, "h1", answered_s=0.5) == LoadedModel(key=None, has_hash=False, loading=False)

    state.set_model(server.key, "sd_xl_base_1.0.safetensors [31e35c80fc]", "31e35c80fc")
    assert state.acquire([server], "h2", lease_s=LEASE_S, avoid=None) == server.key
    assert state.release(server.key, "h2") == LoadedModel(key="sd_xl_base_1.0", has_hash=True, loading=False)

    state.set_model(server.key, "v1-5-pruned", None, loading=True)
    assert state.release(server.key, "nobody") == LoadedModel(key="v1-5-pruned", has_hash=False, loading=True)


def test_pool_state_release_after_an_answer_records_the_success(
    state: PoolState, servers: Callable[..., list[Backend]]
) -> None:
    (server,) = servers(1)
    state.record_failure(server.key, "boom", bench=False, policy=POLICY)
    assert state.acquire([server], "h", lease_s=LEASE_S, avoid=None) == server.key
    state.release(server.key, "h", answered_s=0.75)
    status = state.status([server])[0]
    assert status.in_use == 0 and status.done == 1 and status.consecutive_failures == 0
    assert status.mean_s == pytest.approx(0.75)


def test_pool_state_tickets_outrank_worse_classes_until_dropped_or_expired(state: PoolState) -> None:
    tag = uuid.uuid4().hex[:6]
    assert not state.outranked(2)
    state.ticket([f"n1-{tag}", f"n2-{tag}"], 1, ttl_s=30)
    assert state.outranked(2) and not state.outranked(1) and not state.outranked(0)
    state.drop_ticket(f"n1-{tag}", 1)
    assert state.outranked(2)
    state.drop_ticket(f"n2-{tag}", 1)
    assert not state.outranked(2)
    state.ticket([f"h-{tag}"], 0, ttl_s=0.05)
    assert state.outranked(1)
    assert wait_until(lambda: not state.outranked(1), timeout_s=5)


def test_pool_state_ticket_outranked_takes_the_ticket_then_looks_at_better_classes(state: PoolState) -> None:
    # A normal job takes its ticket and sees no better work waiting
    assert not state.ticket_outranked("normal-1", 1, ttl_s=60, check=1)
    # Its ticket holds a low job back, and a low job's own ticket is taken even when outranked
    assert state.ticket_outranked("low-1", 2, ttl_s=60, check=2)
    assert state.outranked(3)
    # A low job aged to high (check 0) looks at no class: never outranked
    assert not state.ticket_outranked("low-2", 2, ttl_s=60, check=0)
    state.drop_ticket("normal-1", 1)
    state.drop_ticket("low-1", 2)
    assert state.outranked(3)  # low-2's ticket was taken
    state.drop_ticket("low-2", 2)
    assert not state.outranked(3)


def test_pool_state_ticket_outranked_after_redis_lost_its_scripts(redis_url: str) -> None:
    state = RedisPoolState(redis.Redis.from_url(redis_url))
    try:
        state.ticket(["high-1"], 0, ttl_s=60)
        state.client.script_flush()  # as after a restart of Redis

        assert state.ticket_outranked("normal-1", 1, ttl_s=60, check=1)
        assert state.outranked(2)  # normal-1's ticket is there too
        state.drop_ticket("high-1", 0)
        assert state.outranked(2) and not state.outranked(1)
    finally:
        state.close()
