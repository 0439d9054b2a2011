"""What the mock SD server knows about A1111 v1.10's txt2img: request model, samplers, info, progress.

Split from :mod:`pipeline.sd.mock.server` (the server state and routes; :mod:`pipeline.sd.mock.http` holds the
transports) so each stays readable. Everything here is pure apart from the seed generator it is handed;
see docs/a1111-api.md ("What the mock copies") for the behaviour copied.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.sd.mock.render import encode_image, format_infotext, render

__all__ = [
    "DEFAULT_MODEL_FILES",
    "MAX_BATCH_PIXELS",
    "MOCK_VERSION",
    "OOM_MESSAGE",
    "TICK_S",
    "GenerationPlan",
    "JobState",
    "OutOfMemoryError",
    "default_options",
    "find_model",
    "model_entry",
    "parse_request",
    "plan_generation",
    "progress_payload",
    "samplers_payload",
    "schedulers_payload",
]

logger = logging.getLogger(__name__)

#: Version string the mock reports in ``info`` and infotexts.
MOCK_VERSION = "v1.10.1"
#: Checkpoints the mock lists by default (the first one is loaded).
DEFAULT_MODEL_FILES = ("v1-5-pruned-emaonly.safetensors",)
#: Largest ``batch_size × width × height`` the mock "GPU" holds; beyond it: 500 OutOfMemoryError.
MAX_BATCH_PIXELS = 4096 * 4096 * 4
#: The ``errors`` text of the mock's OutOfMemoryError (as reported in DrCyanide/cyanic-sd-krita#20).
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 1.11 GiB (GPU 0; 23.99 GiB total capacity; 21.03 GiB already "
    "allocated; 0 bytes free; 22.12 GiB reserved in total by PyTorch)"
)
#: How often a simulated generation wakes up to notice an interrupt, in seconds.
TICK_S = 0.01
#: Upper bound of a random seed (exclusive), as A1111's ``get_fixed_seed``.
_SEED_RANGE = 4294967294
#: Real sha256 of the default checkpoint, so its short hash is the familiar one.
_KNOWN_SHA256 = {"v1-5-pruned-emaonly.safetensors": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"}
#: v1.10's samplers, in its order: an unknown name is replaced by the first one.
_SAMPLERS = (
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
    "LCM",
)  # fmt: skip
#: v1.10's schedulers as (name, label); the first one is the default.
_SCHEDULERS = (
    ("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential"),
    ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"), ("kl_optimal", "KL Optimal"),
    ("align_your_steps", "Align Your Steps"), ("simple", "Simple"), ("normal", "Normal"), ("ddim", "DDIM"),
    ("beta", "Beta"),
)  # fmt: skip
#: Built-in always-on scripts of v1.10; any other ``alwayson_scripts`` key is a 422.
_ALWAYSON_SCRIPTS = frozenset({"extra options", "hypertile", "refiner", "seed", "sampler", "comments"})


def _fields(kind: str, default: Any, names: str) -> dict[str, tuple[str, Any]]:
    return dict.fromkeys(names.split(), (kind, default))


#: The txt2img request model (v1.10): field -> (pydantic v1 type, API default). Every field is Optional.
_FIELDS: dict[str, tuple[str, Any]] = {
    **_fields("str", "", "prompt negative_prompt hr_prompt hr_negative_prompt"),
    **_fields("str", "Euler", "sampler_index"),
    **_fields(
        "str",
        None,
        "sampler_name scheduler refiner_checkpoint hr_upscaler hr_checkpoint_name hr_sampler_name hr_scheduler "
        "force_task_id script_name firstpass_image infotext",
    ),
    **_fields("list[str]", None, "styles"),
    **_fields("list", [], "script_args"),
    **_fields("int", -1, "seed subseed seed_resize_from_h seed_resize_from_w"),
    **_fields("int", 1, "batch_size n_iter"),
    **_fields("int", 50, "steps"),
    **_fields("int", 512, "width height"),
    **_fields("int", 0, "hr_second_pass_steps hr_resize_x hr_resize_y firstphase_width firstphase_height"),
    **_fields("float", 0.0, "subseed_strength"),
    **_fields("float", 7.0, "cfg_scale"),
    **_fields("float", 2.0, "hr_scale"),
    **_fields("float", None, "eta denoising_strength s_min_uncond s_churn s_tmax s_tmin s_noise refiner_switch_at"),
    **_fields("bool", None, "restore_faces tiling"),
    **_fields("bool", False, "do_not_save_samples do_not_save_grid disable_extra_networks enable_hr save_images"),
    **_fields("bool", True, "override_settings_restore_afterwards send_images"),
    **_fields("dict", None, "override_settings comments"),
    **_fields("dict", {}, "alwayson_scripts"),
}
#: pydantic v1's message and type per field type.
_TYPE_ERRORS = {
    "int": ("value is not a valid integer", "type_error.integer"),
    "float": ("value is not a valid float", "type_error.float"),
    "str": ("str type expected", "type_error.str"),
    "bool": ("value could not be parsed to a boolean", "type_error.bool"),
    "list": ("value is not a valid list", "type_error.list"),
    "list[str]": ("value is not a valid list", "type_error.list"),
    "dict": ("value is not a valid dict", "type_error.dict"),
}
#: What pydantic v1 accepts as true and false for a bool field (strings compared lowercased).
_TRUE = frozenset({1, "1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({0, "0", "off", "f", "false", "n", "no"})
#: Message of the TypeError A1111 raises when a numeric field is null (benrugg/AI-Render#140).
_NULL_NUMBER = "'<' not supported between instances of 'int' and 'NoneType'"


class OutOfMemoryError(RuntimeError):
    """torch's ``OutOfMemoryError``, as the mock "GPU" raises it (the class name is what A1111 reports)."""


