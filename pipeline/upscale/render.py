"""One render of an upscale job (a tile, or a seam-fix band): its img2img request, the call
through the SD pool, and its answer decoded and saved; and which renders a job still needs.

A render whose answer is saved is never requested again (its file's presence); the request is
encoded before an SD slot is taken, and the answer decoded after the slot is released, so a server
is handed the next render the moment it answers and the merge decodes nothing.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import ImageError, InputError, SDBadImage
from pipeline.images.codec import decode_image
from pipeline.images.png import encode_png
from pipeline.jobs.arrays import atomic_save_arrays, map_arrays, read_region
from pipeline.jobs.files import JobFiles, read_json
from pipeline.models import PRIORITIES
from pipeline.sd.client import request_body
from pipeline.upscale.tiles import TilePlan, band_mask, plan_bands
from pipeline.upscale.work import UpscaleFiles, params_of, resize, rgb

if TYPE_CHECKING:
    from pipeline.jobs.steps import StepContext
    from pipeline.models import JobRecord

__all__ = [
    "RenderLoader",
    "answer_pixels",
    "next_step_after_renders",
    "pending_renders",
    "render_count",
    "render_loader",
    "render_tile",
    "tile_count",
    "tile_request",
    "tile_task_id",
]

logger = logging.getLogger(__name__)

_U8 = NDArray[np.uint8]


def tile_task_id(job_id: str, index: int) -> str:
    """The A1111 task id (``force_task_id``) of tile ``index`` of ``job_id``."""
    return f"sdpipe-{job_id}-t{index}"


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
    params = params_of(record)
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
    params = params_of(record)
    work = UpscaleFiles.of(files)
    plan = TilePlan.from_dict(read_json(work.plan)["plan"])
    task_id = tile_task_id(record.job_id, index)
    if 0 <= index < len(plan):
        tile = plan.tiles[index]
        # Only the tile's region is read: its pages of the map on disk, its rows' ranges from a bucket.
        region = read_region(work.enlarged, (tile.y0, tile.y1), (tile.x0, tile.x1))
        return params.img2img_payload(_b64(encode_png(region)), tile.width, tile.height, task_id=task_id, index=index)
    bands = plan_bands(plan, params.seam_fix_width_px) if params.seam_fix == "band" and work.merged.exists() else []
    if not 0 <= index - len(plan) < len(bands):
        raise InputError(f"job {record.job_id[:8]} has no tile {index}", field="tile", value=index, limit=len(plan))
    band = bands[index - len(plan)]
    region = read_region(work.merged, (band.y0, band.y1), (band.x0, band.x1))
    across = (band_mask(band, params.seam_fix_width_px) * 255).round().astype(np.uint8)
    mask = np.broadcast_to(across[None, :] if band.vertical else across[:, None], (band.height, band.width))
    return params.img2img_payload(
        _b64(encode_png(region)),
        band.width,
        band.height,
        task_id=task_id,
        mask_b64=_b64(encode_png(np.ascontiguousarray(mask))),
        index=index,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_tile(ctx: StepContext, record: JobRecord, files: JobFiles, index: int) -> bool:
    """Re-render tile (or band) ``index`` with img2img unless its answer is saved; returns True if it was.

    The request is prepared (its tile encoded, its JSON body serialised) before an SD slot is taken:
    a server is handed the next tile the moment it answers the last one.

    Raises:
        SDError: the call failed; NoFreeSlot: every server stayed busy; InputError: no such tile.
    """
    params = params_of(record)
    work = UpscaleFiles.of(files)
    if work.saved(index):
        return True
    payload = tile_request(record, files, index)
    encoded = request_body(payload)  # serialised too before the slot: the server waits for none of it
    result, backend = ctx.pool.call(
        record.job_id,
        lambda client, on_answer: client.img2img(
            payload, job_id=record.job_id, seed=params.seed_of(index), on_answer=on_answer, encoded=encoded
        ),
        pinned=record.spec.backend_url,
        model=params.checkpoint,  # checkpoint affinity: a server with the job's checkpoint loaded first
        priority=PRIORITIES.index(record.spec.priority),  # behind better-class work, like a generation
        since=record.created_at,
    )
    # The server's slot is free again: decode here, in parallel with the other renders.
    pixels = answer_pixels(ctx, record, result.image_bytes, payload["width"], payload["height"], index, backend)
    atomic_save_arrays(work.tile(index), {"backend": backend}, [pixels])
    logger.debug("job %s: tile %d rendered on %s in %.2fs", record.job_id, index, backend, result.elapsed_s)
    return False


def answer_pixels(
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
    return resize(rgb(decoded), width, height)


def next_step_after_renders(record: JobRecord, files: JobFiles, total: int) -> str:
    """Once ``total`` renders are saved: ``seam_blur`` (blend, then bands) if the job fixes seams with
    bands and has not blended its tiles yet (only they are counted), else ``merge`` (also after a
    blend that planned no band: a one-tile image has no seam)."""
    params = params_of(record)
    if params.seam_fix != "band" or total > tile_count(files):
        return "merge"
    # Only the tiles counted: blend, unless the blend is done and planned no band. A tile delivered
    # again between the blend's write and its new total sees bands planned: seam_blur, never merge.
    blended = UpscaleFiles.of(files).merged.exists()
    return "seam_blur" if not blended or render_count(record, files) > total else "merge"


class RenderLoader(Protocol):
    """``load(index, width, height, rows=None)``: render ``index``'s saved pixels, or only its rows
    ``rows[0]:rows[1]`` (what one band of the output needs)."""

    def __call__(self, index: int, width: int, height: int, rows: tuple[int, int] | None = None) -> _U8: ...


def render_loader(ctx: StepContext, record: JobRecord, work: UpscaleFiles, *, keep_maps: bool = False) -> RenderLoader:
    """The :class:`RenderLoader` of a job: a read-only map of a render's file on disk, the whole object
    from a bucket; with ``rows`` only those rows (from a bucket
    :func:`~pipeline.jobs.arrays.read_region`'s ranged reads, where the output's bands, each needing a
    few rows of several tiles, would otherwise fetch a tile once per band it reaches); a PNG saved by
    an earlier version is decoded.

    ``keep_maps``: a render's file is mapped once for the loader's life, not once per call (a map
    costs more than the few rows a band reads of it). For a loader that reads a few tile rows only
    (the bands one tile completes): the pages of every map it kept stay in the process's memory.
    """
    mapped: dict[int, _U8] = {}  # a render's saved file never changes: two threads mapping it agree

    def load(index: int, width: int, height: int, rows: tuple[int, int] | None = None) -> _U8:
        pixels = mapped.get(index)
        if pixels is None:
            blob = work.tile(index)
            keep = keep_maps and blob.path is not None
            if not blob.exists():
                pixels = answer_pixels(ctx, record, work.legacy_tile(index).read_bytes(), width, height, index, "")
            elif rows is not None and not keep:
                return read_region(blob, rows, (0, width))
            else:
                _, [pixels] = map_arrays(blob)  # read-only: blend and apply_bands only read it
                if keep:
                    mapped[index] = pixels
        return pixels if rows is None else pixels[rows[0] : rows[1]]

    return load
