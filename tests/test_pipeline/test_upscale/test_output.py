"""The upscale's output PNG made band by band as tiles arrive: the same bytes as the whole-image merge."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images import png
from pipeline.images.codec import encode_image
from pipeline.images.png import encode_png, png_from_payloads, stitch_bands
from pipeline.jobs.arrays import atomic_save_arrays, map_arrays
from pipeline.jobs.files import JobFiles, read_json
from pipeline.jobs.planning import build_step_params, new_id
from pipeline.jobs.steps import StepContext
from pipeline.models import JobRecord
from pipeline.settings import Settings
from pipeline.storage import open_storage
from pipeline.store import open_store
from pipeline.store.base import StatusStore
from pipeline.upscale import output as upscale_output
from pipeline.upscale import render as render_module
from pipeline.upscale import steps as upscale_steps
from pipeline.upscale.output import band_pixels, deflate_band, plan_output_bands
from pipeline.upscale.planning import UpscaleRequest, plan_upscale
from pipeline.upscale.render import RenderLoader, render_loader
from pipeline.upscale.tiles import TilePlan, blend_rows, blend_tiles, plan_upscale_tiles, seam_blur_lines
from pipeline.upscale.work import UpscaleFiles
from tests.conftest import S3Bucket
from tests.test_pipeline.test_upscale.conftest import detailed_image
from tests.wiretap import Wiretap

Pixels = np.ndarray

# Plans of every shape the margin argument must hold for: the bench's, uneven sides, three tiles
# over one pixel (a side barely longer than two tiles' step), and seam lines close together.
PLANS = [
    (2048, 2048, 512, 64),
    (1000, 600, 512, 64),
    (700, 1000, 512, 64),
    (300, 260, 64, 48),
    (96, 530, 64, 8),
]


def _tiles(plan: TilePlan, seed: int = 5) -> dict[int, Pixels]:
    """Each tile textured, with its own colour cast: any blend or blur slip shows in the bytes."""
    rng = np.random.default_rng(seed)
    base = detailed_image(max(plan.tile_w, plan.tile_h), seed=seed)[: plan.tile_h, : plan.tile_w]
    return {
        t.index: np.clip(base.astype(np.int16) + rng.integers(-40, 40, 3), 0, 255).astype(np.uint8) for t in plan.tiles
    }


def _whole(plan: TilePlan, tiles: dict[int, Pixels], band_px: int, sigma: float) -> Pixels:
    merged = blend_tiles(plan, lambda tile: tiles[tile.index])
    x_lines, y_lines = plan.seam_lines()
    return seam_blur_lines(merged, x_lines, y_lines, band_px, sigma)


@pytest.mark.parametrize(("width", "height", "tile_px", "overlap_px"), PLANS)
def test_blend_rows_matches_blend_tiles_bit_for_bit(width: int, height: int, tile_px: int, overlap_px: int) -> None:
    plan = plan_upscale_tiles(width, height, tile_px, overlap_px)
    tiles = _tiles(plan)
    whole = blend_tiles(plan, lambda tile: tiles[tile.index])
    for y0, y1 in [(0, height), (0, 1), (height - 1, height), (height // 3, height // 2 + 7)]:
        assert np.array_equal(blend_rows(plan, lambda tile, a, b: tiles[tile.index][a:b], y0, y1), whole[y0:y1]), (
            y0,
            y1,
        )


def _loader(tiles: dict[int, Pixels]) -> RenderLoader:
    """A render loader over tiles in memory (whole, or the rows asked)."""

    def load(index: int, width: int, height: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        return tiles[index] if rows is None else tiles[index][rows[0] : rows[1]]

    return load


@pytest.mark.parametrize(("width", "height", "tile_px", "overlap_px"), PLANS)
@pytest.mark.parametrize("band_target_bytes", [1 << 20, 4096])
def test_output_bands_stitch_to_the_bytes_of_the_whole_merge(
    monkeypatch: pytest.MonkeyPatch, width: int, height: int, tile_px: int, overlap_px: int, band_target_bytes: int
) -> None:
    """Every band computed alone from its window (small bands: many windows cut near seam lines)
    stitches into exactly the PNG of the merged image, seam blur included."""
    monkeypatch.setattr(png, "BAND_TARGET_BYTES", band_target_bytes)
    plan = plan_upscale_tiles(width, height, tile_px, overlap_px)
    tiles = _tiles(plan)
    band_px, sigma = 4, 1.4  # a wider blur than the default: a longer reach to get wrong
    expected = encode_png(_whole(plan, tiles, band_px, sigma), text={"parameters": "x"})
    bands = plan_output_bands(plan, 3, band_px, sigma)
    deflated = [deflate_band(plan, band, band_pixels(plan, band, _loader(tiles), band_px, sigma)) for band in bands]
    assert len(bands) > 1 or band_target_bytes > width * height * 3
    assert png_from_payloads(width, height, 3, stitch_bands(deflated), text={"parameters": "x"}) == expected


def test_output_band_margin_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window's margin is what makes the blur exact: cut at the band's own rows, some band
    differs from the whole merge (so the equality above is not true by construction)."""
    monkeypatch.setattr(png, "BAND_TARGET_BYTES", 4096)  # 4 rows a band: many cuts near seam lines
    plan = plan_upscale_tiles(300, 260, 64, 48)
    tiles = _tiles(plan)
    whole = _whole(plan, tiles, 4, 1.4)
    differs = 0
    for band in plan_output_bands(plan, 3, 4, 1.4):
        first = max(0, band.start - 1)
        bare = upscale_output.OutputBand(band.index, band.start, band.stop, (first, band.stop), band.tile_rows)
        rows = band_pixels(plan, bare, _loader(tiles), 4, 1.4)
        differs += not np.array_equal(rows, whole[first : band.stop])
    assert differs > 0


