"""Reading SD server answers for :class:`pipeline.sd.client.SDClient`: error bodies, JSON, images, ``info``.

Split from :mod:`pipeline.sd.client` (which owns the connection and the transport-error mapping) so both
stay small. Error bodies differ between servers; :func:`server_message` reads all of them:

- A1111: ``{"error", "detail", "body", "errors"}`` (``errors`` holds ``str(exception)``; HTTPExceptions
  leave it empty and put their message in ``detail``);
- Forge: ``message`` instead of ``errors``, and plain ``{"detail": "..."}`` for HTTPExceptions;
- SD.Next: A1111's shape plus ``code``;
- FastAPI/pydantic 422 (v1 and v2): ``{"detail": [{"loc", "msg", "type"}, ...]}``.

A1111 answers 500 for several mistakes of the request itself, which no retry can fix and which say
nothing about the server's health (:func:`is_request_mistake`): an unknown ``override_settings`` key
(``KeyError``), another ``KeyError``/``ValueError``/``TypeError`` raised while reading the request
(hires without ``denoising_strength`` is a ``TypeError``: None * float), an unknown
``samples_format`` (``HTTPException`` "Invalid image format") and an unknown hires upscaler
(``Exception`` "could not find upscaler named ...") and an unknown refiner or hires checkpoint
(``Exception`` "Could not find checkpoint with name ..."). They are :class:`SDRequestRejected`: the job
fails at once with the server's message, and the pool does not bench the server. ``OutOfMemoryError``,
``NansException`` and every other 5xx stay :class:`SDServerError` (transient).
"""

from __future__ import annotations

import binascii
import dataclasses
import io
import json
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import orjson
import pybase64

from pipeline.errors import (
    SDAuthError,
    SDBadImage,
    SDError,
    SDNotFound,
    SDRequestRejected,
    SDServerError,
    SDWrongCheckpoint,
)
from pipeline.images.infotext import parse_infotext
from pipeline.models import GenerationParams, SDResult

__all__ = [
    "MAX_SERVER_MESSAGE_CHARS",
    "build_result",
    "check_against_request",
    "checkpoint_matches",
    "expect",
    "is_request_mistake",
    "json_body",
    "server_message",
    "sniff_format",
    "status_error",
]

logger = logging.getLogger(__name__)

#: Longest server message kept in an error, in characters.
MAX_SERVER_MESSAGE_CHARS = 500
#: Validation problems quoted from one 422 answer.
_MAX_VALIDATION_ITEMS = 3
#: A ``data:image/...;base64,`` prefix (A1111 never sends one; tolerated anyway).
_DATA_URL_RE = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_T = TypeVar("_T", dict[str, Any], list[Any])
#: Exception classes A1111 reports (500 ``error``) for a mistake in the request: permanent.
_REQUEST_MISTAKE_ERRORS = frozenset({"KeyError", "ValueError", "TypeError"})
#: Words of a 500 message (any exception class) that name a mistake in the request: permanent.
_REQUEST_MISTAKE_WORDS = (
    "invalid image format",
    "could not find upscaler named",
    "could not find checkpoint with name",
)


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SERVER_MESSAGE_CHARS else text[: MAX_SERVER_MESSAGE_CHARS - 1] + "…"


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc") or []]
    if loc and loc[0] == "body":
        loc = loc[1:]
    return f"{'.'.join(loc) or 'body'}: {item.get('msg', 'invalid')}"


def _message_from_body(body: Any) -> str:
    if isinstance(body, str):
        return body
    if not isinstance(body, dict):
        return ""
    detail, error = body.get("detail"), body.get("error")
    if isinstance(detail, list):  # FastAPI request validation, pydantic v1 or v2
        return "; ".join(_validation_item(item) for item in detail[:_MAX_VALIDATION_ITEMS])
    if isinstance(error, dict):  # ComfyUI-style {"error": {"message": ...}}
        return str(error.get("message") or error.get("type") or "")
    text = next((str(body[key]) for key in ("errors", "message") if body.get(key)), "")
    detail_text = str(detail) if detail else ""
    if error and error != "HTTPException":
        return f"{error}: {text or detail_text}" if text or detail_text else str(error)
    return detail_text or text


