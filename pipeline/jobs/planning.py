"""Turning what a user asked for into validated job specs, before anything is enqueued.

All checks that can fail on user input run here, so a bad request stops with one clear line and
nothing enqueued or written (except, for ``process``, each input's copy in its job's work folder,
written atomically once every input has been validated).
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from pipeline.errors import ConfigError, ImageError, InputError, InputsRejected, JobNotFound, PipelineError
from pipeline.images.geometry import validate_geometry
from pipeline.jobs.files import JobFiles, safe_output_stem
from pipeline.jobs.naming import NameFields, check_name_template, check_output_name, expand_name, resolve_late_tokens
from pipeline.models import GenerationParams, JobRecord, JobSpec, StepParams, parse_grid, validation_message
from pipeline.settings import OutputFormat, Settings, strip_credentials
from pipeline.storage.base import is_s3_url, open_storage
from pipeline.storage.local import LocalStorage
from pipeline.store.base import StatusStore

if TYPE_CHECKING:
    from pipeline.images.codec import ImageHeader
    from pipeline.upscale.params import UpscaleParams

__all__ = [
    "IMAGE_EXTENSIONS",
    "GenerationRequest",
    "ProcessPlan",
    "RequestChecker",
    "build_step_params",
    "expand_image_paths",
    "fingerprint",
    "new_id",
    "output_quality",
    "parse_overrides",
    "plan_generate",
    "plan_process",
    "travelling_overrides",
    "watch_jobs",
]

logger = logging.getLogger(__name__)

#: Most jobs one ``generate --count`` may create.
MAX_COUNT = 10_000
#: Largest seed A1111 accepts; seeds beyond it wrap for ``--count``.
MAX_SEED = 4294967294
_WARNED_SIZES: set[tuple[int, int]] = set()
_HIRES_FIELDS = ("enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y")
#: A1111 fields that GenerationRequest sets itself (under sdpipe's names): ``params`` cannot set them.
_REQUEST_FIELDS = frozenset(
    {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "sampler_name", "scheduler"}
    | {"override_settings"}
)
#: How often a waiting CLI reads the status store, in seconds.
DEFAULT_POLL_INTERVAL_S = 0.25
#: File extensions ``process DIR`` picks up (case-insensitive); the format is still sniffed from the bytes.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_GLOB_MAGIC = frozenset("*?[")


def fingerprint(
    generation: GenerationParams,
    step_params: StepParams,
    output_format: str,
    output_name: str | None,
    quality: int | None = None,
) -> str:
    """A stable hash of everything that decides a job's output (for ``batch --skip-existing``).

    ``output_name`` counts only when the user chose it; default names contain the job id.
    ``quality`` counts for JPEG and WebP only (PNG is lossless), so PNG fingerprints are unchanged.
    """
    lossy = {"quality": quality} if output_format != "png" and quality is not None else {}
    # Typed hires fields left unset are left out, so jobs planned before they existed keep their fingerprint;
    # every pass-through field counts.
    unset = {key for key in _HIRES_FIELDS if getattr(generation, key) is None}
    canonical = json.dumps(
        {
            "generation": generation.model_dump(mode="json", exclude=unset),
            "steps": step_params.model_dump(mode="json"),
            "format": output_format,
            "name": output_name,
            **lossy,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def new_id() -> str:
    """A new job or batch id (32 hex digits; shown shortened to 8)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for; None means "the setting's default"."""

    prompt: str
    negative_prompt: str = ""
    seed: int = -1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    override_settings: dict[str, Any] | None = None
    #: Any other A1111 txt2img field, by its A1111 name, sent as written (``enable_hr``, ``styles``,
    #: ``alwayson_scripts``...). The fields above win over the same name here.
    params: Mapping[str, Any] | None = None
    #: A checkpoint (title, model name or hash): sent as ``override_settings.sd_model_checkpoint``.
    model: str | None = None


class RequestChecker(Protocol):
    """Checks a request against the SD server that will render it (see :mod:`pipeline.sd.catalog`)."""

    def known_fields(self) -> frozenset[str] | None:
        """The names of the server's txt2img request fields, or None when it does not publish them."""

    def check(self, generation: GenerationParams) -> GenerationParams:
        """``generation`` with its checkpoint, sampler and scheduler as the server names them.

        Raises:
            InputError: a name the server does not know (``field`` says which), closest ones named.
        """

    def check_upscale(self, params: UpscaleParams) -> UpscaleParams:
        """``params`` with its upscaler, sampler and scheduler as the server names them.

        Raises:
            InputError: a name the server does not know (``field`` says which), closest ones named.
        """