def _job(settings: Settings, tmp_path: Path, side: int, tile_px: int, overlap_px: int) -> tuple[StatusStore, JobRecord]:
    source = tmp_path / "in.png"
    Image.fromarray(detailed_image(side)).save(source)
    request = UpscaleRequest(scale=2, tile_px=tile_px, overlap_px=overlap_px, seed=1)
    [plan] = plan_upscale(settings, [source], request, build_step_params(settings, grid=None, band_px=None, sigma=None),
                          output_dir=settings.output_dir.absolute(), batch_id=new_id(), now=time.time())  # fmt: skip
    plan.ingest()
    store = open_store(settings)
    store.create_jobs([plan.spec])
    return store, store.get(plan.spec.job_id)


def _render_tile(work: UpscaleFiles, plan: TilePlan, index: int) -> None:
    """Tile ``index`` "re-rendered" (its region a little brighter), saved as a worker saves an answer."""
    tile = plan.tiles[index]
    _, [enlarged] = map_arrays(work.enlarged)
    region = np.asarray(enlarged[tile.y0 : tile.y1, tile.x0 : tile.x1], dtype=np.uint8)
    atomic_save_arrays(work.tile(index), {}, [np.clip(region.astype(np.int16) + 4 + index, 0, 255).astype(np.uint8)])


@dataclass(frozen=True)
class _Rendered:
    """An upscale job past its first pass with every tile rendered and saved (no piece made yet)."""

    store: StatusStore
    record: JobRecord
    ctx: StepContext
    files: JobFiles
    work: UpscaleFiles
    plan: TilePlan


@contextmanager
def _all_tiles_rendered(
    settings: Settings, tmp_path: Path, side: int, tile_px: int, overlap_px: int
) -> Iterator[_Rendered]:
    store, record = _job(settings, tmp_path, side, tile_px, overlap_px)
    try:
        ctx = StepContext(settings=settings, store=store)
        files = JobFiles(settings.output_dir.absolute(), record.job_id)
        upscale_steps.first_pass(ctx, record, files)
        work = UpscaleFiles.of(files)
        plan = TilePlan.from_dict(read_json(work.plan)["plan"])
        for index in range(len(plan)):
            _render_tile(work, plan, index)
        yield _Rendered(store, record, ctx, files, work, plan)
    finally:
        store.close()


