"""The data that travels between sdpipe's parts: requests, job specs, job records, SD results.

Messages between actors carry only a job id; everything else is in the status store (the
:class:`JobRecord`, holding its :class:`JobSpec`) and on disk (paths derived from the job id).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import InputError
from pipeline.settings import OutputFormat
from pipeline.upscale.params import UpscaleParams

__all__ = [
    "FIXED_FIELDS",
    "MAX_PROMPT_CHARS",
    "RESERVED_FIELDS",
    "STEP_NAMES",
    "BatchRecord",
    "BatchRow",
    "ScheduleRecord",
    "ScheduleRun",
    "ScheduleRunStatus",
    "ErrorInfo",
    "GenerationParams",
    "JobKind",
    "JobRecord",
    "JobResult",
    "JobSpec",
    "JobState",
    "PRIORITIES",
    "Priority",
    "SDInfo",
    "SDResult",
    "StepName",
    "StepParams",
    "StepRecord",
    "parse_grid",
]

StepName = Literal["generate", "split", "seam_blur", "merge"]
#: The steps in pipeline order.
STEP_NAMES: tuple[StepName, ...] = ("generate", "split", "seam_blur", "merge")

JobKind = Literal["generate", "process", "upscale"]

#: How soon a queued job starts its SD call (README "Priority"): high before normal before low.
Priority = Literal["high", "normal", "low"]
#: The priorities, best first: a job's class is its index here.
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")

_GRID_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


class JobState(enum.StrEnum):
    """A job's lifecycle. Steps move it forward only; the last three are terminal."""

    QUEUED = "queued"
    GENERATING = "generating"
    SPLITTING = "splitting"
    BLURRING = "blurring"
    MERGING = "merging"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def rank(self) -> int:
        """Position in the forward order; terminal states share the highest rank."""
        return _RANK[self]

    @classmethod
    def for_step(cls, step: StepName) -> JobState:
        """The state a job is in while ``step`` runs."""
        return _STEP_STATE[step]

    @property
    def step(self) -> StepName | None:
        """The step a job in this state last started (None: queued or ended)."""
        return _STATE_STEP.get(self)


_RANK = {
    JobState.QUEUED: 0,
    JobState.GENERATING: 1,
    JobState.SPLITTING: 2,
    JobState.BLURRING: 3,
    JobState.MERGING: 4,
    JobState.SUCCEEDED: 5,
    JobState.FAILED: 5,
    JobState.CANCELLED: 5,
}
_STEP_STATE: dict[StepName, JobState] = {
    "generate": JobState.GENERATING,
    "split": JobState.SPLITTING,
    "seam_blur": JobState.BLURRING,
    "merge": JobState.MERGING,
}
_STATE_STEP: dict[JobState, StepName] = {state: step for step, state in _STEP_STATE.items()}


def parse_grid(text: str) -> tuple[int, int]:
    """Parse ``"ROWSxCOLS"`` (e.g. ``"2x2"``) into ``(rows, cols)``.

    Raises:
        InputError: not of that form, or a count below 1.
    """
    match = _GRID_RE.match(text)
    if not match:
        raise InputError(f"grid {text!r} is not ROWSxCOLS", field="grid", value=text, expected="ROWSxCOLS")
    rows, cols = int(match[1]), int(match[2])
    if rows < 1 or cols < 1:
        raise InputError(f"grid {text!r} has an empty side", field="grid", value=text, limit=1)
    if rows * cols < 2:
        raise InputError(f"grid {text!r} has no inner cut", field="grid", value=text, limit=2)
    return rows, cols


#: Longest prompt (and negative prompt), in characters. A1111 reads any length (75 tokens per CLIP
#: chunk, chunks joined), but tens of thousands of characters are a file pasted by mistake, and the
#: prompt is kept in the status store, the sidecar, the PNG and every listing of the job.
MAX_PROMPT_CHARS = 20_000


#: Fields of a txt2img request that sdpipe sets itself: one job, one image, sent back, named after the job.
FIXED_FIELDS: dict[str, Any] = {"batch_size": 1, "n_iter": 1, "send_images": True}
#: Fields a request may not set: sdpipe names every task after its job.
RESERVED_FIELDS = frozenset({"force_task_id"})
#: ``denoising_strength`` sent with ``enable_hr`` when none is given: the A1111 UI's hires default.
#: A1111's API has none and answers 500 (``TypeError``: None * float) to hires without it.
DEFAULT_HIRES_DENOISE = 0.7


