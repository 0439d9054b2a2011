"""Tiled upscaling end to end: real Redis, real ``sdpipe worker`` processes, mock servers over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from pipeline.images.infotext import parse_infotext
from pipeline.models import JobState
from pipeline.store import RedisStatusStore
from tests.helpers import wait_until
from tests.procs import Proc
from tests.test_e2e.conftest import child_pids, mock_stats, run_sdpipe, start_mock, start_worker

pytestmark = [pytest.mark.e2e]

IMG2IMG = "/sdapi/v1/img2img"


def a1111_png(mock_url: str, path: Path, side: int) -> Path:
    """An image exactly as A1111 sends it (its infotext in the PNG's ``parameters`` chunk)."""
    body = {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "seed": 5, "steps": 8,
            "width": side, "height": side, "sampler_name": "Euler a"}  # fmt: skip
    answer = httpx.post(f"{mock_url}/sdapi/v1/txt2img", json=body, timeout=60).json()
    path.write_bytes(base64.b64decode(answer["images"][0]))
    return path


def tile_answers(mock_url: str) -> dict[str, list[int]]:
    """Each img2img task id (``sdpipe-<job>-t<i>``) and the statuses it was answered, in order."""
    entries = httpx.get(f"{mock_url}/mock/requests", params={"route": IMG2IMG}, timeout=10).json()["requests"]
    answers: dict[str, list[int]] = defaultdict(list)
    for entry in entries:
        answers[str(entry["body"]["force_task_id"])].append(int(entry["answer"]["status"] or 0))
    return answers


def finished(env: dict[str, str], job_id: str) -> dict[str, Any]:
    return dict(json.loads(run_sdpipe("status", job_id, "--json", env=env).stdout))


def test_upscale_of_an_a1111_png_fans_out_keeps_its_infotext_and_adds_the_upscale_keys(
    spawn: Callable[..., Proc], e2e_env: dict[str, str], tmp_path: Path
) -> None:
    mocks = [start_mock(spawn, e2e_env, "--latency-ms", "50", name=f"mock-{i}") for i in range(2)]
    env = {**e2e_env, "SD_API_URL": ",".join(mocks)}
    start_worker(spawn, env, processes=1, threads=4)
    source = a1111_png(mocks[0], tmp_path / "lighthouse.png", 256)

    result = run_sdpipe(
        "upscale", str(source), "--scale", "2", "--tile", "256", "--overlap", "32", "--denoise", "0.3", "--json",
        env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    [job] = json.loads(result.stdout)
    image_path = Path(job["result"]["image"])
    with Image.open(image_path) as image:
        assert image.size == (512, 512)
        infotext = image.info["parameters"]
    parsed = parse_infotext(infotext)
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Seed"]) == ("a lighthouse at dusk", "blurry", "5")
    assert (parsed["Upscale"], parsed["Upscaler"], parsed["Upscale tile"]) == ("2", "Lanczos", "256")
    assert (parsed["Upscale overlap"], parsed["Denoising strength"], parsed["Seam fix"]) == ("32", "0.3", "none")
    # A1111's own reader (png-info, as webuiapi calls it) reads the keys too.
    read = httpx.post(
        f"{mocks[1]}/sdapi/v1/png-info",
        json={"image": base64.b64encode(image_path.read_bytes()).decode()},
        timeout=10,
    ).json()["parameters"]
    assert read["Prompt"] == "a lighthouse at dusk" and read["Upscale"] == "2" and read["Seam fix"] == "none"
    sidecar = json.loads(Path(job["result"]["sidecar"]).read_text())
    assert sidecar["upscale"]["tiles"] == 9 and sidecar["upscale"]["scale"] == 2.0
    # Fan-out: both servers rendered tiles, each tile once.
    served = [int(mock_stats(url)["img2img_completed"]) for url in mocks]  # type: ignore[call-overload]
    assert sum(served) == 9 and min(served) > 0
    answers = {task: codes for url in mocks for task, codes in tile_answers(url).items()}
    assert sorted(answers) == sorted(f"sdpipe-{job['job_id']}-t{i}" for i in range(9))
    assert finished(env, job["job_id"])["tiles"] == {"done": 9, "total": 9}


@pytest.mark.faults
def test_upscale_survives_a_killed_worker_and_a_tile_failing_twice(
    spawn: Callable[..., Proc], e2e_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """Injected: tile 7 answers 500 twice; a worker process is kill -9ed while tiles render.
    Asserted: the image completes whole; tile 7 was retried alone; no tile was rendered again after
    its answer was saved (only the tiles the killed process had in flight may be asked twice)."""
    env = {**e2e_env, "BROKER_HEARTBEAT_TIMEOUT_MS": "3000"}
    mock = start_mock(spawn, env, "--latency-ms", "300")
    env["SD_API_URL"] = mock
    httpx.post(f"{mock}/mock/faults", json={"next": ["500", "500"], "route": IMG2IMG, "task": "-t7"}, timeout=5)
    threads = 2
    worker = start_worker(spawn, env, processes=2, threads=threads)
    source = a1111_png(mock, tmp_path / "in.png", 512)

    submitted = run_sdpipe("upscale", str(source), "--scale", "2", "--tile", "256", "--overlap", "32", "--no-wait",
                           env=env)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    store = RedisStatusStore.from_url(redis_url)
    try:
        assert wait_until(lambda: (store.tile_progress(job_id) or (0, 0))[0] >= 5, timeout_s=60), worker.output()
        victim = child_pids(worker.popen.pid)[0]
        os.kill(victim, signal.SIGKILL)
        start_worker(spawn, env, processes=1, threads=threads, name="worker-2")
        assert wait_until(lambda: store.get(job_id).state.terminal, timeout_s=180, interval_s=0.2)
        record = store.get(job_id)
        progress = store.tile_progress(job_id)
    finally:
        store.close()

    assert record.state is JobState.SUCCEEDED, record.error
    assert progress == (25, 25)
    assert record.result is not None
    data = Path(str(record.result.image)).read_bytes()
    assert hashlib.sha256(data).hexdigest() == record.result.sha256
    with Image.open(str(record.result.image)) as image:
        image.load()
        assert image.size == (1024, 1024)
    answers = tile_answers(mock)
    assert answers[f"sdpipe-{job_id}-t7"][:3] == [500, 500, 200]  # retried alone until it rendered
    successes = Counter({task: codes.count(200) for task, codes in answers.items()})
    assert set(successes) == {f"sdpipe-{job_id}-t{i}" for i in range(25)}
    asked_twice = [task for task, count in successes.items() if count > 1]
    assert len(asked_twice) <= threads, asked_twice  # only what the killed process had in flight
    assert all(count <= 2 for count in successes.values())


def test_upscale_with_band_seam_fix_renders_masked_bands_after_the_tiles(
    spawn: Callable[..., Proc], e2e_env: dict[str, str], tmp_path: Path
) -> None:
    mocks = [start_mock(spawn, e2e_env, "--latency-ms", "50", name=f"mock-{i}") for i in range(2)]
    env = {**e2e_env, "SD_API_URL": ",".join(mocks)}
    start_worker(spawn, env, processes=1, threads=4)
    source = a1111_png(mocks[0], tmp_path / "lighthouse.png", 256)

    result = run_sdpipe(
        "upscale", str(source), "--scale", "2", "--tile", "256", "--overlap", "32", "--seam-fix", "band", "--json",
        env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    [job] = json.loads(result.stdout)
    sidecar = json.loads(Path(job["result"]["sidecar"]).read_text())
    assert (sidecar["upscale"]["tiles"], sidecar["upscale"]["bands"]) == (9, 12)
    with Image.open(job["result"]["image"]) as image:
        parsed = parse_infotext(image.info["parameters"])
    assert (parsed["Seam fix"], parsed["Seam fix width"], parsed["Seam fix denoise"]) == ("band", "64", "0.15")
    served = {url: httpx.get(f"{url}/mock/requests", params={"route": IMG2IMG}, timeout=10).json()["requests"]
              for url in mocks}  # fmt: skip
    entries = [entry for requests in served.values() for entry in requests]
    masked = [entry for entry in entries if entry["body"].get("mask")]
    # the bands are fanned out like the tiles: both servers rendered some (each has one slot)
    assert all(any(entry["body"].get("mask") for entry in requests) for requests in served.values())
    assert len(entries) == 21 and len(masked) == 12  # every tile and band once
    assert {entry["body"]["denoising_strength"] for entry in masked} == {0.15}
    last_tile = max(entry["time"] for entry in entries if not entry["body"].get("mask"))
    assert min(entry["time"] for entry in masked) > last_tile  # bands are cut from the blended tiles
    assert finished(env, job["job_id"])["tiles"] == {"done": 21, "total": 21}
