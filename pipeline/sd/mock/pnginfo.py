"""``POST /sdapi/v1/png-info``: the infotext of an image, and what A1111 v1.10 reads from it.

``pnginfoapi`` decodes the image (a ``data:image/...;base64,`` prefix is accepted; anything undecodable is
a 500 ``Invalid encoded image``), reads the infotext the way ``images.read_info_from_image`` does (the PNG
``parameters`` chunk, overridden by an EXIF UserComment), and answers ``info`` (the text), ``items`` (the
image's other text metadata) and ``parameters``: ``parse_generation_parameters`` with the styles it finds
taken out of the prompts (``Styles array``), its UI defaults filled in, then the ControlNet extension's
``infotext_pasted`` callback, which splits each ``ControlNet N`` value into ``ControlNet N <field>`` keys.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from PIL import Image

from pipeline.errors import ImageError
from pipeline.images.codec import decode_image
from pipeline.images.infotext import parse_infotext
from pipeline.sd.mock import catalog

__all__ = ["png_info"]

#: Decoding limits: generous, the mock is no place to refuse large images.
_MAX_PIXELS = 1 << 28
_MAX_BYTES = 1 << 30
#: ``images.IGNORED_INFO_KEYS``: metadata A1111 leaves out of ``items``.
_IGNORED_INFO_KEYS = frozenset(
    {
        "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
        "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop", "parameters",
    }
)  # fmt: skip
#: The defaults ``parse_generation_parameters`` fills in when a key is missing, in its order.
_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Clip skip", "1"),
    ("Hires resize-1", 0),
    ("Hires resize-2", 0),
    ("Hires sampler", "Use same sampler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


class InvalidImage(Exception):
    """The body holds no decodable image: A1111's 500 HTTPException ``Invalid encoded image``."""


def _decode(encoded: str) -> bytes:
    if encoded.startswith("data:image/"):
        encoded = encoded.split(";")[1].split(",")[1]
    try:
        return base64.b64decode(encoded)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage from exc


def _parse_value(text: str) -> str | float | int | bool:
    """ControlNet's ``parse_value``: bools, ints and floats from their text, else the text."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _controlnet_fields(params: dict[str, Any]) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    for key, value in params.items():
        if not key.startswith("ControlNet") or not isinstance(value, str):
            continue
        for item in value.split(","):
            name, sep, raw = item.strip().partition(": ")
            if sep and name != "Image":
                updates[f"{key} {'_'.join(word.lower() for word in name.split(' '))}"] = _parse_value(raw)
    return updates


def parameters(infotext: str) -> dict[str, Any]:
    """``parse_generation_parameters`` plus the ControlNet callback, with the mock's saved styles."""
    parsed = parse_infotext(infotext)
    found, prompt, negative = catalog.extract_styles(
        parsed.pop("Prompt"), parsed.pop("Negative prompt"), catalog.DEFAULT_STYLES
    )
    result: dict[str, Any] = {"Styles array": found} if found else {}
    result |= {"Prompt": prompt, "Negative prompt": negative, **parsed}
    for key, default in _DEFAULTS:
        result.setdefault(key, default)
    if result["FP8 weight"] != "Disable":
        result.setdefault("Cache FP16 weight for LoRA", False)
    return result | _controlnet_fields(result)


def png_info(body: bytes) -> dict[str, Any]:
    """Answer ``POST /png-info`` for a JSON body ``{"image": "<base64>"}``.

    Raises:
        InvalidImage: the image does not decode.
        ValueError: the body is not such a JSON object (A1111's 422).
    """
    data = json.loads(body) if body else None
    if not isinstance(data, dict) or not isinstance(data.get("image"), str):
        raise ValueError("field required")
    raw = _decode(data["image"].strip())
    try:
        decoded = decode_image(raw, max_pixels=_MAX_PIXELS, max_bytes=_MAX_BYTES)
        with Image.open(io.BytesIO(raw)) as im:
            items = {k: v for k, v in im.info.items() if k not in _IGNORED_INFO_KEYS and isinstance(v, str)}
    except (ImageError, OSError) as exc:
        raise InvalidImage from exc
    info = decoded.infotext or ""
    return {"info": info, "items": items, "parameters": parameters(info)}
