"""Issue 18's done-when, over real processes: a private redis-server, ``sdpipe worker``, the mock SD
server over HTTP, ``sdpipe serve`` where the API is the subject, and a webhook receiver of the test's own."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from pipeline.events.redis_log import RedisEventLog
from pipeline.store import RedisStatusStore
from tests.helpers import RedisServer, free_port, port_open, wait_until
from tests.procs import SDPIPE
from tests.receiver import Receiver
from tests.test_e2e.conftest import (
    Proc,
    child_pids,
    e2e_environment,
    mock_stats,
    run_sdpipe,
    spawner,
    start_mock,
    start_worker,
)

pytestmark = pytest.mark.e2e

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = {"BROKER_HEARTBEAT_TIMEOUT_MS": "3000", "WIDTH": "64", "HEIGHT": "64", "WEBHOOK_SECRET": SECRET}


def _batch(env: dict[str, str], tmp_path: Path, rows: int, prefix: str, *extra: str) -> str:
    path = tmp_path / f"{prefix}.txt"
    path.write_text("".join(f"{prefix} {i}\n" for i in range(rows)))
    result = run_sdpipe("batch", str(path), "--no-wait", *extra, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def _succeeded(store: RedisStatusStore, batch_id: str) -> int:
    return store.count_by_state(batch_id=batch_id)[next(s for s in store.count_by_state() if s.value == "succeeded")]


def test_webhooks_one_id_per_event_signed_through_500s_and_a_killed_worker(
    e2e_env: dict[str, str],
    redis_url: str,
    spawn: Callable[..., Proc],
    tmp_path: Path,
    receiver_factory: Callable[..., Receiver],
) -> None:
    """A receiver answering 500 to the first two deliveries of every event, 20 jobs and their batch,
    a worker process kill -9ed mid-run: exactly one distinct webhook-id per event, all signatures valid."""
    receiver = receiver_factory(fail_first=2)
    env = {**e2e_env, **FAST, "WEBHOOK_URL": receiver.url, "WEBHOOK_RETRY_MIN_S": "0.2", "WEBHOOK_RETRY_MAX_S": "1"}
    env["SD_API_URL"] = start_mock(spawn, env, "--latency-ms", "300")
    store = RedisStatusStore.from_url(redis_url)
    batch_id = _batch(env, tmp_path, 20, "hook")
    worker = start_worker(spawn, env, processes=1, threads=2)
    assert wait_until(lambda: _succeeded(store, batch_id) >= 5, timeout_s=120)
    (child,) = child_pids(worker.popen.pid)
    os.kill(child, signal.SIGKILL)
    assert wait_until(lambda: _succeeded(store, batch_id) == 20, timeout_s=180)
    assert wait_until(lambda: len(receiver.answered()) >= 21, timeout_s=120), len(receiver.answered())
    time.sleep(2)  # anything still in flight (a duplicate) would arrive now
    by_event: dict[tuple[str, str], set[str]] = {}
    verifier = Webhook(SECRET)
    for headers, body, _status in receiver.deliveries:
        payload = verifier.verify(body, headers)  # raises on a bad signature
        key = (payload["type"], payload["data"].get("job_id") or payload["data"]["batch_id"])
        by_event.setdefault(key, set()).add(headers["webhook-id"])
    assert len(by_event) == 21
    assert all(len(ids) == 1 for ids in by_event.values()), by_event
    assert sum(1 for event_type, _ in by_event if event_type == "job.succeeded") == 20
    assert (("batch.completed", batch_id)) in by_event
    # every id was retried through its two 500s with the same id
    assert all(receiver.attempts[next(iter(ids))] >= 3 for ids in by_event.values())
    status = json.loads(
        run_sdpipe("status", store.list_jobs(batch_id=batch_id, limit=1)[0].job_id, "--json", env=env).stdout
    )
    assert status["webhooks"][0]["state"] == "delivered" and status["webhooks"][0]["attempts"] >= 3
    store.close()


def test_hanging_receiver_never_holds_up_the_batch(
    e2e_env: dict[str, str],
    redis_url: str,
    spawn: Callable[..., Proc],
    tmp_path: Path,
    receiver_factory: Callable[..., Receiver],
) -> None:
    """A receiver that never answers: the batch completes while every delivery is still hanging
    (they run on the webhooks queue's own threads). The wall-time comparison is bench target 10."""
    receiver = receiver_factory(hang=True)
    env = {**e2e_env, **FAST, "WEBHOOK_URL": receiver.url, "WEBHOOK_TIMEOUT_S": "60", "WEBHOOK_THREADS": "2"}
    env["SD_API_URL"] = start_mock(spawn, env, "--latency-ms", "200")
    store = RedisStatusStore.from_url(redis_url)
    batch_id = _batch(env, tmp_path, 8, "hang")
    start_worker(spawn, env, processes=1, threads=2)
    assert wait_until(lambda: _succeeded(store, batch_id) == 8, timeout_s=120)
    with receiver.lock:
        hanging = len(receiver.deliveries)
    assert hanging >= 1 and not receiver.answered()  # the receiver is still hanging on its first ones
    job_id = store.list_jobs(batch_id=batch_id, limit=1)[0].job_id
    status = json.loads(run_sdpipe("status", job_id, "--json", env=env).stdout)
    assert [d["state"] for d in status["webhooks"]] == ["pending"]
    store.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """One ``sdpipe serve``, worker, mock server (1.2 s a render) and private Redis for every API test
    of this module (each uses its own prompts and batches); the worker publishes preview images."""
    folder = tmp_path_factory.mktemp("push-api")
    server = RedisServer(port=free_port(), directory=folder)
    server.start()
    try:
        with spawner(folder) as spawn:
            env = {**e2e_environment(server.url, folder), **FAST, "WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
            env["PROGRESS_PREVIEW"] = "true"
            env["SD_API_URL"] = start_mock(spawn, env, "--latency-ms", "1200")
            port = free_port()
            proc = spawn("serve", "--port", str(port), env=env, name="serve")
            assert wait_until(lambda: port_open(port), timeout_s=30), proc.output()
            start_worker(spawn, env, processes=1, threads=2)
            yield f"http://127.0.0.1:{port}", env
    finally:
        server.stop()


def _read_sse(
    url: str, *, until: str, headers: dict[str, str] | None = None, limit_s: float = 120
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + limit_s
    with httpx.stream("GET", url, headers=headers or {}, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == until or time.monotonic() > deadline:
                    break
    return events


def test_sse_shows_steps_and_progress_and_replays_only_what_was_missed(api: tuple[str, dict[str, str]]) -> None:
    base, _ = api
    accepted = httpx.post(f"{base}/api/batches", json={"rows": ["sse a", "sse b"], "defaults": {"steps": 20}}).json()
    batch_id = accepted["batch_id"]
    events = _read_sse(f"{base}/api/events?batch={batch_id}", until="batch.completed")
    for job_id in accepted["job_ids"]:
        mine = [e for e in events if e["job_id"] == job_id]
        steps = [e["data"]["step"] for e in mine if e["type"] == "job.step.finished"]
        assert steps == ["generate", "split", "seam_blur", "merge"]
        progress = [e["data"] for e in mine if e["type"] == "job.progress"]
        assert progress and all(0 <= p["step"] <= p["steps"] == 20 for p in progress)
        assert any(e["type"] == "job.succeeded" for e in mine)
    # Reconnect from the middle: exactly the events after that id come back.
    middle = events[len(events) // 2]
    replay = _read_sse(
        f"{base}/api/events?batch={batch_id}", until="batch.completed", headers={"Last-Event-ID": middle["id"]}
    )
    assert [e["id"] for e in replay] == [e["id"] for e in events[len(events) // 2 + 1 :]]
    # Preview images are opt-in: only a client asking with ?previews=true gets job.preview events,
    # and no job record carries one.
    assert "job.preview" not in {e["type"] for e in events}
    with_previews = _read_sse(f"{base}/api/events?batch={batch_id}&previews=true", until="batch.completed")
    previews = [e for e in with_previews if e["type"] == "job.preview"]
    assert previews and all(base64.b64decode(e["data"]["image"]).startswith(b"\x89PNG") for e in previews)
    record = httpx.get(f"{base}/api/jobs/{accepted['job_ids'][0]}").text
    assert previews[0]["data"]["image"] not in record and "preview" not in record


def test_same_generate_body_with_one_idempotency_key_is_one_job_one_sd_call(api: tuple[str, dict[str, str]]) -> None:
    base, env = api
    body = {"prompt": "idempotent fox", "steps": 5}
    headers = {"Idempotency-Key": "key-1"}
    first = httpx.post(f"{base}/api/generate?wait=true", json=body, headers=headers, timeout=120)
    again = httpx.post(f"{base}/api/generate", json=body, headers=headers, timeout=60)
    assert first.status_code == 200, first.text
    assert again.json()["job_ids"] == [job["job_id"] for job in first.json()["jobs"]]
    other = httpx.post(f"{base}/api/generate", json={**body, "steps": 6}, headers=headers, timeout=60)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    requests = mock_stats(env["SD_API_URL"])["requests"]
    assert isinstance(requests, list)
    assert [r["prompt"] for r in requests].count("idempotent fox") == 1


def test_high_priority_job_starts_next_behind_twenty_queued(
    e2e_env: dict[str, str], redis_url: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """A busy server (one slot), 4 low then 20 normal jobs queued; a high-priority job submitted then:
    the next SD call to start is the high one (the call already running, or taken as it was submitted,
    finishes), and no low job started before it although they were queued first."""
    env = {**e2e_env, **FAST}
    env["SD_API_URL"] = mock = start_mock(spawn, env, "--latency-ms", "800")
    store = RedisStatusStore.from_url(redis_url)
    _batch(env, tmp_path, 4, "low", "--priority", "low")
    _batch(env, tmp_path, 20, "normal")
    start_worker(spawn, env, processes=1, threads=4)
    assert wait_until(lambda: len(_requests(mock)) >= 2, timeout_s=60)
    result = run_sdpipe("generate", "urgent", "--priority", "high", "--no-wait", env=env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split()[-1]
    assert wait_until(lambda: "urgent" in [r["prompt"] for r in _requests(mock)], timeout_s=60)
    log = RedisEventLog(redis.Redis.from_url(redis_url), max_len=1000)
    (queued,) = [e for e in log.read(None, job_id=job_id).events if e.type == "job.queued"]
    requests = _requests(mock)
    urgent_at = next(r["at"] for r in requests if r["prompt"] == "urgent")
    between = [r["prompt"] for r in requests if queued.ts < r["at"] < urgent_at]
    # At most the call that took the slot as the job was being queued went before it; 18 normal
    # jobs were still waiting.
    assert len(between) <= 1, (between, [r["prompt"] for r in requests])
    assert sum(1 for r in requests if r["at"] < urgent_at) < 15  # normal jobs were still queued behind it
    # Normal before low: the low jobs, first in the queue, made no SD call while normal work was queued
    assert not [r["prompt"] for r in requests if r["at"] <= urgent_at and r["prompt"].startswith("low")]
    log.close()
    store.close()


def _requests(mock: str) -> list[dict[str, Any]]:
    requests = mock_stats(mock)["requests"]
    assert isinstance(requests, list)
    return requests


def test_paused_batch_starts_no_sd_call_until_resumed_and_watch_follows_it_to_the_end(
    api: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Pause from the CLI and the API: a paused batch's jobs make no SD call, status and the API say
    paused; resumed, they render, and ``sdpipe watch --batch`` (started while paused) shows their
    steps and exits when the batch is done."""
    base, env = api
    assert run_sdpipe("pause", env=env).returncode == 0  # the whole queue, from the CLI
    accepted = httpx.post(f"{base}/api/batches", json={"rows": ["paused a", "paused b"]}).json()
    batch_id, job_ids = accepted["batch_id"], accepted["job_ids"]
    assert httpx.post(f"{base}/api/pause", params={"batch": batch_id}).json()["paused_batches"] == [batch_id]
    assert run_sdpipe("resume", env=env).returncode == 0  # the queue runs again; the batch stays paused
    assert httpx.get(f"{base}/api/queue").json() == {"paused": False, "paused_batches": [batch_id]}
    assert httpx.get(f"{base}/api/jobs/{job_ids[0]}").json()["paused"] is True
    assert json.loads(run_sdpipe("status", job_ids[0], "--json", env=env).stdout)["paused"] is True
    assert "paused" in run_sdpipe("status", "--batch", batch_id, env=env).stdout
    with (tmp_path / "watch.log").open("w+") as watched:
        watch = subprocess.Popen(
            [*SDPIPE, "watch", "--batch", batch_id], env=env, stdout=watched, stderr=subprocess.STDOUT, text=True
        )
        time.sleep(5)  # an observation window: longer than a paused job's look-again delay (2-4 s)
        assert not [r for r in _requests(env["SD_API_URL"]) if r["prompt"].startswith("paused")]
        assert {job["state"] for job in httpx.get(f"{base}/api/jobs", params={"batch": batch_id}).json()["jobs"]} == {
            "queued"
        }
        httpx.post(f"{base}/api/resume", params={"batch": batch_id}).raise_for_status()
        assert watch.wait(timeout=120) == 0
        watched.seek(0)
        output = watched.read()
    assert len([r for r in _requests(env["SD_API_URL"]) if r["prompt"].startswith("paused")]) == 2
    for job_id in job_ids:
        assert f"job {job_id[:8]} job.step.finished step=merge" in output, output
        assert f"job {job_id[:8]} job.succeeded" in output
    assert "job.progress" in output and "done: 2/2 job(s) ended" in output