def check_field_names(names: Sequence[str], known: frozenset[str] | None) -> None:
    """Refuse a request field the server's txt2img request does not have (None: it did not say).

    Raises:
        InputError: the first unknown name, with the closest known one.
    """
    if known is None:
        return
    for name in names:
        if name not in known:
            guess = next(iter(difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)), None)
            suggestion = f"; did you mean {guess!r}?" if guess else ""
            raise InputError(
                f"unknown field {name!r}{suggestion} (not in the SD server's txt2img request)",
                field=name,
                expected=repr(guess) if guess else "a field of the server's txt2img request (its /openapi.json)",
            )


def parse_overrides(items: Sequence[str]) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs for A1111's ``override_settings``; VALUE is JSON when it parses, else a string.

    >>> parse_overrides(["CLIP_stop_at_last_layers=2", "sd_model_checkpoint=sdxl.safetensors"])
    {'CLIP_stop_at_last_layers': 2, 'sd_model_checkpoint': 'sdxl.safetensors'}

    Raises:
        InputError: an item without ``=`` or with an empty key.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"override {item!r} is not KEY=VALUE", field="override", value=item, expected="KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        overrides[key.strip()] = value
    return overrides or None


def build_step_params(settings: Settings, *, grid: str | None, band_px: int | None, sigma: float | None) -> StepParams:
    """Step parameters from flags, falling back to the settings.

    Raises:
        InputError: a malformed grid, ``band_px < 1`` or ``sigma <= 0``.
    """
    rows, cols = parse_grid(grid if grid is not None else settings.grid)
    band = settings.band_px if band_px is None else band_px
    sig = settings.sigma if sigma is None else sigma
    if band < 1:
        raise InputError(f"band_px must be at least 1 (got {band})", field="band_px", value=band, limit=1)
    if not sig > 0:
        raise InputError(f"sigma must be greater than 0 (got {sig})", field="sigma", value=sig, limit=0)
    return StepParams(rows=rows, cols=cols, band_px=band, sigma=sig)


def _generation_params(settings: Settings, request: GenerationRequest, seed: int) -> GenerationParams:
    if not request.prompt.strip():
        raise InputError("the prompt is empty", field="prompt", value=request.prompt)
    width = settings.width if request.width is None else request.width
    height = settings.height if request.height is None else request.height
    for name, value in (("width", width), ("height", height)):
        if value < 8:
            raise InputError(f"{name} must be at least 8 pixels (got {value})", field=name, value=value, limit=8)
    if width * height > settings.max_pixels:
        raise InputError(
            f"{width}x{height} is {width * height:,} pixels, over MAX_PIXELS ({settings.max_pixels:,})",
            field="MAX_PIXELS",
            value=width * height,
            limit=settings.max_pixels,
        )
    overrides = dict(request.params.get("override_settings") or {}) if request.params else {}
    overrides.update(request.override_settings or {})
    if request.model is not None:
        overrides["sd_model_checkpoint"] = request.model
    if (width % 8 or height % 8) and (width, height) not in _WARNED_SIZES:
        _WARNED_SIZES.add((width, height))  # once per size per process, not once per job of a batch
        logger.warning(
            "%dx%d is not a multiple of 8: the SD server will return %dx%d (A1111 floors the size)",
            width,
            height,
            width // 8 * 8,
            height // 8 * 8,
        )
    try:
        generation = GenerationParams(
            **{k: v for k, v in (request.params or {}).items() if v is not None and k not in _REQUEST_FIELDS},
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=seed,
            steps=settings.steps if request.steps is None else request.steps,
            cfg_scale=settings.cfg_scale if request.cfg_scale is None else request.cfg_scale,
            width=width,
            height=height,
            sampler_name=settings.sampler if request.sampler is None else request.sampler,
            scheduler=settings.scheduler if request.scheduler is None else request.scheduler,
            override_settings=overrides or None,
        )
    except ValidationError as exc:
        raise InputError(f"invalid generation parameter {validation_message(exc)}") from exc
    out_width, out_height = generation.output_size
    if out_width * out_height > settings.max_pixels:
        raise InputError(
            f"hires fix makes {out_width}x{out_height}, {out_width * out_height:,} pixels, over MAX_PIXELS "
            f"({settings.max_pixels:,})",
            field="hr_scale",
            value=generation.hr_scale,
            limit=settings.max_pixels,
        )
    return generation


