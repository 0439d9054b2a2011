"""Scripts the mock has installed: A1111's built-in ones, and the ControlNet and ADetailer extensions.

``script_name`` names a *selectable* script (``X/Y/Z plot``...) and ``alwayson_scripts`` the always-on
ones, each ``{"args": [...]}``; both are looked up by title, case-insensitively, and an unknown name is
A1111's 422 ``Script 'x' not found`` (``modules/api/api.py`` ``script_name_to_index``; the "always on
script ... not found" branch after it can never run). A selectable script among the always-on ones is
``Cannot have a selectable script in the always on scripts params``.

The mock runs a selectable script as a plain generation. For the extensions it reads the args as they
take them and writes their infotext keys as they do:

- ControlNet (``sd-webui-controlnet``): ``args`` is a list of units (dicts of ``ControlNetUnit`` fields);
  each enabled unit writes ``ControlNet N`` (its ``serialize_unit`` text, quoted by A1111) and, unless
  its module is ``none`` or ``save_detected_map`` is false, appends a detect map after the real images,
  with no infotext of its own. Unlike the extension, the mock neither decodes ``image`` nor checks
  module and model names: a unit without an image is accepted.
- ADetailer: ``args`` is ``[enable?, skip_img2img?, {ad_model...}, ...]`` (leading booleans optional);
  each tab with a model other than ``None`` writes ``ADetailer model`` and its settings, with the suffix
  `` 2nd``, `` 3rd``... for later tabs, then ``ADetailer version``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ADETAILER_VERSION",
    "ScriptEffects",
    "ScriptError",
    "apply_scripts",
    "extensions_payload",
    "script_info_payload",
    "scripts_payload",
]

#: The ADetailer release the mock pretends to have installed.
ADETAILER_VERSION = "24.11.1"
#: Selectable txt2img scripts of v1.10, by title.
_SELECTABLE = ("Prompt matrix", "Prompts from file or textbox", "X/Y/Z plot")
#: Selectable scripts only the img2img tab has, by title.
_IMG2IMG_SELECTABLE = ("img2img alternative test", "SD upscale")
#: Always-on txt2img scripts, by title: A1111's built-in ones, then the two extensions.
_ALWAYSON = ("Extra options", "Hypertile", "Refiner", "Seed", "Sampler", "Comments", "ControlNet", "ADetailer")
#: ``ControlNetUnit`` fields in its order, with defaults; the ones A1111 leaves out of the infotext are absent.
_CN_FIELDS: tuple[tuple[str, Any], ...] = (
    ("module", "none"),
    ("model", "None"),
    ("weight", 1.0),
    ("resize_mode", "Crop and Resize"),
    ("low_vram", False),
    ("processor_res", -1),
    ("threshold_a", -1),
    ("threshold_b", -1),
    ("guidance_start", 0.0),
    ("guidance_end", 1.0),
    ("pixel_perfect", False),
    ("control_mode", "Balanced"),
    ("hr_option", "Both"),
    ("save_detected_map", True),
)
#: The enums' display values, by the int an API caller may send instead.
_CN_ENUMS = {
    "resize_mode": ("Just Resize", "Crop and Resize", "Resize and Fill"),
    "control_mode": ("Balanced", "My prompt is more important", "ControlNet is more important"),
    "hr_option": ("Both", "Low res only", "High res only"),
}
#: Preprocessor slider defaults (resolution, threshold A, threshold B) the unit's validator puts in place of
#: -1 or out-of-range values; only the common ``canny`` is known to the mock.
_CN_SLIDERS = {"canny": (512, 100.0, 200.0)}
#: Legacy enum names the extension still accepts.
_CN_LEGACY = {"Scale to Fit (Inner Fit)": "Crop and Resize", "Envelope (Outer Fit)": "Resize and Fill"}
#: ADetailer's args and their infotext labels, in its order: (arg, label, default, left out when equal to).
_AD_ARGS: tuple[tuple[str, str, Any, Any], ...] = (
    ("ad_model", "ADetailer model", "None", object()),
    ("ad_prompt", "ADetailer prompt", "", ""),
    ("ad_negative_prompt", "ADetailer negative prompt", "", ""),
    ("ad_confidence", "ADetailer confidence", 0.3, object()),
    ("ad_mask_k_largest", "ADetailer mask only top k largest", 0, 0),
    ("ad_mask_min_ratio", "ADetailer mask min ratio", 0.0, 0.0),
    ("ad_mask_max_ratio", "ADetailer mask max ratio", 1.0, 1.0),
    ("ad_x_offset", "ADetailer x offset", 0, 0),
    ("ad_y_offset", "ADetailer y offset", 0, 0),
    ("ad_dilate_erode", "ADetailer dilate erode", 4, object()),
    ("ad_mask_merge_invert", "ADetailer mask merge invert", "None", "None"),
    ("ad_mask_blur", "ADetailer mask blur", 4, object()),
    ("ad_denoising_strength", "ADetailer denoising strength", 0.4, object()),
    ("ad_inpaint_only_masked", "ADetailer inpaint only masked", True, object()),
    ("ad_inpaint_only_masked_padding", "ADetailer inpaint padding", 32, object()),
)
_ORDINALS = ("", " 2nd", " 3rd", " 4th", " 5th", " 6th", " 7th", " 8th", " 9th", " 10th")


class ScriptError(Exception):
    """A request the script runner refuses: A1111's 422 HTTPException with this detail."""


