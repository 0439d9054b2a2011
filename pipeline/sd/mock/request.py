"""The mock's txt2img request model: A1111 v1.10's ``StableDiffusionTxt2ImgProcessingAPI``, validated as it is.

A1111 builds the model from the ``__init__`` signature of ``StableDiffusionProcessingTxt2Img`` (its dataclass
fields, base class first; ``modules/api/models.py`` drops ``API_NOT_ALLOWED`` and appends the API-only
fields), wraps every field in ``Optional`` and validates it with pydantic 1.10 under FastAPI 0.94. So:
``{}`` is valid, unknown keys are ignored, scalars are coerced the pydantic v1 way, and a wrong type is a
422 listing every bad field. :func:`openapi_document` publishes the same model as A1111's ``/openapi.json``
does, under the component name ``StableDiffusionProcessingTxt2Img``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["FIELDS", "TXT2IMG_SCHEMA_NAME", "openapi_document", "parse_request"]

#: The component name of the txt2img request in A1111's OpenAPI document.
TXT2IMG_SCHEMA_NAME = "StableDiffusionProcessingTxt2Img"


def _fields(kind: str, default: Any, names: str) -> dict[str, tuple[str, Any]]:
    return dict.fromkeys(names.split(), (kind, default))


#: The v1.10 txt2img request, in A1111's order: field -> (pydantic v1 type, API default). All Optional.
#: Where the txt2img class and its base class share a field, the base-class default wins (A1111 merges the
#: signatures subclass first), which is why ``denoising_strength`` defaults to null, not 0.75.
FIELDS: dict[str, tuple[str, Any]] = {
    **_fields("str", "", "prompt negative_prompt"),
    **_fields("list[str]", None, "styles"),
    **_fields("int", -1, "seed subseed"),
    **_fields("float", 0, "subseed_strength"),
    **_fields("int", -1, "seed_resize_from_h seed_resize_from_w"),
    **_fields("str", None, "sampler_name scheduler"),
    **_fields("int", 1, "batch_size n_iter"),
    **_fields("int", 50, "steps"),
    **_fields("float", 7.0, "cfg_scale"),
    **_fields("int", 512, "width height"),
    **_fields("bool", None, "restore_faces tiling"),
    **_fields("bool", False, "do_not_save_samples do_not_save_grid"),
    **_fields("float", None, "eta denoising_strength s_min_uncond s_churn s_tmax s_tmin s_noise"),
    **_fields("dict", None, "override_settings"),
    **_fields("bool", True, "override_settings_restore_afterwards"),
    **_fields("str", None, "refiner_checkpoint"),
    **_fields("float", None, "refiner_switch_at"),
    **_fields("bool", False, "disable_extra_networks"),
    **_fields("str", None, "firstpass_image"),
    **_fields("dict", None, "comments"),
    **_fields("bool", False, "enable_hr"),
    **_fields("int", 0, "firstphase_width firstphase_height"),
    **_fields("float", 2.0, "hr_scale"),
    **_fields("str", None, "hr_upscaler"),
    **_fields("int", 0, "hr_second_pass_steps hr_resize_x hr_resize_y"),
    **_fields("str", None, "hr_checkpoint_name hr_sampler_name hr_scheduler"),
    **_fields("str", "", "hr_prompt hr_negative_prompt"),
    **_fields("str", None, "force_task_id"),
    **_fields("str", "Euler", "sampler_index"),
    **_fields("str", None, "script_name"),
    **_fields("list", [], "script_args"),
    **_fields("bool", True, "send_images"),
    **_fields("bool", False, "save_images"),
    **_fields("dict", {}, "alwayson_scripts"),
    **_fields("str", None, "infotext"),
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
#: The JSON schema pydantic v1 writes for each field type.
_JSON_TYPES: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
    "list": {"type": "array", "items": {}},
    "list[str]": {"type": "array", "items": {"type": "string"}},
    "dict": {"type": "object"},
}


def _coerce(kind: str, value: Any) -> Any:
    """pydantic v1's lax coercion for one Optional field; raises ValueError when it would fail."""
    if value is None:
        return None
    try:
        if kind == "int" and not isinstance(value, list | dict):
            return int(value)
        if kind == "float" and not isinstance(value, list | dict):
            return float(value)
        if kind == "str" and isinstance(value, str | int | float):
            return value if isinstance(value, str) else str(value)
        if kind == "bool" and not isinstance(value, list | dict):
            key = value.lower() if isinstance(value, str) else value
            if key in _TRUE or key in _FALSE:
                return key in _TRUE
        if kind.startswith("list") and isinstance(value, list):
            return list(value)
        if kind == "dict" and isinstance(value, dict):
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ValueError(kind)


