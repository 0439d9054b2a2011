"""Planning upscale jobs: the request as the user gave it, checked into :class:`UpscaleParams`, and
the jobs that upscale a local image or the result of an earlier job.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipeline.errors import AmbiguousId, InputError, JobNotFound
from pipeline.images.infotext import parse_infotext
from pipeline.jobs.planning import MAX_SEED, ProcessPlan, plan_process
from pipeline.models import GenerationParams, JobSpec, JobState, StepParams
from pipeline.settings import OutputFormat, Settings
from pipeline.storage.base import blob_at, is_s3_url
from pipeline.store.base import StatusStore
from pipeline.upscale.params import DEFAULT_OVERLAP_PX, MAX_SCALE, ROW_UPSCALE_KEYS, UPSCALE_KEY_OF, UpscaleParams

if TYPE_CHECKING:
    from pipeline.jobs.planning import RequestChecker
    from pipeline.sd.catalog import ServerCatalog

__all__ = [
    "MIN_RENDER_PX",
    "ROW_UPSCALE_KEYS",
    "UPSCALE_KEY_OF",
    "UpscaleRequest",
    "build_upscale_params",
    "check_upscale_size",
    "plan_upscale",
    "resolve_upscale_source",
    "row_upscale_request",
    "with_row_upscale",
    "with_upscale",
]

#: The smallest side an img2img render takes: one latent cell (the VAE turns 8 px into one; a server
#: floors sizes to multiples of 8, and a side under 8 px encodes to no latent at all).
MIN_RENDER_PX = 8


@dataclass(frozen=True)
class UpscaleRequest:
    """What the user asked for; None means "the default" (the settings', or the image's own infotext)."""

    scale: float = 2.0
    upscaler: str | None = None
    tile_px: int | None = None
    overlap_px: int | None = None
    denoise: float | None = None
    seam_fix: str | None = None
    seam_fix_width_px: int | None = None
    seam_fix_denoise: float | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    vary_seed: bool | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    #: The checkpoint of every tile (title, model name or hash): ``override_settings.sd_model_checkpoint``.
    model: str | None = None
    #: ``override_settings`` (clip skip...) and ``alwayson_scripts`` of every tile's request.
    override_settings: dict[str, Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None


def build_upscale_params(
    settings: Settings,
    request: UpscaleRequest,
    *,
    generation: GenerationParams | None = None,
    infotext: str | None = None,
    names: Mapping[str, str] | None = None,
) -> UpscaleParams:
    """The checked parameters: the request, else the generation's (``generate --upscale``), else the
    image's infotext (an A1111 PNG), else the settings. ``names``: what the caller calls each
    :class:`UpscaleParams` field (a row key, a flag), in the error.

    Raises:
        InputError: a value out of range (a tile not a multiple of 8, an overlap over half a tile...).
    """
    found: dict[str, Any] = {}
    if generation is not None:
        found = {
            "prompt": generation.prompt,
            "negative_prompt": generation.negative_prompt,
            "seed": generation.seed,
            "steps": generation.steps,
            "cfg_scale": generation.cfg_scale,
            "sampler_name": generation.sampler_name,
            "scheduler": generation.scheduler,
            # The tiles render with the generation's checkpoint (and clip skip, VAE...): a tile on
            # another model would not match its neighbours. Its alwayson_scripts are not taken: a
            # txt2img unit (ADetailer, a ControlNet with its own image) is not meant for every tile.
            "override_settings": generation.override_settings,
        }
    elif infotext:
        parsed = parse_infotext(infotext)
        found = {"prompt": parsed.get("Prompt", ""), "negative_prompt": parsed.get("Negative prompt", "")}
        if parsed.get("Seed", "").isdigit():
            found["seed"] = int(parsed["Seed"])
    given = {
        "scale": request.scale,
        "upscaler": request.upscaler,
        "tile_px": request.tile_px,
        "overlap_px": request.overlap_px,
        "denoise": request.denoise,
        "seam_fix": request.seam_fix,
        "seam_fix_width_px": request.seam_fix_width_px,
        "seam_fix_denoise": request.seam_fix_denoise,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "vary_seed": request.vary_seed,
        "steps": request.steps,
        "cfg_scale": request.cfg_scale,
        "sampler_name": request.sampler,
        "scheduler": request.scheduler,
        "override_settings": request.override_settings,
        "alwayson_scripts": request.alwayson_scripts,
    }
    if request.model is not None:
        overrides = {**(request.override_settings or found.get("override_settings") or {})}
        given["override_settings"] = overrides | {"sd_model_checkpoint": request.model}
    values: dict[str, Any] = {
        "steps": settings.steps,
        "cfg_scale": settings.cfg_scale,
        "sampler_name": settings.sampler,
        "scheduler": settings.scheduler,
    }
    values |= found
    values |= {key: value for key, value in given.items() if value is not None}
    tile_px = values.get("tile_px")
    if request.overlap_px is None and isinstance(tile_px, int) and 2 * DEFAULT_OVERLAP_PX > tile_px:
        values["overlap_px"] = tile_px // 4 // 8 * 8  # a small tile: the default overlap would not fit
    if values.get("seed", -1) == -1:  # one seed for every tile of the image, drawn once
        values["seed"] = secrets.randbelow(MAX_SEED + 1)
    try:
        return UpscaleParams(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        # The one check across fields (an overlap over half the tile) is the overlap's problem.
        field = ".".join(str(part) for part in first.get("loc", ())) or "overlap_px"
        name = (names or {}).get(field, field)
        got = first.get("input")
        reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if field == "scale":  # nan fails every comparison: "less than or equal to 8" would be no help
            reason = f"must be a number above 1 and at most {MAX_SCALE:g} (got {got!r})"
        elif isinstance(got, float) and not math.isfinite(got):
            reason = f"must be a finite number (got {got!r})"
        raise InputError(f"invalid upscale setting {name}: {reason}", field=name, value=got) from exc


def check_upscale_size(settings: Settings, params: UpscaleParams, width: int, height: int, *, field: str) -> None:
    """Refuse an upscale of a ``width`` x ``height`` image whose output the first pass would refuse
    (over ``MAX_PIXELS``) or no server could render (a side under :data:`MIN_RENDER_PX`), before any
    job exists. ``field``: what the caller calls the scale (``--scale``, ``upscale``).

    Raises:
        InputError: ``limit`` ``MAX_PIXELS``; or :data:`MIN_RENDER_PX`, with ``expected`` set.
    """
    out_width, out_height = params.output_size(width, height)
    if out_width * out_height > settings.max_pixels:
        raise InputError(
            f"upscaling {width}x{height} by {params.scale:g} gives {out_width}x{out_height} px, "
            f"{out_width * out_height:,} pixels, over MAX_PIXELS ({settings.max_pixels:,})",
            field=field,
            value=params.scale,
            limit=settings.max_pixels,
        )
    if min(out_width, out_height) < MIN_RENDER_PX:
        raise InputError(
            f"upscaling {width}x{height} by {params.scale:g} gives {out_width}x{out_height} px: "
            f"SD renders at least {MIN_RENDER_PX} px a side",
            field=field,
            value=params.scale,
            limit=MIN_RENDER_PX,
            expected=f"an output of at least {MIN_RENDER_PX} px a side",
        )


def resolve_upscale_source(
    store: StatusStore, source: str, *, settings: Settings | None = None, download_to: Path | None = None
) -> Path:
    """A local image path as given, or the output image of the job ``source`` names (an id or prefix);
    one in a bucket (``s3://``, OUTPUT_URL) is fetched with ``settings`` into the folder
    ``download_to`` first, under its own name.

    Raises:
        InputError: neither an existing file nor a job (``field`` ``source``); a job without an image
            (``field`` ``source_job``, ``value`` its short id, ``limit`` its state); a succeeded
            job whose image file is gone (``field`` ``source_image``, ``value`` the short id).
        StorageUnavailable, StorageRefused: the bucket failed.
    """
    path = Path(source)
    if path.exists():
        return path
    try:
        job_id = store.resolve_id(source)
    except AmbiguousId:
        raise
    except JobNotFound as exc:
        raise InputError(
            f"{source!r} is neither an image file nor a job id; give a path or a job id from `sdpipe jobs`",
            field="source",
            value=source,
        ) from exc
    record = store.get(job_id)
    image = record.result.image if record.result is not None else None
    if record.state is not JobState.SUCCEEDED or not image:
        raise InputError(
            f"job {job_id[:8]} has no image to upscale (its state: {record.state.value})",
            field="source_job",
            value=job_id[:8],
            limit=record.state.value,
        )
    gone = InputError(
        f"the image of job {job_id[:8]} is gone: {image} was removed or replaced",
        field="source_image",
        value=job_id[:8],
    )
    if not is_s3_url(image):
        if not Path(image).is_file():
            raise gone
        return Path(image)
    if download_to is None:
        raise InputError(f"job {job_id[:8]}'s image is in a bucket: {image}", field="source_image", value=job_id[:8])
    try:
        data = blob_at(image, settings).read_bytes()
    except FileNotFoundError:
        raise gone from None
    local = download_to / image.rsplit("/", 1)[-1]
    local.write_bytes(data)
    return local


def plan_upscale(
    settings: Settings,
    paths: Sequence[Path],
    request: UpscaleRequest,
    step_params: StepParams,
    *,
    output_dir: str | Path,
    output_format: OutputFormat | None = None,
    quality: int | None = None,
    batch_id: str | None = None,
    name_template: str | None = None,
    overwrite: bool = False,
    backend_url: str | None = None,
    checker: ServerCatalog | None = None,
    names: Mapping[str, str] | None = None,
    first_frame: bool = False,
    label: str | None = None,
    now: float,
) -> list[ProcessPlan]:
    """One upscale job per input image, validated (every image checked before any job exists).
    ``checker``: the SD server's catalog, which gives a ``model``, the upscaler, sampler and scheduler
    the server's names (and refuses unknown ones);
    ``names``: see :func:`build_upscale_params`; ``first_frame`` and ``label``: see :func:`plan_process`.

    Raises:
        InputError, ImageError, InputsRejected: see :func:`~pipeline.jobs.planning.plan_process`, and
            bad upscale settings or a checkpoint, upscaler, sampler or scheduler the server does not have.
    """
    if request.model is not None and checker is not None:
        request = replace(request, model=checker.resolve_checkpoint(request.model))
    # The settings' own problems first, once; the scale is every image's, so the sizes are checked with it.
    checked = build_upscale_params(settings, request, names=names)
    if checker is not None:  # every image's tiles take these, whatever its infotext: checked once
        checked = checker.check_upscale(checked)
        request = replace(request, upscaler=checked.upscaler, sampler=checked.sampler_name, scheduler=checked.scheduler)
    scale_name = (names or {}).get("scale", "scale")

    def check_size(width: int, height: int) -> None:  # instead of the split grid's geometry: no grid here
        check_upscale_size(settings, checked, width, height, field=scale_name)

    plans = plan_process(
        settings,
        paths,
        step_params,
        output_dir=output_dir,
        output_format=output_format,
        quality=quality,
        batch_id=batch_id,
        name_template=name_template,
        overwrite=overwrite,
        first_frame=first_frame,
        label=label,
        check_size=check_size,
        now=now,
    )
    # Here, not at the top: planning an upscale of generated images (``generate --upscale``, batch
    # rows) reads no file, and a command that only enqueues loads no numpy or PIL (tests/test_cli/test_startup.py).
    from pipeline.images.codec import read_infotext

    upscaled = []
    for plan in plans:
        infotext = read_infotext(plan.data)
        params = build_upscale_params(settings, request, infotext=infotext, names=names)
        spec = plan.spec.model_copy(update={"kind": "upscale", "upscale": params, "backend_url": backend_url})
        upscaled.append(replace(plan, spec=spec))
    return upscaled


def with_upscale(
    settings: Settings,
    specs: Sequence[JobSpec],
    request: UpscaleRequest,
    *,
    names: Mapping[str, str] | None = None,
    checker: RequestChecker | None = None,
) -> list[JobSpec]:
    """``generate --upscale``: each generate job also upscales its image, with its own prompt, seed and
    sampler unless the request names others. ``checker``: see :func:`plan_upscale`.

    Raises:
        InputError: bad upscale settings, an upscaler (sampler, scheduler) the server does not have; an
            output over MAX_PIXELS (see :func:`check_upscale_size`).
    """
    upscaled = []
    for spec in specs:
        params = build_upscale_params(settings, request, generation=spec.generation, names=names)
        if checker is not None:
            params = checker.check_upscale(params)
        if spec.generation is not None:  # its size is known: refused now, not by the job's first pass
            width, height = spec.generation.output_size
            check_upscale_size(settings, params, width, height, field=(names or {}).get("scale", "scale"))
        update: dict[str, Any] = {"upscale": params}
        if spec.fingerprint is not None:  # --skip-existing must tell an upscaled render from a plain one
            mixed = f"{spec.fingerprint}|{params.model_dump_json(exclude={'seed'})}"
            update["fingerprint"] = hashlib.sha256(mixed.encode()).hexdigest()
        upscaled.append(spec.model_copy(update=update))
    return upscaled


def row_upscale_request(values: Mapping[str, Any]) -> UpscaleRequest | None:
    """The upscale a checked row asks for with its ``upscale*`` keys (:data:`ROW_UPSCALE_KEYS`), or None."""
    given = {field: values[key] for key, field in ROW_UPSCALE_KEYS.items() if values.get(key) is not None}
    if not given:
        return None
    given.setdefault("scale", 2.0)
    return UpscaleRequest(**given)


def with_row_upscale(
    settings: Settings,
    specs: Sequence[JobSpec],
    values: Mapping[str, Any],
    checker: RequestChecker | None = None,
    *,
    names: Mapping[str, str] | None = None,
) -> list[JobSpec]:
    """``specs`` upscaled as the row's ``upscale*`` keys ask (unchanged when it has none), the
    upscaler checked against the server by ``checker`` (see :func:`plan_upscale`).

    Raises:
        InputError: a bad upscale value, its ``field`` the row key (``upscale_tile``, ``upscaler``...),
            or the name ``names`` gives its :class:`UpscaleParams` field (a command's flag).
    """
    request = row_upscale_request(values)
    if request is None:
        return list(specs)
    return with_upscale(settings, specs, request, names=UPSCALE_KEY_OF if names is None else names, checker=checker)
