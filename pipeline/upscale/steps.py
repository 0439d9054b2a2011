"""The steps of an upscale job: the first pass, the seam-fix band phase, the blended merge, and what
the sidecar says. One render (a tile or a band) is :mod:`pipeline.upscale.render`'s; the work
folder's files are listed in :mod:`pipeline.upscale.work`.

Every function is idempotent: the first pass does nothing once ``plan.json`` exists, the band phase
blends once, and the merge only reads. The caller (:mod:`pipeline.jobs.steps`) records attempts and
errors in the status store.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import InputError
from pipeline.images.codec import decode_image
from pipeline.images.png import encode_png
from pipeline.jobs.arrays import atomic_save_arrays, load_arrays, map_arrays
from pipeline.jobs.files import JobFiles, atomic_write_json, read_json
from pipeline.upscale.params import UpscaleParams
from pipeline.upscale.render import render_count, render_loader
from pipeline.upscale.tiles import TilePlan, apply_bands, blend_tiles, plan_bands, plan_upscale_tiles, seam_blur_lines
from pipeline.upscale.work import UpscaleFiles, alpha_of, params_of, resize, rgb

if TYPE_CHECKING:
    from pipeline.jobs.steps import StepContext
    from pipeline.models import JobRecord

__all__ = [
    "SEAM_BLUR_BAND_PX",
    "SEAM_BLUR_SIGMA",
    "band_phase",
    "first_pass",
    "merge_upscaled",
    "output_manifest",
    "sidecar_record",
]

logger = logging.getLogger(__name__)

#: The seam blur after the blend: a narrow band along each overlap's centre line. The blend has
#: already removed any step; this only softens what a tile changed right at the line.
SEAM_BLUR_BAND_PX = 4
SEAM_BLUR_SIGMA = 0.8

_U8 = NDArray[np.uint8]


def first_pass(ctx: StepContext, record: JobRecord, files: JobFiles) -> bool:
    """Enlarge the job's image, cut it into its tiles' init images, and record the plan.

    Returns True when it was already done (nothing called, nothing written).

    Raises:
        InputError: the enlarged image would pass MAX_PIXELS.
        SDError: the server-side upscaler failed.
    """
    params = params_of(record)
    work = UpscaleFiles.of(files)
    if work.plan.exists():  # the total as planned so far: its bands too, once planned (a retry)
        ctx.store.set_tile_total(record.job_id, render_count(record, files))
        return True
    settings = ctx.settings
    decoded = decode_image(
        files.source_image(),
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
        enlarged = resize(rgb(decoded), width, height)
    else:
        source_b64 = base64.b64encode(encode_png(decoded.array)).decode("ascii")
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
        enlarged = resize(rgb(upscaled), width, height)
    first_pass_s = time.perf_counter() - started
    plan = plan_upscale_tiles(width, height, params.tile_px, params.overlap_px)
    atomic_save_arrays(work.enlarged, {"width": width, "height": height}, [enlarged])
    del enlarged
    alpha = alpha_of(decoded)
    if alpha is not None:  # transparency is not SD's to render: enlarged here, put back at the merge
        atomic_save_arrays(work.alpha, {"width": width, "height": height}, [resize(alpha, width, height)])
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


def _blend(ctx: StepContext, record: JobRecord, work: UpscaleFiles, plan: TilePlan) -> _U8:
    load = render_loader(ctx, record, work)
    return blend_tiles(plan, lambda tile: load(tile.index, tile.width, tile.height))


def band_phase(ctx: StepContext, record: JobRecord, files: JobFiles) -> tuple[bool, int, int]:
    """``--seam-fix band``, once every tile is saved: blend them, save the result, plan the bands.

    Returns ``(skipped, first, count)``: the band renders are indices ``first .. first+count-1`` (after
    the tiles); the status store's total now counts them too.
    """
    params = params_of(record)
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


def merge_upscaled(ctx: StepContext, record: JobRecord, files: JobFiles) -> tuple[_U8, dict[str, Any]]:
    """Blend every tile into the output (with ``--seam-fix band``: the blended image and its bands),
    then blur narrowly along the overlaps' centre lines.

    Returns the pixels and the first pass's manifest (size, input facts, infotext).

    Raises:
        ImageError: a saved tile does not decode.
    """
    params = params_of(record)
    work = UpscaleFiles.of(files)
    manifest: dict[str, Any] = read_json(work.plan)
    plan = TilePlan.from_dict(manifest["plan"])
    if params.seam_fix == "band":
        _, [blended] = load_arrays(work.merged)
        merged: _U8 = blended
        bands = plan_bands(plan, params.seam_fix_width_px)
        load = render_loader(ctx, record, work)
        apply_bands(
            merged, plan, bands, params.seam_fix_width_px, lambda b: load(len(plan) + b.index, b.width, b.height)
        )
        manifest["bands"] = len(bands)
    else:
        merged = _blend(ctx, record, work, plan)
    x_lines, y_lines = plan.seam_lines()
    seam_blur_lines(merged, x_lines, y_lines, SEAM_BLUR_BAND_PX, SEAM_BLUR_SIGMA)
    _describe_output(manifest, plan)
    if manifest.get("mode") == "RGBA":  # the input's transparency, enlarged, on the re-rendered colour
        _, [alpha] = map_arrays(work.alpha)
        with_alpha: _U8 = np.empty((plan.height, plan.width, 4), dtype=np.uint8)
        with_alpha[:, :, :3] = merged
        del merged
        with_alpha[:, :, 3] = alpha
        merged = with_alpha
        del alpha
    return merged, manifest


def output_manifest(files: JobFiles) -> dict[str, Any]:
    """The first pass's manifest with what the merge adds for the sidecar (tiles, seam blur), for
    an output made of pieces (:mod:`pipeline.upscale.output`) rather than by :func:`merge_upscaled`."""
    manifest: dict[str, Any] = read_json(UpscaleFiles.of(files).plan)
    _describe_output(manifest, TilePlan.from_dict(manifest["plan"]))
    return manifest


def _describe_output(manifest: dict[str, Any], plan: TilePlan) -> None:
    manifest["tiles"] = len(plan)
    manifest["seam_blur"] = {"band_px": SEAM_BLUR_BAND_PX, "sigma": SEAM_BLUR_SIGMA}


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
            include={
                "prompt",
                "negative_prompt",
                "seed",
                "vary_seed",
                "steps",
                "cfg_scale",
                "sampler_name",
                "scheduler",
            }
        ),
        "input_size": [manifest.get("input_width"), manifest.get("input_height")],
        "alpha": manifest.get("mode") == "RGBA",
        "tiles": manifest.get("tiles"),
        "first_pass": manifest.get("first_pass"),
        "seam_blur": manifest.get("seam_blur"),
    }
