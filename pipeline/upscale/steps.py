"""The work of an upscale job: first pass, one tile's img2img call, and the blended merge.

Files in the job's work folder (``OUTPUT_DIR/.sdpipe/work/<job id>/upscale/``)::

    enlarged.arrays  the enlarged image, raw (one write; each tile reads its region through a
                     memory map and encodes it itself, in parallel, before it takes an SD slot)
    alpha.arrays     an input with transparency: its alpha channel, enlarged with Lanczos (SD
                     renders colour only; the merge puts this alpha back on the output)
    tile-<i>.arrays  what the server answered for tile ``i``, decoded, checked and at the tile's size
                     (its presence: never paid again); past the tiles, the seam-fix bands. Decoded
                     by the tile's own worker once the server's slot is free, in parallel, so the
                     merge reads pixels instead of decoding every tile in turn, and an answer that
                     does not decode fails its tile, not the merge. (``tile-<i>.png``: the same,
                     as earlier versions saved it, still read.)
    merged.arrays    ``--seam-fix band``: the tiles blended (the bands are cut from it)
    plan.json        the tile plan and what the merge needs (written last: the first pass is done)

Every function is idempotent: the first pass does nothing once ``plan.json`` exists, a tile whose
answer is saved is never requested again, and the merge only reads. The caller
(:mod:`pipeline.jobs.steps`) records attempts and errors in the status store.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.errors import ConfigError, ImageError, InputError, SDBadImage
from pipeline.images.codec import DecodedImage, decode_image
from pipeline.images.png import encode_png
from pipeline.jobs.files import (
    JobFiles,
    atomic_save_arrays,
    atomic_write_json,
    load_arrays,
    map_arrays,
    read_json,
)
from pipeline.storage.base import Blob
from pipeline.upscale.params import UpscaleParams
from pipeline.upscale.tiles import (
    TilePlan,
    apply_bands,
    band_mask,
    blend_tiles,
    plan_bands,
    plan_upscale_tiles,
    seam_blur_lines,
)

if TYPE_CHECKING:
    from pipeline.jobs.steps import StepContext
    from pipeline.models import JobRecord

__all__ = [
    "SEAM_BLUR_BAND_PX",
    "SEAM_BLUR_SIGMA",
    "UpscaleFiles",
    "first_pass",
    "band_phase",
    "merge_upscaled",
    "next_step_after_renders",
    "pending_renders",
    "render_count",
    "render_tile",
    "sidecar_record",
    "tile_task_id",
]

logger = logging.getLogger(__name__)

#: The seam blur after the blend: a narrow band along each overlap's centre line. The blend has
#: already removed any step; this only softens what a tile changed right at the line.
SEAM_BLUR_BAND_PX = 4
SEAM_BLUR_SIGMA = 0.8

_U8 = NDArray[np.uint8]


@dataclass(frozen=True)
class UpscaleFiles:
    """One job's upscale intermediates (in its work folder or prefix, ``upscale/``)."""

    files: JobFiles

    @classmethod
    def of(cls, files: JobFiles) -> UpscaleFiles:
        return cls(files)

    @property
    def plan(self) -> Blob:
        return self.files.work("upscale/plan.json")

    @property
    def enlarged(self) -> Blob:
        return self.files.work("upscale/enlarged.arrays")

    @property
    def alpha(self) -> Blob:
        """An input with transparency: its enlarged alpha channel."""
        return self.files.work("upscale/alpha.arrays")

    @property
    def merged(self) -> Blob:
        """``--seam-fix band``: the tiles blended, before the bands."""
        return self.files.work("upscale/merged.arrays")

    def tile(self, index: int) -> Blob:
        return self.files.work(f"upscale/tile-{index}.arrays")

    def legacy_tile(self, index: int) -> Blob:
        """Render ``index`` as earlier versions saved it: the server's PNG, as answered."""
        return self.files.work(f"upscale/tile-{index}.png")

    def saved(self, index: int) -> bool:
        """Whether render ``index`` is saved (so never requested again)."""
        return self.tile(index).exists() or self.legacy_tile(index).exists()


def tile_task_id(job_id: str, index: int) -> str:
    """The A1111 task id (``force_task_id``) of tile ``index`` of ``job_id``."""
    return f"sdpipe-{job_id}-t{index}"


def _params(record: JobRecord) -> UpscaleParams:
    if record.spec.upscale is None:
        raise ConfigError(f"job {record.job_id} is not an upscale job", field="upscale")
    return record.spec.upscale


def _png(pixels: _U8) -> bytes:
    return encode_png(pixels)


def _rgb(decoded: DecodedImage) -> _U8:
    array = decoded.array
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    converted: _U8 = np.asarray(Image.fromarray(array).convert("RGB"), dtype=np.uint8)
    return converted


