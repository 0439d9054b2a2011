"""Checkpoint affinity: the ranking of servers for a job that names a checkpoint (pure), and the
pool switching, learning and waiting over in-process mock servers that load checkpoints like A1111."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from pipeline.errors import NoFreeSlot, Outranked, SDWrongCheckpoint
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.models import GenerationParams, JobSpec
from pipeline.sd.mock.http import get_mock_server
from pipeline.sd.pool.affinity import (
    DEFAULT_LOAD_S,
    checkpoint_key,
    choose,
    grouped_by_checkpoint,
    load_estimate_s,
    wanted,
)
from pipeline.sd.pool.pool import SDPool
from pipeline.sd.pool.redis_state import RedisPoolState
from pipeline.sd.pool.state import BackendStatus
from pipeline.settings import Settings
from pipeline.upscale.params import UpscaleParams
from tests.test_pipeline.test_sd.test_mock_img2img import png_b64
from tests.test_pipeline.test_sd.test_pool import Recorder, make_settings, open_pool, params

NOW = 1_000_000.0


def server(key: str, model: str | None, *, in_use: int = 0, **fields: Any) -> BackendStatus:
    base: dict[str, Any] = {
        "key": key,
        "max_slots": 1,
        "in_use": in_use,
        "healthy": True,
        "benched_until": None,
        "cooldown_s": 0.0,
        "consecutive_failures": 0,
        "done": 10,
        "failures": 0,
        "total_s": 3.0,
        "last_error": None,
        "last_error_at": None,
        "model": model,
    }
    return BackendStatus(**(base | fields))


def asking(model: str | None, seed: int = 5) -> GenerationParams:
    if model is None:
        return params(seed)
    return params(seed).model_copy(update={"override_settings": {"sd_model_checkpoint": model}})


# -- names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "juggernaut",
        "Juggernaut.safetensors",
        "SDXL/juggernaut.safetensors [6ce0161689]",
        "sdxl\\Juggernaut.ckpt",
    ],
)
def test_checkpoint_key_reads_titles_file_names_and_model_names_alike(name: str) -> None:
    assert checkpoint_key(name) == "juggernaut"


def test_checkpoint_key_of_nothing_is_none() -> None:
    assert checkpoint_key(None) is None
    assert checkpoint_key("  ") is None


def test_wanted_reads_the_override_checkpoint_of_a_job() -> None:
    assert wanted(asking("b.safetensors [1e6b36ed98]")) == "b.safetensors [1e6b36ed98]"
    assert wanted(asking(None)) is None
    assert wanted(params().model_copy(update={"override_settings": {"CLIP_stop_at_last_layers": 2}})) is None


def _spec(model: str | None) -> JobSpec:
    settings = Settings(_env_file=None, sd_api_url="mock://")  # type: ignore[call-arg]
    override = {"sd_model_checkpoint": model} if model else None
    request = GenerationRequest(prompt="p", width=64, height=64, override_settings=override)
    (spec,) = plan_generate(settings, request, build_step_params(settings, grid="2x2", band_px=8, sigma=2.0), now=1.0)
    return spec


def test_grouped_by_checkpoint_keeps_first_appearance_and_file_order_within_a_group() -> None:
    specs = [_spec(m) for m in ["b.safetensors", None, "a", "B", "a.safetensors [163f4dbbad]", None]]
    grouped = grouped_by_checkpoint(specs)
    assert [specs.index(s) for s in grouped] == [0, 3, 1, 5, 2, 4]


# -- the ranking ------------------------------------------------------------------------------------
def test_choose_takes_a_free_server_that_has_the_checkpoint() -> None:
    statuses = [server("s1", "a"), server("s2", "b.safetensors [1e6b36ed98]")]
    choice = choose(statuses, "b", wants={"b": 1}, waited_s=0, wait_bound_s=5, now=NOW)
    assert (choice.order, choice.reason) == (["s2"], "affine")


def test_choose_switches_the_server_whose_checkpoint_nobody_waits_for() -> None:
    statuses = [server("s1", "a"), server("s2", "c")]
    # jobs in the pool want a (this one wants b): s1 is the only server with a
    choice = choose(statuses, "b", wants={"b": 1, "a": 2}, waited_s=0, wait_bound_s=5, now=NOW)
    assert (choice.order, choice.reason) == (["s2", "s1"], "switch")


def test_choose_switches_a_server_whose_checkpoint_another_server_also_has() -> None:
    statuses = [server("s1", "a"), server("s2", "a"), server("s3", "c")]
    choice = choose(statuses, "b", wants={"b": 1, "a": 3, "c": 3}, waited_s=0, wait_bound_s=5, now=NOW)
    assert choice.order[0] in {"s1", "s2"}
    assert choice.order[-1] == "s3"


def test_choose_lets_jobs_for_the_only_server_of_their_checkpoint_go_first_within_the_bound() -> None:
    statuses = [server("s1", "a")]  # one server, with a; another job in the pool wants a
    waiting = choose(statuses, "b", wants={"b": 1, "a": 1}, waited_s=1.0, wait_bound_s=5, now=NOW)
    past_bound = choose(statuses, "b", wants={"b": 1, "a": 1}, waited_s=5.0, wait_bound_s=5, now=NOW)
    nobody_else = choose(statuses, "b", wants={"b": 1}, waited_s=0.0, wait_bound_s=5, now=NOW)
    assert (waiting.reason, past_bound.reason, nobody_else.reason) == ("wait", "switch", "switch")


def test_choose_prefers_the_shortest_measured_load() -> None:
    statuses = [server("s1", "a", load_s={"b": 40.0}), server("s2", "c", load_s={"b": 4.0})]
    choice = choose(statuses, "b", wants={"b": 1}, waited_s=0, wait_bound_s=5, now=NOW)
    assert choice.order == ["s2", "s1"]


def test_choose_waits_for_a_busy_affine_server_within_the_bound_then_takes_another() -> None:
    statuses = [server("s1", "b", in_use=1), server("s2", "a")]
    waiting = choose(statuses, "b", wants={"b": 1}, waited_s=1.0, wait_bound_s=5, now=NOW)
    past_bound = choose(statuses, "b", wants={"b": 1}, waited_s=5.0, wait_bound_s=5, now=NOW)
    assert (waiting.order, waiting.reason) == ([], "wait")
    assert (past_bound.order, past_bound.reason) == (["s2"], "switch")


def test_choose_switches_at_once_when_the_affine_queue_is_longer_than_a_load() -> None:
    # 0.3 s per image, 40 jobs ahead on the one server with b: 12 s, while a load takes 3 s
    statuses = [server("s1", "b", in_use=1, load_s={"b": 3.0}), server("s2", "a", load_s={"b": 3.0})]
    choice = choose(statuses, "b", wants={"b": 41}, waited_s=0.0, wait_bound_s=60, now=NOW)
    assert (choice.order, choice.reason) == (["s2"], "switch")


def test_choose_counts_a_switch_in_progress_as_affine() -> None:
    statuses = [
        server("s1", "b", in_use=1, loading=True, model_since=NOW - 1, load_s={"b": 3.0}),
        server("s2", "a", load_s={"b": 3.0}),
    ]
    choice = choose(statuses, "b", wants={"b": 2}, waited_s=0.0, wait_bound_s=5, now=NOW)
    assert choice.reason == "wait"


def test_choose_has_nothing_when_every_server_is_busy() -> None:
    statuses = [server("s1", "a", in_use=1), server("s2", "c", in_use=1)]
    assert choose(statuses, "b", wants={}, waited_s=99, wait_bound_s=5, now=NOW).order == []


def test_choose_never_takes_a_benched_server() -> None:
    statuses = [server("s1", "b", healthy=False), server("s2", "a")]
    assert choose(statuses, "b", wants={}, waited_s=0, wait_bound_s=5, now=NOW).order == ["s2"]


def test_load_estimate_falls_back_from_the_server_to_the_pool_to_a_default() -> None:
    measured = server("s1", "a", load_s={"b": 2.0, "c": 4.0})
    other = server("s2", "a")
    assert load_estimate_s(measured, "b", [measured, other]) == 2.0
    assert load_estimate_s(measured, "d", [measured, other]) == 3.0
    assert load_estimate_s(other, "b", [measured, other]) == 3.0
    assert load_estimate_s(other, "b", [other]) == DEFAULT_LOAD_S


# -- the pool over mock servers -----------------------------------------------------------------------
@pytest.fixture
def one_server() -> Iterator[tuple[SDPool, str, Recorder]]:
    url = f"mock://ckpt-{uuid.uuid4().hex[:8]}?models=a;b;c&model_load_ms=1"
    recorder = Recorder()
    pool = open_pool(make_settings(url), observer=recorder)
    pool.check_all()
    yield pool, url, recorder
    pool.close()


def test_pool_learns_the_loaded_checkpoint_when_it_probes(one_server: tuple[SDPool, str, Recorder]) -> None:
    pool, _, _ = one_server
    (status,) = pool.status()
    assert checkpoint_key(status.model) == "a"
    assert status.model_hash == get_mock_server(one_server[1]).stats()["loaded_model"].rsplit("[", 1)[1][:10]


def test_pool_switch_stays_loaded_for_the_jobs_after_it(one_server: tuple[SDPool, str, Recorder]) -> None:
    pool, url, recorder = one_server
    rendered = [pool.txt2img(f"job{i}", asking(model, i)).model_name for i, model in enumerate(["b", "b", None, "b"])]
    stats = get_mock_server(url).stats()
    assert rendered == ["b", "b", "b", "b"]  # the job naming none rendered on b: no reload of a
    assert stats["model_loads"] == 1
    (status,) = pool.status()
    assert (checkpoint_key(status.model), status.model_loads, list(status.load_s)) == ("b", 1, ["b"])
    assert recorder.loads == [(pool.backends[0].key, "b")]


def test_pool_job_naming_no_checkpoint_never_switches(one_server: tuple[SDPool, str, Recorder]) -> None:
    pool, url, _ = one_server
    for i in range(3):
        assert pool.txt2img(f"job{i}", asking(None, i)).model_name == "a"
    assert get_mock_server(url).stats()["model_loads"] == 0


def test_pool_notices_a_checkpoint_changed_behind_its_back(one_server: tuple[SDPool, str, Recorder]) -> None:
    pool, url, recorder = one_server
    pool.txt2img("job0", asking("b", 0))
    # someone picks c in the web UI
    get_mock_server(url).checkpoints.set_options({"sd_model_checkpoint": "c.safetensors"}, lambda load: load())
    assert pool.txt2img("job1", asking(None, 1)).model_name == "c"
    (status,) = pool.status()
    assert checkpoint_key(status.model) == "c"
    assert recorder.loads[-1] == (pool.backends[0].key, "c")
    # and a job naming b switches back before it renders
    assert pool.txt2img("job2", asking("b", 2)).model_name == "b"
    assert checkpoint_key(pool.status()[0].model) == "b"


def test_pool_without_affinity_loads_per_request_and_puts_it_back() -> None:
    url = f"mock://blind-{uuid.uuid4().hex[:8]}?models=a;b&model_load_ms=1"
    pool = open_pool(make_settings(url, model_affinity=False))
    try:
        for i, model in enumerate(["b", None, "b"]):
            pool.txt2img(f"job{i}", asking(model, i))
    finally:
        pool.close()
    # b for the request, a again for the job naming none (the override was put back), b again
    assert get_mock_server(url).stats()["model_loads"] == 3


@pytest.fixture(params=["memory", "redis"])
def shared(request: pytest.FixtureRequest) -> Callable[..., SDPool]:
    """Opens a pool on memory state or on a real Redis (as workers on several machines share it)."""

    def make(settings: Settings, **kwargs: Any) -> SDPool:
        pool = open_pool(settings, **kwargs)
        if request.param == "redis":
            pool.state = RedisPoolState(redis.Redis.from_url(request.getfixturevalue("redis_url")))
        return pool

    return make


def test_pool_job_takes_the_other_server_when_the_affine_one_stays_busy(shared: Callable[..., SDPool]) -> None:
    tag = uuid.uuid4().hex[:8]
    urls = [f"mock://aff{i}-{tag}?models=a;b&model_load_ms=1" for i in range(2)]
    pool = shared(make_settings(",".join(urls), model_affinity_wait_s=0.2), slot_wait_s=60)
    try:
        pool.check_all()
        pool.txt2img("warm", asking("b", 0), pinned=urls[1])  # server 1 has b, server 0 has a
        busy, other = pool.backends[1], pool.backends[0]
        # server 1 is busy for as long as the test runs
        assert pool.state.acquire([busy], "long-job", lease_s=600, avoid=None) == busy.key
        result = pool.txt2img("job", asking("b", 1))
    finally:
        pool.close()
    assert result.backend_url == other.key
    assert result.model_name == "b"


def test_pool_job_waits_for_the_affine_server_within_the_bound(shared: Callable[..., SDPool]) -> None:
    tag = uuid.uuid4().hex[:8]
    urls = [f"mock://wait{i}-{tag}?models=a;b&model_load_ms=1" for i in range(2)]
    pool = shared(make_settings(",".join(urls), model_affinity_wait_s=600), slot_wait_s=0.3)
    try:
        pool.check_all()
        pool.txt2img("warm", asking("b", 0), pinned=urls[1])
        busy = pool.backends[1]
        assert pool.state.acquire([busy], "long-job", lease_s=600, avoid=None) == busy.key
        # the other server is free, but switching it costs more than waiting for b's server
        with pytest.raises(NoFreeSlot):
            pool.txt2img("job", asking("b", 1))
    finally:
        pool.close()
    assert get_mock_server(urls[0]).stats()["model_loads"] == 0


def test_pool_two_jobs_for_a_new_checkpoint_switch_one_server_not_two(shared: Callable[..., SDPool]) -> None:
    tag = uuid.uuid4().hex[:8]
    urls = [f"mock://two{i}-{tag}?models=a;b&model_load_ms=200&latency_ms=50" for i in range(2)]
    pool = shared(make_settings(",".join(urls)), slot_wait_s=60)
    results: list[str | None] = []
    try:
        pool.check_all()
        threads = [
            threading.Thread(target=lambda i=i: results.append(pool.txt2img(f"job{i}", asking("b", i)).model_name))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        pool.close()
    assert results == ["b", "b"]
    assert sum(get_mock_server(url).stats()["model_loads"] for url in urls) == 1


def test_pool_job_rendered_on_another_checkpoint_fails_and_the_pool_learns_it(
    one_server: tuple[SDPool, str, Recorder],
) -> None:
    pool, url, _ = one_server
    pool.txt2img("job0", asking("b", 0))
    # a checkpoint the server does not have (deleted behind sdpipe's back): the switch fails, and
    # A1111 drops the override and renders on whatever is loaded
    with pytest.raises(SDWrongCheckpoint):
        pool.txt2img("job1", asking("gone.safetensors", 1))
    assert checkpoint_key(pool.status()[0].model) == "b"
    assert get_mock_server(url).stats()["model_loads"] == 1


def tile_call(pool: SDPool, job_id: str, model: str | None) -> tuple[str | None, str]:
    """One upscale tile's img2img through the pool, as pipeline.upscale.steps.render_tile makes it."""
    params = UpscaleParams(seed=5, override_settings={"sd_model_checkpoint": model} if model is not None else None)
    payload = params.img2img_payload(png_b64(), 64, 64, task_id=f"sdpipe-{job_id}-t0")
    result, backend = pool.call(
        job_id,
        lambda client, on_answer: client.img2img(payload, job_id=job_id, seed=5, on_answer=on_answer),
        model=params.checkpoint,
    )
    return result.model_name, backend


