"""SDPool: dispatch over several (in-process mock) SD servers, waiting for slots, benching, probing."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.errors import ConfigError, NoFreeSlot, SDServerError, SDUnavailable, StoreUnavailable
from pipeline.models import GenerationParams
from pipeline.sd.backends import Backend, backends_for, parse_backends
from pipeline.sd.client import SDClient
from pipeline.sd.mock.http import get_mock_server
from pipeline.sd.pool.pool import SDPool, is_out_of_memory
from pipeline.sd.pool.state import LoadedModel, MemoryPoolState
from pipeline.settings import Settings
from tests.helpers import free_port, wait_until


def make_settings(url: str, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {"sd_api_url": url, "sd_cooldown_min_s": 0.2, "sd_cooldown_max_s": 1.0}
    return Settings(_env_file=None, **(fields | overrides))  # type: ignore[call-arg]


def params(seed: int = 5) -> GenerationParams:
    return GenerationParams(
        prompt="a lighthouse at dusk",
        seed=seed,
        steps=20,
        cfg_scale=7.0,
        width=64,
        height=64,
        sampler_name="Euler a",
        scheduler="Automatic",
    )


def open_pool(settings: Settings, **kwargs: Any) -> SDPool:
    clients: dict[str, SDClient] = {}

    def client_for(url: str) -> SDClient:
        if url not in clients:
            clients[url] = SDClient(settings, base_url=url)
        return clients[url]

    return SDPool(settings, MemoryPoolState(), client_for, **kwargs)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def pool_of_three(tag: str) -> Iterator[SDPool]:
    pool = open_pool(make_settings(",".join(f"mock://gpu{i}-{tag}" for i in range(3))))
    yield pool
    pool.close()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.benched_servers: list[str] = []
        self.loads: list[tuple[str, str]] = []

    def sd_call(self, backend: str, elapsed_s: float, outcome: str) -> None:
        self.calls.append((backend, outcome))

    def benched(self, backend: str) -> None:
        self.benched_servers.append(backend)

    def model_loaded(self, backend: str, model: str) -> None:
        self.loads.append((backend, model))


def test_parse_backends_reads_caps_and_hides_credentials_in_keys() -> None:
    backends = parse_backends(
        "http://gpu1:7860;max=2, http://user:secret@gpu2:7860/ ,mock://x?faults=500:0.1;reset:0.1"
    )
    assert [(b.key, b.max_slots) for b in backends] == [
        ("http://gpu1:7860", 2),
        ("http://gpu2:7860", 1),
        ("mock://x?faults=500:0.1;reset:0.1", 1),
    ]
    assert backends[1].url == "http://user:secret@gpu2:7860/"
    assert "secret" not in repr(backends)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [("http://a:1,http://a:1", "twice"), ("http://a:1,,http://b:2", "empty entry"), ("http://a:1;max=x", "max")],
)
def test_parse_backends_rejects_bad_lists(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_backends(url)


def test_backends_for_pinned_url_uses_the_pool_entry_or_one_slot() -> None:
    settings = make_settings("http://gpu1:7860;max=3,http://gpu2:7860")
    assert backends_for(settings, "http://gpu1:7860") == [Backend("http://gpu1:7860", "http://gpu1:7860", 3)]
    assert backends_for(settings, "http://other:7860") == [Backend("http://other:7860", "http://other:7860", 1)]
    assert len(backends_for(settings)) == 2


def test_sd_pool_spreads_jobs_over_every_server(pool_of_three: SDPool) -> None:
    results = [pool_of_three.txt2img(f"job{i}", params(i)) for i in range(6)]
    assert Counter(r.backend_url for r in results) == {b.key: 2 for b in pool_of_three.backends}
    assert [s.done for s in pool_of_three.status()] == [2, 2, 2]


def test_sd_pool_never_exceeds_a_servers_slots_under_concurrency(tag: str) -> None:
    url = f"mock://busy-{tag}?latency_ms=30"
    pool = open_pool(make_settings(f"{url};max=2"))
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            pool.txt2img(f"job{index}", params(index))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.close()
    assert errors == []
    stats = get_mock_server(url).stats()
    assert stats["txt2img_requests"] == 8 and stats["max_in_flight"] == 2


def test_sd_pool_slot_wait_ends_in_no_free_slot(tag: str) -> None:
    pool = open_pool(make_settings(f"mock://one-{tag}"), slot_wait_s=0.1)
    with pool.slot("holder"), pytest.raises(NoFreeSlot, match="busy"):
        with pool.slot("waiter"):
            pass
    pool.close()


def test_sd_pool_waiter_gets_the_slot_when_it_is_released(tag: str) -> None:
    pool = open_pool(make_settings(f"mock://one-{tag}"), slot_wait_s=30)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with pool.slot("holder"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    threading.Timer(0.2, release.set).start()
    with pool.slot("waiter") as backend:
        assert backend.key == f"mock://one-{tag}"
    thread.join()
    pool.close()


def test_sd_pool_out_of_memory_benches_the_server_and_others_take_the_jobs(tag: str) -> None:
    sick, well = f"mock://sick-{tag}?faults=500:1", f"mock://well-{tag}"
    recorder = Recorder()
    pool = open_pool(make_settings(f"{sick},{well}"), observer=recorder)
    with pytest.raises(SDServerError) as raised:
        pool.txt2img("job0", params(0))  # the first job goes to the first server
    assert is_out_of_memory(raised.value) and raised.value.url == sick
    results = [pool.txt2img(f"job{i}", params(i)) for i in range(1, 4)]
    assert {r.backend_url for r in results} == {well}
    sick_status, well_status = pool.status()
    assert not sick_status.healthy and sick_status.failures == 1 and well_status.done == 3
    assert recorder.benched_servers == [sick]
    assert recorder.calls[0] == (sick, "failed") and recorder.calls[1:] == [(well, "ok")] * 3
    pool.close()


def test_sd_pool_out_of_memory_on_the_only_server_pauses_it_without_benching(tag: str) -> None:
    # Given a lone server whose first answer is 500 OutOfMemoryError (no pause, for the test)
    url = f"mock://lone-{tag}"
    get_mock_server(url).control.queue(["500"])
    recorder = Recorder()
    pool = open_pool(make_settings(url), observer=recorder)
    pool.policy = dataclasses.replace(pool.policy, oom_pause_s=0.0)
    with pytest.raises(SDServerError) as raised:
        pool.txt2img("job0", params(0))
    assert is_out_of_memory(raised.value)
    # Then it is not benched (nobody else could take its jobs): the next job renders on it
    (status,) = pool.status()
    assert status.healthy and status.failures == 1 and recorder.benched_servers == []
    assert pool.txt2img("job1", params(1)).backend_url == url
    pool.close()


def test_sd_pool_retry_prefers_another_server_than_the_one_that_failed(pool_of_three: SDPool) -> None:
    first = pool_of_three.backends[0].key
    result = pool_of_three.txt2img("job", params(), avoid=first)
    assert result.backend_url != first


def test_sd_pool_check_all_benches_a_server_down_at_start(tag: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    pool = open_pool(make_settings(f"mock://up-{tag},{down}", sd_connect_timeout_s=1.0))
    problems = pool.check_all()
    assert problems[f"mock://up-{tag}"] is None and problems[down] is not None
    up_status, down_status = pool.status()
    assert up_status.healthy and not down_status.healthy
    # Not fatal: jobs go to the server that answers.
    assert pool.txt2img("job", params()).backend_url == f"mock://up-{tag}"
    pool.close()


def test_sd_pool_probe_brings_a_recovered_server_back(tag: str) -> None:
    url = f"mock://flaky-{tag}"
    pool = open_pool(make_settings(url))
    pool.state.record_failure(url, "was down", bench=True, policy=pool.policy)
    assert not pool.status()[0].healthy
    pool.start()  # the background thread probes once the cool-down is over
    assert wait_until(lambda: pool.status()[0].healthy, timeout_s=5)
    pool.close()


def test_sd_pool_with_its_only_server_benched_still_tries_it(tag: str) -> None:
    # A lone server that is benched is tried anyway: the job meets the real error and its retries decide.
    down = f"http://127.0.0.1:{free_port()}"
    pool = open_pool(make_settings(down, sd_connect_timeout_s=1.0))
    pool.check_all()
    with pytest.raises(SDUnavailable, match="cannot reach"):
        pool.txt2img("job", params())
    pool.close()


class _RenewRacesRelease(MemoryPoolState):
    """A renewal that runs while its holder releases the slot (the maintenance thread's race)."""

    def __init__(self) -> None:
        super().__init__()
        self.during_renew: Any = None

    def renew(self, key: str, holder: str, *, lease_s: float) -> bool:
        if self.during_renew is not None:
            self.during_renew()
        return super().renew(key, holder, lease_s=lease_s)


def test_sd_pool_renewal_racing_a_release_does_not_keep_the_slot_taken(tag: str) -> None:
    settings = make_settings(f"mock://gpu-{tag}")
    state = _RenewRacesRelease()
    pool = SDPool(settings, state, lambda url: SDClient(settings, base_url=url))
    pool._stop.set()  # no background thread: drive the renewal by hand
    try:
        slot = pool.slot("job-1")
        slot.__enter__()
        for held in pool._held.values():
            held.renewed_at -= settings.sd_slot_lease_s  # due for renewal
        state.during_renew = lambda: slot.__exit__(None, None, None)
        pool._renew_due()
        assert pool.status()[0].in_use == 0
        with pool.slot("job-2", wait_s=0):  # the server is free, not held by a ghost lease
            pass
    finally:
        pool.close()


def test_sd_pool_two_deliveries_of_one_job_keep_their_own_slots(tag: str) -> None:
    pool = open_pool(make_settings(f"mock://a-{tag},mock://b-{tag}"))
    entered, done = threading.Barrier(2), threading.Barrier(2)
    used: dict[str, str] = {}
    errors: list[BaseException] = []

    def delivery(name: str) -> None:
        try:
            with pool.slot("same-job") as backend:
                entered.wait(5)
                result = pool.txt2img("same-job", params())
                used[name] = backend.key
                assert result.backend_url == backend.key  # rendered on the server of its own slot
                done.wait(5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=delivery, args=(name,)) for name in ("first", "second")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not errors
        assert sorted(used.values()) == sorted(b.key for b in pool.backends)
        assert [s.in_use for s in pool.status()] == [0, 0]
    finally:
        pool.close()


class _ReleaseFails(MemoryPoolState):
    def release(self, key: str, holder: str, *, answered_s: float | None = None) -> None:
        super().release(key, holder)
        raise StoreUnavailable("cannot reach Redis")


def test_sd_pool_store_outage_at_release_does_not_lose_the_rendered_image(tag: str) -> None:
    settings = make_settings(f"mock://gpu-{tag}")
    pool = SDPool(settings, _ReleaseFails(), lambda url: SDClient(settings, base_url=url))
    try:
        with pool.slot("job-1"):
            result = pool.txt2img("job-1", params())
        assert result.image_bytes
    finally:
        pool.close()


class _CountingState(MemoryPoolState):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def release(self, key: str, holder: str, *, answered_s: float | None = None) -> LoadedModel | None:
        self.calls["release"] += 1
        return super().release(key, holder, answered_s=answered_s)

    def status(self, backends: Any) -> Any:
        self.calls["status"] += 1
        return super().status(backends)


def test_sd_pool_answered_call_gives_its_slot_back_once_and_reads_the_checkpoint_only_when_new(tag: str) -> None:
    settings = make_settings(f"mock://gpu-{tag}")
    state = _CountingState()
    pool = SDPool(settings, state, lambda url: SDClient(settings, base_url=url))
    try:
        for seed in range(3):
            with pool.slot(f"job-{seed}"):
                result = pool.txt2img(f"job-{seed}", params(seed))
        # Only the first answer told the pool something new: the checkpoint it had loaded.
        assert state.calls == {"release": 3, "status": 1}
        assert [status.model for status in pool.status()] == [result.model_name]
        assert [status.in_use for status in pool.status()] == [0]
    finally:
        pool.close()


def test_loaded_model_confirms_only_the_same_checkpoint_with_its_hash_known() -> None:
    known = LoadedModel(key="sd_xl_base_1.0", has_hash=True, loading=False)

    assert known.confirms("sd_xl_base_1.0", "31e35c80fc")
    assert not known.confirms("v1-5-pruned", "31e35c80fc")
    assert not dataclasses.replace(known, loading=True).confirms("sd_xl_base_1.0", None)
    assert not dataclasses.replace(known, has_hash=False).confirms("sd_xl_base_1.0", "31e35c80fc")
    assert dataclasses.replace(known, has_hash=False).confirms("sd_xl_base_1.0", None)
    assert not LoadedModel(key=None, has_hash=False, loading=False).confirms("sd_xl_base_1.0", None)


class _HangingProbe:
    """A server that takes seconds to (not) answer its liveness probe."""

    def __init__(self, hang_s: float) -> None:
        self.hang_s = hang_s

    def progress(self) -> dict[str, Any]:
        time.sleep(self.hang_s)
        raise SDUnavailable("probe timed out", url="mock://down")


def test_sd_pool_slow_probe_does_not_let_running_leases_expire(tag: str) -> None:
    settings = make_settings(f"mock://up-{tag},mock://down-{tag}", sd_slot_lease_s=3.0, sd_cooldown_min_s=0.1)
    state = MemoryPoolState()
    hanging = _HangingProbe(5.0)
    pool = SDPool(settings, state, lambda url: hanging)  # type: ignore[arg-type,return-value]
    state.record_failure(f"mock://down-{tag}", "down", bench=True, policy=pool.policy)
    try:
        with pool.slot("job-1") as backend:
            assert backend.key == f"mock://up-{tag}"
            time.sleep(4.5)  # a call longer than the lease, while the other server's probe hangs
            in_use = {s.key: s.in_use for s in pool.status()}
            assert in_use[backend.key] == 1, "the running call's lease expired: its slot is free for another"
    finally:
        hanging.hang_s = 0
        pool.close()
