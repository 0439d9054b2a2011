"""Upscale jobs through the embedded runtime: fan-out, a tile failing for good, a retry that pays nothing twice."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors import Runtime, open_runtime
from pipeline.jobs.planning import build_step_params, new_id
from pipeline.models import JobRecord, JobState
from pipeline.sd.mock.http import get_mock_server
from pipeline.settings import Settings
from pipeline.upscale.planning import UpscaleRequest, plan_upscale
from pipeline.upscale.tiles import plan_bands, plan_upscale_tiles
from tests.helpers import wait_until

MOCK = "mock://upscale-actors"
IMG2IMG = "/sdapi/v1/img2img"


def submit_upscale(runtime: Runtime, source: Path, **request: object) -> str:
    settings = runtime.settings
    [plan] = plan_upscale(
        settings,
        [source],
        UpscaleRequest(**{"scale": 2, "tile_px": 64, "overlap_px": 16, "seed": 3, **request}),  # type: ignore[arg-type]
        build_step_params(settings, grid=None, band_px=None, sigma=None),
        output_dir=settings.output_dir.absolute(),
        batch_id=new_id(),
        now=time.time(),
    )
    plan.ingest()
    runtime.submit([plan.spec])
    return plan.spec.job_id


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("seam_fix", ["none", "band"])
def test_failed_tile_fails_the_job_and_retry_renders_only_what_is_missing(
    settings: Settings,
    source: Path,
    seam_fix: str,
    wait_terminal: Callable[[Runtime, list[str]], list[JobRecord]],
) -> None:
    mock = get_mock_server(f"{MOCK}-{seam_fix}")
    mock.control.reset()
    # A 422 is permanent: the job fails at once, with its other tiles saved.
    plan = plan_upscale_tiles(192, 128, 64, 16)
    renders = len(plan) + (len(plan_bands(plan, 64)) if seam_fix == "band" else 0)
    failing = "-t2" if seam_fix == "none" else f"-t{len(plan)}"  # with bands: the first band
    mock.control.queue(["422"], IMG2IMG, task=failing)
    with open_runtime(settings.model_copy(update={"sd_api_url": f"{MOCK}-{seam_fix}"})) as runtime:
        job_id = submit_upscale(runtime, source, seam_fix=seam_fix)
        [failed] = wait_terminal(runtime, [job_id])
        assert failed.state is JobState.FAILED
        assert failed.error is not None and failed.error.step == "upscale_tile"
        work = settings.output_dir.absolute() / ".sdpipe" / "work" / job_id / "upscale"

        def settled() -> bool:  # every render answered before the failure is saved (none in flight)
            answered = [e for e in mock.control.requests(IMG2IMG) if e["answer"]["status"] == 200]
            return mock.stats()["active"] == 0 and len(list(work.glob("tile-*.arrays"))) == len(answered)

        assert wait_until(settled, timeout_s=30)
        rendered_before = len(list(work.glob("tile-*.arrays")))

        runtime.retry([failed])
        [done] = wait_terminal(runtime, [job_id])

    assert done.state is JobState.SUCCEEDED, done.error
    answers = mock.control.requests(IMG2IMG)
    rendered = Counter(e["body"]["force_task_id"] for e in answers if e["answer"]["status"] == 200)
    assert len(rendered) == renders and set(rendered.values()) == {1}  # each render paid once, in both runs
    assert rendered_before > 0  # the first run's saved renders were not asked for again
    assert [e["answer"]["status"] for e in answers if e["body"]["force_task_id"].endswith(failing)] == [422, 200]
    assert done.result is not None and (done.result.width, done.result.height) == (192, 128)


def test_band_seam_fix_of_a_one_tile_image_blends_once_then_merges(
    settings: Settings, wait_terminal: Callable[[Runtime, list[str]], list[JobRecord]], tmp_path: Path
) -> None:
    # Given an image whose upscale is one tile (no seam, so no band to render), with --seam-fix band
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    mock = get_mock_server(f"{MOCK}-one-tile")
    mock.control.reset()
    with open_runtime(settings.model_copy(update={"sd_api_url": f"{MOCK}-one-tile"})) as runtime:
        job_id = submit_upscale(runtime, path, seam_fix="band", tile_px=128)
        # When it runs
        [done] = wait_terminal(runtime, [job_id])
    # Then it ends (it went from the blend to the merge, once), its one tile rendered once
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.steps["seam_blur"].attempts == 1
    assert len(mock.control.requests(IMG2IMG)) == 1
    assert done.result is not None and (done.result.width, done.result.height) == (128, 128)