def test_pieces_saved_as_tiles_arrive_make_the_output_of_the_whole_merge(settings: Settings, tmp_path: Path) -> None:
    """Tiles saved one by one, each followed by save_ready_pieces as a worker runs it: bands appear
    once their tile rows are in (none before), and the merge's stitched PNG is the bytes of the
    merged image encoded whole; with a piece lost (a worker killed) or damaged, the same bytes."""
    store, record = _job(settings, tmp_path, 512, 256, 32)
    ctx = StepContext(settings=settings, store=store)
    files = JobFiles(settings.output_dir.absolute(), record.job_id)
    try:
        assert upscale_steps.first_pass(ctx, record, files) is False
        work = UpscaleFiles.of(files)
        manifest = read_json(work.plan)
        plan = TilePlan.from_dict(manifest["plan"])
        pieces = lambda: sorted(p.name for p in (files.work("upscale/x").path.parent).glob("png-*.piece"))  # noqa: E731
        bands = plan_output_bands(plan, 3, upscale_steps.SEAM_BLUR_BAND_PX, upscale_steps.SEAM_BLUR_SIGMA)
        saved_after: list[int] = []
        for index in range(len(plan)):
            _render_tile(work, plan, index)
            upscale_output.save_ready_pieces(ctx, record, files, index)
            saved_after.append(len(pieces()))
        assert saved_after[plan.cols - 1] == 0  # one tile row: no band is final yet (the overlap below)
        assert 0 < saved_after[-2] < len(bands) == saved_after[-1]  # the last tile completes the rest
        assert upscale_output.save_ready_pieces(ctx, record, files, len(plan) - 1) == 0  # a redelivery: nothing

        merged, merge_manifest = upscale_steps.merge_upscaled(ctx, record, files)
        expected = encode_image(merged, format="png", infotext="a prompt\nSteps: 20")
        out_manifest = upscale_steps.output_manifest(files)
        assert out_manifest["tiles"] == merge_manifest["tiles"]
        assert out_manifest["seam_blur"] == merge_manifest["seam_blur"]
        assert upscale_output.assemble_png(ctx, record, files, out_manifest, "a prompt\nSteps: 20") == expected

        files.work("upscale/png-1.piece").delete()
        files.work("upscale/png-2.piece").write(upscale_output.PIECE_MAGIC + bytes(60))  # another band's facts
        assert upscale_output.assemble_png(ctx, record, files, out_manifest, "a prompt\nSteps: 20") == expected
        # Pieces are not synced: one cut short, one with a byte changed, one zeroed after its
        # header (what a crash of the machine can leave) fail their CRC and are computed again.
        whole = files.work("upscale/png-0.piece").read_bytes()
        files.work("upscale/png-0.piece").write(whole[:-7])
        changed = bytearray(files.work("upscale/png-3.piece").read_bytes())
        changed[-20] ^= 0x01
        files.work("upscale/png-3.piece").write(bytes(changed))
        assert upscale_output.assemble_png(ctx, record, files, out_manifest, "a prompt\nSteps: 20") == expected
        head = len(upscale_output.PIECE_MAGIC) + 52
        files.work("upscale/png-0.piece").write(whole[:head] + bytes(len(whole) - head))
        assert upscale_output.assemble_png(ctx, record, files, out_manifest, "a prompt\nSteps: 20") == expected
        # A piece made with another seam blur (a worker of another version, mid-upgrade) is whole and
        # has this band's rows, but is not this job's band: computed again too.
        other = replace(upscale_output._output(ctx, record, files, out_manifest), sigma=3.0)
        band = other.bands[1]
        files.work("upscale/png-1.piece").write(upscale_output._pack(other, band, other.deflated(band)))
        assert upscale_output.assemble_png(ctx, record, files, out_manifest, "a prompt\nSteps: 20") == expected
    finally:
        store.close()


def test_pieces_bounded_memory_for_a_large_output(settings: Settings, tmp_path: Path) -> None:
    """The pieces' path (tiles arriving, then the stitch) never holds the output's pixels, let alone
    its tiles decoded at once: 2048² of 256-px tiles (81), the ratios of an 8192² one of 1024-px tiles."""
    with _all_tiles_rendered(settings, tmp_path, 1024, 256, 32) as job:
        plan, files = job.plan, job.files
        all_tiles_bytes = len(plan) * plan.tile_w * plan.tile_h * 3
        tracemalloc.start()
        try:
            for index in range(len(plan)):
                upscale_output.save_ready_pieces(job.ctx, job.record, files, index)
            data = upscale_output.assemble_png(job.ctx, job.record, files, upscale_steps.output_manifest(files), None)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(plan) == 81 and data.startswith(b"\x89PNG")
    # Beyond the deflated pieces and the file they are joined into: well below the tiles decoded at once.
    assert peak - 2 * len(data) < all_tiles_bytes * 0.6, (peak, len(data), all_tiles_bytes)


