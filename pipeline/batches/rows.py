"""The keys of a batch row (and of batch defaults, ``POST /api/batches`` rows and their flags): one model.

A row sets sdpipe's own keys (``prompt``, ``negative``, ``seed``, ``steps``, ``cfg``, ``width``,
``height``, ``sampler``, ``scheduler``, ``count``, the split keys, ``format``, ``quality``, ``name``,
``model``), which also answer to their A1111 names (``negative_prompt``, ``cfg_scale``, ``sampler_name``), and
any other field of A1111's txt2img request by its A1111 name (``enable_hr``, ``styles``,
``alwayson_scripts``...), kept as written. :class:`JobRow` is that model: JSON and YAML rows are read
strictly (a value must already have its type), CSV cells and command-line values laxly (``"20"`` is a
number); a CSV cell of a pass-through field is JSON when it parses.

Which pass-through names exist is the SD server's to say (its ``/openapi.json``); :func:`check_row`
takes them as ``known_fields`` when known. Without them, only a name close to one of sdpipe's own keys
is refused (``stpes``): anything else is sent as written.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from typing import Annotated, Any, NamedTuple

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import InputError
from pipeline.jobs.planning import GenerationRequest

__all__ = [
    "A1111_FIELDS",
    "A1111_NAMES",
    "ROW_KEYS",
    "TEMPLATE_KEYS",
    "FieldIssue",
    "JobRow",
    "check_request",
    "check_row",
    "close_key",
    "describe_value",
    "generation_request",
    "key_problem",
    "unknown_key",
]

#: sdpipe's own keys of a row (or of defaults), in the order listings show them.
ROW_KEYS = (
    "prompt",
    "negative",
    "seed",
    "steps",
    "cfg",
    "width",
    "height",
    "sampler",
    "scheduler",
    "count",
    "grid",
    "band_px",
    "sigma",
    "format",
    "quality",
    "name",
    "model",
    "upscale",
    "upscale_denoise",
    "upscaler",
    "priority",
    "upscale_tile",
    "upscale_overlap",
    "upscale_seam_fix",
    "upscale_vary_seed",
)
#: Keys of a row (or of defaults) that say how it becomes jobs, read before the row is checked
#: (pipeline.batches.files): prompt templates (pipeline.prompts) and parameter sweeps.
TEMPLATE_KEYS = ("template", "combinatorial", "max_prompts", "template_seed", "sweep", "contact_sheet")
#: A1111's name of a row key, where it differs: either name sets the key.
A1111_NAMES = {"negative_prompt": "negative", "cfg_scale": "cfg", "sampler_name": "sampler"}
#: Keys a row may not set, and why.
_REFUSED = {
    "batch_size": "a job is one image: use count for more images",
    "n_iter": "a job is one image: use count for more images",
}
#: Keys that may only say what sdpipe sends anyway (1).
_ONE_IMAGE = frozenset({"batch_size", "n_iter"})
#: How close a name must be to one of sdpipe's keys to be taken for a typo of it (``sede``: 0.75).
_TYPO_CUTOFF = 0.75
#: A1111 v1.10's txt2img request fields (``StableDiffusionTxt2ImgProcessingAPI``): never taken for a
#: typo of sdpipe's keys (``hr_scheduler`` is close to ``scheduler``) when the server does not list its own.
A1111_FIELDS = frozenset(
    {
        "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
        "seed_resize_from_w", "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps",
        "cfg_scale", "width", "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid",
        "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise",
        "override_settings", "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at",
        "disable_extra_networks", "firstpass_image", "comments", "enable_hr", "firstphase_width",
        "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
        "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
        "force_task_id", "script_name", "script_args", "send_images", "save_images", "alwayson_scripts",
        "infotext",
    }
)  # fmt: skip
#: Row keys whose value is text (a CSV cell is kept as text for them, never read as JSON).
_TEXT_KEYS = frozenset(
    {
        "prompt",
        "negative",
        "sampler",
        "scheduler",
        "grid",
        "format",
        "name",
        "model",
        "upscaler",
        "priority",
        "upscale_seam_fix",
    }  # fmt: skip
)


class FieldIssue(NamedTuple):
    """A problem with one key of a row (field None: the row as a whole)."""

    field: str | None
    message: str
    #: False when the message is about a combination of values (grid vs size, MAX_PIXELS, names).
    local: bool = True


def _either(name: str, a1111: str) -> Any:
    return Field(None, validation_alias=AliasChoices(name, a1111), serialization_alias=name)


class JobRow(BaseModel):
    """One row of a batch: sdpipe's keys, plus any A1111 txt2img field by its A1111 name (sent as written).

    Absent or null: the defaults' value, else the setting's.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)

    prompt: str | None = None
    negative: Annotated[str | None, _either("negative", "negative_prompt")]
    seed: int | None = Field(None, description="-1 for random; with count N: seed … seed+N-1")
    steps: int | None = None
    cfg: Annotated[float | None, _either("cfg", "cfg_scale")]
    width: int | None = None
    height: int | None = None
    sampler: Annotated[str | None, _either("sampler", "sampler_name")]
    scheduler: str | None = None
    count: int | None = Field(None, description="jobs for this row, one image each")
    grid: str | None = Field(None, description="split grid ROWSxCOLS, e.g. 2x2")
    band_px: int | None = None
    sigma: float | None = None
    format: str | None = Field(None, description="png, webp or jpeg")
    quality: int | None = Field(None, description="JPEG/WebP quality, 1 to 100")
    name: str | None = Field(None, description="output file name without extension")
    model: str | None = Field(None, description="checkpoint title, model name or hash (sd_model_checkpoint)")
    override_settings: dict[str, Any] | None = None
    upscale: float | None = Field(None, description="then upscale each image by this factor (tiled img2img)")
    upscale_denoise: float | None = Field(None, description="denoising strength of the upscale's tiles (0.3)")
    upscaler: str | None = Field(None, description="the upscale's first pass: Lanczos (no SD call) or a server's")
    priority: str | None = Field(None, description="high, normal or low: queued high work starts its SD call first")
    upscale_tile: int | None = Field(None, description="the upscale's tile size in px, a multiple of 8 (512)")
    upscale_overlap: int | None = Field(None, description="least overlap of neighbouring tiles in px (64)")
    upscale_seam_fix: str | None = Field(
        None, description="none, or band: also re-render a masked band across every tile border"
    )
    upscale_vary_seed: bool | None = Field(None, description="tile i gets seed + i (default: one seed for all)")


