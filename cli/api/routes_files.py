"""``POST /api/files`` (the original blocking endpoint) and ``POST /api/files/async``: an uploaded
image through split, seam-blur and merge, as ``sdpipe process`` does with a local file, or, with
``upscale`` form fields, through a tiled upscale, as ``sdpipe upscale`` does."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from cli.api.access_log import note_jobs
from cli.api.auth import require_token
from cli.api.deps import MEDIA_TYPES, ensure_output_dir, image_response, runtime_of, settings_of, wait_for
from cli.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from cli.api.schemas import JobAccepted, job_view
from cli.api.uploads import staged_upload
from pipeline.errors import PipelineError
from pipeline.jobs.planning import ProcessPlan, build_step_params, new_id, plan_process
from pipeline.models import JobSpec, JobState
from pipeline.sd.catalog import open_catalog
from pipeline.settings import OutputFormat
from pipeline.upscale.params import SeamFix
from pipeline.upscale.planning import (
    ROW_UPSCALE_KEYS,
    UPSCALE_KEY_OF,
    UpscaleRequest,
    plan_upscale,
    row_upscale_request,
)

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["files"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

#: Longest client file name kept (in the job's sidecar, as its source).
_SOURCE_NAME_MAX_CHARS = 200

_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "the upload is over MAX_UPLOAD_BYTES, or has more than MAX_PIXELS"},
    415: {
        "model": ErrorBody,
        "description": "the upload is not a PNG, JPEG, WebP or GIF image (sniffed from its bytes)",
    },
    422: {
        "model": ErrorBody,
        "description": "bad form fields (grid, band_px, sigma), an unreadable image, or an animation without "
        "first_frame=true",
    },
}
FileField = Annotated[UploadFile, File(description="the image: PNG, JPEG, WebP or GIF")]
GridField = Annotated[str | None, Form(description="split grid ROWSxCOLS (default GRID)")]
BandField = Annotated[int | None, Form(description="blend band on each side of a cut, in pixels (default BAND_PX)")]
SigmaField = Annotated[float | None, Form(allow_inf_nan=False, description="Gaussian sigma in pixels (default SIGMA)")]
FormatField = Annotated[OutputFormat | None, Form(description="output format (default OUTPUT_FORMAT)")]
QualityField = Annotated[int | None, Form(description="JPEG/WebP quality, 1..100 (default OUTPUT_QUALITY)")]
FirstFrameField = Annotated[
    bool, Form(description="process the first frame of an animated GIF/WebP/PNG (refused with 422 otherwise)")
]


def upscale_form(
    upscale: Annotated[
        float | None, Form(allow_inf_nan=False, description="upscale by this factor (tiled img2img)")
    ] = None,
    upscaler: Annotated[str | None, Form(description="first pass: Lanczos (no SD call) or a server's upscaler")] = None,
    upscale_denoise: Annotated[
        float | None, Form(allow_inf_nan=False, description="denoising strength of the tiles (0.3)")
    ] = None,
    upscale_tile: Annotated[int | None, Form(description="tile size in px, a multiple of 8 (512)")] = None,
    upscale_overlap: Annotated[int | None, Form(description="least overlap of neighbouring tiles in px (64)")] = None,
    upscale_seam_fix: Annotated[
        SeamFix | None, Form(description="band: also re-render a masked band across every tile border")
    ] = None,
    upscale_vary_seed: Annotated[bool | None, Form(description="tile i gets seed + i (default: one seed)")] = None,
    prompt: Annotated[str | None, Form(description="prompt of every tile (default: the image's own)")] = None,
    negative_prompt: Annotated[str | None, Form(description="negative prompt of every tile")] = None,
    seed: Annotated[int | None, Form(description="seed of every tile (default: the image's own, else random)")] = None,
) -> UpscaleRequest | None:
    """The upscale the form asks for (any ``upscale*`` field; the batch-row keys), or None: process."""
    values = {
        "upscale": upscale,
        "upscaler": upscaler,
        "upscale_denoise": upscale_denoise,
        "upscale_tile": upscale_tile,
        "upscale_overlap": upscale_overlap,
        "upscale_seam_fix": upscale_seam_fix,
        "upscale_vary_seed": upscale_vary_seed,
    }
    request = row_upscale_request(values)
    if request is None:
        if prompt is not None or negative_prompt is not None or seed is not None:
            raise ApiError(
                400,
                "unknown_field",
                "prompt, negative_prompt and seed are the prompt of an upscale's tiles",
                hint="add upscale=2 (or another upscale field) to upscale the image",
            )
        return None
    return replace(request, prompt=prompt, negative_prompt=negative_prompt, seed=seed)


UpscaleForm = Annotated[UpscaleRequest | None, Depends(upscale_form)]

#: The form fields both routes read (the parameters of :func:`process_file` and :func:`upscale_form`).
_FORM_FIELDS = (
    "file", "grid", "band_px", "sigma", "format", "quality", "first_frame",
    *ROW_UPSCALE_KEYS, "prompt", "negative_prompt", "seed",
)  # fmt: skip


async def known_form_fields(request: Request) -> None:
    """Refuse, with a 400 naming the field, a form field the routes do not read (``sigmaa=9`` would be
    silently dropped) and a second ``file`` part (only the first would be processed)."""
    form = await request.form()  # Starlette caches it: the routes' own fields read the same parse
    unknown = sorted({key for key in form if key not in _FORM_FIELDS})
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"unknown form field {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
            hint="the fields are " + ", ".join(_FORM_FIELDS),
        )
    files = len(form.getlist("file"))
    if files > 1:
        raise ApiError(
            400,
            "duplicate_field",
            f"the form has {files} 'file' parts: one image per request",
            hint="send each image in its own request",
        )


def _submit_upload(
    request: Request,
    file: UploadFile,
    *,
    grid: str | None,
    band_px: int | None,
    sigma: float | None,
    output_format: OutputFormat | None,
    quality: int | None,
    first_frame: bool,
    upscale: UpscaleRequest | None = None,
) -> JobSpec:
    """Check the form and the upload, stage it on disk, plan it as one process job (``upscale``: one
    upscale job) whose work folder gets its copy, and submit it. Blocking: run it in the thread pool.

    Nothing is left behind on failure: the staged file always goes, and the work folder too when the
    queue turns the job away (no record names it then).
    """
    settings = settings_of(request)
    runtime = runtime_of(request)
    step_params = build_step_params(settings, grid=grid, band_px=band_px, sigma=sigma)
    ensure_output_dir(settings)
    runtime.make_room(1)  # a full queue refuses before anything is written
    now = time.time()
    shown = (file.filename or "upload")[:_SOURCE_NAME_MAX_CHARS]
    # Name the output ({prompt} of OUTPUT_NAME) after the client's file, not the upload id.
    label = shown.rsplit(".", 1)[0] or "upload"
    with staged_upload(file.file, settings) as saved:
        planned: dict[str, Any] = {
            "output_dir": settings.output_location,
            "output_format": output_format,
            "quality": quality,
            "batch_id": new_id(),
            "first_frame": first_frame,
            "label": label,
            "now": now,
        }
        try:
            if upscale is None:
                [plan] = plan_process(settings, [saved.path], step_params, **planned)
            else:
                with open_catalog(settings) as checker:  # the upscaler, sampler and scheduler, before any job
                    [plan] = plan_upscale(
                        settings, [saved.path], upscale, step_params, names=UPSCALE_KEY_OF, checker=checker, **planned
                    )
        except PipelineError as exc:  # name the client's file, never the server's path
            for text in (str(saved.path), saved.path.name):
                exc.message = exc.message.replace(text, shown)
            raise
        # The sidecar's source is the client's file, not the upload id.
        spec = plan.spec.model_copy(update={"source_name": shown})
        inputs = [ProcessPlan(spec=spec, data=plan.data)]
        runtime.stage_inputs(inputs)
    try:
        runtime.submit([spec], as_batch=True)
    except BaseException:  # a full queue, Redis gone: nothing recorded, so nothing may stay on disk
        runtime.discard_unrecorded(inputs)
        raise
    for note in plan.notes:
        logger.info("job %s: %s", spec.job_id, note.replace(str(saved.path), shown))
    logger.info("job %s: upload %s queued (%s)", spec.job_id, saved.upload_id, spec.step_params.grid)
    note_jobs(request, [spec.job_id])
    return spec


@router.post(
    "/files",
    summary="Process an uploaded image and answer with the result (blocking)",
    response_class=Response,
    dependencies=[Depends(known_form_fields)],
    responses={
        **_UPLOAD_ERRORS,
        200: {
            "description": "the merged image; JSON metadata with its URL when the request accepts application/json",
            "content": {
                **{media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
                "application/json": {"schema": {"$ref": "#/components/schemas/JobView"}},
            },
        },
        307: {"description": "with OUTPUT_URL (a bucket): a redirect to a presigned GET URL of the image"},
        400: {"model": ErrorBody, "description": "an unknown form field, or more than one file part"},
        409: {"model": ErrorBody, "description": "the job failed or was cancelled"},
        504: {"model": ErrorBody, "description": "not finished within API_WAIT_TIMEOUT_S (the job keeps running)"},
    },
)
async def process_file(
    request: Request,
    file: FileField,
    grid: GridField = None,
    band_px: BandField = None,
    sigma: SigmaField = None,
    format: FormatField = None,
    quality: QualityField = None,
    first_frame: FirstFrameField = False,
    upscale: UpscaleForm = None,
) -> Response:
    """Split, seam-blur and merge the upload (or upscale it); wait for it (at most API_WAIT_TIMEOUT_S)."""
    spec = await run_in_threadpool(
        _submit_upload,
        request,
        file,
        grid=grid,
        band_px=band_px,
        sigma=sigma,
        output_format=format,
        quality=quality,
        first_frame=first_frame,
        upscale=upscale,
    )
    settings = settings_of(request)
    record = (await wait_for(request, runtime_of(request), [spec.job_id], timeout_s=settings.api_wait_timeout_s))[0]
    if record.state is not JobState.SUCCEEDED:
        reason = f"{record.error.step}: {record.error.message}" if record.error else record.state.value
        raise ApiError(409, "job_failed", f"job {record.job_id} {record.state.value}: {reason}", job_id=record.job_id)
    if "application/json" in request.headers.get("accept", ""):
        store = runtime_of(request).store
        tiles = await run_in_threadpool(store.tile_progress, record.job_id) if spec.upscale is not None else None
        return JSONResponse(job_view(request, record, tiles=tiles).model_dump(mode="json"))
    return await run_in_threadpool(image_response, request, record)


@router.post(
    "/files/async",
    summary="Queue an uploaded image for processing",
    status_code=202,
    response_model=JobAccepted,
    dependencies=[Depends(known_form_fields)],
    responses={
        **_UPLOAD_ERRORS,
        400: {"model": ErrorBody, "description": "an unknown form field, or more than one file part"},
    },
)
def process_file_async(
    request: Request,
    file: FileField,
    grid: GridField = None,
    band_px: BandField = None,
    sigma: SigmaField = None,
    format: FormatField = None,
    quality: QualityField = None,
    first_frame: FirstFrameField = False,
    upscale: UpscaleForm = None,
) -> JobAccepted:
    """Split, seam-blur and merge the upload (or upscale it) on the workers; answer at once with the
    job's status URL."""
    spec = _submit_upload(
        request,
        file,
        grid=grid,
        band_px=band_px,
        sigma=sigma,
        output_format=format,
        quality=quality,
        first_frame=first_frame,
        upscale=upscale,
    )
    return JobAccepted(
        job_id=spec.job_id,
        state=JobState.QUEUED,
        status_url=str(request.url_for("get_job", job_id=spec.job_id)),
    )
