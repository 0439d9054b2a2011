"""The ``--upscale*`` flags ``generate``, ``batch`` and ``schedule add`` share: a tiled upscale after
each image (for ``batch`` and ``schedule add`` a default of every row).

They are the batch-row keys of :data:`~pipeline.upscale.planning.ROW_UPSCALE_KEYS` (``upscale``,
``upscaler``, ``upscale_denoise``, ``upscale_tile``, ``upscale_overlap``, ``upscale_seam_fix``,
``upscale_vary_seed``):
:func:`upscale_flags` turns a command's parameters into those keys, checked with the rest of the row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from pipeline.upscale.params import DEFAULT_DENOISE, DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX, LANCZOS, SeamFix
from pipeline.upscale.planning import ROW_UPSCALE_KEYS

__all__ = [
    "UpscaleDenoiseOption",
    "UpscaleOption",
    "UpscaleOverlapOption",
    "UpscaleSeamFixOption",
    "UpscaleTileOption",
    "UpscaleVarySeedOption",
    "UpscalerOption",
    "upscale_flags",
]

_PANEL = "Tiled upscale"
UpscaleOption = Annotated[
    float | None,
    typer.Option(
        "--upscale", help="Then upscale each image by this factor with tiled img2img.", rich_help_panel=_PANEL
    ),
]
UpscaleDenoiseOption = Annotated[
    float | None,
    typer.Option(
        "--upscale-denoise",
        help=f"Denoising strength of the upscale's tiles (default {DEFAULT_DENOISE}).",
        rich_help_panel=_PANEL,
    ),
]
UpscalerOption = Annotated[
    str | None,
    typer.Option(
        "--upscaler",
        help=f"First-pass upscaler: {LANCZOS} (no SD call, the default) or a server's, e.g. 'R-ESRGAN 4x+'.",
        rich_help_panel=_PANEL,
    ),
]
UpscaleTileOption = Annotated[
    int | None,
    typer.Option(
        "--upscale-tile", help=f"Tile size in px, a multiple of 8 (default {DEFAULT_TILE_PX}).", rich_help_panel=_PANEL
    ),
]
UpscaleOverlapOption = Annotated[
    int | None,
    typer.Option(
        "--upscale-overlap",
        help=f"Least overlap between neighbouring tiles in px (default {DEFAULT_OVERLAP_PX}).",
        rich_help_panel=_PANEL,
    ),
]
UpscaleSeamFixOption = Annotated[
    SeamFix | None,
    typer.Option(
        "--upscale-seam-fix",
        help="band: also re-render a narrow masked band across every tile border (default none: blend only).",
        rich_help_panel=_PANEL,
    ),
]

UpscaleVarySeedOption = Annotated[
    bool | None,
    typer.Option(
        "--upscale-vary-seed",
        help="Tile i gets seed + i, so no two tiles share a noise pattern (default: one seed for every tile).",
        rich_help_panel=_PANEL,
    ),
]


def upscale_flags(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--upscale*`` flags given (not None) among a command's parameters (its ``locals()``, whose
    names are the row keys), as row keys."""
    return {key: params[key] for key in ROW_UPSCALE_KEYS if params.get(key) is not None}