_FIELD_OF_ALIAS = {**A1111_NAMES, **{key: key for key in ROW_KEYS}}


def close_key(name: str, candidates: Collection[str]) -> str | None:
    """The candidate ``name`` is most likely a typo of, or None."""
    return next(iter(difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)), None)


def unknown_key(key: object, known_fields: Collection[str] = ()) -> str:
    """The message for a key that is neither sdpipe's nor a field the server knows, suggesting the closest."""
    text = str(key)
    guess = close_key(text, [*ROW_KEYS, *known_fields])
    if guess is not None:
        return f"unknown key {text!r} (did you mean {guess!r}?)"
    if known_fields:
        return f"unknown key {text!r} (neither sdpipe's nor a field of the server's txt2img request)"
    return f"unknown key {text!r} (known keys: {', '.join(ROW_KEYS)}, and A1111's txt2img fields)"


def key_problem(key: str, known_fields: Collection[str] | None) -> str | None:
    """Why a row may not set ``key`` (unknown, a typo, refused), or None."""
    if key in _FIELD_OF_ALIAS or key == "override_settings" or key in TEMPLATE_KEYS:
        return None
    if key in _REFUSED:
        return f"not allowed ({_REFUSED[key]})"
    if known_fields is not None:
        return None if key in known_fields else unknown_key(key, known_fields)
    if key in A1111_FIELDS:
        return None
    typo = difflib.get_close_matches(key.lower(), ROW_KEYS, n=1, cutoff=_TYPO_CUTOFF)
    return unknown_key(key) if typo else None


