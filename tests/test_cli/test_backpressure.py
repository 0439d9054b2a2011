"""Backpressure: with MAX_QUEUE_DEPTH set, generate/batch refuse a full queue (exit 2) or wait for room."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.models import JobState
from pipeline.store import RedisStatusStore
from tests.helpers import wait_until
from tests.test_cli.conftest import Invoke

SIZE = ("--width", "64", "--height", "64")


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    """Redis mode with no worker running: submitted jobs stay queued."""
    return {"REDIS_URL": redis_url, "SD_API_URL": "mock://", "MAX_QUEUE_DEPTH": "3"}


def _queued(redis_url: str) -> list[str]:
    store = RedisStatusStore.from_url(redis_url)
    try:
        return [record.job_id for record in store.list_jobs(state=JobState.QUEUED, limit=100)]
    finally:
        store.close()


def test_generate_refuses_a_full_queue_with_one_line_and_exit_2(sdpipe: Invoke, env: dict[str, str]) -> None:
    assert sdpipe("generate", "a", "--count", "3", *SIZE, "--no-wait", env=env).exit_code == 0
    result = sdpipe("generate", "b", *SIZE, "--no-wait", env=env)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "queue holds 3 job(s)" in lines[0] and "MAX_QUEUE_DEPTH=3" in lines[0]
    assert "--wait-for-room" in lines[0] and "Traceback" not in result.output
    # Nothing of the refused submission was written
    assert len(_queued(env["REDIS_URL"])) == 3


def test_generate_refuses_a_submission_that_would_overflow(sdpipe: Invoke, env: dict[str, str]) -> None:
    assert sdpipe("generate", "a", "--count", "2", *SIZE, "--no-wait", env=env).exit_code == 0
    assert sdpipe("generate", "b", "--count", "2", *SIZE, "--no-wait", env=env).exit_code == 2
    assert sdpipe("generate", "c", "--count", "1", *SIZE, "--no-wait", env=env).exit_code == 0


def test_batch_refuses_a_full_queue_and_records_no_batch(sdpipe: Invoke, env: dict[str, str], tmp_path: Path) -> None:
    assert sdpipe("generate", "a", "--count", "3", *SIZE, "--no-wait", env=env).exit_code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue bird\n")
    result = sdpipe("batch", str(prompts), *SIZE, "--no-wait", env=env)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the queue holds 3 job(s)") and "MAX_QUEUE_DEPTH=3" in line
    assert result.stdout == ""  # no batch id for a batch that was not created
    store = RedisStatusStore.from_url(env["REDIS_URL"])
    try:
        assert len(store.list_jobs(limit=100)) == 3
    finally:
        store.close()


def test_generate_oversized_submission_goes_alone_into_an_empty_queue(sdpipe: Invoke, env: dict[str, str]) -> None:
    assert sdpipe("generate", "a", "--count", "5", *SIZE, "--no-wait", env=env).exit_code == 0
    assert sdpipe("generate", "b", *SIZE, "--no-wait", env=env).exit_code == 2


def test_generate_wait_for_room_submits_once_jobs_leave_the_queue(sdpipe: Invoke, env: dict[str, str]) -> None:
    assert sdpipe("generate", "a", "--count", "3", *SIZE, "--no-wait", env=env).exit_code == 0
    outcome: dict[str, Any] = {}

    def waiting_submit() -> None:
        outcome["result"] = sdpipe("generate", "b", *SIZE, "--no-wait", "--wait-for-room", env=env)

    thread = threading.Thread(target=waiting_submit)
    thread.start()
    time.sleep(1.5)  # it is waiting, not refused
    assert thread.is_alive() and len(_queued(env["REDIS_URL"])) == 3
    # When a queued job leaves the queue (cancelled here), the waiting submission goes in
    store = RedisStatusStore.from_url(env["REDIS_URL"])
    store.mark_cancelled(_queued(env["REDIS_URL"])[0], now=time.time())
    store.close()
    thread.join(timeout=15)
    assert not thread.is_alive()
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    assert "waiting for room" in result.stderr
    assert wait_until(lambda: len(_queued(env["REDIS_URL"])) == 3, timeout_s=5)
