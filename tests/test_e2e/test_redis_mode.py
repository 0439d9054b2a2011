"""End to end over real processes: redis-server, 2 worker processes, the mock SD server over HTTP."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images.infotext import parse_infotext
from pipeline.images.seams import cut_positions
from pipeline.models import GenerationParams
from pipeline.sd.client import SDClient
from pipeline.settings import Settings
from tests.helpers import wait_until
from tests.test_e2e.conftest import Proc, mock_stats, run_sdpipe

pytestmark = pytest.mark.e2e

WIDTH, HEIGHT, BAND_PX = 256, 192, 12


def _far_from_cuts_mask(width: int, height: int, band_px: int) -> np.ndarray:
    """True where a pixel is band_px or more away from every inner cut of a 2x2 grid."""
    mask = np.ones((height, width), dtype=bool)
    for c in cut_positions(width, 2)[1:-1]:
        mask[:, max(0, c - band_px) : c + band_px] = False
    for c in cut_positions(height, 2)[1:-1]:
        mask[max(0, c - band_px) : c + band_px, :] = False
    return mask


def test_generate_count_8_in_redis_mode(
    e2e_env: dict[str, str], mock_sd: str, workers: Proc, spawn: Callable[..., Proc]
) -> None:
    # When 8 jobs are generated through Redis and 2 worker processes
    result = run_sdpipe(
        "generate",
        "a lighthouse at dusk",
        "--count",
        "8",
        "--seed",
        "100",
        "--width",
        str(WIDTH),
        "--height",
        str(HEIGHT),
        "--band-px",
        str(BAND_PX),
        env=e2e_env,
    )
    assert result.returncode == 0, result.stdout + result.stderr + workers.output()
    lines = result.stdout.strip().splitlines()
    job_ids = [line.split()[1] for line in lines if line.startswith("job ")]
    images = [Path(line) for line in lines if not line.startswith("job ")]
    # Then there are 8 images, each with its sidecar
    assert len(job_ids) == 8
    assert len(images) == 8

    settings = Settings(_env_file=None, sd_api_url=mock_sd)  # type: ignore[call-arg]
    far = _far_from_cuts_mask(WIDTH, HEIGHT, BAND_PX)
    seeds = []
    with SDClient(settings) as client:
        for image_path in images:
            sidecar = json.loads(image_path.with_suffix(".json").read_text())
            seeds.append(sidecar["seed"])
            with Image.open(image_path) as image:
                merged = np.asarray(image.convert("RGB"))
                infotext = image.info["parameters"]
            # the PNG infotext parses by A1111's rules and its Seed matches the sidecar
            params = parse_infotext(infotext)
            assert params["Seed"] == str(sidecar["seed"])
            assert params["Seam band"] == str(BAND_PX)
            # pixels away from the seams equal the SD image's; the seams are blurred
            sent = GenerationParams.model_validate(
                {k: v for k, v in sidecar["parameters"].items() if k in GenerationParams.model_fields}
            )
            original = Image.open(io.BytesIO(client.txt2img(sent, job_id="check").image_bytes))
            sd_pixels = np.asarray(original.convert("RGB"))
            assert np.array_equal(merged[far], sd_pixels[far])
            cx = cut_positions(WIDTH, 2)[1]
            seam = np.abs(np.diff(merged[:, cx - 2 : cx + 2].astype(int), axis=1)).mean()
            raw = np.abs(np.diff(sd_pixels[:, cx - 2 : cx + 2].astype(int), axis=1)).mean()
            assert seam < raw * 0.8, (seam, raw)
            assert sidecar["timings"]["generate"]["attempts"] == 1
            assert sidecar["backend_url"] == mock_sd
    assert sorted(seeds) == list(range(100, 108))
    # And the mock rendered each job exactly once (+8 for our own checks above)
    assert mock_stats(mock_sd)["txt2img_requests"] == 16

    # And `sdpipe status` reads the shared store
    status = run_sdpipe("status", job_ids[0], env=e2e_env)
    assert status.returncode == 0, status.stderr
    assert "succeeded" in status.stdout
    listing = run_sdpipe("jobs", "--state", "succeeded", "--json", env=e2e_env)
    assert len(json.loads(listing.stdout)) == 8

    # And the workers stop cleanly on SIGTERM
    assert workers.stop() == 0, workers.output()


def test_no_wait_then_status_sees_jobs_finish(e2e_env: dict[str, str], workers: Proc) -> None:
    result = run_sdpipe(
        "generate",
        "a quick sketch",
        "--count",
        "3",
        "--no-wait",
        "--json",
        "--width",
        "64",
        "--height",
        "64",
        env=e2e_env,
    )
    assert result.returncode == 0, result.stderr
    job_ids = [job["job_id"] for job in json.loads(result.stdout)]
    assert len(job_ids) == 3

    def all_done() -> bool:
        listing = run_sdpipe("jobs", "--json", env=e2e_env)
        return sum(job["state"] == "succeeded" for job in json.loads(listing.stdout)) == 3

    assert wait_until(all_done, timeout_s=60, interval_s=0.5), workers.output()


def test_redis_unreachable_is_one_line_exit_3(e2e_env: dict[str, str]) -> None:
    env = {**e2e_env, "REDIS_URL": "redis://:pw@127.0.0.1:9/0"}
    result = run_sdpipe("generate", "x", "--sd-url", "mock://", env=env)
    assert result.returncode == 3, result.stderr
    assert "Redis" in result.stderr
    assert "pw@" not in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_generate_without_workers_warns_and_leaves_jobs_queued(e2e_env: dict[str, str]) -> None:
    result = run_sdpipe("generate", "nobody home", "--no-wait", "--sd-url", "mock://", env=e2e_env)
    assert result.returncode == 0, result.stderr
    assert "no sdpipe worker is running" in result.stderr
    listing = json.loads(run_sdpipe("jobs", "--json", env=e2e_env).stdout)
    assert [job["state"] for job in listing] == ["queued"]
