"""The fault suite: real worker processes, a private redis-server, the mock SD server with faults.

Each test states what it injects and what it asserts, and prints how long recovery took
(``pytest -m faults -s`` shows the figures; the README's Guarantees section quotes them).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pipeline.models import JobState
from pipeline.store import RedisStatusStore
from tests.helpers import RedisServer, free_port, wait_until
from tests.test_e2e.conftest import SDPIPE, Proc, child_pids, mock_stats, run_sdpipe, start_mock, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

#: What each worker process logs once it takes messages (a replaced one too).
READY = "Worker process is ready"
RUNNING = ("generating", "splitting", "blurring", "merging")
#: Short heartbeat so a killed worker's messages come back in seconds in tests (default: 20 s).
FAST_RECOVERY = {"BROKER_HEARTBEAT_TIMEOUT_MS": "3000", "WIDTH": "64", "HEIGHT": "64"}


def _submit(env: dict[str, str], tmp_path: Path, rows: int, prefix: str) -> str:
    path = tmp_path / f"{prefix}.txt"
    path.write_text("".join(f"{prefix} {i}\n" for i in range(rows)))
    result = run_sdpipe("batch", str(path), "--no-wait", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def _jobs(env: dict[str, str]) -> list[dict[str, object]]:
    return list(json.loads(run_sdpipe("jobs", "--json", "--limit", "1000", env=env).stdout))


def _counts(store: RedisStatusStore, batch_id: str) -> dict[str, int]:
    return {state.value: n for state, n in store.count_by_state(batch_id=batch_id).items() if n}


def _assert_outputs_whole(output_dir: Path, jobs: list[dict[str, object]]) -> None:
    """Every output decodes completely, matches its sidecar's sha256, and no temp file is left."""
    for job in jobs:
        result = job["result"]
        assert isinstance(result, dict)
        data = Path(result["image"]).read_bytes()
        sidecar = json.loads(Path(result["sidecar"]).read_text())
        assert hashlib.sha256(data).hexdigest() == sidecar["output"]["sha256"]
        with Image.open(result["image"]) as image:
            image.load()
    leftovers = list(output_dir.rglob("*.tmp"))
    assert leftovers == []


