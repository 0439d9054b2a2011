"""The SD server pool end to end: real Redis, real worker processes, three mock servers over HTTP."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from pipeline.models import JobState
from pipeline.sd.backends import parse_backends
from pipeline.sd.pool.affinity import checkpoint_key
from pipeline.sd.pool.redis_state import RedisPoolState
from pipeline.store import RedisStatusStore
from tests.helpers import free_port, port_open, wait_until
from tests.test_e2e.conftest import Proc, child_pids, mock_stats, run_sdpipe, start_mock, start_worker

pytestmark = pytest.mark.e2e

LATENCY_MS = 300
JOBS = 60
SIZE = ("--width", "128", "--height", "128", "--band-px", "8")


def _start_mocks(spawn: Callable[..., Proc], env: dict[str, str], count: int) -> list[tuple[str, Proc]]:
    """``count`` mock servers at LATENCY_MS, each on a free port: their URLs and processes."""
    mocks = []
    for index in range(count):  # one after the other: a free port is only free until someone binds it
        port = free_port()
        proc = spawn("mock-sd", "--port", str(port), "--latency-ms", str(LATENCY_MS), env=env, name=f"mock-{index}")
        assert wait_until(lambda port=port: port_open(port), timeout_s=30), proc.output()
        mocks.append((f"http://127.0.0.1:{port}", proc))
    return mocks


def _pool_env(e2e_env: dict[str, str], urls: list[str], **extra: str) -> dict[str, str]:
    return {**e2e_env, "SD_API_URL": ",".join(urls), **extra}


def _submit(env: dict[str, str], count: int) -> list[str]:
    result = run_sdpipe("generate", "a lighthouse at dusk", "--count", str(count), *SIZE, "--no-wait", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("job ")]


def _wait_done(store: RedisStatusStore, job_ids: list[str], timeout_s: float) -> None:
    assert wait_until(lambda: all(store.get(j).state.terminal for j in job_ids), timeout_s=timeout_s, interval_s=0.02)


def _pool_status(redis_url: str, sd_api_url: str) -> dict[str, object]:
    state = RedisPoolState(redis.Redis.from_url(redis_url))
    try:
        return {s.key: s for s in state.status(parse_backends(sd_api_url))}
    finally:
        state.close()


def test_pool_three_servers_get_one_request_each_at_a_time(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], redis_url: str
) -> None:
    # Given 3 mock servers at 300 ms per image and 6 worker threads (2 processes x 3)
    urls = [url for url, _ in _start_mocks(spawn, e2e_env, 3)]
    env = _pool_env(e2e_env, urls)
    workers = start_worker(spawn, env, processes=2, threads=3)
    store = RedisStatusStore.from_url(redis_url)
    # When 60 jobs are submitted
    job_ids = _submit(env, JOBS)
    _wait_done(store, job_ids, timeout_s=120)
    records = [store.get(j) for j in job_ids]
    assert {r.state for r in records} == {JobState.SUCCEEDED}, workers.output()
    # Then no server ever held more than one request (running or waiting on its lock)
    stats = {url: mock_stats(url) for url in urls}
    assert {url: s["max_in_flight"] for url, s in stats.items()} == dict.fromkeys(urls, 1)
    assert sum(int(str(s["txt2img_completed"])) for s in stats.values()) == JOBS
    # (How long the run takes against the GPUs' own time is measured in bench/, target 6: never a timed test.)
    # And every sidecar names the server that rendered its image (no credentials)
    rendered = Counter(json.loads(Path(str(r.result.sidecar)).read_text())["backend_url"] for r in records if r.result)
    assert set(rendered) == set(urls)
    store.close()


def test_pool_killed_server_is_benched_and_its_jobs_finish_elsewhere(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], redis_url: str
) -> None:
    mocks = _start_mocks(spawn, e2e_env, 3)
    urls = [url for url, _ in mocks]
    env = _pool_env(e2e_env, urls, SD_COOLDOWN_MIN_S="60", SD_COOLDOWN_MAX_S="60")
    workers = start_worker(spawn, env, processes=2, threads=3)
    store = RedisStatusStore.from_url(redis_url)
    job_ids = _submit(env, JOBS)
    # When one of the three servers is killed mid-run
    victim, victim_proc = mocks[1]
    assert wait_until(lambda: int(str(mock_stats(victim)["txt2img_completed"])) >= 5, timeout_s=60)
    victim_proc.popen.send_signal(signal.SIGKILL)
    victim_proc.popen.wait()
    killed_at = time.time()
    # Then all 60 jobs still succeed
    _wait_done(store, job_ids, timeout_s=180)
    records = [store.get(j) for j in job_ids]
    assert Counter(r.state for r in records) == {JobState.SUCCEEDED: JOBS}, workers.output()
    # And after the kill, images came from the other servers only
    late = [r for r in records if (r.steps["generate"].finished_at or 0) > killed_at + 1]
    assert late and all(r.sd_info and r.sd_info.backend_url != victim for r in late)
    # And the dead server is benched, as `sdpipe backends` shows
    status = _pool_status(redis_url, env["SD_API_URL"])
    assert not status[victim].healthy
    result = run_sdpipe("backends", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = {row["key"]: row for row in json.loads(result.stdout)}
    assert shown[victim]["healthy"] is False and all(shown[u]["healthy"] for u in urls if u != victim)
    store.close()


def test_pool_slot_of_a_killed_worker_frees_within_its_lease(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], redis_url: str
) -> None:
    lease_s = 3.0
    url = start_mock(spawn, e2e_env, "--latency-ms", "60000", name="slow-mock")
    env = _pool_env(e2e_env, [url], SD_SLOT_LEASE_S=str(lease_s))
    worker = start_worker(spawn, env, processes=1, threads=1)
    _submit(env, 1)
    # When the worker holding the server's only slot is killed -9 mid-request
    assert wait_until(lambda: _pool_status(redis_url, url)[url].in_use == 1, timeout_s=30)
    time.sleep(lease_s)  # past at least one renewal: a live holder keeps its slot beyond the first lease
    assert _pool_status(redis_url, url)[url].in_use == 1
    for child in child_pids(worker.popen.pid):
        os.kill(child, signal.SIGKILL)
    killed = time.monotonic()
    # Then the slot is free again within the lease time
    assert wait_until(lambda: _pool_status(redis_url, url)[url].in_use == 0, timeout_s=lease_s + 5)
    freed_after_s = time.monotonic() - killed
    print(f"\nslot freed {freed_after_s:.2f} s after kill -9 (lease {lease_s} s)")
    assert freed_after_s <= lease_s + 0.5


def _submit_naming(env: dict[str, str], count: int, checkpoint: str | None, *, pinned: str | None = None) -> list[str]:
    model = ["--override", f"sd_model_checkpoint={checkpoint}"] if checkpoint else []
    model += ["--sd-url", pinned] if pinned else []
    result = run_sdpipe("generate", "a lighthouse", "--count", str(count), *SIZE, *model, "--no-wait", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("job ")]


def test_pool_checkpoints_are_shared_by_workers_and_a_change_behind_their_back_is_noticed(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], redis_url: str
) -> None:
    # Given two mock servers listing a, b and c (a loaded) and two worker processes sharing the pool state
    urls = [start_mock(spawn, e2e_env, "--models", "a,b,c", "--model-load-ms", "200", name=f"m{i}") for i in range(2)]
    env = _pool_env(e2e_env, urls)
    workers = start_worker(spawn, env, processes=2, threads=2)
    store = RedisStatusStore.from_url(redis_url)
    try:
        # When 8 jobs name b
        job_ids = _submit_naming(env, 8, "b.safetensors")
        _wait_done(store, job_ids, timeout_s=120)
        records = [store.get(j) for j in job_ids]
        assert {r.state for r in records} == {JobState.SUCCEEDED}, workers.output()
        # Then every image is of b, and b was loaded once in all (one server settled on it)
        assert {r.sd_info.model_name if r.sd_info else None for r in records} == {"b"}
        loads = {url: int(str(mock_stats(url)["model_loads"])) for url in urls}
        assert sum(loads.values()) == 1, loads
        switched = next(url for url, n in loads.items() if n == 1)
        status = _pool_status(redis_url, env["SD_API_URL"])[switched]
        assert (checkpoint_key(getattr(status, "model", None)), getattr(status, "model_loads", None)) == ("b", 1)
        # When someone picks c on that server's web UI, and jobs naming no checkpoint run
        httpx.post(f"{switched}/sdapi/v1/options", json={"sd_model_checkpoint": "c.safetensors"}, timeout=30)
        _wait_done(store, _submit_naming(env, 2, None, pinned=switched), timeout_s=60)
        # Then the pool has seen it from the answers: that server has c now
        assert checkpoint_key(getattr(_pool_status(redis_url, env["SD_API_URL"])[switched], "model", None)) == "c"
        # And a job naming b still renders on b
        (again,) = _submit_naming(env, 1, "b.safetensors")
        _wait_done(store, [again], timeout_s=60)
        info = store.get(again).sd_info
        assert info is not None and info.model_name == "b"
    finally:
        store.close()