class GenerationParams(BaseModel):
    """One AUTOMATIC1111 v1.10 txt2img request (``StableDiffusionTxt2ImgProcessingAPI``), for one image.

    The fields sdpipe itself reads are typed (prompt, seed, size, steps, sampler, scheduler, cfg, the
    hires size); every other field (``alwayson_scripts``, ``styles``, ``refiner_checkpoint``,
    ``hr_upscaler``, ``script_args``, Forge's and SD.Next's own...) is kept as written, under its A1111
    name, and sent unchanged. ``batch_size``/``n_iter`` stay 1 (a job is one image: ask for more
    jobs), ``send_images`` stays true and ``force_task_id`` is sdpipe's.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    seed: Annotated[int, Field(ge=-1, le=4294967294)] = -1
    steps: Annotated[int, Field(ge=1, le=500)]
    cfg_scale: Annotated[float, Field(ge=0, le=100)]
    width: Annotated[int, Field(ge=8)]
    height: Annotated[int, Field(ge=8)]
    sampler_name: str
    scheduler: str
    override_settings: dict[str, Any] | None = None
    enable_hr: bool | None = None
    hr_scale: Annotated[float, Field(gt=0, le=16)] | None = None
    hr_resize_x: Annotated[int, Field(ge=0)] | None = None
    hr_resize_y: Annotated[int, Field(ge=0)] | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value

    @model_validator(mode="before")
    @classmethod
    def _hires_denoise(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("enable_hr") and data.get("denoising_strength") is None:
            return {**data, "denoising_strength": DEFAULT_HIRES_DENOISE}
        return data

    @model_validator(mode="after")
    def _one_image_and_plain_values(self) -> GenerationParams:
        for key, value in (self.__pydantic_extra__ or {}).items():
            if key in RESERVED_FIELDS:
                raise ValueError(f"{key} is set by sdpipe (each task is named after its job)")
            if key in FIXED_FIELDS and value is not None and value != FIXED_FIELDS[key]:
                if key == "send_images":
                    raise ValueError("send_images must stay true: sdpipe needs the image")
                raise ValueError(f"{key} must be 1 (one job is one image): ask for more jobs with count")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: not a JSON value (got {type(value).__name__})") from None
        return self

    @property
    def extra_fields(self) -> dict[str, Any]:
        """The A1111 fields sdpipe passes through as written (not None)."""
        return {key: value for key, value in (self.__pydantic_extra__ or {}).items() if value is not None}

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint asked for (``override_settings.sd_model_checkpoint``), if any."""
        value = (self.override_settings or {}).get("sd_model_checkpoint")
        return value if isinstance(value, str) and value else None

    @property
    def output_size(self) -> tuple[int, int]:
        """The size the server returns: the first pass floored to 8, or the hires size (as A1111 computes it)."""
        width, height = self.width, self.height
        if self.enable_hr:
            x, y = self.hr_resize_x or 0, self.hr_resize_y or 0
            if x == 0 and y == 0:
                scale = 2.0 if self.hr_scale is None else self.hr_scale
                width, height = int(width * scale), int(height * scale)
            elif y == 0:
                width, height = x, x * height // width
            elif x == 0:
                width, height = y * width // height, y
            else:
                width, height = x, y
        return width // 8 * 8, height // 8 * 8

    def to_payload(self) -> dict[str, Any]:
        """The JSON body of ``POST /sdapi/v1/txt2img`` for one image: every field given, as given."""
        payload: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "scheduler": self.scheduler,
            **FIXED_FIELDS,
            "save_images": False,
        }
        for key in ("enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y"):
            value = getattr(self, key)
            if value is not None:
                payload[key] = value
        payload.update(self.extra_fields)
        if self.override_settings:
            payload["override_settings"] = self.override_settings
            payload.setdefault("override_settings_restore_afterwards", True)
        return payload