@dataclass
class ScriptEffects:
    """What the scripts of one request add: infotext keys (before and after sampling) and detect maps."""

    #: Written during ``process`` (before the hires keys), e.g. ``ControlNet 0``.
    before: dict[str, object] = field(default_factory=dict)
    #: Written in ``postprocess_image`` (after sampling), e.g. the ADetailer keys.
    after: dict[str, object] = field(default_factory=dict)
    #: One entry (the module name) per detect map ControlNet appends after the real images.
    detect_maps: list[str] = field(default_factory=list)


def scripts_payload() -> dict[str, list[str]]:
    """``GET /sdapi/v1/scripts``: script names (lowercased titles) per tab."""
    names = [title.lower() for title in (*_SELECTABLE, *_ALWAYSON)]
    return {"txt2img": names, "img2img": [*names, *(title.lower() for title in _IMG2IMG_SELECTABLE)]}


def script_info_payload() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/script-info``: each txt2img script (the mock lists no UI arguments)."""
    return [
        {"name": title.lower(), "is_alwayson": title in _ALWAYSON, "is_img2img": False, "args": []}
        for title in (*_SELECTABLE, *_ALWAYSON)
    ]


def extensions_payload() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/extensions``: the two extensions the mock pretends to have installed."""
    return [
        {
            "name": name,
            "remote": remote,
            "branch": "main",
            "commit_hash": commit,
            "commit_date": 1730000000,
            "version": commit[:8],
            "enabled": True,
        }
        for name, remote, commit in (
            ("sd-webui-controlnet", "https://github.com/Mikubill/sd-webui-controlnet.git", "56cec5b2" * 5),
            ("adetailer", "https://github.com/Bing-su/adetailer.git", "a7d96113" * 5),
        )
    ]


def _index(name: str, titles: tuple[str, ...]) -> int:
    lowered = [title.lower() for title in titles]
    if name.lower() not in lowered:
        raise ScriptError(f"Script '{name}' not found")
    return lowered.index(name.lower())


def apply_scripts(script_name: str | None, alwayson: dict[str, Any], *, img2img: bool = False) -> ScriptEffects:
    """Check ``script_name`` and ``alwayson_scripts`` as A1111's ``get_selectable_script`` and
    ``init_script_args`` do (``text2imgapi`` and ``img2imgapi`` alike), then run them.

    Args:
        img2img: look the names up among the img2img tab's scripts (it has two more selectable ones).

    Raises:
        ScriptError: an unknown script, or a selectable script in ``alwayson_scripts``.
    """
    selectable = (*_SELECTABLE, *_IMG2IMG_SELECTABLE) if img2img else _SELECTABLE
    if script_name:
        _index(script_name, selectable)
    effects = ScriptEffects()
    for name, payload in alwayson.items():
        title = (*selectable, *_ALWAYSON)[_index(name, (*selectable, *_ALWAYSON))]
        if title in selectable:
            raise ScriptError("Cannot have a selectable script in the always on scripts params")
        args = payload.get("args") if isinstance(payload, dict) else None
        if not isinstance(args, list):
            continue
        if title == "ControlNet":
            _controlnet(args, effects)
        elif title == "ADetailer":
            _adetailer(args, effects)
    return effects


def _cn_value(name: str, value: Any) -> Any:
    if name in _CN_ENUMS:
        choices = _CN_ENUMS[name]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
            return choices[value]
        return _CN_LEGACY.get(str(value), value)
    return value


def _controlnet(units: list[Any], effects: ScriptEffects) -> None:
    index = 0
    for unit in units:
        if not isinstance(unit, dict):
            continue
        if unit.get("enabled", True) in (True, "true", 1):
            values = {name: _cn_value(name, unit.get(name, default)) for name, default in _CN_FIELDS}
            sliders = _CN_SLIDERS.get(str(values["module"]))
            for name, fallback in zip(("processor_res", "threshold_a", "threshold_b"), sliders or (), strict=False):
                if values[name] == -1:
                    values[name] = fallback
            text = ", ".join(
                f"{' '.join(word.capitalize() for word in name.split('_'))}: {value}"
                for name, value in values.items()
                if value != -1
            )
            effects.before[f"ControlNet {index}"] = text
            if str(values["module"]).lower() != "none" and values["save_detected_map"]:
                effects.detect_maps.append(str(values["module"]))
        index += 1


def _adetailer(args: list[Any], effects: ScriptEffects) -> None:
    if args and isinstance(args[0], bool) and not args[0]:
        return  # ad_enable false
    tabs = [arg for arg in args if isinstance(arg, dict)]
    written = False
    for n, tab in enumerate(tabs):
        if str(tab.get("ad_model", "None")) == "None" or not tab.get("ad_tab_enable", True):
            continue
        suffix = _ORDINALS[n] if n < len(_ORDINALS) else f" {n + 1}th"
        for arg, label, default, skip_when in _AD_ARGS:
            value = tab.get(arg, default)
            if value != skip_when:
                effects.after[label + suffix] = value
        written = True
    if written:
        effects.after["ADetailer version"] = ADETAILER_VERSION
