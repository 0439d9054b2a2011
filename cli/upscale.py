"""``sdpipe upscale``: tiled upscaling of a local image or of an earlier job's result."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.common import WaitForRoomOption, check_submission, load, out_overrides
from cli.generate import (
    FormatOption,
    JsonOption,
    NameTemplateOption,
    OutOption,
    OverwriteOption,
    QualityOption,
    SdUrlOption,
    WaitOption,
    submit_and_report,
)
from cli.output import cli_errors
from cli.request_options import ModelOption, OverrideOption, ScriptOption, request_fields
from cli.upscale_options import UpscalerOption
from pipeline.jobs.files import check_output
from pipeline.jobs.planning import build_step_params, new_id, travelling_overrides
from pipeline.sd.catalog import open_catalog
from pipeline.store import open_store
from pipeline.upscale.params import (
    DEFAULT_DENOISE,
    DEFAULT_OVERLAP_PX,
    DEFAULT_SEAM_FIX_DENOISE,
    DEFAULT_SEAM_FIX_WIDTH_PX,
    DEFAULT_TILE_PX,
    SeamFix,
)
from pipeline.upscale.planning import UpscaleRequest, plan_upscale, resolve_upscale_source

__all__ = ["ScaleOption", "upscale"]

ScaleOption = Annotated[float, typer.Option("--scale", help="Enlargement factor, e.g. 2 (above 1, at most 8).")]
TileOption = Annotated[
    int | None, typer.Option("--tile", help=f"Tile size in px, a multiple of 8 (default {DEFAULT_TILE_PX}).")
]
OverlapOption = Annotated[
    int | None,
    typer.Option("--overlap", help=f"Least overlap between neighbouring tiles, px (default {DEFAULT_OVERLAP_PX})."),
]

#: The option of each upscale setting, for its error message.
_FLAG_OF = {
    "scale": "--scale",
    "upscaler": "--upscaler",
    "tile_px": "--tile",
    "overlap_px": "--overlap",
    "denoise": "--denoise",
    "seam_fix": "--seam-fix",
    "seam_fix_width_px": "--seam-fix-width",
    "seam_fix_denoise": "--seam-fix-denoise",
    "seed": "--seed",
    "vary_seed": "--vary-seed",
    "steps": "--steps",
    "cfg_scale": "--cfg",
}


def upscale(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="An image file, a folder (each of its images), or the id (or prefix) of a job whose image to upscale."
        ),
    ],
    scale: ScaleOption = 2.0,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Prompt of every tile (default: the image's own, if it has one).")
    ] = None,
    negative: Annotated[str | None, typer.Option("--negative", "-n", help="Negative prompt.")] = None,
    denoise: Annotated[
        float | None, typer.Option("--denoise", help=f"img2img denoising strength, 0..1 (default {DEFAULT_DENOISE}).")
    ] = None,
    upscaler: UpscalerOption = None,
    tile: TileOption = None,
    overlap: OverlapOption = None,
    seam_fix: Annotated[
        SeamFix,
        typer.Option(
            "--seam-fix",
            help="band: also re-render a narrow masked band across every tile border, in parallel (none: blend only).",
        ),
    ] = "none",
    seam_fix_width: Annotated[
        int | None,
        typer.Option(
            "--seam-fix-width", help=f"Band width in px, a multiple of 8 (default {DEFAULT_SEAM_FIX_WIDTH_PX})."
        ),
    ] = None,
    seam_fix_denoise: Annotated[
        float | None,
        typer.Option(
            "--seam-fix-denoise", help=f"Denoising strength of the bands (default {DEFAULT_SEAM_FIX_DENOISE})."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every tile; -1 random (default: the image's own).")] = None,
    vary_seed: Annotated[
        bool, typer.Option("--vary-seed", help="Tile i gets seed + i, so no two tiles share a noise pattern.")
    ] = False,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default STEPS).")] = None,
    cfg: Annotated[float | None, typer.Option("--cfg", help="CFG scale (default CFG_SCALE).")] = None,
    sampler: Annotated[str | None, typer.Option(help="Sampler name (default SAMPLER).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Scheduler (default SCHEDULER).")] = None,
    model: ModelOption = None,
    override: OverrideOption = None,
    script: ScriptOption = None,
    output_format: FormatOption = None,
    quality: QualityOption = None,
    name_template: NameTemplateOption = None,
    overwrite: OverwriteOption = False,
    out: OutOption = None,
    sd_url: SdUrlOption = None,
    wait: WaitOption = True,
    wait_for_room: WaitForRoomOption = False,
    json_output: JsonOption = False,
) -> None:
    """Enlarge SOURCE by --scale, re-render every tile with img2img across the SD pool, blend them seamlessly."""
    with cli_errors():
        settings = load(ctx, sd_api_url=sd_url, **out_overrides(out))
        check_submission(settings, wait=wait, sd_url=sd_url)
        fields = request_fields(override=override, script=script)  # every tile's override_settings, scripts
        request = UpscaleRequest(
            scale=scale,
            upscaler=upscaler,
            tile_px=tile,
            overlap_px=overlap,
            denoise=denoise,
            seam_fix=seam_fix,
            seam_fix_width_px=seam_fix_width,
            seam_fix_denoise=seam_fix_denoise,
            prompt=prompt,
            negative_prompt=negative,
            seed=seed,
            vary_seed=vary_seed or None,
            steps=steps,
            cfg_scale=cfg,
            sampler=sampler,
            scheduler=scheduler,
            model=model,
            override_settings=fields.get("override_settings"),
            alwayson_scripts=fields.get("alwayson_scripts"),
        )
        _, backend_url = travelling_overrides(settings, out=out, sd_url=sd_url)
        # A job's image in a bucket is fetched into a folder that lives while it is planned (read whole).
        with tempfile.TemporaryDirectory(prefix="sdpipe-upscale-") as folder, open_catalog(settings) as checker:
            store = open_store(settings)
            try:
                path = resolve_upscale_source(store, source, settings=settings, download_to=Path(folder))
            finally:
                store.close()
            plans = plan_upscale(
                settings,
                [path],
                request,
                build_step_params(settings, grid=None, band_px=None, sigma=None),
                output_dir=settings.output_location,
                output_format=output_format,
                quality=quality,
                batch_id=new_id(),
                name_template=name_template,
                overwrite=overwrite,
                backend_url=backend_url,
                checker=checker,
                names=_FLAG_OF,
                now=time.time(),
            )
        check_output(settings)
        submit_and_report(
            settings,
            [plan.spec for plan in plans],
            wait=wait,
            json_output=json_output,
            wait_for_room=wait_for_room,
            calls_sd=True,
            inputs=plans,
        )