def test_worker_killed_three_times_loses_and_duplicates_nothing(
    e2e_env: dict[str, str], redis_url: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Injected: kill -9 of a worker process 3 times during a 50-job batch (sdpipe worker starts it again).
    Asserted: all 50 succeed, outputs whole, no txt2img for a job after its image was saved."""
    env = {**e2e_env, **FAST_RECOVERY}
    mock = start_mock(spawn, env, "--latency-ms", "300")
    env["SD_API_URL"] = mock
    store = RedisStatusStore.from_url(redis_url)
    batch_id = _submit(env, tmp_path, 50, "kill")
    worker = start_worker(spawn, env, processes=1, threads=2, name="worker-0")
    recoveries = []
    for _ in range(3):
        # kill only after fresh progress, so each kill lands on other jobs than the last one's
        # (killing the same job three times is a poison job, which the next test covers)
        target = min(_counts(store, batch_id).get("succeeded", 0) + 5, 45)
        assert wait_until(lambda t=target: _counts(store, batch_id).get("succeeded", 0) >= t, timeout_s=120)
        in_flight = {
            j.job_id: j.state.rank for j in store.list_jobs(batch_id=batch_id, limit=100) if j.state.value in RUNNING
        }
        (child,) = child_pids(worker.popen.pid)
        ready = worker.output().count(READY)
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()
        # sdpipe worker starts the process again (Dramatiq alone would stop the whole worker)
        assert wait_until(lambda r=ready: worker.output().count(READY) > r, timeout_s=60), worker.output()

        def moved_on(ranks: dict[str, int] = in_flight) -> bool:
            # every job the kill interrupted got past that step (its redelivery finished it)
            return all(store.get(i).state.terminal or store.get(i).state.rank > rank for i, rank in ranks.items())

        assert wait_until(moved_on, timeout_s=120)
        recoveries.append(time.monotonic() - killed_at)
    assert wait_until(lambda: _counts(store, batch_id).get("succeeded", 0) == 50, timeout_s=180), [
        (j.job_id, j.error, j.steps)
        for j in store.list_jobs(batch_id=batch_id, limit=100)
        if j.state.value != "succeeded"
    ]
    jobs = [j.model_dump(mode="json") for j in store.list_jobs(batch_id=batch_id, limit=100)]
    _assert_outputs_whole(Path(env["OUTPUT_DIR"]), jobs)
    # No job asked the SD server again once its image was saved (generate finished).
    requests = mock_stats(mock)["requests"]
    assert isinstance(requests, list)
    saved_at = {str(j["spec"]["generation"]["prompt"]): j["steps"]["generate"]["finished_at"] for j in jobs}
    late = [r for r in requests if r["at"] > saved_at[r["prompt"]] + 0.001]
    assert late == []
    for job in jobs:
        # each output written once: a second merge found it done (skipped), or the first died with
        # its worker before writing the image (it writes the sidecar, then the image, atomically)
        merge, error = job["steps"]["merge"], job["error"]
        died = error is not None and error["type"] == "WorkerDied" and error["step"] == "merge"
        assert merge["attempts"] == 1 or merge["skipped"] or died, job["job_id"]
    print(f"\nworker kill -9 x3: recovery (in-flight jobs moving again) {[round(r, 1) for r in recoveries]} s")
    store.close()


def test_poison_job_is_quarantined_after_three_deliveries(
    e2e_env: dict[str, str], redis_url: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Injected: a job whose generate step kills its worker every time (the test kills the worker
    whenever the SD server sees that prompt). Asserted: after 3 deliveries it is failed as
    quarantined, with the reason, and never delivered again; a healthy job beside it succeeds."""
    env = {**e2e_env, **FAST_RECOVERY}
    mock = start_mock(spawn, env, "--latency-ms", "1500")
    env["SD_API_URL"] = mock
    store = RedisStatusStore.from_url(redis_url)
    batch_id = _submit(env, tmp_path, 1, "poison")
    worker = start_worker(spawn, env, processes=1, threads=1, name="poison-0")
    kills = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        seen = [r for r in mock_stats(mock)["requests"] if str(r["prompt"]).startswith("poison")]  # type: ignore[union-attr]
        if len(seen) > kills:
            ready = worker.output().count(READY)
            for child in child_pids(worker.popen.pid):
                os.kill(child, signal.SIGKILL)
            kills += 1
            assert wait_until(lambda r=ready: worker.output().count(READY) > r, timeout_s=60), worker.output()
        (job,) = store.list_jobs(batch_id=batch_id, limit=5)
        if job.state.terminal:
            break
        time.sleep(0.2)
    (job,) = store.list_jobs(batch_id=batch_id, limit=5)
    assert job.state.value == "failed", job
    assert job.error is not None and job.error.type == "Quarantined"
    assert "quarantined: 3 deliveries of generate" in job.error.message
    assert kills == 3
    healthy = _submit(env, tmp_path, 1, "healthy")
    assert wait_until(lambda: _counts(store, healthy) == {"succeeded": 1}, timeout_s=60)
    store.close()


def test_sigterm_finishes_running_steps_and_requeues_the_rest(
    e2e_env: dict[str, str], redis_url: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Injected: SIGTERM to a worker while two SD calls run and more jobs are prefetched.
    Asserted: it exits 0 after the running steps finish; no step is left started-but-unfinished;
    a new worker completes every job."""
    env = {**e2e_env, **FAST_RECOVERY}
    mock = start_mock(spawn, env, "--latency-ms", "1200")
    env["SD_API_URL"] = mock
    store = RedisStatusStore.from_url(redis_url)
    batch_id = _submit(env, tmp_path, 6, "term")
    worker = start_worker(spawn, env, processes=1, threads=2, name="term-0")
    assert wait_until(lambda: _counts(store, batch_id).get("generating", 0) >= 1, timeout_s=30)
    stopped_at = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=60) == 0, worker.output()
    stop_s = time.monotonic() - stopped_at
    for job in store.list_jobs(batch_id=batch_id, limit=10):
        for name, step in job.steps.items():
            ended = step.finished_at is not None or (job.error is not None and job.error.step == name)
            assert ended, f"{job.job_id} {name} started but never finished"
    start_worker(spawn, env, processes=1, threads=2, name="term-1")
    assert wait_until(lambda: _counts(store, batch_id) == {"succeeded": 6}, timeout_s=90), _counts(store, batch_id)
    print(f"\nSIGTERM: worker stopped {stop_s:.1f} s after the signal (running SD calls take 1.2 s)")
    store.close()


def test_redis_restart_mid_batch_completes_and_cli_reports_outage(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Injected: the Redis server (AOF on) stops for 4 s mid-batch and restarts.
    Asserted: workers reconnect and the batch completes; the waiting CLI reports the outage in
    one line and keeps waiting."""
    server = RedisServer(port=free_port(), directory=tmp_path / "aof", appendonly=True)
    server.directory.mkdir()
    server.start()
    try:
        env = {**e2e_env, **FAST_RECOVERY, "REDIS_URL": server.url}
        mock = start_mock(spawn, env, "--latency-ms", "400")
        env["SD_API_URL"] = mock
        start_worker(spawn, env, processes=1, threads=2, name="aof-worker")
        path = tmp_path / "aof.txt"
        path.write_text("".join(f"aof {i}\n" for i in range(30)))
        cli = subprocess.Popen(
            [*SDPIPE, "batch", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # mid-batch: submitted (whatever the CLI's start-up takes on this machine) and partly done
        store = RedisStatusStore.from_url(server.url)
        try:
            assert wait_until(lambda: store.count_by_state()[JobState.SUCCEEDED] >= 2, timeout_s=60)
        finally:
            store.close()
        server.stop()
        down_at = time.monotonic()
        time.sleep(4)
        server.start()
        stdout, stderr = cli.communicate(timeout=180)
        total_s = time.monotonic() - down_at
        assert cli.returncode == 0, stdout + stderr
        assert stderr.count("waiting: ") == 1, stderr
        assert "status store back after" in stderr
        assert "Traceback" not in stderr
        batch_id = stdout.split()[1]
        manifest = json.loads(run_sdpipe("status", "--batch", batch_id, "--json", env=env).stdout)
        assert manifest["counts"] == {"succeeded": 30}
        print(f"\nRedis down 4 s: batch finished {total_s:.1f} s after the outage began")
    finally:
        server.stop()


def test_sd_faults_every_job_ends_terminal_with_a_reason(
    e2e_env: dict[str, str], redis_url: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Injected: 500 OutOfMemoryError 20%, dropped connections 10%, answers slower than the read
    timeout 5%, undecodable images 5%, over a 50-job batch. Asserted: every job ends succeeded or
    failed with its last error; none stays queued or running; the counts add up to 50."""
    env = {**e2e_env, **FAST_RECOVERY, "SD_TIMEOUT_S": "1", "MAX_RETRIES": "3"}
    mock = start_mock(spawn, env, "--faults", "500:0.2,reset:0.1,hang:0.05,garbage:0.05", "--hang-ms", "3000")
    env["SD_API_URL"] = mock
    store = RedisStatusStore.from_url(redis_url)
    start_worker(spawn, env, processes=2, threads=2)
    started = time.monotonic()
    batch_id = _submit(env, tmp_path, 50, "faulty")
    assert wait_until(
        lambda: sum(n for state, n in _counts(store, batch_id).items() if state in ("succeeded", "failed")) == 50,
        timeout_s=240,
    ), _counts(store, batch_id)
    elapsed = time.monotonic() - started
    counts = _counts(store, batch_id)
    assert set(counts) <= {"succeeded", "failed"} and sum(counts.values()) == 50
    jobs = store.list_jobs(batch_id=batch_id, limit=100)
    for job in jobs:
        if job.state.value == "failed":
            assert job.error is not None and job.error.message, job.job_id
    faults = mock_stats(mock)["faults"]
    assert isinstance(faults, dict) and sum(faults.values()) > 0
    # an undecodable image is permanent: that job failed on that attempt, with no retry after it
    garbage = [job for job in jobs if job.error is not None and job.error.type == "SDBadImage"]
    assert all(job.state.value == "failed" for job in garbage)
    print(f"\nSD faults {faults}: {counts} in {elapsed:.1f} s")
    store.close()


def test_hung_sd_server_times_out_and_interrupts_our_job(
    e2e_env: dict[str, str], redis_url: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Injected: an SD server that accepts every txt2img and never answers. Asserted: the job
    retries after SD_TIMEOUT_S, then fails with a timeout; no worker thread hangs; sdpipe sent
    /sdapi/v1/interrupt for each abandoned request (the server reported it as our task)."""
    env = {**e2e_env, **FAST_RECOVERY, "SD_TIMEOUT_S": "1", "MAX_RETRIES": "1"}
    mock = start_mock(spawn, env, "--faults", "hang:1.0", "--hang-ms", "600000")
    env["SD_API_URL"] = mock
    store = RedisStatusStore.from_url(redis_url)
    start_worker(spawn, env, processes=1, threads=1)
    started = time.monotonic()
    batch_id = _submit(env, tmp_path, 2, "hung")
    assert wait_until(lambda: _counts(store, batch_id) == {"failed": 2}, timeout_s=60), _counts(store, batch_id)
    elapsed = time.monotonic() - started
    for job in store.list_jobs(batch_id=batch_id, limit=5):
        assert job.error is not None and job.error.type == "SDTimeout"
        assert job.steps["generate"].attempts == 2
    stats = mock_stats(mock)
    assert stats["interrupts"] == 4  # 2 jobs x 2 attempts, each abandoned and interrupted
    assert stats["hanging"] == 0
    print(f"\nhung SD server: 2 jobs failed after 2 attempts each in {elapsed:.1f} s, 4 interrupts sent")
    store.close()