def _alpha(decoded: DecodedImage) -> _U8 | None:
    """The alpha channel of an image with transparency (RGBA, LA, a palette with a transparent
    colour, all decoded as RGBA), or None when it is fully opaque (nothing to keep)."""
    array = decoded.array
    if array.ndim != 3 or array.shape[2] != 4:
        return None
    alpha = np.ascontiguousarray(array[:, :, 3])
    return None if bool((alpha == 255).all()) else alpha


def _resize(pixels: _U8, width: int, height: int) -> _U8:
    if pixels.shape[:2] == (height, width):
        return pixels
    resized: _U8 = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)
    return resized


def first_pass(ctx: StepContext, record: JobRecord, files: JobFiles) -> bool:
    """Enlarge the job's image, cut it into its tiles' init images, and record the plan.

    Returns True when it was already done (nothing called, nothing written).

    Raises:
        InputError: the enlarged image would pass MAX_PIXELS.
        SDError: the server-side upscaler failed.
    """
    params = _params(record)
    work = UpscaleFiles.of(files)
    if work.plan.exists():  # the total as planned so far: its bands too, once planned (a retry)
        ctx.store.set_tile_total(record.job_id, render_count(record, files))
        return True
    settings = ctx.settings
    decoded = decode_image(
        files.source.read_bytes(),
        max_pixels=settings.max_pixels,
        max_bytes=settings.max_image_bytes,
        what=f"source image of job {record.job_id[:8]}",
    )
    width, height = params.output_size(decoded.width, decoded.height)
    if width * height > settings.max_pixels:
        raise InputError(
            f"upscaling {decoded.width}x{decoded.height} by {params.scale:g} gives {width}x{height} px, "
            f"more than MAX_PIXELS ({settings.max_pixels:,}); use a smaller --scale",
            field="scale",
            value=params.scale,
            limit=settings.max_pixels,
        )
    started = time.perf_counter()
    backend: str | None = None
    if params.local:
        enlarged = _resize(_rgb(decoded), width, height)
    else:
        source_b64 = base64.b64encode(_png(decoded.array)).decode("ascii")
        answer, backend = ctx.pool.call(
            record.job_id,
            lambda client, on_answer: client.extra_single_image(
                source_b64, scale=params.scale, upscaler=params.upscaler, job_id=record.job_id, on_answer=on_answer
            ),
            pinned=record.spec.backend_url,
        )
        upscaled = decode_image(
            answer, max_pixels=settings.max_pixels, max_bytes=settings.max_image_bytes, what="upscaler answer"
        )
        enlarged = _resize(_rgb(upscaled), width, height)
    first_pass_s = time.perf_counter() - started
    plan = plan_upscale_tiles(width, height, params.tile_px, params.overlap_px)
    atomic_save_arrays(work.enlarged, {"width": width, "height": height}, [enlarged])
    del enlarged
    alpha = _alpha(decoded)
    if alpha is not None:  # transparency is not SD's to render: enlarged here, put back at the merge
        atomic_save_arrays(work.alpha, {"width": width, "height": height}, [_resize(alpha, width, height)])
    has_alpha = alpha is not None
    del alpha
    infotext = (record.sd_info.infotext if record.sd_info is not None else None) or decoded.infotext
    manifest: dict[str, Any] = {
        "plan": plan.to_dict(),
        "width": width,
        "height": height,
        "input_width": decoded.width,
        "input_height": decoded.height,
        "mode": "RGBA" if has_alpha else "RGB",
        "source_format": decoded.format,
        "orientation": decoded.orientation,
        "frames": decoded.frames,
        "bit_depth": decoded.bit_depth,
        "infotext": infotext,
        "first_pass": {"upscaler": params.upscaler, "backend": backend, "elapsed_s": round(first_pass_s, 3)},
    }
    atomic_write_json(work.plan, manifest)  # last: its presence means the first pass is complete
    ctx.store.set_tile_total(record.job_id, len(plan))
    logger.info("job %s: upscaled to %dx%d, %d tiles", record.job_id, width, height, len(plan))
    return False


def tile_count(files: JobFiles) -> int:
    """How many tiles the job's plan has (0 before the first pass)."""
    work = UpscaleFiles.of(files)
    return len(TilePlan.from_dict(read_json(work.plan)["plan"])) if work.plan.exists() else 0


def render_count(record: JobRecord, files: JobFiles) -> int:
    """How many renders the job has planned: its tiles, plus its seam-fix bands once they are planned."""
    work = UpscaleFiles.of(files)
    if not work.plan.exists():
        return 0
    plan = TilePlan.from_dict(read_json(work.plan)["plan"])
    params = _params(record)
    if params.seam_fix != "band" or not work.merged.exists():
        return len(plan)
    return len(plan) + len(plan_bands(plan, params.seam_fix_width_px))