def test_pieces_made_while_the_merge_removes_the_work_folder_leave_nothing(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    """A worker deflating bands (the second-last tile's) while the merge, started by the last tile's
    worker, ends and removes the work folder: the pieces it creates after the removal (and on disk
    the folders they make again) are taken back, not left behind forever."""
    with _all_tiles_rendered(settings, tmp_path, 512, 256, 32) as job:
        store, record, ctx, files, plan = job.store, job.record, job.ctx, job.files, job.plan
        output = upscale_output._output(ctx, record, files, read_json(job.work.plan))
        ready = {band.index: output.deflated(band) for band in output.bands}  # the bands' tiles read
        merged_and_removed: list[bool] = []
        lock = threading.Lock()

        def deflated_then_merge_ends(self: upscale_output._Output, band: upscale_output.OutputBand) -> object:
            with lock:
                if not merged_and_removed:  # meanwhile the merge starts, writes the output, removes the folder
                    store.start_step(record.job_id, "merge", now=time.time())
                    files.remove_work_dir()
                    merged_and_removed.append(True)
            return ready[band.index]

        monkeypatch.setattr(upscale_output._Output, "deflated", deflated_then_merge_ends)
        folder = settings.output_dir.absolute() / ".sdpipe" / "work" / record.job_id
        assert folder.is_dir()
        saved = upscale_output.save_ready_pieces(ctx, record, files, len(plan) - 1)
        assert merged_and_removed == [True]
        assert not folder.exists(), sorted(str(p) for p in folder.rglob("*"))
        assert saved == 0  # made, then taken back


def test_pieces_made_before_the_merge_starts_are_kept(settings: Settings, tmp_path: Path) -> None:
    with _all_tiles_rendered(settings, tmp_path, 512, 256, 32) as job:
        made = upscale_output.save_ready_pieces(job.ctx, job.record, job.files, len(job.plan) - 1)
        assert made > 0
        assert len(list(job.files.work("upscale/x").path.parent.glob("png-*.piece"))) == made


def test_render_loader_rows_from_a_bucket_fetch_only_those_rows(s3_bucket: S3Bucket, s3_wiretap: Wiretap) -> None:
    # Given a saved 512x512 tile in the bucket, read through a relay that counts the bytes
    settings = s3_bucket.settings(s3_endpoint_url=s3_wiretap.url)
    work = UpscaleFiles.of(JobFiles(open_storage(s3_bucket.url, settings), "job1"))
    tile = np.random.default_rng(8).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    atomic_save_arrays(work.tile(3), {}, [tile])
    load = render_loader(None, None, work)  # type: ignore[arg-type]  # ctx/record: only for old PNG tiles
    s3_wiretap.take_received_bytes()
    # When one band's rows of it are loaded (what save_ready_pieces needs per band)
    rows = load(3, 512, 512, (100, 164))
    fetched = s3_wiretap.take_received_bytes()
    # Then they are those rows, and only about their bytes travelled (not the tile, once per band)
    assert np.array_equal(rows, tile[100:164])
    assert rows.nbytes <= fetched <= rows.nbytes + 64 * 1024, fetched
    # And loaded whole, the tile is the tile
    assert np.array_equal(load(3, 512, 512), tile)
    assert s3_wiretap.take_received_bytes() >= tile.nbytes


def test_render_loader_rows_from_a_folder_are_the_same_rows(tmp_path: Path) -> None:
    work = UpscaleFiles.of(JobFiles(tmp_path, "job1"))
    tile = np.random.default_rng(9).integers(0, 256, size=(96, 64, 3), dtype=np.uint8)
    atomic_save_arrays(work.tile(0), {}, [tile])
    load = render_loader(None, None, work)  # type: ignore[arg-type]
    assert np.array_equal(load(0, 64, 96, (10, 30)), tile[10:30])
    assert np.array_equal(load(0, 64, 96), tile)


def test_render_loader_keeping_maps_maps_each_render_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two saved renders, and a count of the maps made
    work = UpscaleFiles.of(JobFiles(tmp_path, "job1"))
    tiles = [np.random.default_rng(i).integers(0, 256, size=(96, 64, 3), dtype=np.uint8) for i in range(2)]
    for index, tile in enumerate(tiles):
        atomic_save_arrays(work.tile(index), {}, [tile])
    made: list[str] = []
    real = render_module.map_arrays

    def counting(source: object) -> object:
        made.append(str(source))
        return real(source)  # type: ignore[arg-type]

    monkeypatch.setattr(render_module, "map_arrays", counting)
    # When a loader that keeps its maps reads rows of each several times (as the bands of one tile do)
    load = render_loader(None, None, work, keep_maps=True)  # type: ignore[arg-type]
    for rows in ((0, 10), (10, 30), (30, 96)):
        for index, tile in enumerate(tiles):
            assert np.array_equal(load(index, 64, 96, rows), tile[rows[0] : rows[1]])
    # Then each render was mapped once; a loader that does not keep them maps on every whole read
    assert len(made) == 2
    plain = render_loader(None, None, work)  # type: ignore[arg-type]
    plain(0, 64, 96)
    plain(0, 64, 96)
    assert len(made) == 4
