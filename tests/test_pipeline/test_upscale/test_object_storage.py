"""An upscale job whose work prefix is in a bucket: each tile and each seam-fix band reads only its
region of the large raw image (measured on the wire), and asks the server for exactly what the same
job on disk asks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs.arrays import atomic_save_arrays, load_arrays
from pipeline.jobs.files import JobFiles, read_json
from pipeline.jobs.planning import build_step_params, new_id
from pipeline.jobs.steps import StepContext
from pipeline.models import JobRecord
from pipeline.settings import Settings
from pipeline.storage import open_storage
from pipeline.store import open_store
from pipeline.upscale import steps as upscale_steps
from pipeline.upscale.planning import UpscaleRequest, plan_upscale
from pipeline.upscale.render import tile_request
from pipeline.upscale.tiles import TilePlan, plan_bands
from pipeline.upscale.work import UpscaleFiles
from tests.conftest import S3Bucket
from tests.test_pipeline.test_upscale.conftest import detailed_image
from tests.wiretap import Wiretap

#: What a request costs beyond its body (status line and headers), generously.
_OVERHEAD_BYTES = 16 * 1024


def _first_pass(
    ctx: StepContext, source: Path, request: UpscaleRequest, location: str, storage_settings: Settings
) -> tuple[JobRecord, JobFiles]:
    """A job upscaling ``source`` into ``location`` (a folder or a bucket), past its first pass (Lanczos)."""
    settings = ctx.settings
    step_params = build_step_params(settings, grid=None, band_px=None, sigma=None)
    [plan] = plan_upscale(
        settings, [source], request, step_params, output_dir=location, batch_id=new_id(), now=time.time()
    )
    plan.ingest(storage_settings)
    ctx.store.create_jobs([plan.spec])
    record = ctx.store.get(plan.spec.job_id)
    files = JobFiles(open_storage(location, storage_settings), record.job_id)
    assert upscale_steps.first_pass(ctx, record, files) is False
    return record, files


def _without_task_id(payload: dict[str, object]) -> dict[str, object]:
    return {name: value for name, value in payload.items() if name != "force_task_id"}


@pytest.mark.parametrize("seam_fix", ["none", "band"])
def test_upscale_render_in_a_bucket_fetches_its_band_not_the_image(
    settings: Settings, tmp_path: Path, s3_bucket: S3Bucket, s3_wiretap: Wiretap, seam_fix: str
) -> None:
    # Given the same 2048² upscale (1024² x2, 256-px tiles) once on disk and once in a bucket read
    # through a relay that counts the bytes the bucket sends
    source = tmp_path / "in.png"
    Image.fromarray(detailed_image(1024)).save(source)
    request = UpscaleRequest(scale=2, tile_px=256, overlap_px=32, seed=1, seam_fix=seam_fix, seam_fix_width_px=64)
    bucket_settings = s3_bucket.settings(s3_endpoint_url=s3_wiretap.url)
    store = open_store(settings)
    ctx = StepContext(settings=settings, store=store)
    try:
        on_disk, disk_files = _first_pass(ctx, source, request, str(settings.output_dir.absolute()), settings)
        in_bucket, bucket_files = _first_pass(ctx, source, request, s3_bucket.url, bucket_settings)
    finally:
        store.close()
    work = UpscaleFiles.of(bucket_files)
    plan = TilePlan.from_dict(read_json(work.plan)["plan"])
    row_bytes = plan.width * 3
    renders = [(tile.index, tile.height) for tile in (plan.tiles[0], plan.tiles[len(plan) // 2 + 1])]
    if seam_fix == "band":
        # (the tiles "answered" unchanged, blended into merged.arrays: what the bands are cut from)
        for files in (disk_files, bucket_files):
            _, [enlarged] = load_arrays(UpscaleFiles.of(files).enlarged)
            for tile in plan.tiles:
                region = enlarged[tile.y0 : tile.y1, tile.x0 : tile.x1]
                atomic_save_arrays(UpscaleFiles.of(files).tile(tile.index), {}, [region])
            del enlarged
            store = open_store(settings)
            try:
                record = on_disk if files is disk_files else in_bucket
                upscale_steps.band_phase(StepContext(settings=settings, store=store), record, files)
            finally:
                store.close()
        bands = plan_bands(plan, 64)
        renders = [(len(plan) + band.index, band.height) for band in (bands[0], bands[-1])]
    image_bytes = plan.width * plan.height * 3
    for index, height in renders:
        s3_wiretap.take_received_bytes()
        # When the render's img2img request is prepared from the bucket
        from_bucket = tile_request(in_bucket, bucket_files, index)
        fetched = s3_wiretap.take_received_bytes()
        # Then what travelled is bounded by the render's band of rows, not the 12 MiB image
        band_bytes = height * row_bytes
        assert fetched <= band_bytes + _OVERHEAD_BYTES, (index, fetched, band_bytes)
        assert fetched < image_bytes / 4
        # And the server is asked for exactly what the job on disk asks (the same pixels, the same mask)
        assert _without_task_id(from_bucket) == _without_task_id(tile_request(on_disk, disk_files, index))
    assert np.array_equal(load_arrays(work.enlarged)[1][0], load_arrays(UpscaleFiles.of(disk_files).enlarged)[1][0])