def server_message(response: httpx.Response) -> str:
    """The server's own explanation from an error answer, on one line (its reason phrase if none)."""
    try:
        message = _message_from_body(response.json())
    except ValueError:
        message = response.text.strip()
    return _truncate(message) or response.reason_phrase


def status_error(
    response: httpx.Response,
    url: str,
    method: str,
    path: str,
    *,
    sampler: str | None = None,
    scrub: Callable[[str], str] = str,
) -> SDError:
    """The error type and message for a non-2xx answer (see :mod:`pipeline.sd.client`)."""
    status = response.status_code
    message = scrub(server_message(response))
    where = f"{method} {path}"
    extra: dict[str, Any] = {"url": url, "status_code": status, "server_message": message}
    if status == 401:
        return SDAuthError(
            f"the SD server at {url} refused {where} (401): {message}",
            field="SD_API_AUTH",
            **extra,
        )
    if status == 404:
        if "sampler" in message.lower():
            return SDNotFound(
                f"the SD server at {url} does not know sampler {sampler!r} (404): {message}",
                field="sampler_name",
                value=sampler,
                **extra,
            )
        if message.lower() in ("not found", "") or not _is_json(response):
            return SDNotFound(
                f"the SD server at {url} has no {path} (404 Not Found)",
                field="route",
                value=path,
                **extra,
            )
        return SDNotFound(f"the SD server at {url} answered {where} with 404: {message}", **extra)
    if status >= 500 and is_request_mistake(response):
        return SDRequestRejected(
            f"the SD server at {url} refused the request ({status}, a mistake in the request, not retried): {message}",
            **extra,
        )
    if status == 429 or status >= 500:
        return SDServerError(f"the SD server at {url} failed {where} ({status}): {message}", **extra)
    if status < 400:
        location = scrub(response.headers.get("location", "?"))
        return SDRequestRejected(
            f"the SD server at {url} redirected {where} ({status}) to {location}",
            field="location",
            value=location,
            **extra,
        )
    return SDRequestRejected(f"the SD server at {url} rejected {where} ({status}): {message}", **extra)


def is_request_mistake(response: httpx.Response) -> bool:
    """Whether a 5xx answer is A1111 failing on the request itself (see the module docstring)."""
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if body.get("error") in _REQUEST_MISTAKE_ERRORS:
        return True
    text = " ".join(str(body.get(key) or "") for key in ("detail", "errors", "message")).lower()
    return any(words in text for words in _REQUEST_MISTAKE_WORDS)


