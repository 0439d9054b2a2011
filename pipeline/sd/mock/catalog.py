"""What the mock SD server has installed: checkpoints, samplers, schedulers, upscalers, prompt styles.

Names, aliases and options are A1111 v1.10's own (``modules/sd_samplers_kdiffusion.py``,
``sd_samplers_timesteps.py``, ``sd_samplers_lcm.py``, ``sd_schedulers.py``, ``shared_items.py``), and so are
the rules that use them: ``get_sampler_and_scheduler`` (a combined name such as ``DPM++ 2M Karras`` is split,
an unknown sampler silently becomes the first one), ``get_closet_checkpoint_match`` and the style database
(``modules/styles.py``: ``merge_prompts`` with its ``{prompt}`` placeholder, and the reverse extraction that
``/png-info`` applies).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MODEL_FILES",
    "DEFAULT_STYLES",
    "LATENT_UPSCALE_MODES",
    "OPTION_DEFAULTS",
    "PromptStyle",
    "apply_styles",
    "closest_model",
    "default_options",
    "extract_styles",
    "find_model",
    "find_sampler",
    "model_entry",
    "model_name_for_extra",
    "model_short_title",
    "resolve_sampler",
    "samplers_payload",
    "scheduler_label",
    "schedulers_payload",
    "upscaler_names",
    "upscalers_payload",
]

logger = logging.getLogger(__name__)

#: Checkpoints the mock lists by default (the first one is loaded).
DEFAULT_MODEL_FILES = ("v1-5-pruned-emaonly.safetensors",)
#: Real sha256 of well-known checkpoints, so their short hashes are the familiar ones.
_KNOWN_SHA256 = {
    "v1-5-pruned-emaonly.safetensors": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    "sd_xl_base_1.0.safetensors": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
    "sd_xl_refiner_1.0.safetensors": "7440042bbdc8a24813002c09b6b69b64dc90fded4472613437b7f55f9b7d9c5f",
}
_MODELS_DIR = "/stable-diffusion-webui/models/Stable-diffusion/"

#: v1.10's samplers in its order (k-diffusion, then timesteps, then LCM): (name, aliases, options).
_SAMPLERS: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = (
    ("DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": "karras"}),
    ("DPM++ SDE", ("k_dpmpp_sde",), {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    ("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), {"scheduler": "exponential", "brownian_noise": True}),
    (
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
    ),
    ("DPM++ 2S a", ("k_dpmpp_2s_a",), {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    (
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
    ),
    ("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}),
    ("Euler", ("k_euler",), {}),
    ("LMS", ("k_lms",), {}),
    ("Heun", ("k_heun",), {"second_order": True}),
    ("DPM2", ("k_dpm_2",), {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    (
        "DPM2 a",
        ("k_dpm_2_a",),
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
    ),
    ("DPM fast", ("k_dpm_fast",), {"uses_ensd": True}),
    ("DPM adaptive", ("k_dpm_ad",), {"uses_ensd": True}),
    ("Restart", ("restart",), {"scheduler": "karras", "second_order": True}),
    ("DDIM", ("ddim",), {}),
    ("DDIM CFG++", ("ddim_cfgpp",), {}),
    ("PLMS", ("plms",), {}),
    ("UniPC", ("unipc",), {}),
    ("LCM", ("k_lcm",), {}),
)
_SAMPLER_OPTIONS = {name: options for name, _, options in _SAMPLERS}


@dataclass(frozen=True)
class _Scheduler:
    name: str
    label: str
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: tuple[str, ...] | None = None


#: v1.10's schedulers, in order; the first (Automatic) is the default.
_SCHEDULERS = (
    _Scheduler("automatic", "Automatic"),
    _Scheduler("uniform", "Uniform", need_inner_model=True),
    _Scheduler("karras", "Karras", default_rho=7.0),
    _Scheduler("exponential", "Exponential"),
    _Scheduler("polyexponential", "Polyexponential", default_rho=1.0),
    _Scheduler("sgm_uniform", "SGM Uniform", need_inner_model=True, aliases=("SGMUniform",)),
    _Scheduler("kl_optimal", "KL Optimal"),
    _Scheduler("align_your_steps", "Align Your Steps"),
    _Scheduler("simple", "Simple", need_inner_model=True),
    _Scheduler("normal", "Normal", need_inner_model=True),
    _Scheduler("ddim", "DDIM", need_inner_model=True),
    _Scheduler("beta", "Beta", need_inner_model=True),
)
#: ``sd_schedulers.schedulers_map``: names and labels (not aliases) to schedulers.
_SCHEDULERS_MAP = {key: s for s in _SCHEDULERS for key in (s.name, s.label)}

#: ``shared.latent_upscale_modes``: hires upscalers that work in latent space ("Latent" is the default).
LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
#: ``shared.sd_upscalers`` of a fresh v1.10 install: (name, model_name, model_path, scale).
_UPSCALERS: tuple[tuple[str, str | None, str | None, float], ...] = (
    ("None", None, None, 4),
    ("Lanczos", None, None, 4),
    ("Nearest", None, None, 4),
    ("DAT x2", "DAT x2", "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x2.pth", 2),
    ("DAT x3", "DAT x3", "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x3.pth", 3),
    ("DAT x4", "DAT x4", "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x4.pth", 4),
    ("ESRGAN_4x", "ESRGAN_4x", "https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth", 4),
    ("LDSR", None, "https://heibox.uni-heidelberg.de/f/578df07c8fc04ffbadf3/?dl=1", 4),
    (
        "R-ESRGAN 4x+",
        "R-ESRGAN 4x+",
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        4,
    ),
    (
        "R-ESRGAN 4x+ Anime6B",
        "R-ESRGAN 4x+ Anime6B",
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        4,
    ),
    ("ScuNET GAN", None, "https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_gan.pth", 4),
    ("ScuNET PSNR", None, "https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth", 4),
    ("SwinIR 4x", None, "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/SwinIR-M_x4_GAN.pth", 4),
)  # fmt: skip


@dataclass(frozen=True)
class PromptStyle:
    """A saved style (``styles.csv`` row): its prompts may hold ``{prompt}``, where the user's prompt goes."""

    name: str
    prompt: str
    negative_prompt: str