def pending_renders(record: JobRecord, files: JobFiles) -> tuple[list[int], int]:
    """The planned renders (tiles, and bands once planned) whose answers are not saved yet, and how
    many renders are planned. A split or band phase sends messages for these only: a retry or a
    redelivery never sends a saved render's message again."""
    work = UpscaleFiles.of(files)
    total = render_count(record, files)
    return [index for index in range(total) if not work.saved(index)], total


def tile_request(record: JobRecord, files: JobFiles, index: int) -> dict[str, Any]:
    """The img2img body of render ``index``: a tile (its region of the enlarged image), or past the
    tiles a seam-fix band (its region of the blended image, with its mask), encoded now.

    Raises:
        InputError: no such tile or band.
    """
    params = _params(record)
    work = UpscaleFiles.of(files)
    plan = TilePlan.from_dict(read_json(work.plan)["plan"])
    task_id = tile_task_id(record.job_id, index)
    if 0 <= index < len(plan):
        tile = plan.tiles[index]
        _, [enlarged] = map_arrays(work.enlarged)
        region = np.ascontiguousarray(enlarged[tile.y0 : tile.y1, tile.x0 : tile.x1])
        del enlarged  # the map: only this region's pages were read
        return params.img2img_payload(_b64(_png(region)), tile.width, tile.height, task_id=task_id)
    bands = plan_bands(plan, params.seam_fix_width_px) if params.seam_fix == "band" and work.merged.exists() else []
    if not 0 <= index - len(plan) < len(bands):
        raise InputError(f"job {record.job_id[:8]} has no tile {index}", field="tile", value=index, limit=len(plan))
    band = bands[index - len(plan)]
    _, [merged] = map_arrays(work.merged)
    region = np.ascontiguousarray(merged[band.y0 : band.y1, band.x0 : band.x1])
    del merged
    across = (band_mask(band, params.seam_fix_width_px) * 255).round().astype(np.uint8)
    mask = np.broadcast_to(across[None, :] if band.vertical else across[:, None], (band.height, band.width))
    return params.img2img_payload(
        _b64(_png(region)), band.width, band.height, task_id=task_id, mask_b64=_b64(_png(np.ascontiguousarray(mask)))
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_tile(ctx: StepContext, record: JobRecord, files: JobFiles, index: int) -> bool:
    """Re-render tile (or band) ``index`` with img2img unless its answer is saved; returns True if it was.

    The request is prepared before an SD slot is taken: a server is handed the next tile the moment
    it answers the last one.

    Raises:
        SDError: the call failed; NoFreeSlot: every server stayed busy; InputError: no such tile.
    """
    params = _params(record)
    work = UpscaleFiles.of(files)
    if work.saved(index):
        return True
    payload = tile_request(record, files, index)
    result, backend = ctx.pool.call(
        record.job_id,
        lambda client, on_answer: client.img2img(payload, job_id=record.job_id, seed=params.seed, on_answer=on_answer),
        pinned=record.spec.backend_url,
        model=params.checkpoint,  # checkpoint affinity: a server with the job's checkpoint loaded first
    )
    # The server's slot is free again: decode here, in parallel with the other renders.
    pixels = _answer_pixels(ctx, record, result.image_bytes, payload["width"], payload["height"], index, backend)
    atomic_save_arrays(work.tile(index), {"backend": backend}, [pixels])
    logger.debug("job %s: tile %d rendered on %s in %.2fs", record.job_id, index, backend, result.elapsed_s)
    return False


def _answer_pixels(
    ctx: StepContext, record: JobRecord, data: bytes, width: int, height: int, index: int, backend: str
) -> _U8:
    """A render's answer as RGB pixels of the size asked (a server floors sizes to multiples of 8:
    a narrow image's one tile may come back smaller).

    Raises:
        SDBadImage: the answer does not decode (or is too large): the render fails, not the merge.
    """
    try:
        decoded = decode_image(
            data,
            max_pixels=ctx.settings.max_pixels,
            max_bytes=ctx.settings.max_image_bytes,
            what=f"tile {index} of job {record.job_id[:8]}",
        )
    except ImageError as exc:
        raise SDBadImage(f"the server's answer for tile {index} does not decode: {exc.message}", url=backend) from exc
    return _resize(_rgb(decoded), width, height)


def _loader(ctx: StepContext, record: JobRecord, work: UpscaleFiles) -> Callable[[int, int, int], _U8]:
    def load(index: int, width: int, height: int) -> _U8:
        if work.tile(index).exists():
            _, [pixels] = map_arrays(work.tile(index))  # read-only: blend and apply_bands only read it
            return pixels
        return _answer_pixels(ctx, record, work.legacy_tile(index).read_bytes(), width, height, index, "")

    return load


def _blend(ctx: StepContext, record: JobRecord, work: UpscaleFiles, plan: TilePlan) -> _U8:
    load = _loader(ctx, record, work)
    return blend_tiles(plan, lambda tile: load(tile.index, tile.width, tile.height))


def band_phase(ctx: StepContext, record: JobRecord, files: JobFiles) -> tuple[bool, int, int]:
    """``--seam-fix band``, once every tile is saved: blend them, save the result, plan the bands.

    Returns ``(skipped, first, count)``: the band renders are indices ``first .. first+count-1`` (after
    the tiles); the status store's total now counts them too.
    """
    params = _params(record)
    work = UpscaleFiles.of(files)
    plan = TilePlan.from_dict(read_json(work.plan)["plan"])
    if params.seam_fix != "band":  # nothing to do here: the merge blends the tiles itself
        return True, len(plan), 0
    skipped = work.merged.exists()
    if not skipped:
        atomic_save_arrays(work.merged, {"width": plan.width, "height": plan.height}, [_blend(ctx, record, work, plan)])
    bands = plan_bands(plan, params.seam_fix_width_px)
    ctx.store.set_tile_total(record.job_id, len(plan) + len(bands))
    logger.info("job %s: tiles blended, %d seam-fix band(s) to render", record.job_id, len(bands))
    return skipped, len(plan), len(bands)


def next_step_after_renders(record: JobRecord, files: JobFiles, total: int) -> str:
    """Once ``total`` renders are saved: ``seam_blur`` (blend, then bands) if the job fixes seams with
    bands and only the tiles are counted yet, else ``merge``."""
    params = _params(record)
    if params.seam_fix == "band" and total <= tile_count(files):
        return "seam_blur"
    return "merge"


def merge_upscaled(ctx: StepContext, record: JobRecord, files: JobFiles) -> tuple[_U8, dict[str, Any]]:
    """Blend every tile into the output (with ``--seam-fix band``: the blended image and its bands),
    then blur narrowly along the overlaps' centre lines.

    Returns the pixels and the first pass's manifest (size, input facts, infotext).

    Raises:
        ImageError: a saved tile does not decode.
    """
    params = _params(record)
    work = UpscaleFiles.of(files)
    manifest: dict[str, Any] = read_json(work.plan)
    plan = TilePlan.from_dict(manifest["plan"])
    if params.seam_fix == "band":
        _, [blended] = load_arrays(work.merged)
        merged: _U8 = blended
        bands = plan_bands(plan, params.seam_fix_width_px)
        load = _loader(ctx, record, work)
        apply_bands(
            merged, plan, bands, params.seam_fix_width_px, lambda b: load(len(plan) + b.index, b.width, b.height)
        )
        manifest["bands"] = len(bands)
    else:
        merged = _blend(ctx, record, work, plan)
    x_lines, y_lines = plan.seam_lines()
    seam_blur_lines(merged, x_lines, y_lines, SEAM_BLUR_BAND_PX, SEAM_BLUR_SIGMA)
    if manifest.get("mode") == "RGBA":  # the input's transparency, enlarged, on the re-rendered colour
        _, [alpha] = map_arrays(work.alpha)
        with_alpha: _U8 = np.empty((plan.height, plan.width, 4), dtype=np.uint8)
        with_alpha[:, :, :3] = merged
        del merged
        with_alpha[:, :, 3] = alpha
        merged = with_alpha
        del alpha
    manifest["tiles"] = len(plan)
    manifest["seam_blur"] = {"band_px": SEAM_BLUR_BAND_PX, "sigma": SEAM_BLUR_SIGMA}
    return merged, manifest


def sidecar_record(params: UpscaleParams, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the sidecar says about an upscale: every setting, the tiles, the first pass and the seam blur."""
    return {
        "scale": params.scale,
        "upscaler": params.upscaler,
        "tile_px": params.tile_px,
        "overlap_px": params.overlap_px,
        "denoise": params.denoise,
        "seam_fix": params.seam_fix,
        **(
            {"seam_fix_width_px": params.seam_fix_width_px, "seam_fix_denoise": params.seam_fix_denoise}
            if params.seam_fix == "band"
            else {}
        ),
        "bands": manifest.get("bands"),
        "img2img": params.model_dump(
            include={"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name", "scheduler"}
        ),
        "input_size": [manifest.get("input_width"), manifest.get("input_height")],
        "alpha": manifest.get("mode") == "RGBA",
        "tiles": manifest.get("tiles"),
        "first_pass": manifest.get("first_pass"),
        "seam_blur": manifest.get("seam_blur"),
    }