def check_row(
    raw: Mapping[Any, Any],
    *,
    text_values: bool,
    known_fields: Collection[str] | None = None,
    check_keys: bool = True,
    json_text: bool | None = None,
) -> tuple[dict[str, Any], list[FieldIssue]]:
    """The keys of a row with values of their type; None (an empty CSV cell) means "not set".

    Returns sdpipe's keys under sdpipe's names (``negative_prompt`` becomes ``negative``) and every
    other A1111 field under its own name, as written. With ``text_values`` (CSV cells, command-line
    values) text such as ``"20"`` is converted, and pass-through text that is JSON is read as JSON;
    otherwise (JSON, YAML) a value must already have its type, except that a whole number may stand
    for a decimal one. True/false are never numbers. ``check_keys`` False: names were checked already
    (a CSV header). ``json_text`` (default: ``text_values``) reads pass-through text as JSON: CSV
    cells, whose every value is text; not command-line defaults, whose text is meant as text.
    """
    issues: list[FieldIssue] = []
    given: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key)
        if (name in _ONE_IMAGE and value in (None, 1, "1")) or name == "force_task_id":
            continue  # what sdpipe sends anyway, or sets itself (a pasted A1111 body has them)
        problem = key_problem(name, known_fields) if check_keys else None
        if problem is None and name in _REFUSED:
            problem = f"not allowed ({_REFUSED[name]})"
        if problem is not None:
            issues.append(FieldIssue(name, problem))
            continue
        field = _FIELD_OF_ALIAS.get(name, name)
        if field in given and value is not None:
            issues.append(FieldIssue(field, f"given twice (as {field!r} and as its A1111 name)"))
            continue
        if value is None:
            continue
        typed = field in JobRow.model_fields
        if text_values and isinstance(value, str) and field not in _TEXT_KEYS and (typed or json_text is not False):
            value = _json_or_text(value, typed=typed)
        given[field] = value
    try:
        row = JobRow.model_validate(given, strict=not text_values)
    except ValidationError as exc:
        bad = set()
        for error in exc.errors(include_url=False):
            where = str(error["loc"][0]) if error.get("loc") else None
            bad.add(where)
            issues.append(FieldIssue(where, _message(error)))
        row = JobRow.model_validate({k: v for k, v in given.items() if k not in bad}, strict=not text_values)
    return row.model_dump(exclude_none=True), issues


def check_request(fields: Mapping[Any, Any], *, known_fields: Collection[str] | None) -> dict[str, Any]:
    """The keys of one request (``generate``'s flags, ``POST /api/generate``) checked as a batch row's are.

    Raises:
        InputError: the first unknown or refused key, or value of the wrong type.
    """
    values, issues = check_row(fields, text_values=False, known_fields=known_fields)
    if issues:
        field, message, _ = issues[0]
        expected = "an output file name without a folder" if field == "name" else None
        raise InputError(f"{field}: {message}" if field else message, field=field, expected=expected)
    return values


def generation_request(values: Mapping[str, Any]) -> GenerationRequest:
    """The request a checked row (see :func:`check_row`) asks for: the same for a batch row, ``generate``
    and ``POST /api/generate``. Keys that are not sdpipe's go to the server as written."""
    extra = {key: value for key, value in values.items() if key not in ROW_KEYS}
    return GenerationRequest(
        prompt=values.get("prompt", ""),
        negative_prompt=values.get("negative", ""),
        seed=values.get("seed", -1),
        steps=values.get("steps"),
        cfg_scale=values.get("cfg"),
        width=values.get("width"),
        height=values.get("height"),
        sampler=values.get("sampler"),
        scheduler=values.get("scheduler"),
        params=extra or None,
        model=values.get("model"),
    )


def _json_or_text(text: str, *, typed: bool) -> Any:
    """A CSV cell or flag value: JSON where it parses (pass-through fields, objects), else the text."""
    stripped = text.strip()
    if typed and not stripped.startswith(("{", "[")):
        return text  # a number-typed key converts its own text, with its own message
    try:
        return json.loads(stripped)
    except ValueError:
        return text


def _message(error: Any) -> str:
    kind = error.get("type")
    got = error.get("input")
    if kind == "int_type" or (kind == "int_from_float" and not isinstance(got, str)):
        return f"expected a whole number, got {describe_value(got)}"
    if kind in ("int_parsing", "int_from_float"):
        return f"expected a whole number (got {got!r})"
    if kind == "float_type":
        return f"expected a number, got {describe_value(got)}"
    if kind == "float_parsing":
        return f"expected a number (got {got!r})"
    if kind == "finite_number":
        return f"must be a finite number (got {got!r})"
    if kind == "string_type":
        return f"expected text, got {describe_value(got)}"
    if kind == "dict_type":
        return f"expected an object {{...}}, got {describe_value(got)}"
    return f"{str(error.get('msg', 'invalid')).removeprefix('Value error, ')} (got {got!r})"


def describe_value(value: Any) -> str:
    """A JSON/YAML value as a message names it: ``null``, ``the number 3``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