#: The styles the mock has saved (``GET /sdapi/v1/prompt-styles``).
DEFAULT_STYLES = (
    PromptStyle("cinematic", "cinematic still {prompt}, shallow depth of field, film grain", "cartoon, painting"),
    PromptStyle("photo", "photograph, 50mm, sharp focus", "blurry, lowres"),
    PromptStyle("watercolor", "watercolor painting of {prompt}, soft washes", "photo, 3d render"),
    PromptStyle("no-text", "", "text, watermark, signature"),
)

#: The settings the mock knows (``/options``), with v1.10 defaults; any other key is A1111's KeyError.
OPTION_DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,
    "sd_checkpoint_hash": None,
    "sd_vae": "Automatic",
    "samples_format": "png",
    "grid_format": "png",
    "enable_pnginfo": True,
    "return_grid": True,
    "grid_only_if_multiple": True,
    "jpeg_quality": 80,
    "webp_lossless": False,
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "randn_source": "GPU",
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "code_former_weight": 0.5,
    "tiling": False,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "s_min_uncond": 0.0,
    "hires_fix_refiner_pass": "second pass",
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
    "add_version_to_infotext": True,
    "infotext_styles": "Apply if any",
    "sd_checkpoint_cache": 0,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_hr": 0.0,
    "show_progress_every_n_steps": 10,
    "live_previews_enable": True,
    "samples_save": True,
    "save_images_add_number": True,
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_txt2img_grids": "outputs/txt2img-grids",
    "api_enable_requests": True,
    "api_forbid_local_requests": True,
}


