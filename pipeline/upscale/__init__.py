"""Tiled upscaling: the request model, tile planning, blend weights and the bounded-memory merge.

- :mod:`~pipeline.upscale.params`: :class:`UpscaleParams`, what an upscale asks for.
- :mod:`~pipeline.upscale.planning`: the user's request checked into parameters, and the jobs.
- :mod:`~pipeline.upscale.tiles`: where the tiles sit, their smooth blend, the merge, the seam measure.
- :mod:`~pipeline.upscale.work`: a job's work folder (or bucket prefix) and the pixel conversions.
- :mod:`~pipeline.upscale.render`: one tile's (or band's) img2img request, call and saved answer.
- :mod:`~pipeline.upscale.steps`: the first pass, the seam-fix band phase, the merge, the sidecar record.
- :mod:`~pipeline.upscale.output`: the output PNG deflated band by band as its tiles arrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.upscale.params import DEFAULT_DENOISE, DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX, LANCZOS, UpscaleParams
    from pipeline.upscale.planning import (
        UpscaleRequest,
        build_upscale_params,
        plan_upscale,
        resolve_upscale_source,
        with_upscale,
    )
    from pipeline.upscale.tiles import (
        TilePlan,
        UpscaleTile,
        axis_weights,
        blend_tiles,
        border_gradient_ratio,
        plan_upscale_tiles,
        seam_blur_lines,
    )

__all__ = [
    "DEFAULT_DENOISE",
    "DEFAULT_OVERLAP_PX",
    "DEFAULT_TILE_PX",
    "LANCZOS",
    "UpscaleParams",
    "UpscaleRequest",
    "build_upscale_params",
    "plan_upscale",
    "resolve_upscale_source",
    "with_upscale",
    "TilePlan",
    "UpscaleTile",
    "axis_weights",
    "blend_tiles",
    "border_gradient_ratio",
    "plan_upscale_tiles",
    "seam_blur_lines",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".params": ["DEFAULT_DENOISE", "DEFAULT_OVERLAP_PX", "DEFAULT_TILE_PX", "LANCZOS", "UpscaleParams"],
        ".planning": [
            "UpscaleRequest",
            "build_upscale_params",
            "plan_upscale",
            "resolve_upscale_source",
            "with_upscale",
        ],
        ".tiles": [
            "TilePlan",
            "UpscaleTile",
            "axis_weights",
            "blend_tiles",
            "border_gradient_ratio",
            "plan_upscale_tiles",
            "seam_blur_lines",
        ],
    },
)
