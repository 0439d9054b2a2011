"""Planning upscale jobs: the request as the user gave it, checked into :class:`UpscaleParams`, and
the jobs that upscale a local image or the result of an earlier job.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.errors import AmbiguousId, InputError, JobNotFound
from pipeline.images.codec import read_infotext
from pipeline.images.infotext import parse_infotext
from pipeline.jobs.planning import MAX_SEED, ProcessPlan, plan_process
from pipeline.models import GenerationParams, JobSpec, JobState, StepParams, validation_message
from pipeline.settings import OutputFormat, Settings
from pipeline.store.base import StatusStore
from pipeline.upscale.params import UpscaleParams

__all__ = ["UpscaleRequest", "build_upscale_params", "plan_upscale", "resolve_upscale_source", "with_upscale"]


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
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None


def build_upscale_params(
    settings: Settings,
    request: UpscaleRequest,
    *,
    generation: GenerationParams | None = None,
    infotext: str | None = None,
) -> UpscaleParams:
    """The checked parameters: the request, else the generation's (``generate --upscale``), else the
    image's infotext (an A1111 PNG), else the settings.

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
        "steps": request.steps,
        "cfg_scale": request.cfg_scale,
        "sampler_name": request.sampler,
        "scheduler": request.scheduler,
    }
    values: dict[str, Any] = {
        "steps": settings.steps,
        "cfg_scale": settings.cfg_scale,
        "sampler_name": settings.sampler,
        "scheduler": settings.scheduler,
    }
    values |= found
    values |= {key: value for key, value in given.items() if value is not None}
    if values.get("seed", -1) == -1:  # one seed for every tile of the image, drawn once
        values["seed"] = secrets.randbelow(MAX_SEED + 1)
    try:
        return UpscaleParams(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first.get("loc", ())) or "upscale"
        raise InputError(
            f"invalid upscale setting {validation_message(exc)}", field=name, value=first.get("input")
        ) from exc


def resolve_upscale_source(store: StatusStore, source: str) -> Path:
    """A local image path as given, or the output image of the job ``source`` names (an id or prefix).

    Raises:
        InputError: neither an existing file nor a job; a job that has no output image yet.
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
            f"job {job_id[:8]} has no image to upscale (it is {record.state.value}); wait for it to succeed",
            field="source",
            value=source,
        )
    return Path(image)


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
    now: float,
) -> list[ProcessPlan]:
    """One upscale job per input image, validated (every image checked before any job exists).

    Raises:
        InputError, ImageError, InputsRejected: see :func:`~pipeline.jobs.planning.plan_process`, and
            bad upscale settings.
    """
    build_upscale_params(settings, request)  # the settings' own problems first, once
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
        now=now,
    )
    upscaled = []
    for plan in plans:
        infotext = read_infotext(plan.data)
        params = build_upscale_params(settings, request, infotext=infotext)
        spec = plan.spec.model_copy(update={"kind": "upscale", "upscale": params, "backend_url": backend_url})
        upscaled.append(replace(plan, spec=spec))
    return upscaled


def with_upscale(settings: Settings, specs: Sequence[JobSpec], request: UpscaleRequest) -> list[JobSpec]:
    """``generate --upscale``: each generate job also upscales its image, with its own prompt, seed and
    sampler unless the request names others.

    Raises:
        InputError: bad upscale settings.
    """
    upscaled = []
    for spec in specs:
        params = build_upscale_params(settings, request, generation=spec.generation)
        update: dict[str, Any] = {"upscale": params}
        if spec.fingerprint is not None:  # --skip-existing must tell an upscaled render from a plain one
            mixed = f"{spec.fingerprint}|{params.model_dump_json(exclude={'seed'})}"
            update["fingerprint"] = hashlib.sha256(mixed.encode()).hexdigest()
        upscaled.append(spec.model_copy(update=update))
    return upscaled