def model_entry(filename: str) -> dict[str, Any]:
    """An ``/sd-models`` entry for a checkpoint file name (``.safetensors`` is added when it has no extension)."""
    if "." not in filename.rsplit("/", 1)[-1]:
        filename += ".safetensors"
    sha256 = _KNOWN_SHA256.get(filename) or hashlib.sha256(filename.encode()).hexdigest()
    return {
        "title": f"{filename} [{sha256[:10]}]",
        "model_name": filename.rsplit(".", 1)[0].replace("/", "_"),
        "hash": sha256[:10],
        "sha256": sha256,
        "filename": _MODELS_DIR + filename,
        "config": None,
    }


def model_short_title(model: dict[str, Any]) -> str:
    """``CheckpointInfo.short_title``: the name without extension and the short hash (``Refiner`` infotext)."""
    return f"{model_name_for_extra(model)} [{model['hash']}]"


def model_name_for_extra(model: dict[str, Any]) -> str:
    """``name_for_extra``: the file name without directory or extension (``Model`` infotext, ``sd_model_name``)."""
    return str(model["filename"]).rsplit("/", 1)[-1].rsplit(".", 1)[0]


def find_model(models: list[dict[str, Any]], name: str | None) -> dict[str, Any] | None:
    """``checkpoint_aliases.get(name)``: by title, file name, model name, short hash or sha256; else None."""
    if not name:
        return None
    for model in models:
        file_name = str(model["filename"]).removeprefix(_MODELS_DIR)
        aliases = {model["title"], model["model_name"], file_name, model_name_for_extra(model), model["hash"]}
        if name in aliases or name == model["sha256"] or name == f"{file_name} [{model['hash']}]":
            return model
    return None


_RE_CHECKSUM = re.compile(r" *\[[^]]+] *$")


def closest_model(models: list[dict[str, Any]], name: str | None) -> dict[str, Any] | None:
    """``get_closet_checkpoint_match`` (refiner, hires checkpoint): an alias, else the shortest title containing it."""
    found = find_model(models, name)
    if found is not None or not name:
        return found
    for search in (name, _RE_CHECKSUM.sub("", name)):
        matches = sorted((m for m in models if search in m["title"]), key=lambda m: len(m["title"]))
        if matches:
            return matches[0]
    return None


def default_options(model: dict[str, Any] | None) -> dict[str, Any]:
    """The ``/options`` dict the mock starts with: v1.10 defaults and the loaded checkpoint."""
    options = dict(OPTION_DEFAULTS)
    options["sd_model_checkpoint"] = model["title"] if model else None
    options["sd_checkpoint_hash"] = model["sha256"] if model else None
    return options


def samplers_payload() -> list[dict[str, Any]]:
    """``GET /samplers``: name, aliases and options, as ``sd_samplers.all_samplers``."""
    return [{"name": name, "aliases": list(aliases), "options": dict(options)} for name, aliases, options in _SAMPLERS]


