"""The ``--upscale*`` flags ``generate``, ``batch`` and ``schedule add`` share: a tiled upscale after
each image (for ``batch`` and ``schedule add`` a default of every row).

They are the batch-row keys of :data:`~pipeline.upscale.params.ROW_UPSCALE_KEYS` (``upscale``,
``upscaler``, ``upscale_denoise``, ``upscale_tile``, ``upscale_overlap``, ``upscale_seam_fix``,
``upscale_vary_seed``), declared once in the option group :class:`UpscaleFlags` (see
:mod:`cli.option_groups`), whose :meth:`~UpscaleFlags.fields` are checked with the rest of the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from cli.option_groups import OptionGroup
from pipeline.upscale.params import (
    DEFAULT_DENOISE,
    DEFAULT_OVERLAP_PX,
    DEFAULT_TILE_PX,
    LANCZOS,
    ROW_UPSCALE_KEYS,
    SeamFix,
)

__all__ = ["UPSCALE_FLAG_OF", "UpscaleFlags", "UpscalerOption"]

#: The flag of each :class:`~pipeline.upscale.planning.UpscaleRequest` field (``overlap_px``:
#: ``--upscale-overlap``): a bad value given on the command line is named by its flag, not its row key.
UPSCALE_FLAG_OF = {field: "--" + key.replace("_", "-") for key, field in ROW_UPSCALE_KEYS.items()}

_PANEL = "Tiled upscale"
#: Also ``sdpipe upscale``'s.
UpscalerOption = Annotated[
    str | None,
    typer.Option(
        "--upscaler",
        help=f"First-pass upscaler: {LANCZOS} (no SD call, the default) or a server's, e.g. 'R-ESRGAN 4x+'.",
        rich_help_panel=_PANEL,
    ),
]


@dataclass(frozen=True)
class UpscaleFlags(OptionGroup):
    """The ``--upscale*`` flags of a command; the field names are the row keys."""

    upscale: Annotated[
        float | None,
        typer.Option(
            "--upscale", help="Then upscale each image by this factor with tiled img2img.", rich_help_panel=_PANEL
        ),
    ] = None
    upscale_denoise: Annotated[
        float | None,
        typer.Option(
            "--upscale-denoise",
            help=f"Denoising strength of the upscale's tiles (default {DEFAULT_DENOISE}).",
            rich_help_panel=_PANEL,
        ),
    ] = None
    upscaler: UpscalerOption = None
    upscale_tile: Annotated[
        int | None,
        typer.Option(
            "--upscale-tile",
            help=f"Tile size in px, a multiple of 8 (default {DEFAULT_TILE_PX}).",
            rich_help_panel=_PANEL,
        ),
    ] = None
    upscale_overlap: Annotated[
        int | None,
        typer.Option(
            "--upscale-overlap",
            help=f"Least overlap between neighbouring tiles in px (default {DEFAULT_OVERLAP_PX}).",
            rich_help_panel=_PANEL,
        ),
    ] = None
    upscale_seam_fix: Annotated[
        SeamFix | None,
        typer.Option(
            "--upscale-seam-fix",
            help="band: also re-render a narrow masked band across every tile border (default none: blend only).",
            rich_help_panel=_PANEL,
        ),
    ] = None
    upscale_vary_seed: Annotated[
        bool | None,
        typer.Option(
            "--upscale-vary-seed",
            help="Tile i gets seed + i, so no two tiles share a noise pattern (default: one seed for every tile).",
            rich_help_panel=_PANEL,
        ),
    ] = None

    def fields(self) -> dict[str, Any]:
        """The flags given (not None), as row keys."""
        return {key: value for key, value in self.values().items() if value is not None}