def output_quality(settings: Settings, quality: int | None) -> int:
    """The JPEG/WebP quality a job gets: ``quality`` (``--quality``), else ``OUTPUT_QUALITY``.

    Raises:
        InputError: not within 1..100.
    """
    chosen = settings.output_quality if quality is None else quality
    if not 1 <= chosen <= 100:
        raise InputError(
            f"quality must be between 1 and 100 (got {chosen})", field="quality", value=chosen, expected="1..100"
        )
    return chosen


def _output_name(template: str, fields: NameFields) -> str:
    """The name of one job from a checked template; its late tokens stay for merge time.

    Raises:
        InputError: the expanded name would leave OUTPUT_DIR or is too long.
    """
    name = expand_name(template, fields)
    check_output_name(resolve_late_tokens(name, seed=0, model="model"))
    return name


def travelling_overrides(
    settings: Settings, *, out: str | Path | None, sd_url: str | None
) -> tuple[str | None, str | None]:
    """The ``output_dir`` and ``backend_url`` that jobs submitted with ``--out`` / ``--sd-url`` carry.

    In Redis mode the workers run on their own settings, so what the submitting command overrode
    travels in each job spec: ``--out`` as ``settings.output_location`` (which already holds it: an
    absolute folder or an ``s3://`` URL), ``--sd-url`` as the server the jobs are pinned to. Embedded
    mode runs the jobs on these very settings, so ``--out`` stays out; ``--sd-url`` is still recorded (not pinned: see
    :func:`pipeline.jobs.steps.pinned_backend`), so an embedded ``sdpipe retry`` finds the job's server.
    """
    if not settings.redis_mode:
        return None, sd_url
    return (settings.output_location if out is not None else None), sd_url


def plan_generate(
    settings: Settings,
    request: GenerationRequest,
    step_params: StepParams,
    *,
    count: int = 1,
    output_format: OutputFormat | None = None,
    quality: int | None = None,
    name: str | None = None,
    name_template: str | None = None,
    row: int | None = None,
    overwrite: bool = False,
    batch_id: str | None = None,
    output_dir: str | Path | None = None,
    backend_url: str | None = None,
    checker: RequestChecker | None = None,
    now: float,
) -> list[JobSpec]:
    """``count`` generate jobs with seeds ``seed … seed+count-1`` (all random when ``seed`` is -1).

    Each is named by ``name`` (a batch row's; ``name-1``, ``name-2``... with ``count``) or else by
    ``name_template`` (None: ``OUTPUT_NAME``), with ``{row}`` the batch ``row`` or the job's position.

    ``backend_url`` pins the jobs to one SD server (credentials are dropped: workers use their own
    ``SD_API_AUTH``); None lets each worker use its ``SD_API_URL``. ``checker`` checks the field
    names, checkpoint, sampler and scheduler against the server, once for all ``count`` jobs.

    Raises:
        InputError: anything wrong with the request, found before any job exists.
    """
    if not 1 <= count <= MAX_COUNT:
        raise InputError(
            f"count must be between 1 and {MAX_COUNT} (got {count})", field="count", value=count, limit=MAX_COUNT
        )
    if not -1 <= request.seed <= MAX_SEED:
        raise InputError(
            f"seed must be -1 (random) or 0..{MAX_SEED} (got {request.seed})",
            field="seed",
            value=request.seed,
            limit=MAX_SEED,
        )
    stem = safe_output_stem(name) if name is not None else None
    template = check_name_template(
        settings.output_name if name_template is None else name_template,
        field="OUTPUT_NAME" if name_template is None else "--name-template",
    )
    chosen_quality = output_quality(settings, quality)
    specs = []
    first: GenerationParams | None = None
    for index in range(count):
        seed = -1 if request.seed == -1 else (request.seed + index) % (MAX_SEED + 1)
        if first is None:
            generation = first = _generation_params(settings, request, seed)
            if checker is not None:
                check_field_names(sorted(generation.extra_fields), checker.known_fields())
                generation = first = checker.check(generation)
            validate_geometry(*generation.output_size, step_params)
        else:
            generation = first.model_copy(update={"seed": seed})
        job_id = new_id()
        if stem is None:
            fields = NameFields(
                created_at=now,
                job_id=job_id,
                prompt_label=request.prompt,
                batch_id=batch_id,
                seed=seed,
                row=index + 1 if row is None else row,
            )
            output_name = _output_name(template, fields)
        else:
            output_name = stem if count == 1 else f"{stem}-{index + 1}"
        chosen_format = output_format or settings.output_format
        specs.append(
            JobSpec(
                job_id=job_id,
                kind="generate",
                batch_id=batch_id,
                generation=generation,
                step_params=step_params,
                output_format=chosen_format,
                output_quality=chosen_quality,
                output_name=output_name,
                overwrite=overwrite,
                fingerprint=fingerprint(
                    generation, step_params, chosen_format, None if stem is None else output_name, chosen_quality
                ),
                backend_url=strip_credentials(backend_url) if backend_url is not None else None,
                output_dir=str(output_dir) if output_dir is not None else None,
                created_at=now,
            )
        )
    return specs