class StepParams(BaseModel):
    """Parameters of split -> seam-blur -> merge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: Annotated[int, Field(ge=1)] = 2
    cols: Annotated[int, Field(ge=1)] = 2
    band_px: Annotated[int, Field(ge=1)] = 16
    sigma: Annotated[float, Field(gt=0)] = 4.0

    @property
    def grid(self) -> str:
        return f"{self.rows}x{self.cols}"


class JobSpec(BaseModel):
    """What a job must do; fixed when the job is created."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    kind: JobKind
    batch_id: str | None = None
    generation: GenerationParams | None = None
    step_params: StepParams
    #: A tiled upscale after the image exists (``upscale`` jobs, ``generate --upscale``): first pass,
    #: one img2img per tile, blended merge. None: the plain split -> seam-blur -> merge.
    upscale: UpscaleParams | None = None
    output_format: OutputFormat = "png"
    #: JPEG/WebP quality (1..100) of the final image; None (records from before it existed): 95.
    output_quality: int | None = None
    #: Final file name without extension, relative to OUTPUT_DIR (fixed at creation: idempotent). May
    #: hold ``{seed}`` / ``{model}`` placeholders, filled in at merge (pipeline.jobs.naming), and a
    #: ``-0001`` counter is added there when another file has the name, unless ``overwrite``.
    output_name: str
    #: Replace an existing file of the same name (``--overwrite``) instead of adding a counter.
    overwrite: bool = False
    #: For ``process`` jobs: the input file the user named (for the sidecar only).
    source_name: str | None = None
    #: SD server chosen by the submitter (``--sd-url`` in Redis mode), without credentials: the
    #: worker adds its own ``SD_API_AUTH``. None: the worker's ``SD_API_URL``.
    backend_url: str | None = None
    #: Absolute OUTPUT_DIR chosen by the submitter (``--out``, ``process``); None: the worker's OUTPUT_DIR.
    output_dir: str | None = None
    #: Hash of everything that decides the output (prompt, every parameter, seed, step params,
    #: format, name): ``batch --skip-existing`` skips rows whose fingerprint already succeeded.
    fingerprint: str | None = None
    #: A prompt template's record (pipeline.prompts): the templates and the choices that made this job's
    #: prompt, and the sweep values it took; kept in the sidecar so the result can be made again.
    prompt_template: dict[str, Any] | None = None
    #: Queued high-priority work starts its SD call before normal, normal before low (with aging).
    priority: Priority = "normal"
    #: The job's own webhook (``--webhook``, ``webhook`` in API bodies), besides ``WEBHOOK_URL``.
    webhook_url: str | None = None
    created_at: float


class StepRecord(BaseModel):
    """Attempts and timing of one step of one job."""

    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    skipped: bool = False


class ErrorInfo(BaseModel):
    """The last error of a job: which step, which error type, the message (server's own included)."""

    step: str
    type: str
    message: str
    transient: bool = False
    at: float
    #: For ``WorkerDied``: how many deliveries of this step in a row ended without any outcome.
    deaths: int = 0
    #: For SD errors: the server (URL without credentials) that failed; a retry prefers another.
    backend: str | None = None
    #: The setting or field at fault (``PipelineError.field``): front ends word the fix from type and field.
    field: str | None = None


class SDInfo(BaseModel):
    """What the SD server said about a job's image (the generate step's record of it)."""

    model_config = ConfigDict(extra="allow")

    #: The seed and variation seed of this image, and every one the server used for the request.
    seed: int | None = None
    subseed: int | None = None
    all_seeds: list[int] = Field(default_factory=list)
    all_subseeds: list[int] = Field(default_factory=list)
    model_name: str | None = None
    model_hash: str | None = None
    sampler: str | None = None
    version: str | None = None
    #: The server's own infotext of this image (``info.infotexts``).
    infotext: str | None = None
    format: str | None = None
    #: Size of the image the server returned (the hires size with hires fix).
    width: int | None = None
    height: int | None = None
    backend_url: str | None = None
    elapsed_s: float | None = None
    #: What the server did differently from what was asked (a replaced sampler...).
    warnings: list[str] = Field(default_factory=list)


class JobResult(BaseModel):
    """A succeeded job's output: where the image and its sidecar are, and what the image is."""

    model_config = ConfigDict(extra="allow")

    image: str | None = None
    sidecar: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    sha256: str | None = None


