"""What an upscale job asks for: :class:`UpscaleParams` (scale, upscaler, tiles, img2img settings).

The same model travels in a :class:`~pipeline.models.JobSpec` (``upscale``), is built by the CLI
(``sdpipe upscale``, ``generate --upscale``) and is recorded in the sidecar and the infotext.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_DENOISE",
    "DEFAULT_OVERLAP_PX",
    "DEFAULT_SEAM_FIX_DENOISE",
    "DEFAULT_SEAM_FIX_WIDTH_PX",
    "DEFAULT_TILE_PX",
    "LANCZOS",
    "MAX_SCALE",
    "ROW_UPSCALE_KEYS",
    "UPSCALE_KEY_OF",
    "SeamFix",
    "UpscaleParams",
]

#: Tile side in pixels: SD 1.5's comfortable size; a multiple of 8 (the latent grid).
DEFAULT_TILE_PX = 512
#: Pixels two neighbouring tiles share at least; the blend runs across them.
DEFAULT_OVERLAP_PX = 64
#: img2img denoising strength of each tile: enough to add detail, too little to change the picture.
DEFAULT_DENOISE = 0.3
#: The first-pass upscaler computed locally (no SD call); any other name goes to ``extra-single-image``.
LANCZOS = "Lanczos"
#: Largest enlargement factor (A1111's extras allow 8).
MAX_SCALE = 8.0

#: The keys of a batch row (and of defaults, ``POST /api/generate``, ``POST /api/batches`` rows, and the
#: flags of ``generate``, ``batch`` and ``schedule add``) that ask for an upscale after each image,
#: and the :class:`~pipeline.upscale.planning.UpscaleRequest` field each sets. Any of them asks for one;
#: ``upscale`` is the scale (2). They live beside the model, not in the planning: a command's options
#: need them without the planning's image code (numpy, PIL).
ROW_UPSCALE_KEYS = {
    "upscale": "scale",
    "upscaler": "upscaler",
    "upscale_denoise": "denoise",
    "upscale_tile": "tile_px",
    "upscale_overlap": "overlap_px",
    "upscale_seam_fix": "seam_fix",
    "upscale_vary_seed": "vary_seed",
}
#: The row key of each :class:`~pipeline.upscale.planning.UpscaleRequest` field, for messages (``names`` of
#: :func:`~pipeline.upscale.planning.build_upscale_params`).
UPSCALE_KEY_OF = {field: key for key, field in ROW_UPSCALE_KEYS.items()}

#: Width of a seam-fix band (``--seam-fix band``): the masked strip re-rendered across each overlap's centre.
DEFAULT_SEAM_FIX_WIDTH_PX = 64
#: Denoising strength of the seam-fix bands: low, they only re-unify what is already close.
DEFAULT_SEAM_FIX_DENOISE = 0.15

SeamFix = Literal["none", "band"]


class UpscaleParams(BaseModel):
    """A tiled upscale: first pass by ``scale`` with ``upscaler``, then one img2img call per tile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: Annotated[float, Field(gt=1.0, le=MAX_SCALE)] = 2.0
    upscaler: Annotated[str, Field(min_length=1, max_length=200)] = LANCZOS
    tile_px: Annotated[int, Field(ge=64, le=2048)] = DEFAULT_TILE_PX
    overlap_px: Annotated[int, Field(ge=0, le=512)] = DEFAULT_OVERLAP_PX
    denoise: Annotated[float, Field(ge=0.0, le=1.0)] = DEFAULT_DENOISE
    seam_fix: SeamFix = "none"
    seam_fix_width_px: Annotated[int, Field(ge=16, le=512)] = DEFAULT_SEAM_FIX_WIDTH_PX
    seam_fix_denoise: Annotated[float, Field(ge=0.0, le=1.0)] = DEFAULT_SEAM_FIX_DENOISE
    #: The img2img request of every tile (A1111 field names); ``seed`` is the same for every tile
    #: unless ``vary_seed``: render ``i`` (a tile, then the bands) gets ``seed + i`` (no repeated noise).
    prompt: Annotated[str, Field(max_length=20_000)] = ""
    negative_prompt: Annotated[str, Field(max_length=20_000)] = ""
    seed: Annotated[int, Field(ge=-1, le=4294967294)] = -1
    vary_seed: bool = False
    steps: Annotated[int, Field(ge=1, le=500)] = 20
    cfg_scale: Annotated[float, Field(ge=0, le=100)] = 7.0
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    #: A1111 settings of every tile's request: the checkpoint (``sd_model_checkpoint``), clip skip...
    override_settings: dict[str, Any] | None = None
    #: ``alwayson_scripts`` of every tile's request (e.g. a ControlNet tile unit), sent as written.
    alwayson_scripts: dict[str, Any] | None = None

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint every tile names (``override_settings.sd_model_checkpoint``), if any: the
        pool sends the tiles to servers that have it loaded (checkpoint affinity)."""
        value = (self.override_settings or {}).get("sd_model_checkpoint")
        return value if isinstance(value, str) and value.strip() else None

    @field_validator("tile_px", "seam_fix_width_px")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"{value} px is not a multiple of 8 (SD works on an 8-pixel latent grid)")
        return value

    @model_validator(mode="after")
    def _overlap_fits(self) -> UpscaleParams:
        if self.overlap_px * 2 > self.tile_px:
            raise ValueError(f"overlap {self.overlap_px} px is more than half the tile ({self.tile_px} px)")
        return self

    @property
    def local(self) -> bool:
        """Whether the first pass runs here (Lanczos) instead of on an SD server."""
        return self.upscaler.strip().lower() == LANCZOS.lower()

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The size after the first pass (rounded like A1111's extras: ``int(side * scale)``)."""
        return max(1, int(width * self.scale)), max(1, int(height * self.scale))

    def seed_of(self, index: int) -> int:
        """The seed of render ``index``: ``seed``, or ``seed + index`` (wrapping) with ``vary_seed``."""
        if not self.vary_seed or self.seed < 0:
            return self.seed
        return (self.seed + index) % 4294967295

    def img2img_payload(
        self,
        init_image_b64: str,
        width: int,
        height: int,
        *,
        task_id: str,
        mask_b64: str | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        """The JSON body of ``POST /sdapi/v1/img2img`` for render ``index``, a tile (every field
        explicit), or with ``mask_b64`` a seam-fix band (masked, at the seam fix's denoise, original
        content kept under the mask as the start)."""
        payload: dict[str, Any] = {
            "init_images": [init_image_b64],
            "denoising_strength": self.denoise if mask_b64 is None else self.seam_fix_denoise,
            "resize_mode": 0,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed_of(index),
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "width": width,
            "height": height,
            "sampler_name": self.sampler_name,
            "scheduler": self.scheduler,
            "batch_size": 1,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
            "include_init_images": False,
            "force_task_id": task_id,
        }
        if mask_b64 is not None:
            payload |= {
                "mask": mask_b64,
                "mask_blur": 0,  # the mask is already soft
                "inpainting_fill": 1,  # "original": start from the pixels under the mask
                "inpaint_full_res": False,
                "inpainting_mask_invert": 0,
            }
        if self.override_settings:
            payload["override_settings"] = self.override_settings
            payload["override_settings_restore_afterwards"] = True
        if self.alwayson_scripts:
            payload["alwayson_scripts"] = self.alwayson_scripts
        return payload

    def output_infotext(self, base: str | None, width: int, height: int) -> str:
        """The infotext of the ``width`` x ``height`` output: the tiles' img2img made its pixels, so it
        gives their prompt, negative prompt, steps, sampler, schedule type, CFG scale, seed, size and
        checkpoint (``Model``, ``Model hash``: when they name none, ``base``'s are left out), on the
        params line of ``base`` (the input's, or the generation's: its other keys, such as
        ``Version``, kept), else on a line of their own; then the upscale keys
        (:meth:`infotext_params`). A1111's png-info reads it.
        """
        # Here: a command that only reads job records loads no infotext code (tests/test_cli/test_startup.py).
        from pipeline.images.infotext import build_infotext, insert_params, parse_infotext

        tiles: dict[str, Any] = {
            "Steps": self.steps,
            "Sampler": self.sampler_name,
            "Schedule type": self.scheduler,
            "CFG scale": self.cfg_scale,
            "Seed": self.seed,
            "Size": f"{width}x{height}",
        }
        checkpoint = self.checkpoint
        if checkpoint is not None:  # a title "name.safetensors [hash]", or a name as given
            name, _, short_hash = checkpoint.partition(" [")
            if short_hash.endswith("]"):
                tiles["Model hash"] = short_hash[:-1]
            tiles["Model"] = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        last = (base or "").strip().rsplit("\n", 1)[-1]
        line = last if last and not parse_infotext(last)["Prompt"] else ""  # "": no params line
        # Without a checkpoint named, each server renders its tiles with the one it has loaded: the
        # input's (or generation's) Model would name one the tiles may not have used.
        # A named checkpoint without " [hash]" must not keep the input's hash beside its name.
        drop = ("Model", "Model hash") if checkpoint is None else ("Model hash",)
        head = build_infotext(self.prompt, self.negative_prompt, {})
        return f"{head}\n{insert_params(line, tiles | self.infotext_params(), drop=drop)}".strip()

    def infotext_params(self) -> dict[str, Any]:
        """The keys the output's infotext gets (USDU leaves its seam settings out; we do not)."""
        return {
            "Upscale": f"{self.scale:g}",
            "Upscaler": self.upscaler,
            "Upscale tile": self.tile_px,
            "Upscale overlap": self.overlap_px,
            "Denoising strength": self.denoise,
            "Seam fix": self.seam_fix,
            **({"Upscale seeds": "per tile"} if self.vary_seed else {}),
            **(
                {"Seam fix width": self.seam_fix_width_px, "Seam fix denoise": self.seam_fix_denoise}
                if self.seam_fix == "band"
                else {}
            ),
        }