def _validate(data: Mapping[str, Any], values: dict[str, Any]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for name, (kind, default) in FIELDS.items():
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
                try:
                    values[name][index] = _coerce("str", item)
                except ValueError:
                    msg, err_type = _TYPE_ERRORS["str"]
                    errors.append({"loc": ["body", name, index], "msg": msg, "type": err_type})
    return errors


def parse_request(headers: Mapping[str, str], body: bytes) -> tuple[dict[str, Any], Any, tuple[int, Any] | None]:
    """Validate a txt2img body as FastAPI 0.94 + pydantic 1.10 would.

    Returns:
        The coerced request with every default filled in, the JSON body as received (None when it does
        not parse), and ``(status, body)`` when the request is rejected.
    """
    missing = (422, {"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]})
    if not body:
        return {}, None, missing
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any = body
    if not content_type or content_type == "application/json" or content_type.endswith("+json"):
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            ctx = {"msg": exc.msg, "doc": exc.doc, "pos": exc.pos, "lineno": exc.lineno, "colno": exc.colno}
            err = {"loc": ["body", exc.pos], "msg": str(exc), "type": "value_error.jsondecode", "ctx": ctx}
            return {}, None, (422, {"detail": [err]})
        except ValueError:
            return {}, None, (400, {"detail": "There was an error parsing the body"})
    if data is None:
        return {}, None, missing
    if not isinstance(data, dict):
        error = {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
        return {}, None, (422, {"detail": [error]})
    values: dict[str, Any] = {}
    errors = _validate(data, values)
    if errors:
        return {}, data, (422, {"detail": errors})
    return values, data, None


def _title(name: str) -> str:
    return name.title().replace("_", " ")


def _txt2img_schema() -> dict[str, Any]:
    properties = {}
    for name, (kind, default) in FIELDS.items():
        prop: dict[str, Any] = {"title": _title(name), **_JSON_TYPES[kind]}
        if default is not None:
            prop["default"] = default
        properties[name] = prop
    return {"title": TXT2IMG_SCHEMA_NAME, "type": "object", "properties": properties}


def openapi_document(routes: Mapping[str, Mapping[str, object]]) -> dict[str, Any]:
    """A1111's ``GET /openapi.json``, reduced to what clients read: the routes and the txt2img request schema.

    Args:
        routes: path -> {method: handler} of the ``/sdapi/v1`` routes the mock serves.
    """
    ref = {"$ref": f"#/components/schemas/{TXT2IMG_SCHEMA_NAME}"}
    paths: dict[str, Any] = {}
    for path, methods in routes.items():
        if not path.startswith("/sdapi/"):
            continue
        paths[path] = {}
        for method in methods:
            operation: dict[str, Any] = {
                "summary": path.rsplit("/", 1)[-1].replace("-", " ").title(),
                "responses": {"200": {"description": "Successful Response"}},
            }
            if path == "/sdapi/v1/txt2img":
                operation["requestBody"] = {"content": {"application/json": {"schema": ref}}, "required": True}
            paths[path][method.lower()] = operation
    return {
        "openapi": "3.0.2",
        "info": {"title": "FastAPI", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": {TXT2IMG_SCHEMA_NAME: _txt2img_schema()}},
    }
