"""``sdpipe worker`` replaces a worker process that dies, and stops on a crash loop."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import CRASH_LOOP_DEATHS, RET_CRASH_LOOP
from pipeline.models import JobState
from pipeline.store import RedisStatusStore
from tests.helpers import wait_until
from tests.test_e2e.conftest import Proc, child_pids, run_sdpipe, start_mock, start_worker

pytestmark = pytest.mark.e2e

#: Short heartbeat so a killed process's messages come back in seconds (default: 20 s).
FAST_RECOVERY = {"BROKER_HEARTBEAT_TIMEOUT_MS": "3000", "WIDTH": "64", "HEIGHT": "64"}


def _succeeded(store: RedisStatusStore, batch_id: str) -> int:
    return store.count_by_state(batch_id=batch_id).get(JobState.SUCCEEDED, 0)


def _replaced(worker: Proc, killed: int, processes: int, ready_before: int) -> bool:
    children = child_pids(worker.popen.pid)
    return (
        killed not in children
        and len(children) == processes
        and worker.output().count("Worker process is ready") > ready_before
    )


def test_worker_replaces_a_killed_process_and_the_batch_completes(
    e2e_env: dict[str, str], redis_url: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    # Given a 30-job batch and `sdpipe worker` with two processes
    env = {**e2e_env, **FAST_RECOVERY}
    env["SD_API_URL"] = start_mock(spawn, env, "--latency-ms", "200")
    rows = tmp_path / "heal.txt"
    rows.write_text("".join(f"heal {i}\n" for i in range(30)))
    submitted = run_sdpipe("batch", str(rows), "--no-wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[1]
    store = RedisStatusStore.from_url(redis_url)
    worker = start_worker(spawn, env, processes=2, threads=2)
    # When one of its processes is kill -9ed three times, each after fresh progress
    for kill in range(3):
        target = min(_succeeded(store, batch_id) + 3, 27)
        assert wait_until(lambda t=target: _succeeded(store, batch_id) >= t, timeout_s=120), worker.output()
        ready_before = worker.output().count("Worker process is ready")
        victim = child_pids(worker.popen.pid)[kill % 2]
        os.kill(victim, signal.SIGKILL)
        # Then it is replaced (the worker keeps its two processes) and nobody restarted anything by hand
        assert wait_until(lambda v=victim, r=ready_before: _replaced(worker, v, 2, r), timeout_s=60), worker.output()
        assert worker.popen.poll() is None, worker.output()
    # And every job of the batch succeeds
    assert wait_until(lambda: _succeeded(store, batch_id) == 30, timeout_s=240), [
        (j.job_id, j.state, j.error) for j in store.list_jobs(batch_id=batch_id, limit=100)
    ]
    assert worker.popen.poll() is None and len(child_pids(worker.popen.pid)) == 2
    assert worker.output().count("exited unexpectedly (exit code -9): starting it again") == 3
    store.close()


def test_worker_stops_with_one_error_on_a_crash_loop(e2e_env: dict[str, str], spawn: Callable[..., Proc]) -> None:
    # Given `sdpipe worker` with one process
    worker = start_worker(spawn, e2e_env, processes=1, threads=1)
    # When its process dies again and again (killed as soon as each replacement is ready)
    for _ in range(CRASH_LOOP_DEATHS):
        ready_before = worker.output().count("Worker process is ready")
        if worker.popen.poll() is not None:
            break
        (victim,) = child_pids(worker.popen.pid)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(
            lambda v=victim, r=ready_before: worker.popen.poll() is not None or _replaced(worker, v, 1, r),
            timeout_s=60,
        ), worker.output()
    # Then it stops with the crash-loop exit code and one clear error line
    assert worker.popen.wait(timeout=60) == RET_CRASH_LOOP, worker.output()
    errors = [line for line in worker.output().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "crash loop" in errors[0], worker.output()
    assert "Traceback" not in worker.output()


def test_waiting_generate_says_when_no_worker_is_alive(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    # Given a `generate` waiting on a job that a running worker has started
    env = {**e2e_env, **FAST_RECOVERY}
    env["SD_API_URL"] = start_mock(spawn, env, "--latency-ms", "1500")
    worker = start_worker(spawn, env, processes=1, threads=1)
    generate = spawn("generate", "a slow lighthouse", env=env, name="generate")
    assert wait_until(lambda: "job " in generate.output(), timeout_s=60), generate.output()
    # When the worker stops while the job still has steps to go
    assert worker.stop() == 0, worker.output()
    # Then the waiting generate says that no worker is alive, instead of waiting silently
    assert wait_until(lambda: "no sdpipe worker has been alive" in generate.output(), timeout_s=60), generate.output()
    assert generate.popen.poll() is None
    # And once a worker is back, it says so and the job finishes
    start_worker(spawn, env, processes=1, threads=1, name="worker-2")
    assert generate.popen.wait(timeout=120) == 0, generate.output()
    assert "sdpipe worker back" in generate.output()