def test_pool_tile_calls_go_to_the_server_with_the_job_checkpoint(shared: Callable[..., SDPool]) -> None:
    tag = uuid.uuid4().hex[:8]
    urls = [f"mock://tiles{i}-{tag}?models=a;b&model_load_ms=1" for i in range(2)]
    pool = shared(make_settings(",".join(urls)), slot_wait_s=60)
    try:
        pool.check_all()
        pool.txt2img("warm", asking("b", 0), pinned=urls[1])  # server 1 has b, server 0 has a
        served = [tile_call(pool, f"job{i}", "b") for i in range(4)]
    finally:
        pool.close()
    assert served == [("b", pool.backends[1].key)] * 4  # every tile on b's server; nothing switched
    assert [get_mock_server(url).stats()["model_loads"] for url in urls] == [0, 1]


def test_pool_tile_call_switches_a_server_to_the_job_checkpoint_and_learns_it(
    one_server: tuple[SDPool, str, Recorder],
) -> None:
    pool, url, recorder = one_server
    served = [tile_call(pool, f"job{i}", model)[0] for i, model in enumerate(["b", "b", None])]

    assert served == ["b", "b", "b"]  # switched once with /options, so it stays loaded for the next tiles
    assert get_mock_server(url).stats()["model_loads"] == 1
    assert checkpoint_key(pool.status()[0].model) == "b"
    assert recorder.loads == [(pool.backends[0].key, "b")]


def test_pool_tile_call_waits_behind_better_class_work_like_a_generation() -> None:
    url = f"mock://tiles-priority-{uuid.uuid4().hex[:8]}"
    pool = open_pool(make_settings(url))
    payload = UpscaleParams(seed=5).img2img_payload(png_b64(), 64, 64, task_id="sdpipe-low-t0")

    def call(job_id: str, priority: int) -> str:
        result, backend = pool.call(
            job_id,
            lambda client, on_answer: client.img2img(payload, job_id=job_id, seed=5, on_answer=on_answer),
            priority=priority,
            since=time.time(),
        )
        return backend

    try:
        pool.state.ticket(["high-1"], 0, ttl_s=60)  # a high job waits for a server
        with pytest.raises(Outranked):
            call("low", 2)
        served_while_outranked = get_mock_server(url).stats()["img2img_requests"]
        pool.drop_ticket("high-1", 0)
        backend = call("low", 2)
    finally:
        pool.close()
    assert served_while_outranked == 0 and backend == pool.backends[0].key