def _is_json(response: httpx.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def json_body(response: httpx.Response, url: str, path: str) -> Any:
    """The JSON of a 200 txt2img answer; anything else is :class:`SDBadImage` (a non-A1111 responder).

    Parsed with orjson (a 512² answer is ~0.7 MB of JSON, nearly all one base64 string: 5x faster
    than the json module); what orjson refuses but the json module reads (NaN, a body in another
    encoding than UTF-8) is read by the json module.
    """
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        pass
    try:
        return response.json()
    except ValueError as exc:
        kind = response.headers.get("content-type", "no content type")
        raise SDBadImage(
            f"the SD server at {url} answered POST {path} with a non-JSON body ({kind}): "
            f"{_truncate(response.text[:200])!r}",
            url=url,
            status_code=response.status_code,
            field="content_type",
            value=kind,
            expected="application/json",
        ) from exc


def expect(response: httpx.Response, url: str, path: str, kind: type[_T]) -> _T:
    """The JSON of a 200 health answer, which must be a ``kind`` (dict or list); else :class:`SDNotFound`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, kind):
        raise SDNotFound(
            f"the SD server at {url} answered GET {path} with something that is not an A1111 {kind.__name__}",
            url=url,
            status_code=response.status_code,
            field="route",
            value=path,
            expected=f"an A1111 {kind.__name__}",
        )
    return body


def sniff_format(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``webp`` from the magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _decode_image(value: Any, url: str) -> tuple[bytes, str]:
    if not isinstance(value, str):
        raise SDBadImage(f"the SD server at {url} sent images[0] as {type(value).__name__}, not base64", url=url)
    try:
        # What A1111 sends: no copy of the text first. pybase64 (SIMD) decodes a 512² PNG's 0.7 MB
        # in 0.05 ms where the base64 module takes 1.5 ms; the same validation rules.
        data = pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        text = "".join(_DATA_URL_RE.sub("", value.strip(), count=1).split())  # a data: prefix, wrapped lines
        try:
            data = pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SDBadImage(f"the SD server at {url} sent an image that is not valid base64: {exc}", url=url) from exc
    image_format = sniff_format(data)
    if image_format is None:
        raise SDBadImage(
            f"the SD server at {url} sent an image that is not PNG, JPEG or WEBP (starts with {data[:8]!r})", url=url
        )
    return data, image_format


def _verify_image(data: bytes, image_format: str, url: str, max_pixels: int) -> tuple[int, int, str | None]:
    """Size and embedded ``parameters`` text of an image, after checking that it decodes."""
    # Here, not at the top: a client that only reads the server's catalog (``generate --no-wait``
    # checking its request) loads no numpy or PIL (tests/test_cli/test_startup.py).
    from PIL import Image

    from pipeline.images.codec import decode_failure_reason
    from pipeline.images.png import png_chunks_problem

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            embedded = image.info.get("parameters")
            if width * height > max_pixels:
                raise SDBadImage(f"the SD server at {url} sent a {width}x{height} image, over MAX_PIXELS", url=url)
            # PNG: every chunk's CRC up to IEND, as Pillow's verify() checks, but without its per-chunk
            # file reads (the split step decodes the pixels). JPEG/WEBP have no such check: decode them.
            if image_format != "png":
                image.load()
        problem = png_chunks_problem(data) if image_format == "png" else None
        if problem is not None:
            raise ValueError(problem)
    except SDBadImage:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        reason = decode_failure_reason(exc)
        raise SDBadImage(f"the server's image does not decode ({image_format}): {reason}", url=url) from exc
    return width, height, embedded if isinstance(embedded, str) else None


def _parse_info(raw: Any, job_id: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):  # some forks send the object itself
        return raw
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    logger.warning("job %s: the SD server's info is not a JSON object; ignoring it", job_id)
    return {}


def _first_int(values: Any) -> int | None:
    if isinstance(values, list) and values and isinstance(values[0], int) and not isinstance(values[0], bool):
        return values[0]
    return None


def _ints(values: Any) -> list[int]:
    if not isinstance(values, list):
        return []
    return [value for value in values if isinstance(value, int) and not isinstance(value, bool)]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def checkpoint_matches(asked: str, model_name: str | None, model_hash: str | None) -> bool:
    """Whether the checkpoint the server used (infotext ``Model`` / ``Model hash``) is the one ``asked`` names.

    ``asked`` is an ``sd_model_checkpoint`` as sent: a title (``name.safetensors [hash]``), a file name,
    a model name or a hash.
    """
    text = asked.strip().casefold()
    title_hash = text.rsplit("[", 1)[1].rstrip("]").strip() if text.endswith("]") and "[" in text else None
    if model_hash and model_hash.strip().casefold() in {title_hash, text} | ({text[:10]} if len(text) >= 10 else set()):
        return True
    if model_hash and title_hash:
        return False  # both hashes known, and they differ
    stem = text.rsplit("[", 1)[0].strip() if title_hash else text
    stem = stem.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".ckpt", ".gguf", ".pt", ".bin"):
        stem = stem.removesuffix(suffix)
    return model_name is not None and model_name.strip().casefold() == stem


def check_against_request(result: SDResult, params: GenerationParams) -> SDResult:
    """``result`` with a warning for each thing the server did differently from ``params``.

    A1111 1.10 silently replaces a sampler it does not know by its first one, and silently ignores
    an ``sd_model_checkpoint`` it does not know: the infotext (``Sampler``, ``Model``, ``Model hash``)
    says what it really used.

    Raises:
        SDWrongCheckpoint: the image was rendered with another checkpoint than the one asked for.
    """
    asked = params.checkpoint
    if asked is not None and (result.model_name or result.model_hash):
        if not checkpoint_matches(asked, result.model_name, result.model_hash):
            used = f"{result.model_name or '?'} [{result.model_hash or '?'}]"
            raise SDWrongCheckpoint(
                f"the SD server at {result.backend_url} rendered with checkpoint {used}, not {asked!r} "
                "(it ignores a checkpoint it cannot load)",
                url=result.backend_url,
                status_code=200,
                value=result.model_name,  # what the server has loaded: the SD pool learns it from this
            )
    warnings = list(result.warnings)
    if result.sampler is not None and result.sampler.casefold() != params.sampler_name.casefold():
        warnings.append(
            f"the SD server used sampler {result.sampler!r}, not {params.sampler_name!r} "
            "(A1111 replaces a sampler it does not know)"
        )
    return dataclasses.replace(result, warnings=warnings) if warnings != result.warnings else result


def build_result(
    body: Any, *, requested_seed: int, backend_url: str, elapsed_s: float, max_pixels: int, job_id: str
) -> SDResult:
    """An :class:`SDResult` from a 200 txt2img body: the first image (decoded, sniffed, verified) and ``info``.

    Raises:
        SDBadImage: no image, bad base64, unknown format, an image that does not decode or is too large.
    """
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list):
        raise SDBadImage(f"the SD server at {backend_url} answered txt2img without an images list", url=backend_url)
    info = _parse_info(body.get("info"), job_id)
    if not images and not info:
        # SD.Next answers so while no model is loaded (yet): worth a later, bounded, retry.
        raise SDServerError(
            f"the SD server at {backend_url} returned no image and no info (is a model loaded?)",
            url=backend_url,
            status_code=200,
        )
    if not images:
        raise SDBadImage(
            f"the SD server at {backend_url} returned no image",
            url=backend_url,
            field="images",
            limit=1,
        )
    # A grid (save_images with several images) comes first; our requests never ask for one, but be exact.
    first = info.get("index_of_first_image")
    index = first if isinstance(first, int) and 0 <= first < len(images) else 0
    data, image_format = _decode_image(images[index], backend_url)
    width, height, embedded = _verify_image(data, image_format, backend_url, max_pixels)
    infotexts = info.get("infotexts")
    infotext = infotexts[index] if isinstance(infotexts, list) and len(infotexts) > index else None
    infotext = _text(infotext) or embedded
    # all_seeds and all_subseeds list the real images only (no grid): the first is this image's.
    seed = _first_int(info.get("all_seeds"))
    if seed is None:
        seed = _first_int([info.get("seed")])
    subseed = _first_int(info.get("all_subseeds"))
    if subseed is None:
        subseed = _first_int([info.get("subseed")])
    said = parse_infotext(infotext) if infotext else {}
    return SDResult(
        image_bytes=data,
        format=image_format,
        info=info,
        seed=requested_seed if seed is None else seed,
        infotext=infotext,
        model_name=_text(said.get("Model")) or _text(info.get("sd_model_name")),
        model_hash=_text(said.get("Model hash")) or _text(info.get("sd_model_hash")),
        version=_text(info.get("version")),
        backend_url=backend_url,
        elapsed_s=elapsed_s,
        extra={"width": width, "height": height, "images_returned": len(images)},
        subseed=subseed,
        all_seeds=_ints(info.get("all_seeds")),
        all_subseeds=_ints(info.get("all_subseeds")),
        sampler=_text(said.get("Sampler")) or _text(info.get("sampler_name")),
    )
