"""Batches and schedules end to end: redis-server, 2 worker processes, the mock SD server over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.models import ScheduleRecord
from pipeline.store import RedisStatusStore
from tests.helpers import wait_until
from tests.test_e2e.conftest import Proc, mock_stats, run_sdpipe

pytestmark = pytest.mark.e2e


def _rows(count: int) -> list[dict[str, object]]:
    samplers = ["Euler a", "DPM++ 2M", "Euler"]
    rows: list[dict[str, object]] = []
    for i in range(count):
        row: dict[str, object] = {"prompt": f"a lighthouse, variant {i}", "seed": 1000 + i}
        if i % 2:
            row["steps"] = 10 + i % 20
        if i % 3 == 0:
            row["sampler"] = samplers[i % 3]
        if i % 5 == 0:
            row.update(width=96, height=64, grid="1x2", band_px=8)
        if i % 7 == 0:
            row["format"] = "webp"
        rows.append(row)
    return rows


def test_batch_of_200_rows_renders_and_resume_renders_nothing(
    e2e_env: dict[str, str], mock_sd: str, workers: Proc, tmp_path: Path
) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows(200)))
    env = {**e2e_env, "WIDTH": "64", "HEIGHT": "64"}
    result = run_sdpipe("batch", str(path), env=env, timeout_s=300)
    assert result.returncode == 0, result.stdout + result.stderr + workers.output()
    batch_id = result.stdout.splitlines()[0].split()[1]
    manifest_path = Path(result.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    manifest = json.loads(manifest_path.read_text())
    assert len(manifest["rows"]) == 200
    assert manifest["counts"] == {"succeeded": 200}
    outputs = [job["output"] for row in manifest["rows"] for job in row["jobs"]]
    assert len(set(outputs)) == 200 and all(Path(output).is_file() for output in outputs)
    assert sum(output.endswith(".webp") for output in outputs) == len(range(0, 200, 7))
    assert mock_stats(mock_sd)["txt2img_requests"] == 200

    again = run_sdpipe("batch", str(path), "--resume", batch_id, env=env)
    assert again.returncode == 0, again.stderr
    assert "0 new job(s), 0 retried, 200 already done" in again.stderr
    assert mock_stats(mock_sd)["txt2img_requests"] == 200


def test_cancelled_batch_never_renders(
    e2e_env: dict[str, str], mock_sd: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    path = tmp_path / "p.txt"
    path.write_text("".join(f"prompt {i}\n" for i in range(5)))
    env = {**e2e_env, "SD_API_URL": mock_sd, "WIDTH": "64", "HEIGHT": "64"}
    submitted = run_sdpipe("batch", str(path), "--no-wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[1]
    cancelled = run_sdpipe("cancel", "--batch", batch_id, env=env)
    assert cancelled.stdout.strip() == "cancelled 5 job(s)"
    worker = spawn("worker", "--processes", "1", "--threads", "2", env=env, name="late-worker")
    assert wait_until(lambda: "Worker process is ready" in worker.output(), timeout_s=60), worker.output()
    time.sleep(2)  # let the worker drain the queue
    status = json.loads(run_sdpipe("status", "--batch", batch_id, "--json", env=env).stdout)
    assert status["counts"] == {"cancelled": 5}
    assert mock_stats(mock_sd)["txt2img_requests"] == 0


def test_two_schedulers_fire_a_missed_run_once(
    e2e_env: dict[str, str], redis_url: str, workers: Proc, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    # Given a schedule that was due a few seconds ago (inside its grace window) while no scheduler ran
    path = tmp_path / "nightly.txt"
    path.write_text("a scheduled lighthouse\n")
    now = time.time()
    store = RedisStatusStore.from_url(redis_url)
    store.save_schedule(
        ScheduleRecord(
            name="every-minute",
            cron="* * * * *",
            file=str(path),
            options={"width": 64, "height": 64},
            created_at=now - 3600,
        )
    )
    # When two scheduler processes start against the same Redis
    first = spawn("scheduler", env=e2e_env, name="scheduler-1")
    second = spawn("scheduler", env=e2e_env, name="scheduler-2")

    def fired() -> list[dict[str, object]]:
        runs = store.get_schedule("every-minute").runs
        return [run.model_dump() for run in runs if run.status == "fired"]

    # Then the missed occurrence fires exactly once, as one batch that completes
    assert wait_until(lambda: len(fired()) >= 1, timeout_s=30), first.output() + second.output()
    time.sleep(3)  # give a duplicate the chance to appear
    runs = fired()
    # one run per occurrence (a minute boundary may legitimately add the next occurrence)
    fire_times = [run["fire_time"] for run in runs]
    assert len(fire_times) == len(set(fire_times)) <= 2, runs
    assert len({run["batch_id"] for run in runs}) == len(runs)
    batch_id = str(runs[-1]["batch_id"])
    assert wait_until(
        lambda: (
            json.loads(run_sdpipe("status", "--batch", batch_id, "--json", env=e2e_env).stdout)["counts"]
            == {"succeeded": 1}
        ),
        timeout_s=60,
        interval_s=0.5,
    )
    store.close()
    assert first.stop() == 0 and second.stop() == 0