@dataclass(frozen=True)
class ProcessPlan:
    """A validated ``process`` job and the bytes to ingest into its work folder."""

    spec: JobSpec
    data: bytes
    #: What the user should be told about this input (a 16-bit image reduced to 8 bits), one line each.
    notes: tuple[str, ...] = ()

    def ingest(self, settings: Settings | None = None) -> None:
        """Copy the input into the job's work folder or prefix (atomically), where the split step reads
        it: in the job's storage, so any worker can take the job. ``settings`` carry the credentials
        of an ``s3://`` location (not needed for a folder)."""
        assert self.spec.output_dir is not None
        location = self.spec.output_dir
        if settings is None and is_s3_url(location):
            raise ConfigError(
                f"job {self.spec.job_id} goes to {location}: its credentials are needed", field="OUTPUT_URL"
            )
        storage = open_storage(location, settings) if settings is not None else LocalStorage(Path(location))
        JobFiles(storage, self.spec.job_id).source.write(self.data)


def expand_image_paths(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The files ``process`` was given: a folder stands for its image files (by extension, sorted, not
    recursive, hidden ones skipped), a path with ``*``, ``?`` or ``[`` that is no file for the files it
    matches (quoted globs: ``process 'shots/*.png'``); anything else is kept as given. Each file once.

    Returns the files and a problem line for each folder or pattern that yields none.
    """
    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                entry
                for entry in path.iterdir()
                if entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith(".") and entry.is_file()
            )
            if not found:
                problems.append(f"{path}: the folder has no {', '.join(IMAGE_EXTENSIONS)} files")
            files.extend(found)
        elif not path.exists() and _GLOB_MAGIC & set(str(path)):
            matched = sorted(Path(name) for name in glob.glob(str(path)) if Path(name).is_file())
            if not matched:
                problems.append(f"{path}: no file matches this pattern")
            files.extend(matched)
        else:
            files.append(path)
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.absolute(), file)
    return list(unique.values()), problems


def plan_process(
    settings: Settings,
    paths: Sequence[Path],
    step_params: StepParams,
    *,
    output_dir: str | Path,
    output_format: OutputFormat | None = None,
    quality: int | None = None,
    batch_id: str | None = None,
    first_frame: bool = False,
    name_template: str | None = None,
    label: str | None = None,
    overwrite: bool = False,
    check_size: Callable[[int, int], None] | None = None,
    now: float,
) -> list[ProcessPlan]:
    """Validate every input image (limits, format, size and a complete container; geometry; animation)
    before any job exists. Folders and glob patterns are expanded (:func:`expand_image_paths`).
    ``check_size``: what an image's width and height must pass instead of the split's geometry
    (:func:`validate_geometry` with ``step_params``): an upscale's own checks, which cuts no grid.

    The image rule, the same for ``sdpipe process`` and ``POST /api/files``: an animation (GIF, WebP,
    APNG with more than one frame) is refused unless ``first_frame`` asks for its first frame; a
    16-bit PNG is processed in 8 bits per channel, and the plan's ``notes`` say so.

    Outputs are named by ``name_template`` (None: ``OUTPUT_NAME``) with ``{prompt}`` the input's file
    name (or ``label``), ``{row}`` its position, ``{seed}`` and ``{model}`` ``none``.

    Raises:
        InputError: a missing file, a folder or pattern without images, a grid that does not fit an
            image, an animation without ``first_frame``.
        ImageError: a file that is not an image, is truncated, or is over the limits.
        InputsRejected: more than one input is unusable: every problem is listed.
    """
    if not paths:
        raise InputError("no input images", field="images")
    chosen_quality = output_quality(settings, quality)
    template = check_name_template(
        settings.output_name if name_template is None else name_template,
        field="OUTPUT_NAME" if name_template is None else "--name-template",
    )
    files, problems = expand_image_paths(paths)
    failures: list[PipelineError] = []
    plans = []
    for position, path in enumerate(files, start=1):
        job_id = new_id()
        fields = NameFields(
            created_at=now,
            job_id=job_id,
            prompt_label=path.stem if label is None else label,
            batch_id=batch_id,
            row=position,
            no_generation=True,
        )
        try:
            data, header = _checked_input(settings, path, step_params, first_frame=first_frame, check_size=check_size)
            output_name = _output_name(template, fields)
        except PipelineError as exc:
            failures.append(exc)
            continue
        spec = JobSpec(
            job_id=job_id,
            kind="process",
            batch_id=batch_id,
            step_params=step_params,
            output_format=output_format or settings.output_format,
            output_quality=chosen_quality,
            output_name=output_name,
            overwrite=overwrite,
            source_name=str(path),
            output_dir=str(output_dir),
            created_at=now,
        )
        notes: tuple[str, ...] = ()
        if header.bit_depth > 8:
            kind = f"{header.bit_depth}-bit {header.format.upper()}"
            notes = (f"{path}: {kind} processed and written in 8 bits per channel",)
        plans.append(ProcessPlan(spec=spec, data=data, notes=notes))
    if len(failures) == 1 and not problems:
        raise failures[0]
    if len(problems) == 1 and not failures and not plans:
        raise InputError(problems[0], field="images", value=str(paths[0]), expected="image files")
    if failures or problems:
        raise InputsRejected([*problems, *(exc.message for exc in failures)], total=len(files) + len(problems))
    return plans


def _checked_input(
    settings: Settings,
    path: Path,
    step_params: StepParams,
    *,
    first_frame: bool,
    check_size: Callable[[int, int], None] | None,
) -> tuple[bytes, ImageHeader]:
    """One input's bytes and header, once every check of :func:`plan_process` passed."""
    from pipeline.images.codec import probe_image, read_image_bytes  # PIL: only commands that read images

    data = read_image_bytes(path, max_bytes=settings.max_image_bytes)
    # From the header and container only: the split step decodes the pixels, once.
    header = probe_image(data, max_pixels=settings.max_pixels, max_bytes=settings.max_image_bytes, what=str(path))
    if header.frames > 1 and not first_frame:
        kind = {"png": "APNG"}.get(header.format, header.format.upper())
        raise ImageError(
            f"{path} is an animated {kind} ({header.frames} frames): sdpipe processes still images",
            field="first_frame",
            value=header.frames,
            expected="a still image, or first_frame",
        )
    try:
        if check_size is None:
            validate_geometry(header.width, header.height, step_params)
        else:
            check_size(header.width, header.height)
    except InputError as exc:
        raise InputError(
            f"{path.name}: {exc.message}", field=exc.field, value=exc.value, limit=exc.limit, expected=exc.expected
        ) from exc
    return data, header


def watch_jobs(
    store: StatusStore, job_ids: Sequence[str], *, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
) -> Iterator[list[JobRecord]]:
    """Yield the jobs' records every ``poll_interval_s`` until all of them are terminal (last yield included).

    Each poll is one batched read (:meth:`StatusStore.get_many`) of the jobs not yet terminal; a
    terminal job never changes again, so its last record is reused.

    A store outage does not end the watch: :class:`StoreUnavailable` is raised to the caller, who
    may report it and call again.

    Raises:
        JobNotFound: a job id has no job; the callers submitted them, so the store lost them
            (``field="persistence"``: Redis restarted without persistence).
    """
    latest: dict[str, JobRecord] = {}
    while True:
        unfinished = [job_id for job_id in job_ids if job_id not in latest or not latest[job_id].state.terminal]
        try:
            fresh = store.get_many(unfinished)
        except JobNotFound as exc:
            raise store.records_gone(str(exc.value)) from exc
        latest.update((record.job_id, record) for record in fresh)
        records = [latest[job_id] for job_id in job_ids]
        yield records
        if all(record.state.terminal for record in records):
            return
        time.sleep(poll_interval_s)
