"""``sdpipe batch``, ``retry`` and ``cancel`` in Redis mode with no worker running: jobs stay queued."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli.conftest import Invoke

SMALL = ("--width", "64", "--height", "64")


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    """Redis mode (a private redis-server), no worker: submitted jobs wait in the queue."""
    return {"REDIS_URL": redis_url, "SD_API_URL": "mock://"}


def _prompts(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"prompt {i}\n" for i in range(count)))
    return path


def _states(sdpipe: Invoke, batch_id: str, env: dict[str, str]) -> dict[str, int]:
    status = sdpipe("status", "--batch", batch_id, "--json", env=env)
    assert status.exit_code == 0, status.output
    return dict(json.loads(status.stdout)["counts"])


def test_batch_no_wait_json_prints_the_batch_id_and_its_queued_jobs(
    sdpipe: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    result = sdpipe("batch", str(_prompts(tmp_path, 3)), *SMALL, "--no-wait", "--json", env=env)
    assert result.exit_code == 0, result.output
    submitted = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert [job["state"] for job in submitted["jobs"]] == ["queued"] * 3
    assert _states(sdpipe, submitted["batch_id"], env) == {"queued": 3}
    listed = json.loads(sdpipe("jobs", "--batch", submitted["batch_id"], "--json", env=env).stdout)
    assert {job["job_id"] for job in listed} == {job["job_id"] for job in submitted["jobs"]}


def test_batch_no_wait_prints_the_batch_id_line(sdpipe: Invoke, env: dict[str, str], tmp_path: Path) -> None:
    result = sdpipe("batch", str(_prompts(tmp_path, 2)), *SMALL, "--no-wait", env=env)
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("batch ")
    assert _states(sdpipe, line.split()[1], env) == {"queued": 2}


def test_retry_batch_failed_requeues_its_cancelled_jobs(sdpipe: Invoke, env: dict[str, str], tmp_path: Path) -> None:
    # Given a batch whose jobs were all cancelled before any worker ran them
    submitted = sdpipe("batch", str(_prompts(tmp_path, 2)), *SMALL, "--no-wait", env=env)
    batch_id = submitted.stdout.split()[1]
    assert sdpipe("cancel", "--batch", batch_id, env=env).stdout.strip() == "cancelled 2 job(s)"
    # When the batch is retried
    result = sdpipe("retry", "--batch", batch_id[:8], "--failed", env=env)
    # Then both jobs are back in the queue
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("job ") and line.endswith(" requeued") for line in lines)
    assert _states(sdpipe, batch_id, env) == {"queued": 2}


def test_retry_batch_with_nothing_failed_or_cancelled_says_so(
    sdpipe: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    submitted = sdpipe("batch", str(_prompts(tmp_path, 1)), *SMALL, "--no-wait", env=env)
    batch_id = submitted.stdout.split()[1]
    result = sdpipe("retry", "--batch", batch_id, "--failed", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.strip() == "nothing to retry: the batch has no failed or cancelled job"


def test_retry_sd_url_in_redis_mode_is_refused(sdpipe: Invoke, env: dict[str, str]) -> None:
    result = sdpipe("retry", "deadbeef", "--sd-url", "mock://", env=env)
    assert result.exit_code == 2
    assert "--sd-url applies to embedded retries" in result.stderr and "Traceback" not in result.output
