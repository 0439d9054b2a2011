"""The pool state's checkpoint half (issue 15): loaded checkpoints, measured loads, the checkpoints
jobs want, and claims that take a ranked slot; in memory and in a real Redis alike."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from pipeline.sd.backends import Backend
from pipeline.sd.pool.redis_state import RedisPoolState
from pipeline.sd.pool.state import Claim, MemoryPoolState, PoolState

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
def backends() -> list[Backend]:
    tag = uuid.uuid4().hex[:6]
    return [Backend(url=f"http://gpu{i}-{tag}:7860", key=f"http://gpu{i}-{tag}:7860", max_slots=1) for i in range(3)]


def test_pool_state_records_the_loaded_checkpoint_and_returns_the_one_before(
    state: PoolState, backends: list[Backend]
) -> None:
    key = backends[0].key
    assert state.set_model(key, "a.safetensors [163f4dbbad]", "163f4dbbad") is None
    assert state.set_model(key, "b", None, counts_load=True) == "a.safetensors [163f4dbbad]"
    status = state.status(backends[:1])[0]
    assert (status.model, status.model_hash, status.loading, status.model_loads) == ("b", None, False, 1)
    assert status.model_since is not None


def test_pool_state_keeps_the_mean_load_time_per_checkpoint(state: PoolState, backends: list[Backend]) -> None:
    key = backends[0].key
    state.set_model(key, "b", None, loading=True)
    assert state.status(backends[:1])[0].loading
    state.record_load(key, "b", 2.0)
    state.record_load(key, "b", 4.0)
    state.record_load(key, "c", 1.0)
    status = state.status(backends[:1])[0]
    assert status.load_s == {"b": 3.0, "c": 1.0}
    assert (status.loading, status.model_loads) == (False, 3)


def test_pool_state_counts_the_checkpoints_jobs_want_until_they_stop(state: PoolState) -> None:
    model = f"m{uuid.uuid4().hex[:6]}"
    state.want("h1", model, ttl_s=LEASE_S)
    state.want("h2", model, ttl_s=LEASE_S)
    state.want("h3", model + "x", ttl_s=0.001)  # expired at once
    state.unwant("h1", model)
    time.sleep(0.01)  # h3's want lapses (a job whose worker died)
    wants = state.wants()
    assert wants.get(model) == 1
    assert model + "x" not in wants


def test_pool_state_claim_takes_the_first_eligible_server_with_room_and_records_the_switch(
    state: PoolState, backends: list[Backend]
) -> None:
    first, second, third = backends
    assert state.acquire([first], "busy", lease_s=LEASE_S, avoid=None) == first.key
    claim = Claim(model="b.safetensors", key="b", eligible=2, switch=True)
    # first is full, second is eligible, third only looked at
    assert state.acquire([first, second, third], "h", lease_s=LEASE_S, avoid=None, claim=claim) == second.key
    assert state.acquire([first, second, third], "h2", lease_s=LEASE_S, avoid=None, claim=claim) is None
    status = state.status([second])[0]
    assert (status.model, status.loading) == ("b.safetensors", True)


def test_pool_state_exclusive_claim_yields_to_a_switch_already_begun(state: PoolState, backends: list[Backend]) -> None:
    first, second, _ = backends
    claim = Claim(model="b", key="b", eligible=2, switch=True, exclusive=True)
    assert state.acquire([first, second], "h1", lease_s=LEASE_S, avoid=None, claim=claim) == first.key
    # a second job that saw no server with b a moment ago takes nothing: first is loading b now
    assert state.acquire([second, first], "h2", lease_s=LEASE_S, avoid=None, claim=claim) is None
    assert state.status([second])[0].in_use == 0


def test_pool_state_claim_never_takes_a_benched_server(state: PoolState, backends: list[Backend]) -> None:
    from pipeline.sd.pool.state import HealthPolicy

    first, second, _ = backends
    state.record_failure(first.key, "down", bench=True, policy=HealthPolicy(3, 10, 20))
    claim = Claim(model="b", key="b", eligible=1)
    assert state.acquire([first, second], "h", lease_s=LEASE_S, avoid=None, claim=claim) is None
