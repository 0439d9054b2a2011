"""The upscale job's own steps on disk: the first pass and the merge of saved tiles (no SD call: Lanczos)."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images.png import encode_png
from pipeline.jobs.arrays import atomic_save_arrays, map_arrays
from pipeline.jobs.files import JobFiles, read_json
from pipeline.jobs.planning import build_step_params, new_id
from pipeline.jobs.steps import StepContext
from pipeline.settings import Settings
from pipeline.store import open_store
from pipeline.upscale import steps as upscale_steps
from pipeline.upscale.planning import UpscaleRequest, plan_upscale
from pipeline.upscale.render import next_step_after_renders, pending_renders
from pipeline.upscale.tiles import TilePlan, plan_bands
from pipeline.upscale.work import UpscaleFiles
from tests.test_pipeline.test_upscale.conftest import detailed_image


@pytest.mark.parametrize("seam_fix", ["none", "band"])
def test_merge_of_a_large_output_never_holds_its_tiles_decoded_at_once(
    settings: Settings, tmp_path: Path, seam_fix: str
) -> None:
    """The merge as a worker runs it (tiles read from their saved pixels, blended, the seam blur; with
    ``--seam-fix band`` the bands on the blended image, decoded from PNGs as earlier versions saved
    them): what it holds beyond the output image stays
    well below the tiles decoded at once. A 2048² output of 256-px tiles (81 tiles) has the ratios of
    an 8192² one of 1024-px tiles; the strip of one tile row is what grows with the width."""
    source = tmp_path / "in.png"
    Image.fromarray(detailed_image(1024)).save(source)
    request = UpscaleRequest(scale=2, tile_px=256, overlap_px=32, seed=1, seam_fix=seam_fix)
    [plan] = plan_upscale(settings, [source], request, build_step_params(settings, grid=None, band_px=None, sigma=None),
                          output_dir=settings.output_dir.absolute(), batch_id=new_id(), now=time.time())  # fmt: skip
    plan.ingest()
    store = open_store(settings)
    store.create_jobs([plan.spec])
    ctx = StepContext(settings=settings, store=store)
    record = store.get(plan.spec.job_id)
    files = JobFiles(settings.output_dir.absolute(), record.job_id)
    assert upscale_steps.first_pass(ctx, record, files) is False  # Lanczos: no SD call
    work = UpscaleFiles.of(files)
    tiles = TilePlan.from_dict(read_json(work.plan)["plan"])
    _, [enlarged] = map_arrays(work.enlarged)
    for tile in tiles.tiles:  # each tile "re-rendered": its region, a little brighter, saved as a server answers
        region = np.asarray(enlarged[tile.y0 : tile.y1, tile.x0 : tile.x1], dtype=np.uint8)
        atomic_save_arrays(work.tile(tile.index), {}, [np.clip(region + 4, 0, 255).astype(np.uint8)])
    if seam_fix == "band":
        upscale_steps.band_phase(ctx, record, files)
        _, [merged] = map_arrays(work.merged)
        for band in plan_bands(tiles, request_width_px := 64):  # the bands answered unchanged
            region = np.ascontiguousarray(merged[band.y0 : band.y1, band.x0 : band.x1])
            work.legacy_tile(len(tiles) + band.index).write(encode_png(region))  # a PNG, as saved before
        assert pending_renders(record, files)[0] == [] and request_width_px == 64
        del merged
    del enlarged
    output_bytes = 2048 * 2048 * 3
    all_tiles_bytes = len(tiles) * tiles.tile_w * tiles.tile_h * 3

    tracemalloc.start()
    try:
        pixels, manifest = upscale_steps.merge_upscaled(ctx, record, files)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close()

    assert pixels.shape == (2048, 2048, 3) and manifest["tiles"] == len(tiles) == 81
    assert peak - output_bytes < all_tiles_bytes * 0.6, (peak, all_tiles_bytes)


@pytest.mark.parametrize(("side", "after_blend"), [(128, "seam_blur"), (32, "merge")])
def test_next_step_after_the_tiles_with_band_seam_fix_is_the_blend_until_it_planned_no_band(
    settings: Settings, tmp_path: Path, side: int, after_blend: str
) -> None:
    """With ``--seam-fix band``, once the tiles are saved: the blend (seam_blur) first; after it, the
    merge only when the blend planned no band (one tile). A tile delivered again after the blend but
    before its new total (only the tiles counted) must not send a merge while bands are to render."""
    source = tmp_path / "in.png"
    Image.fromarray(detailed_image(side)).save(source)
    request = UpscaleRequest(scale=2, tile_px=64, overlap_px=16, seed=1, seam_fix="band")
    [plan] = plan_upscale(settings, [source], request, build_step_params(settings, grid=None, band_px=None, sigma=None),
                          output_dir=settings.output_dir.absolute(), batch_id=new_id(), now=time.time())  # fmt: skip
    plan.ingest()
    store = open_store(settings)
    try:
        store.create_jobs([plan.spec])
        ctx = StepContext(settings=settings, store=store)
        record = store.get(plan.spec.job_id)
        files = JobFiles(settings.output_dir.absolute(), record.job_id)
        upscale_steps.first_pass(ctx, record, files)
        work = UpscaleFiles.of(files)
        tiles = TilePlan.from_dict(read_json(work.plan)["plan"])
        _, [enlarged] = map_arrays(work.enlarged)
        for tile in tiles.tiles:
            atomic_save_arrays(
                work.tile(tile.index), {}, [np.ascontiguousarray(enlarged[tile.y0 : tile.y1, tile.x0 : tile.x1])]
            )
        del enlarged
        assert next_step_after_renders(record, files, len(tiles)) == "seam_blur"
        upscale_steps.band_phase(ctx, record, files)
        assert next_step_after_renders(record, files, len(tiles)) == after_blend
    finally:
        store.close()
