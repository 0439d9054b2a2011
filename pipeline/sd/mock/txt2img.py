"""How the mock SD server runs one txt2img: A1111 v1.10's ``process_images`` as far as a client can see it.

:func:`plan_generation` resolves a validated request (:mod:`pipeline.sd.mock.request`) against the loaded
checkpoint and the settings in force: styles, seeds and variation seeds, sampler and schedule, hires size,
refiner, scripts, then ``info`` and one infotext per image, written as ``create_infotext`` writes them
(key order, ``extra_generation_params``, null keys left out) with :func:`pipeline.images.infotext.build_infotext`.
It raises what A1111 raises for the same request. :class:`GenerationPlan` renders and encodes the
images; the server (:mod:`pipeline.sd.mock.server`) owns the state: options, the loaded model, the lock.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.images.infotext import build_infotext
from pipeline.sd.mock import catalog
from pipeline.sd.mock.render import encode_image, render
from pipeline.sd.mock.scripts import ScriptEffects

__all__ = [
    "IMAGE_FORMATS",
    "MAX_BATCH_PIXELS",
    "MOCK_VERSION",
    "OOM_MESSAGE",
    "TICK_S",
    "GenerationPlan",
    "HTTPError",
    "JobState",
    "OutOfMemoryError",
    "plan_generation",
    "progress_payload",
]

logger = logging.getLogger(__name__)

#: Version string the mock reports in ``info`` and infotexts.
MOCK_VERSION = "v1.10.1"
#: Largest ``batch_size × width × height`` the mock "GPU" holds; beyond it: 500 OutOfMemoryError.
MAX_BATCH_PIXELS = 4096 * 4096 * 4
#: The ``errors`` text of the mock's OutOfMemoryError (as reported in DrCyanide/cyanic-sd-krita#20).
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 1.11 GiB (GPU 0; 23.99 GiB total capacity; 21.03 GiB already "
    "allocated; 0 bytes free; 22.12 GiB reserved in total by PyTorch)"
)
#: How often a simulated generation wakes up to notice an interrupt, in seconds.
TICK_S = 0.01
#: ``samples_format`` values ``encode_pil_to_base64`` knows (lowercased); anything else is a 500.
IMAGE_FORMATS = ("png", "jpg", "jpeg", "webp")
#: Upper bound of a random seed (exclusive), as A1111's ``get_fixed_seed``.
_SEED_RANGE = 4294967294
#: Message of the TypeError A1111 raises when a numeric field is null (benrugg/AI-Render#140).
_NULL_NUMBER = "'<' not supported between instances of 'int' and 'NoneType'"
#: The latent is 1/8 of the image on each side (``opt_f``).
_LATENT_PX = 8


class OutOfMemoryError(RuntimeError):
    """torch's ``OutOfMemoryError``, as the mock "GPU" raises it (the class name is what A1111 reports)."""