def schedulers_payload() -> list[dict[str, Any]]:
    """``GET /schedulers``."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) if s.aliases else None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in _SCHEDULERS
    ]


def upscalers_payload() -> list[dict[str, Any]]:
    """``GET /upscalers``."""
    return [
        {"name": name, "model_name": model_name, "model_path": path, "model_url": None, "scale": scale}
        for name, model_name, path, scale in _UPSCALERS
    ]


def upscaler_names() -> frozenset[str]:
    """Every name ``hr_upscaler`` accepts: the upscalers and the latent modes."""
    return frozenset(name for name, *_ in _UPSCALERS) | frozenset(LATENT_UPSCALE_MODES)


def find_sampler(name: str) -> str | None:
    """``find_sampler_config``: a sampler by name or alias (aliases case-insensitive), else None."""
    for sampler, aliases, _ in _SAMPLERS:
        if name == sampler or name.lower() in (a.lower() for a in (sampler, *aliases)):
            return sampler
    return None


def _sampler_and_scheduler(sampler: str | None, scheduler: str | None, *, convert_automatic: bool) -> tuple[str, str]:
    found = _SCHEDULERS_MAP.get(scheduler or "", _SCHEDULERS[0])
    name = sampler or _SAMPLERS[0][0]
    for candidate in _SCHEDULERS:
        for option in (candidate.label, candidate.name, *(candidate.aliases or ())):
            if name.endswith(" " + option):
                found, name = candidate, name[: -len(option) - 1]
                break
    resolved = name if name in _SAMPLER_OPTIONS else _SAMPLERS[0][0]
    if resolved != name:
        logger.warning("mock SD: Sampler Scheduler autocorrection: %r -> %r", sampler, resolved)
    if convert_automatic and _SAMPLER_OPTIONS[resolved].get("scheduler") == found.name:
        found = _SCHEDULERS[0]
    return resolved, found.label


def resolve_sampler(sampler: str | None, scheduler: str | None) -> tuple[str, str]:
    """The sampler and schedule label a v1.10 txt2img really uses (``text2imgapi``, then ``process_images``).

    A combined name (``DPM++ 2M Karras``) is split; an unknown sampler becomes the first one (``DPM++ 2M``)
    and an unknown scheduler ``Automatic``, with only a warning in the log, like A1111.
    """
    name, label = _sampler_and_scheduler(sampler, scheduler, convert_automatic=True)
    if not scheduler and label != "Automatic":
        scheduler = label
    return _sampler_and_scheduler(name, scheduler, convert_automatic=False)


def scheduler_label(sampler: str, scheduler: str | None) -> str | None:
    """The schedule a sampler really runs (``get_sigmas``): ``scheduler`` (a name or label), or the sampler's
    own for ``Automatic``/None.

    None when it is the model's own schedule (``Automatic`` on a sampler without a default) or an unknown
    name: the cases in which A1111 writes no ``Schedule type`` into ``extra_generation_params``.
    """
    name = scheduler or "Automatic"
    if name == "Automatic":
        name = _SAMPLER_OPTIONS.get(sampler, {}).get("scheduler") or ""
    found = _SCHEDULERS_MAP.get(name)
    return found.label if found is not None and found.name != "automatic" else None


# -- styles -------------------------------------------------------------------------------------------
def _merge_prompts(style_prompt: str, prompt: str) -> str:
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(prompt: str, names: list[str], styles: tuple[PromptStyle, ...], *, negative: bool = False) -> str:
    """``apply_styles_to_prompt`` / ``apply_negative_styles_to_prompt``: unknown names count as an empty style."""
    by_name = {style.name: style for style in styles}
    for name in names:
        style = by_name.get(name)
        text = (style.negative_prompt if negative else style.prompt) if style else ""
        prompt = _merge_prompts(text, prompt)
    return prompt


def _extract_text(style_text: str, prompt: str) -> tuple[bool, str]:
    stripped, style = prompt.strip(), style_text.strip()
    if "{prompt}" in style:
        left, right = style.split("{prompt}", 1)
        if stripped.startswith(left) and stripped.endswith(right):
            return True, stripped[len(left) : len(stripped) - len(right)]
    elif stripped.endswith(style):
        rest = stripped[: len(stripped) - len(style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def extract_styles(prompt: str, negative: str, styles: tuple[PromptStyle, ...]) -> tuple[list[str], str, str]:
    """``extract_styles_from_prompt`` (what ``/png-info`` does): the styles found, and the prompts without them."""
    found: list[str] = []
    left = list(styles)
    while True:
        for style in left:
            if not style.prompt and not style.negative_prompt:
                continue
            matched, new_prompt = _extract_text(style.prompt, prompt)
            matched_negative, new_negative = _extract_text(style.negative_prompt, negative)
            if matched and matched_negative:
                prompt, negative = new_prompt, new_negative
                left.remove(style)
                found.append(style.name)
                break
        else:
            return list(reversed(found)), prompt, negative
