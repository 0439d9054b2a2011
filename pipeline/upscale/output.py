"""An upscale's PNG output made band by band while its tiles arrive, so little is left after the last.

The PNG encoder (:mod:`pipeline.images.png`) deflates an image in bands of rows
(:func:`~pipeline.images.png.band_cuts`), each an independent piece of one zlib stream. A band of
the output is final once the tiles whose rows reach it are saved: the worker that saves such a
tile blends those rows (:func:`~pipeline.upscale.tiles.blend_rows`), runs the seam blur on them,
deflates the band and saves the piece (``upscale/png-<k>.piece``). The merge then reads the pieces,
computes any that are missing (a worker killed in between, a piece from another plan), and stitches
them: the same bytes :func:`~pipeline.images.png.encode_png` gives for the merged image, so the
output is byte-identical to a merge of the whole image at once. (Bands deflated on different
machines may differ in their deflate bytes, if the deflater's code differs by CPU or version: each
piece is independent deflate data of the same filtered rows, so any mix is a valid PNG of the same
pixels; the sidecar's sha256 is of the file written.)

Why the seam blur of a window of rows is exact: the window is taken ``margin`` rows beyond the band
(:func:`margin_px`). Blurring a window treats its edges as mirrors; a row whose blur reads past an
edge is wrong, and each blur operation spreads that by at most the Gaussian's radius; the margin
covers the longest chain of operations that can follow one another there. Every other pixel runs
the same float32 operations, element by element, as the blur of the whole image.

At-least-once: a piece is written whole (one atomic write) and only once (``create``); two workers
computing the same band write the same bytes. A piece is not synced to disk (it is a head start the
merge can make again, and an fsync per piece cost the last tile's bands 6-13 ms each here): it
carries the CRC-32 of its data, and a piece cut short or zeroed by a crash of the machine fails it
and is computed again by the merge, like a missing one. Memory: a band's window of rows, and the tiles of at
most the tile rows crossing it, one at a time.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from isal import isal_zlib
from numpy.typing import NDArray

from pipeline.images.geometry import gaussian_radius_px
from pipeline.images.png import band_cuts, deflate_rows, parallel_map, png_from_payloads, stitch_bands
from pipeline.jobs.arrays import read_region
from pipeline.jobs.files import JobFiles, read_json
from pipeline.upscale.render import RenderLoader, render_loader
from pipeline.upscale.steps import SEAM_BLUR_BAND_PX, SEAM_BLUR_SIGMA
from pipeline.upscale.tiles import TilePlan, blend_rows, seam_blur_lines
from pipeline.upscale.work import UpscaleFiles, params_of

if TYPE_CHECKING:
    from pipeline.jobs.steps import StepContext
    from pipeline.models import JobRecord
    from pipeline.storage.base import Blob

__all__ = [
    "OutputBand",
    "assemble_png",
    "band_pixels",
    "deflate_band",
    "margin_px",
    "plan_output_bands",
    "save_ready_pieces",
    "uses_pieces",
]

logger = logging.getLogger(__name__)

_U8 = NDArray[np.uint8]
#: First bytes of a saved piece, then its facts (:data:`_PIECE_FACTS`), then the raw deflate data.
PIECE_MAGIC = b"SDPIPE-PNG-BAND-3\n"
#: width, channels, the seam blur's band and sigma, first row, end row, Adler-32 and length of the
#: filtered bytes, then the length and CRC-32 of the deflate data that follows. A piece made with
#: another seam blur (a worker of another version, mid-upgrade) is not this job's band: computed again.
_PIECE_FACTS = struct.Struct(">IIIdIIIQQI")
#: A deflated band: raw deflate data, Adler-32 and length of its filtered bytes.
Deflated = tuple[bytes, int, int]


@dataclass(frozen=True)
class OutputBand:
    """Band ``index`` of the output PNG: rows ``start:stop``, computed from the rows ``window``
    (the row above ``start`` and the seam blur's margin around them), which the tile rows
    ``tile_rows`` of the plan cover."""

    index: int
    start: int
    stop: int
    window: tuple[int, int]
    tile_rows: tuple[int, ...]


def _chain(lines: Sequence[int], reach_px: int) -> int:
    """The most lines in a row whose blur bands can touch each other's (``reach_px`` apart or less)."""
    longest = run = 1 if lines else 0
    ordered = sorted(lines)
    for before, after in zip(ordered, ordered[1:], strict=False):
        run = run + 1 if after - before <= reach_px else 1
        longest = max(longest, run)
    return longest


def margin_px(plan: TilePlan, band_px: int, sigma: float) -> int:
    """Rows beyond a band its window needs for an exact seam blur (see the module's docstring)."""
    radius = gaussian_radius_px(sigma)
    x_lines, y_lines = plan.seam_lines()
    reach = 2 * (band_px + radius)
    return radius * (_chain(x_lines, reach) + _chain(y_lines, reach))


def plan_output_bands(plan: TilePlan, channels: int, band_px: int, sigma: float) -> list[OutputBand]:
    """The output's PNG bands (the encoder's cuts for its size), each with its window and tile rows."""
    margin = margin_px(plan, band_px, sigma) if band_px >= 1 else 0
    bands: list[OutputBand] = []
    for index, (start, stop) in enumerate(band_cuts(plan.height, plan.width * channels)):
        w0, w1 = max(0, start - 1 - margin), min(plan.height, stop + margin)
        rows = tuple(r for r, y in enumerate(plan.ys) if y < w1 and y + plan.tile_h > w0)
        bands.append(OutputBand(index, start, stop, (w0, w1), rows))
    return bands


def band_pixels(
    plan: TilePlan,
    band: OutputBand,
    load: RenderLoader,
    band_px: int,
    sigma: float,
    alpha: Callable[[int, int], _U8] | None = None,
) -> _U8:
    """Rows ``start - 1 : stop`` of the merged output (from ``start`` for the first band): blended,
    seam-blurred and with ``alpha(y0, y1)``'s rows as a fourth channel when given."""
    w0, w1 = band.window
    window = blend_rows(
        plan, lambda tile, top, bottom: load(tile.index, tile.width, tile.height, (top, bottom)), w0, w1
    )
    x_lines, y_lines = plan.seam_lines()
    inside = [y - w0 for y in y_lines if y + band_px > w0 and y - band_px < w1]
    seam_blur_lines(window, x_lines, inside, band_px, sigma)
    first = max(0, band.start - 1)
    rows = window[first - w0 : band.stop - w0]
    if alpha is None:
        return rows
    with_alpha: _U8 = np.empty((*rows.shape[:2], 4), dtype=np.uint8)
    with_alpha[:, :, :3] = rows
    with_alpha[:, :, 3] = alpha(first, band.stop)
    return with_alpha


def deflate_band(plan: TilePlan, band: OutputBand, pixels: _U8) -> Deflated:
    """Band ``band`` of the output deflated from its :func:`band_pixels`, as the encoder deflates it."""
    return deflate_rows(pixels, 1 if band.start > 0 else 0, len(pixels), last=band.stop == plan.height)


def _piece(work: UpscaleFiles, index: int) -> Blob:
    return work.files.work(f"upscale/png-{index}.piece")


def _pack(output: _Output, band: OutputBand, deflated: Deflated) -> bytes:
    data, adler, length = deflated
    facts = _PIECE_FACTS.pack(*_identity(output, band), adler, length, len(data), isal_zlib.crc32(data))
    return PIECE_MAGIC + facts + data


def _identity(output: _Output, band: OutputBand) -> tuple[int, int, int, float, int, int]:
    """What a piece of ``band`` records of how it was made: the output's width and channels, the seam
    blur's band and sigma, the band's rows."""
    return output.plan.width, output.channels, output.band_px, output.sigma, band.start, band.stop


def _unpack(raw: bytes, output: _Output, band: OutputBand) -> Deflated | None:
    """The piece's deflated band, or None when it is not this band's (another plan, another seam
    blur) or is damaged (cut short, zeroed or changed: its data's length or CRC-32 differ)."""
    head = len(PIECE_MAGIC) + _PIECE_FACTS.size
    if not raw.startswith(PIECE_MAGIC) or len(raw) < head:
        return None
    facts = _PIECE_FACTS.unpack_from(raw, len(PIECE_MAGIC))
    adler, length, data_length, crc = facts[6:]
    if tuple(facts[:6]) != _identity(output, band):
        return None
    data = raw[head:]
    if len(data) != data_length or isal_zlib.crc32(data) != crc:
        return None
    return data, adler, length


@dataclass(frozen=True)
class _Output:
    """What computing a job's bands needs: its plan, the bands, the seam blur, the tile loader."""

    work: UpscaleFiles
    plan: TilePlan
    channels: int
    bands: list[OutputBand]
    band_px: int
    sigma: float
    load: RenderLoader

    def pixels(self, band: OutputBand) -> _U8:
        alpha = None
        if self.channels == 4:
            width = self.plan.width

            def alpha(y0: int, y1: int) -> _U8:
                region: _U8 = read_region(self.work.alpha, (y0, y1), (0, width))
                return region

        return band_pixels(self.plan, band, self.load, self.band_px, self.sigma, alpha)

    def deflated(self, band: OutputBand) -> Deflated:
        return deflate_band(self.plan, band, self.pixels(band))


def _output(
    ctx: StepContext, record: JobRecord, files: JobFiles, manifest: dict[str, Any], *, keep_maps: bool = False
) -> _Output:
    work = UpscaleFiles.of(files)
    plan = TilePlan.from_dict(manifest["plan"])
    channels = 4 if manifest.get("mode") == "RGBA" else 3
    bands = plan_output_bands(plan, channels, SEAM_BLUR_BAND_PX, SEAM_BLUR_SIGMA)
    load = render_loader(ctx, record, work, keep_maps=keep_maps)
    return _Output(work, plan, channels, bands, SEAM_BLUR_BAND_PX, SEAM_BLUR_SIGMA, load)


def uses_pieces(record: JobRecord) -> bool:
    """Whether the job's output is made from pieces: a PNG of blended tiles (``--seam-fix band``
    changes the blended image once every tile is in: its output is encoded whole)."""
    return record.spec.output_format == "png" and params_of(record).seam_fix != "band"


def save_ready_pieces(ctx: StepContext, record: JobRecord, files: JobFiles, index: int) -> int:
    """After tile ``index`` is saved: deflate and save every band it completes (all the tiles of the
    band's tile rows saved, its piece not yet). Returns how many it saved.

    Raises:
        ValueError, OSError: a tile's array is damaged or unreadable (the merge reports it properly).
    """
    if not uses_pieces(record):
        return 0
    work = UpscaleFiles.of(files)
    # The bands one tile completes read a few rows of each tile of at most two tile rows, several
    # bands each: every tile is mapped once for them all.
    output = _output(ctx, record, files, read_json(work.plan), keep_maps=True)
    plan = output.plan
    if not 0 <= index < len(plan):
        return 0
    row = index // plan.cols
    # Which tiles are saved: one read of the status store's set (marked after each save), else the
    # files themselves (each looked at once). Two workers saving the last two tiles of a band at
    # once: the later one to look sees both, so someone deflates the band (or both: same bytes).
    done = ctx.store.tiles_done(record.job_id)
    saved: dict[int, bool] = {}

    def is_saved(tile: int) -> bool:
        if done is not None and tile in done:
            return True
        if tile not in saved:
            saved[tile] = work.saved(tile)
        return saved[tile]

    ready = [
        band
        for band in output.bands
        if row in band.tile_rows
        and all(is_saved(r * plan.cols + c) for r in band.tile_rows for c in range(plan.cols))
        and not _piece(work, band.index).exists()
    ]
    made: list[OutputBand] = []

    def save(band: OutputBand) -> None:
        piece = _pack(output, band, output.deflated(band))
        if _piece(work, band.index).create(piece, durable=False):
            made.append(band)

    try:
        parallel_map(save, ready)
    finally:
        # Also when a band failed: the pieces made before it are checked all the same.
        taken_back = bool(made) and _taken_back_if_merging(ctx, record.job_id, work, made)
    if ready:
        logger.debug("job %s: tile %d completed output band(s) %s", record.job_id, index, [b.index for b in ready])
    return 0 if taken_back else len(made)


def _taken_back_if_merging(ctx: StepContext, job_id: str, work: UpscaleFiles, made: list[OutputBand]) -> bool:
    """Take back the pieces just made if the merge has started meanwhile (another worker's tile
    completed the set): its end removes the work folder, and a piece created after that removal
    would stay (on disk, with the folders it made again) until the orphan rule took it.

    Pieces made before the merge started are in the folder when it is removed, so the store is read
    after they are made. The merge reads a piece taken back as missing and computes its band itself.
    """
    if "merge" not in ctx.store.get(job_id).steps:
        return False
    for band in made:
        _piece(work, band.index).delete()
    if not work.plan.exists():  # the folder was (being) removed: what these writes made again goes too
        work.files.remove_work_dir()
    logger.debug("job %s: output band(s) %s taken back: the merge has started", job_id, [b.index for b in made])
    return True


def assemble_png(
    ctx: StepContext, record: JobRecord, files: JobFiles, manifest: dict[str, Any], infotext: str | None
) -> bytes:
    """The output PNG (``infotext`` as its ``parameters``): the saved pieces stitched, the missing
    ones computed now (every tile is saved by the time the merge runs)."""
    output = _output(ctx, record, files, manifest)
    plan = output.plan

    def deflated(band: OutputBand) -> Deflated:
        try:
            found = _unpack(_piece(output.work, band.index).read_bytes(), output, band)
        except FileNotFoundError:
            found = None
        return found if found is not None else output.deflated(band)

    bands = parallel_map(deflated, output.bands)
    text = {"parameters": infotext} if infotext else None
    return png_from_payloads(plan.width, plan.height, output.channels, stitch_bands(bands), text=text)
