"""The mock's ``POST /sdapi/v1/img2img`` and ``POST /sdapi/v1/extra-single-image``.

img2img follows A1111 v1.10's ``img2imgapi``: no ``init_images`` (absent or null) is a 404
``Init image not found``; an init image or ``mask`` that does not decode is a 500 ``Invalid encoded image``
(``decode_base64_to_image``); ``script_name``, ``alwayson_scripts`` and ``sampler_name`` are checked
and resolved as for txt2img (an unknown script is a 422 ``Script 'x' not found``, an unknown sampler
becomes the first one with a warning; the scripts run as a plain img2img); the init image is resized
to ``width`` x ``height`` (``resize_mode`` 0, "Just resize"). The "render" is a deterministic, visible
change of the init image:

    out = (1 - d) * init + d * (tint(prompt) mixed in + drift(seed, prompt, init))

with ``d`` the denoising strength. ``drift`` is a per-request colour offset derived from the seed, the
prompt and the init image's mean colour, so two tiles of one image drift apart like real img2img
tiles do (a naive merge shows a step where they meet), while the same request always gives the
same pixels. ``d = 0`` returns the init image unchanged. With a ``mask`` (white: repaint) the change
applies only under it, in proportion to its grey level.

extra-single-image enlarges by ``upscaling_resize`` (``resize_mode`` 0) with the named ``upscaler_1``
(every mock upscaler is Lanczos); an unknown name fails as A1111's postprocessing script does
(``AssertionError: could not find upscaler named ...``, a 500).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import random
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.images.infotext import build_infotext
from pipeline.sd.mock import catalog
from pipeline.sd.mock.render import encode_image
from pipeline.sd.mock.scripts import ScriptError, apply_scripts
from pipeline.sd.mock.txt2img import MOCK_VERSION, HTTPError

__all__ = ["Img2ImgPlan", "extra_single_image", "plan_img2img"]

#: Largest colour offset (per channel, 0..255 scale) a request drifts by at denoise 1.
DRIFT_MAX = 48.0
#: How much of the prompt's tint is mixed in at denoise 1.
TINT_SHARE = 0.35
_SEED_RANGE = 4294967294
_MAX_PIXELS = 1 << 28


def decode_init(encoded: object, mode: str = "RGB") -> NDArray[np.uint8]:
    """A base64 image (``data:image/...;base64,`` prefix accepted) as RGB (or ``mode``) pixels.

    Raises:
        HTTPError: 500 ``Invalid encoded image``, as A1111's ``decode_base64_to_image``.
    """
    if not isinstance(encoded, str):
        raise HTTPError(500, "Invalid encoded image")
    text = encoded.split(";")[1].split(",")[1] if encoded.startswith("data:image/") else encoded
    try:
        raw = base64.b64decode(text)
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > _MAX_PIXELS:
                raise HTTPError(500, "Invalid encoded image")
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except (binascii.Error, ValueError, OSError, IndexError) as exc:
        raise HTTPError(500, "Invalid encoded image") from exc


def _int(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(key)
    return int(float(value))


def _float(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(key)
    return float(value)


def _str(data: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(key)
    return str(value)


class Img2ImgPlan:
    """One validated img2img request: what it renders and how it answers."""

    def __init__(self, data: dict[str, Any], model: dict[str, Any] | None, seed_rng: random.Random) -> None:
        init_images = data.get("init_images")
        if init_images is None:
            raise HTTPError(404, "Init image not found")
        if not isinstance(init_images, list) or not init_images:
            raise HTTPError(500, "Invalid encoded image")
        self._init_encoded: object = init_images[0]
        self._init: NDArray[np.uint8] | None = None
        mask = data.get("mask")
        self.mask = decode_init(mask, "L") if mask else None
        self.prompt = str(data.get("prompt") or "")
        self.negative_prompt = str(data.get("negative_prompt") or "")
        self.denoise = min(max(_float(data, "denoising_strength", 0.75), 0.0), 1.0)
        self.steps = _int(data, "steps", 50)
        self.cfg_scale = _float(data, "cfg_scale", 7.0)
        self.width = _int(data, "width", 512) // 8 * 8 or 8
        self.height = _int(data, "height", 512) // 8 * 8 or 8
        # img2imgapi, as text2imgapi: the selectable script, the sampler, then the always-on scripts.
        alwayson = data.get("alwayson_scripts")
        if alwayson is not None and not isinstance(alwayson, dict):
            raise ValueError("alwayson_scripts")
        script_name, sampler_name = _str(data, "script_name"), _str(data, "sampler_name")
        sampler_index, scheduler = _str(data, "sampler_index", "Euler"), _str(data, "scheduler")
        try:
            apply_scripts(script_name, alwayson or {}, img2img=True)
        except ScriptError as exc:
            raise HTTPError(422, str(exc)) from exc
        self.sampler, self.scheduler = catalog.resolve_sampler(sampler_name or sampler_index, scheduler)
        #: ``Schedule type`` as ``create_infotext`` writes it (txt2img's rule).
        self.schedule = catalog.scheduler_label(self.sampler, self.scheduler) or self.scheduler
        seed = _int(data, "seed", -1)
        self.seed = seed if seed >= 0 else seed_rng.randrange(_SEED_RANGE)
        self.model = model
        self.task_id = str(data["force_task_id"]) if data.get("force_task_id") else None
        self.values = {k: v for k, v in data.items() if k != "init_images"} | {"init_images": None}

    @property
    def init(self) -> NDArray[np.uint8]:
        """The init image's pixels, decoded on first use (:meth:`decode`).

        Raises:
            HTTPError: 500 ``Invalid encoded image``.
        """
        if self._init is None:
            self._init = decode_init(self._init_encoded)
        return self._init

    def decode(self) -> None:
        """Decode the init image now: A1111 decodes ``init_images`` first thing inside its queue lock
        (``img2imgapi``), before ``process_images`` applies ``override_settings``, so a request waiting
        for its turn has not decoded it yet, and one that does not decode changes no setting and loads
        no checkpoint. Its mask, though, is decoded before the lock.

        Raises:
            HTTPError: 500 ``Invalid encoded image``.
        """
        _ = self.init

    def render(self) -> NDArray[np.uint8]:
        """The output pixels (``height`` x ``width`` x 3)."""
        init = self.init
        if init.shape[:2] != (self.height, self.width):
            resized = Image.fromarray(init).resize((self.width, self.height), Image.Resampling.LANCZOS)
            init = np.asarray(resized, dtype=np.uint8)
        if self.denoise == 0:
            return init.copy()
        mean = init.reshape(-1, 3).mean(axis=0)
        key = f"{self.seed}|{self.prompt}|{' '.join(str(int(v) // 4) for v in mean)}"
        digest = hashlib.sha256(key.encode()).digest()
        drift = (np.frombuffer(digest[:3], dtype=np.uint8).astype(np.float32) / 255 * 2 - 1) * DRIFT_MAX
        tint = np.frombuffer(hashlib.sha256(self.prompt.encode()).digest()[:3], dtype=np.uint8).astype(np.float32)
        # Per channel the change is affine in the value: one 256-entry table per channel.
        levels = np.arange(256, dtype=np.float32)[:, None]
        target = levels * (1 - TINT_SHARE) + tint * TINT_SHARE + drift
        table = np.clip(np.rint(levels * (1 - self.denoise) + target * self.denoise), 0, 255).astype(np.uint8)
        out: NDArray[np.uint8] = np.empty_like(init)
        for channel in range(3):
            out[..., channel] = table[init[..., channel], channel]
        if self.mask is not None:  # inpainting: only under the mask (white), softly where it is grey
            mask = self.mask
            if mask.shape != (self.height, self.width):
                mask = np.asarray(Image.fromarray(mask).resize((self.width, self.height)), dtype=np.uint8)
            weight = mask.astype(np.float32)[..., None] / 255
            mixed = init.astype(np.float32) * (1 - weight) + out.astype(np.float32) * weight
            out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        return out

    def infotext(self) -> str:
        params: dict[str, object | None] = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "Schedule type": self.schedule,
            "CFG scale": f"{self.cfg_scale:g}",
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model["hash"] if self.model else None,
            "Model": catalog.model_name_for_extra(self.model) if self.model else None,
            "Denoising strength": f"{self.denoise:g}",
            "Version": MOCK_VERSION,
        }
        return build_infotext(self.prompt, self.negative_prompt, params)

    def response(self, pixels: NDArray[np.uint8], image_format: str) -> dict[str, Any]:
        infotext = self.infotext()
        image = base64.b64encode(encode_image(pixels, infotext=infotext, image_format=image_format)).decode("ascii")
        info = {
            "prompt": self.prompt,
            "all_prompts": [self.prompt],
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "all_seeds": [self.seed],
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "denoising_strength": self.denoise,
            "sd_model_name": catalog.model_name_for_extra(self.model) if self.model else None,
            "sd_model_hash": self.model["hash"] if self.model else None,
            "version": MOCK_VERSION,
            "infotexts": [infotext],
            "index_of_first_image": 0,
        }
        return {"images": [image], "parameters": self.values, "info": json.dumps(info)}


def plan_img2img(body: bytes, model: dict[str, Any] | None, seed_rng: random.Random) -> Img2ImgPlan:
    """Validate an img2img body.

    Raises:
        HTTPError: 404 without ``init_images``, 500 for a mask that does not decode, 422 for an unknown
            script (as txt2img).
        ValueError: the body is not a JSON object, or a field has the wrong type (A1111's 422).
    """
    data = json.loads(body) if body else None
    if not isinstance(data, dict):
        raise ValueError("body")
    return Img2ImgPlan(data, model, seed_rng)


def extra_single_image(body: bytes) -> dict[str, Any]:
    """Answer ``POST /extra-single-image``: the image enlarged by ``upscaling_resize`` (or to
    ``upscaling_resize_w`` x ``upscaling_resize_h`` with ``resize_mode`` 1).

    Raises:
        HTTPError: 500 ``Invalid encoded image``.
        AssertionError: an unknown ``upscaler_1`` (A1111's postprocessing script asserts).
        ValueError: not a JSON object (422).
    """
    data = json.loads(body) if body else None
    if not isinstance(data, dict):
        raise ValueError("body")
    pixels = decode_init(data.get("image"))
    name = data.get("upscaler_1") or "None"
    known = {entry["name"] for entry in catalog.upscalers_payload()}
    assert name in known, f"could not find upscaler named {name}"
    height, width = pixels.shape[:2]
    if _int(data, "resize_mode", 0) == 1:
        size = (_int(data, "upscaling_resize_w", width), _int(data, "upscaling_resize_h", height))
    else:
        scale = _float(data, "upscaling_resize", 2.0)
        size = (int(width * scale), int(height * scale))
    if name != "None" and size != (width, height):
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    image = base64.b64encode(encode_image(pixels, infotext=None, image_format="png")).decode("ascii")
    return {"html_info": f"<p>Upscale: {size[0]}x{size[1]} with {name}</p>", "image": image}