class HTTPError(Exception):
    """An ``HTTPException`` A1111's own code raises: answered ``{"error": "HTTPException", "detail": ...}``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class JobState:
    """The generation in progress, as ``/progress`` describes it."""

    n_iter: int
    steps: int
    latency_s: float
    started: float = field(default_factory=time.time)
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))
    batch: int = 0
    batch_started: float = field(default_factory=time.monotonic)
    #: The request's task id (``force_task_id``): the mock names it in ``/progress`` (A1111 does not).
    task_id: str | None = None

    def start_batch(self, batch: int) -> None:
        self.batch, self.batch_started = batch, time.monotonic()


def progress_payload(job: JobState | None, interrupted: bool, *, with_image: bool = False) -> dict[str, Any]:
    """``GET /progress``: 0 when idle; while running 0.01 plus the fraction done, never 1.0.

    ``with_image`` (``skip_current_image=false``): a small grey preview whose brightness is the
    progress, as A1111 sends the live preview. ``current_task`` names the running request's task
    (sdpipe's mock only; A1111's answer has no task id): a client may check the progress is its own.
    """
    state = {
        "skipped": False,
        "interrupted": interrupted,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if job is None:
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": state,
            "current_image": None,
            "textinfo": None,
            "current_task": None,
        }
    in_batch = min(1.0, (time.monotonic() - job.batch_started) / job.latency_s) if job.latency_s > 0 else 0.0
    step = min(job.steps - 1, int(in_batch * job.steps))
    progress = min(0.99, 0.01 + (job.batch + step / max(job.steps, 1)) / job.n_iter)
    elapsed_s = time.time() - job.started
    state |= {"job": "txt2img", "job_count": job.n_iter, "job_timestamp": job.timestamp, "job_no": job.batch}
    state |= {"sampling_step": step, "sampling_steps": job.steps}
    return {
        "progress": progress,
        "eta_relative": elapsed_s / progress - elapsed_s,
        "state": state,
        "current_image": _preview(progress) if with_image and step > 0 else None,
        "textinfo": None,
        "current_task": job.task_id,
    }


def _preview(progress: float) -> str:
    """A 32x32 grey PNG, brighter as the render goes on, base64 (A1111's ``current_image``)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (32, 32), int(255 * progress)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass
class GenerationPlan:
    """One accepted txt2img request with everything resolved: seeds, sizes, models, infotexts."""

    values: dict[str, Any]
    prompts: list[str]
    n_iter: int
    batch_size: int
    steps: int
    image_size: tuple[int, int]
    all_seeds: list[int]
    info: dict[str, Any]
    render_seeds: list[int]
    #: Checkpoints (titles) loaded in turn during each batch after the main one: hires checkpoint, refiner.
    batch_models: list[str] = field(default_factory=list)
    #: ControlNet modules whose detect maps follow the real images.
    detect_maps: list[str] = field(default_factory=list)
    #: Whether a grid goes first (``save_images``, two images or more, ``return_grid``).
    wants_grid: bool = False

    def render_batch(self, batch: int, image_format: str | None) -> tuple[list[str], list[NDArray[np.uint8]]]:
        """Render batch ``batch``: its images base64-encoded as ``image_format``, and their pixels.

        Nothing is rendered when ``image_format`` is None (``send_images`` false, or an unknown format).
        """
        width, height = self.image_size
        encoded: list[str] = []
        pixels: list[NDArray[np.uint8]] = []
        if image_format is None:
            return encoded, pixels
        for k in range(batch * self.batch_size, (batch + 1) * self.batch_size):
            array = render(self.prompts[k], self.render_seeds[k], width, height)
            pixels.append(array)
            encoded.append(_b64(array, self.info["infotexts"][k], image_format))
        return encoded, pixels

    def extra_images(self, pixels: list[NDArray[np.uint8]], image_format: str | None) -> tuple[str | None, list[str]]:
        """The grid (when wanted and at least 2 images came out) and the detect maps, base64-encoded."""
        if image_format is None:
            return None, []
        grid = None
        if self.wants_grid and len(pixels) >= 2:
            grid = _b64(_grid(pixels, self.batch_size), self.grid_infotext, image_format)
        width, height = self.image_size
        maps = [
            _b64(render(f"detected map: {module}", self.all_seeds[0], width, height), None, image_format)
            for module in self.detect_maps
        ]
        return grid, maps

    @property
    def grid_infotext(self) -> str:
        """``create_infotext(use_main_prompt=True)``: the first image's text describes the grid."""
        return str(self.info["infotexts"][0])

    def response(self, images: list[str], count: int, *, grid: bool) -> dict[str, Any]:
        """The 200 body: images, the request echoed with defaults, and ``info`` as a JSON string.

        ``count`` is how many real images were generated (fewer after an interrupt); ``grid`` whether a grid
        went first (then ``index_of_first_image`` is 1 and its infotext comes first).
        """
        infotexts = self.info["infotexts"][:count]
        info = self.info | {"infotexts": [self.grid_infotext, *infotexts] if grid else infotexts}
        info["index_of_first_image"] = 1 if grid else 0
        return {"images": images, "parameters": self.values, "info": json.dumps(info)}


def _b64(pixels: NDArray[np.uint8], infotext: str | None, image_format: str) -> str:
    return base64.b64encode(encode_image(pixels, infotext=infotext, image_format=image_format)).decode("ascii")


def _grid(pixels: list[NDArray[np.uint8]], batch_size: int) -> NDArray[np.uint8]:
    """``images.image_grid`` with the default ``n_rows=-1``: round(sqrt(n)) rows."""
    rows = min(len(pixels), max(1, round(math.sqrt(len(pixels)))))
    cols = math.ceil(len(pixels) / rows)
    height, width = pixels[0].shape[:2]
    grid = np.zeros((height * rows, width * cols, 3), dtype=np.uint8)
    for i, array in enumerate(pixels):
        row, col = divmod(i, cols)
        grid[row * height : (row + 1) * height, col * width : (col + 1) * width] = array
    return grid


def _fixed_seed(seed: int | None, rng: random.Random) -> int:
    return rng.randrange(_SEED_RANGE) if seed is None or seed == -1 else seed


def hires_size(values: Mapping[str, Any], width: int, height: int) -> tuple[tuple[int, int], dict[str, Any]]:
    """``calculate_target_resolution`` then the latent crop: the final image size, and its infotext key."""
    resize_x, resize_y, scale = values["hr_resize_x"] or 0, values["hr_resize_y"] or 0, values["hr_scale"]
    truncate_x = truncate_y = 0
    if not resize_x and not resize_y:
        key: dict[str, Any] = {"Hires upscale": scale}
        to_x, to_y = int(width * scale), int(height * scale)
    else:
        key = {"Hires resize": f"{resize_x}x{resize_y}"}
        if not resize_y:
            to_x, to_y = resize_x, resize_x * height // width
        elif not resize_x:
            to_x, to_y = resize_y * width // height, resize_y
        else:
            if width / height < resize_x / resize_y:
                to_x, to_y = resize_x, resize_x * height // width
            else:
                to_x, to_y = resize_y * width // height, resize_y
            truncate_x, truncate_y = (to_x - resize_x) // _LATENT_PX, (to_y - resize_y) // _LATENT_PX
    out = ((to_x // _LATENT_PX - truncate_x) * _LATENT_PX, (to_y // _LATENT_PX - truncate_y) * _LATENT_PX)
    return out, key


def plan_generation(
    values: dict[str, Any],
    options: Mapping[str, Any],
    models: list[dict[str, Any]],
    model: dict[str, Any],
    effects: ScriptEffects,
    rng: random.Random,
) -> GenerationPlan:
    """Resolve a validated request the way A1111's ``process_images`` does, raising what it would raise.

    Args:
        values: the validated request.
        options: the settings in force during the request (its ``override_settings`` applied).
        models: the checkpoints the server lists.
        model: the loaded checkpoint.
        effects: what the request's scripts add (:func:`pipeline.sd.mock.scripts.apply_scripts`).
        rng: draws the seeds of ``-1``.

    Raises:
        AssertionError: ``prompt`` is null, or ``hr_sampler_name`` names no sampler.
        TypeError: a numeric field is null, or ``enable_hr`` without ``denoising_strength``.
        Exception: an unknown hires upscaler, refiner or hires checkpoint (A1111 raises a bare Exception).
        RuntimeError: an empty latent (width or height below 8, batch_size below 1).
        OutOfMemoryError: the batch is too large for the mock "GPU".
        IndexError: ``n_iter`` below 1 (no image, so no first seed).
    """
    if values["prompt"] is None:
        raise AssertionError  # A1111's processing asserts the same: 500 AssertionError with an empty message
    for name in ("steps", "width", "height", "batch_size", "n_iter", "cfg_scale", "subseed_strength"):
        if values[name] is None:
            raise TypeError(_NULL_NUMBER)
    width, height = values["width"], values["height"]
    if values["firstphase_width"] or values["firstphase_height"]:
        width, height = values["firstphase_width"] or 0, values["firstphase_height"] or 0
    batch_size, n_iter, count = values["batch_size"], values["n_iter"], values["batch_size"] * values["n_iter"]
    styles = values["styles"] or []
    prompts = [catalog.apply_styles(values["prompt"], styles, catalog.DEFAULT_STYLES)] * count
    negative = catalog.apply_styles(values["negative_prompt"] or "", styles, catalog.DEFAULT_STYLES, negative=True)
    refiner = None
    if values["refiner_checkpoint"] not in (None, "", "None", "none"):
        refiner = catalog.closest_model(models, values["refiner_checkpoint"])
        if refiner is None:
            raise Exception(f"Could not find checkpoint with name {values['refiner_checkpoint']}")
    sampler, scheduler = catalog.resolve_sampler(values["sampler_name"] or values["sampler_index"], values["scheduler"])
    seed, subseed = _fixed_seed(values["seed"], rng), _fixed_seed(values["subseed"], rng)
    varied = values["subseed_strength"] != 0
    all_seeds = [seed if varied else seed + i for i in range(count)]
    all_subseeds = [subseed + i for i in range(count)]
    restore_faces = bool(options["face_restoration"] if values["restore_faces"] is None else values["restore_faces"])
    tiling = bool(options["tiling"] if values["tiling"] is None else values["tiling"])
    clip_skip = int(options["CLIP_stop_at_last_layers"])

    extra: dict[str, Any] = dict(effects.before)
    schedule = catalog.scheduler_label(sampler, scheduler)
    out_w, out_h = width // _LATENT_PX * _LATENT_PX, height // _LATENT_PX * _LATENT_PX
    batch_models: list[str] = []
    second_pass_model = model
    if values["enable_hr"]:
        extra["Denoising strength"] = values["denoising_strength"]
        if values["hr_checkpoint_name"] and values["hr_checkpoint_name"] != "Use same checkpoint":
            hr_model = catalog.closest_model(models, values["hr_checkpoint_name"])
            if hr_model is None:
                raise Exception(f"Could not find checkpoint with name {values['hr_checkpoint_name']}")
            extra["Hires checkpoint"] = catalog.model_short_title(hr_model)
            second_pass_model = hr_model
        hr_sampler = values["hr_sampler_name"]
        if hr_sampler is not None and hr_sampler != sampler:
            extra["Hires sampler"] = hr_sampler
        extra["Hires prompt"] = None  # A1111 writes them only when they differ from the prompts
        extra["Hires negative prompt"] = None
        hr_prompt = catalog.apply_styles(values["hr_prompt"] or values["prompt"], styles, catalog.DEFAULT_STYLES)
        if hr_prompt != prompts[0]:
            extra["Hires prompt"] = hr_prompt
        hr_negative = catalog.apply_styles(
            values["hr_negative_prompt"] or values["negative_prompt"] or "",
            styles,
            catalog.DEFAULT_STYLES,
            negative=True,
        )
        if hr_negative != negative:
            extra["Hires negative prompt"] = hr_negative
        extra["Hires schedule type"] = None
        upscaler = values["hr_upscaler"]
        if upscaler is not None and upscaler not in catalog.upscaler_names():
            raise Exception(f"could not find upscaler named {upscaler}")
        (out_w, out_h), size_key = hires_size(values, width, height)
        extra |= size_key
        if values["hr_second_pass_steps"]:
            extra["Hires steps"] = values["hr_second_pass_steps"]
        if upscaler is not None:
            extra["Hires upscaler"] = upscaler
        if hr_sampler is not None and catalog.find_sampler(hr_sampler) != hr_sampler:
            raise AssertionError(f"bad sampler name: {hr_sampler}")  # the second pass creates its sampler
        if values["denoising_strength"] is None:  # the second pass multiplies it by the steps
            raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")
        hr_schedule = catalog.scheduler_label(hr_sampler or sampler, values["hr_scheduler"] or scheduler)
        if schedule is not None:
            extra["Schedule type"] = schedule
        if hr_schedule is not None and hr_schedule != extra.get("Schedule type"):
            extra["Hires schedule type"] = hr_schedule
        if second_pass_model["title"] != model["title"]:
            batch_models.append(second_pass_model["title"])
    elif schedule is not None:
        extra["Schedule type"] = schedule
    if out_w < _LATENT_PX or out_h < _LATENT_PX or batch_size < 1:
        raise RuntimeError(f"cannot generate {batch_size} image(s) of {width}x{height}: the latent would be empty")
    if batch_size * out_w * out_h > MAX_BATCH_PIXELS:
        raise OutOfMemoryError(OOM_MESSAGE)
    refined_from = second_pass_model if values["enable_hr"] else model
    if refiner is not None and refiner["title"] != refined_from["title"]:
        extra["Refiner"] = catalog.model_short_title(refiner)
        extra["Refiner switch at"] = values["refiner_switch_at"]
        batch_models.append(refiner["title"])
    extra |= effects.after

    base: dict[str, Any] = {
        "Steps": values["steps"],
        "Sampler": sampler,
        "Schedule type": scheduler,
        "CFG scale": values["cfg_scale"],
        "Seed": None,
        "Face restoration": options["face_restoration_model"] if restore_faces else None,
        "Size": f"{width}x{height}",
        "Model hash": model["hash"] if options["add_model_hash_to_info"] else None,
        "Model": catalog.model_name_for_extra(model) if options["add_model_name_to_info"] else None,
        "Variation seed": None,
        "Variation seed strength": values["subseed_strength"] if varied else None,
        "Seed resize from": None,
        "Denoising strength": None,
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "RNG": options["randn_source"] if options["randn_source"] != "GPU" else None,
        "Tiling": "True" if tiling else None,
    }
    resize_w, resize_h = values["seed_resize_from_w"], values["seed_resize_from_h"]
    if resize_w is not None and resize_h is not None and resize_w > 0 and resize_h > 0:
        base["Seed resize from"] = f"{resize_w}x{resize_h}"
    base |= extra
    base["Version"] = MOCK_VERSION if options["add_version_to_infotext"] else None
    infotexts = [
        build_infotext(
            prompts[k],
            negative,
            base | {"Seed": all_seeds[k], "Variation seed": all_subseeds[k] if varied else None},
        )
        for k in range(count)
    ]
    info = {
        "prompt": prompts[0],
        "all_prompts": prompts,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * count,
        "seed": all_seeds[0],
        "all_seeds": all_seeds,
        "subseed": all_subseeds[0],
        "all_subseeds": all_subseeds,
        "subseed_strength": values["subseed_strength"],
        "width": width,
        "height": height,
        "sampler_name": sampler,
        "cfg_scale": values["cfg_scale"],
        "steps": values["steps"],
        "batch_size": batch_size,
        "restore_faces": restore_faces,
        "face_restoration_model": options["face_restoration_model"] if restore_faces else None,
        "sd_model_name": catalog.model_name_for_extra(model),
        "sd_model_hash": model["hash"],
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": resize_w,
        "seed_resize_from_h": resize_h,
        "denoising_strength": values["denoising_strength"],
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": styles,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": MOCK_VERSION,
    }
    return GenerationPlan(
        values=values,
        prompts=prompts,
        n_iter=n_iter,
        batch_size=batch_size,
        steps=values["steps"],
        image_size=(out_w, out_h),
        all_seeds=all_seeds,
        info=info,
        render_seeds=[s ^ (sub << 32) if varied else s for s, sub in zip(all_seeds, all_subseeds, strict=True)],
        batch_models=batch_models,
        detect_maps=list(effects.detect_maps),
        wants_grid=bool(values["save_images"]) and count >= 2 and bool(options["return_grid"]),
    )