def model_entry(filename: str) -> dict[str, Any]:
    """An ``/sd-models`` entry for a checkpoint file name."""
    sha256 = _KNOWN_SHA256.get(filename) or hashlib.sha256(filename.encode()).hexdigest()
    return {
        "title": f"{filename} [{sha256[:10]}]",
        "model_name": filename.rsplit(".", 1)[0],
        "hash": sha256[:10],
        "sha256": sha256,
        "filename": f"/stable-diffusion-webui/models/Stable-diffusion/{filename}",
        "config": None,
    }


def find_model(models: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The model a checkpoint alias names (title, file name, model name, short hash or sha256), or None."""
    for model in models:
        aliases = {model["title"], model["model_name"], model["filename"].rsplit("/", 1)[-1], model["hash"]}
        if name in aliases or name == model["sha256"]:
            return model
    return None


def default_options(model: dict[str, Any] | None) -> dict[str, Any]:
    """The part of A1111's flat ``/options`` dict the mock honours, with v1.10 defaults."""
    return {
        "sd_model_checkpoint": model["title"] if model else None,
        "sd_checkpoint_hash": model["sha256"] if model else None,
        "samples_format": "png",
        "enable_pnginfo": True,
        "return_grid": True,
        "jpeg_quality": 80,
        "CLIP_stop_at_last_layers": 1,
        "sd_vae": "Automatic",
        "eta_noise_seed_delta": 0,
        "randn_source": "GPU",
    }


def samplers_payload() -> list[dict[str, Any]]:
    """``GET /samplers``."""
    return [{"name": name, "aliases": [_alias(name)], "options": {}} for name in _SAMPLERS]


def _alias(name: str) -> str:
    return "k_" + name.lower().replace("++", "pp").replace(" ", "_")


def schedulers_payload() -> list[dict[str, Any]]:
    """``GET /schedulers``."""
    return [
        {"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
        for name, label in _SCHEDULERS
    ]


def _resolve_sampler(sampler: str | None, scheduler: str | None) -> tuple[str, str]:
    """v1.10's ``get_sampler_and_scheduler``: split a scheduler suffix, autocorrect unknown samplers."""
    labels = {key: label for name, label in _SCHEDULERS for key in (name, label)}
    label = labels.get(scheduler or "", _SCHEDULERS[0][1])
    name = sampler or _SAMPLERS[0]
    for key, key_label in labels.items():
        if name.endswith(" " + key):
            name, label = name[: -len(key) - 1], key_label
            break
    if name not in _SAMPLERS:
        logger.warning("mock SD: Sampler Scheduler autocorrection: %r -> %r", name, _SAMPLERS[0])
        name = _SAMPLERS[0]
    return name, label


def _coerce(kind: str, value: Any) -> Any:
    """pydantic v1's lax coercion for one Optional field; raises ValueError when it would fail."""
    if value is None:
        return None
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str" and isinstance(value, str | int | float):
            return value if isinstance(value, str) else str(value)
        if kind == "bool":
            key = value.lower() if isinstance(value, str) else value
            if key in _TRUE or key in _FALSE:
                return key in _TRUE
        if kind.startswith("list") and isinstance(value, list):
            return value
        if kind == "dict" and isinstance(value, dict):
            return value
    except (TypeError, ValueError, OverflowError):
        pass
    raise ValueError(kind)


def _validation_errors(data: Mapping[str, Any], values: dict[str, Any]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for name, (kind, default) in _FIELDS.items():
        if name not in data:
            values[name] = json.loads(json.dumps(default))  # a fresh copy of mutable defaults
            continue
        try:
            values[name] = _coerce(kind, data[name])
        except ValueError:
            msg, err_type = _TYPE_ERRORS[kind]
            errors.append({"loc": ["body", name], "msg": msg, "type": err_type})
            continue
        if kind == "list[str]" and values[name] is not None:
            for index, item in enumerate(values[name]):
                if not isinstance(item, str | int | float):
                    msg, err_type = _TYPE_ERRORS["str"]
                    errors.append({"loc": ["body", name, index], "msg": msg, "type": err_type})
    return errors


def parse_request(headers: Mapping[str, str], body: bytes) -> tuple[dict[str, Any], tuple[int, Any] | None]:
    """Validate a txt2img body as FastAPI 0.94 + pydantic 1.10 would.

    Returns:
        The coerced request with every default filled in, and ``(status, body)`` when it is rejected.
    """
    missing = (422, {"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]})
    if not body:
        return {}, missing
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any = body
    if not content_type or content_type == "application/json" or content_type.endswith("+json"):
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            ctx = {"msg": exc.msg, "doc": exc.doc, "pos": exc.pos, "lineno": exc.lineno, "colno": exc.colno}
            err = {"loc": ["body", exc.pos], "msg": str(exc), "type": "value_error.jsondecode", "ctx": ctx}
            return {}, (422, {"detail": [err]})
        except ValueError:
            return {}, (400, {"detail": "There was an error parsing the body"})
    if data is None:
        return {}, missing
    if not isinstance(data, dict):
        return {}, (422, {"detail": [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]})
    values: dict[str, Any] = {}
    errors = _validation_errors(data, values)
    if errors:
        return {}, (422, {"detail": errors})
    detail = None
    if values["script_name"]:
        detail = f"Script '{values['script_name']}' not found"
    for name in values["alwayson_scripts"] or {}:
        if name.lower() not in _ALWAYSON_SCRIPTS:
            detail = f"always on script {name} not found"
    if detail is not None:
        return {}, (422, {"error": "HTTPException", "detail": detail, "body": "", "errors": ""})
    return values, None


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

    def start_batch(self, batch: int) -> None:
        self.batch, self.batch_started = batch, time.monotonic()


def progress_payload(job: JobState | None, interrupted: bool) -> dict[str, Any]:
    """``GET /progress``: 0 when idle; while running 0.01 plus the fraction done, never 1.0."""
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
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
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
        "current_image": None,
        "textinfo": None,
    }


@dataclass
class GenerationPlan:
    """One accepted txt2img request with everything resolved: seeds, sizes, model, infotexts."""

    values: dict[str, Any]
    prompt: str
    n_iter: int
    batch_size: int
    steps: int
    image_size: tuple[int, int]
    image_format: str
    all_seeds: list[int]
    info: dict[str, Any]
    render_seeds: list[int]
    overrides_persist: bool = False
    persisted_options: dict[str, Any] = field(default_factory=dict)

    def render_batch(self, batch: int) -> list[str]:
        """Render and encode the images of batch ``batch`` (base64), unless ``send_images`` is false."""
        if not self.values["send_images"]:
            return []
        width, height = self.image_size
        encoded = []
        for k in range(batch * self.batch_size, (batch + 1) * self.batch_size):
            pixels = render(self.prompt, self.render_seeds[k], width, height)
            data = encode_image(pixels, infotext=self.info["infotexts"][k], image_format=self.image_format)
            encoded.append(base64.b64encode(data).decode("ascii"))
        return encoded

    def response(self, images: list[str]) -> dict[str, Any]:
        """The 200 body: images, the request echoed with defaults, and ``info`` as a JSON string."""
        count = len(images) if self.values["send_images"] else len(self.info["infotexts"])
        info = self.info | {"infotexts": self.info["infotexts"][:count]}
        return {"images": images, "parameters": self.values, "info": json.dumps(info)}


def _fixed_seed(seed: int | None, rng: random.Random) -> int:
    return rng.randrange(_SEED_RANGE) if seed is None or seed == -1 else seed


def plan_generation(
    values: dict[str, Any], options: Mapping[str, Any], models: list[dict[str, Any]], rng: random.Random
) -> GenerationPlan:
    """Resolve a validated request the way A1111's processing does, raising what it would raise.

    Raises:
        AssertionError: ``prompt`` is null.
        TypeError: a numeric field is null, or ``enable_hr`` without ``denoising_strength``.
        FileNotFoundError: the mock has no checkpoint.
        RuntimeError: an empty latent (width or height below 8, batch_size below 1).
        OutOfMemoryError: the batch is too large for the mock "GPU".
        IndexError: ``n_iter`` below 1 (no image, so no first seed).
    """
    if values["prompt"] is None:
        raise AssertionError  # A1111's processing asserts the same: 500 AssertionError with an empty message
    for name in ("steps", "width", "height", "batch_size", "n_iter", "cfg_scale", "subseed_strength"):
        if values[name] is None:
            raise TypeError(_NULL_NUMBER)
    if not models:
        raise FileNotFoundError(
            "No checkpoints found. When searching for checkpoints, looked at: models/Stable-diffusion"
        )
    overrides = values["override_settings"] or {}
    model = find_model(models, str(overrides.get("sd_model_checkpoint"))) or find_model(
        models, str(options["sd_model_checkpoint"])
    )
    model = model or models[0]
    clip_skip = int(overrides.get("CLIP_stop_at_last_layers", options["CLIP_stop_at_last_layers"]))
    width, height, batch_size, n_iter = values["width"], values["height"], values["batch_size"], values["n_iter"]
    out_w, out_h = width, height
    if values["enable_hr"]:
        if values["denoising_strength"] is None:
            raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")
        out_w, out_h = values["hr_resize_x"], values["hr_resize_y"]
        if not out_w and not out_h:
            out_w, out_h = int(width * values["hr_scale"]), int(height * values["hr_scale"])
        out_w, out_h = out_w or out_h * width // height, out_h or out_w * height // width
    out_w, out_h = out_w // 8 * 8, out_h // 8 * 8
    if out_w < 8 or out_h < 8 or batch_size < 1:
        raise RuntimeError(f"cannot generate {batch_size} image(s) of {width}x{height}: the latent would be empty")
    if batch_size * out_w * out_h > MAX_BATCH_PIXELS:
        raise OutOfMemoryError(OOM_MESSAGE)
    count = batch_size * n_iter
    sampler, scheduler = _resolve_sampler(values["sampler_name"] or values["sampler_index"], values["scheduler"])
    seed, subseed = _fixed_seed(values["seed"], rng), _fixed_seed(values["subseed"], rng)
    varied = values["subseed_strength"] > 0
    all_seeds = [seed if varied else seed + i for i in range(count)]
    all_subseeds = [subseed + i for i in range(count)]
    prompt, negative = values["prompt"], values["negative_prompt"] or ""
    hires: dict[str, Any] = {}
    if values["enable_hr"]:
        resized = values["hr_resize_x"] or values["hr_resize_y"]
        hires = {"Hires resize": f"{out_w}x{out_h}"} if resized else {"Hires upscale": values["hr_scale"]}
        hires |= {"Hires steps": values["hr_second_pass_steps"] or None, "Hires upscaler": values["hr_upscaler"]}
    infotexts = [
        format_infotext(
            prompt,
            negative,
            {
                "Steps": values["steps"],
                "Sampler": sampler,
                "Schedule type": scheduler,
                "CFG scale": values["cfg_scale"],
                "Seed": all_seeds[k],
                "Size": f"{width}x{height}",
                "Model hash": model["hash"],
                "Model": model["model_name"],
                "Variation seed": all_subseeds[k] if varied else None,
                "Variation seed strength": values["subseed_strength"] if varied else None,
                "Denoising strength": values["denoising_strength"],
                "Clip skip": clip_skip if clip_skip > 1 else None,
                "Tiling": True if values["tiling"] else None,
                **hires,
                "Version": MOCK_VERSION,
            },
        )
        for k in range(count)
    ]
    info = {
        "prompt": prompt,
        "all_prompts": [prompt] * count,
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
        "restore_faces": bool(values["restore_faces"]),
        "face_restoration_model": None,
        "sd_model_name": model["model_name"],
        "sd_model_hash": model["hash"],
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": values["seed_resize_from_w"],
        "seed_resize_from_h": values["seed_resize_from_h"],
        "denoising_strength": values["denoising_strength"],
        "extra_generation_params": {"Schedule type": scheduler, **{k: v for k, v in hires.items() if v is not None}},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": values["styles"] or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": MOCK_VERSION,
    }
    persist = not values["override_settings_restore_afterwards"] and bool(overrides)
    persisted = overrides | ({"sd_model_checkpoint": model["title"]} if "sd_model_checkpoint" in overrides else {})
    return GenerationPlan(
        values=values,
        prompt=prompt,
        n_iter=n_iter,
        batch_size=batch_size,
        steps=values["steps"],
        image_size=(out_w, out_h),
        image_format=str(overrides.get("samples_format", options["samples_format"])),
        all_seeds=all_seeds,
        info=info,
        render_seeds=[s ^ (sub << 32) if varied else s for s, sub in zip(all_seeds, all_subseeds, strict=True)],
        overrides_persist=persist,
        persisted_options=persisted if persist else {},
    )