class JobRecord(BaseModel):
    """A job as the status store holds it."""

    job_id: str
    batch_id: str | None = None
    state: JobState
    spec: JobSpec
    created_at: float
    updated_at: float
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    #: Set on success: where the output is and what it is.
    result: JobResult | None = None
    #: What the SD server said about the generation (seed used, model, version, its infotext).
    sd_info: SDInfo | None = None


class BatchRow(BaseModel):
    """One row of a batch: where it came from, what it asked for, and the jobs it became."""

    #: Line number in the batch file (1-based); for other sources, the row's position.
    line: int
    #: The row's own parameters, as written (defaults from flags applied), for the manifest.
    params: dict[str, Any]
    job_ids: list[str]
    #: Jobs of this row not run because an identical job already succeeded (``--skip-existing``).
    already_rendered: int = 0


class BatchRecord(BaseModel):
    """A group of jobs submitted together (a file, a ``--count``, a schedule's run)."""

    batch_id: str
    created_at: float
    #: The batch file (absolute path), or None for ``generate``/``process``.
    source: str | None = None
    #: The schedule that fired it, if any.
    schedule: str | None = None
    rows: list[BatchRow] = Field(default_factory=list)

    @property
    def job_ids(self) -> list[str]:
        return [job_id for row in self.rows for job_id in row.job_ids]


ScheduleRunStatus = Literal["fired", "skipped", "failed"]


class ScheduleRun(BaseModel):
    """What happened at one occurrence of a schedule."""

    #: The occurrence (epoch seconds), as the cron expression defines it.
    fire_time: float
    #: When the scheduler acted on it.
    at: float
    status: ScheduleRunStatus
    #: Why it was skipped or failed (overlap, missed beyond the grace window, invalid file...).
    reason: str | None = None
    batch_id: str | None = None
    #: True for ``schedule run NAME`` (fired by hand).
    manual: bool = False


class ScheduleRecord(BaseModel):
    """A named cron schedule that renders a batch file."""

    name: str
    cron: str
    #: IANA time zone the cron expression is read in (e.g. ``Europe/Berlin``).
    timezone: str = "UTC"
    #: The batch file (absolute path), read at fire time.
    file: str
    #: Batch defaults given when the schedule was added (the same keys as a batch row).
    options: dict[str, Any] = Field(default_factory=dict)
    #: Output names of rows without a ``name`` (``--name-template``); None: the worker's ``OUTPUT_NAME``.
    name_template: str | None = None
    #: Replace files of the same name instead of adding a counter (``--overwrite``).
    overwrite: bool = False
    #: Every run's jobs notify this webhook (``--webhook``), besides ``WEBHOOK_URL``.
    webhook: str | None = None
    allow_overlap: bool = False
    #: A missed occurrence younger than this still fires once when the scheduler starts.
    grace_s: float = 3600.0
    created_at: float
    #: Newest first, capped (see the store).
    runs: list[ScheduleRun] = Field(default_factory=list)


@dataclass(frozen=True)
class SDResult:
    """One image as the SD server returned it, plus what ``info`` says about it."""

    image_bytes: bytes
    #: Sniffed from the bytes: ``png``, ``jpeg`` or ``webp``.
    format: str
    #: The parsed ``info`` JSON (an empty dict when the server sent none).
    info: dict[str, Any]
    #: The seed actually used (``info.all_seeds[0]``), or the requested one when ``info`` lacks it.
    seed: int
    #: A1111 infotext for this image (``info.infotexts[index_of_first_image]``), or None.
    infotext: str | None
    model_name: str | None
    model_hash: str | None
    version: str | None
    #: Credential-free URL of the server that rendered it.
    backend_url: str
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: This image's variation seed, and every seed and variation seed the server used.
    subseed: int | None = None
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)
    #: The sampler the server says it used (infotext ``Sampler``).
    sampler: str | None = None
    #: What the server did differently from what was asked (a replaced sampler...).
    warnings: list[str] = field(default_factory=list)


def validation_message(exc: Exception) -> str:
    """One line from a pydantic ``ValidationError`` (first problem, field named)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid"))
    return str(exc)
