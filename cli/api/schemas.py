"""Request and response bodies of the HTTP API (documented in the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from pipeline.batches.rows import JobRow
from pipeline.models import ErrorInfo, GenerationParams, JobRecord, JobState, Priority, SDInfo, StepParams, StepRecord
from pipeline.settings import OutputFormat
from pipeline.storage.base import is_s3_url
from pipeline.upscale.params import UpscaleParams

__all__ = [
    "MAX_BATCH_ROWS",
    "BatchAccepted",
    "BatchBody",
    "BatchView",
    "CancelResult",
    "GenerateAccepted",
    "GenerateBody",
    "Health",
    "JobAccepted",
    "JobList",
    "JobView",
    "JobsDone",
    "Readiness",
    "RetryResult",
    "job_view",
]

NAME_TEMPLATE_HELP = (
    "output name: {date} {time} {job} {batch} {seed} {model} {prompt} {row}, / for folders (default OUTPUT_NAME)"
)
OVERWRITE_HELP = "replace a file of the same name instead of adding a -0001 counter"
WEBHOOK_HELP = (
    "receives job.succeeded/failed/cancelled and batch.completed, signed (Standard Webhooks); its host must be "
    "in WEBHOOK_ALLOW_HOSTS"
)

#: Most rows one ``POST /api/batches`` may carry (bigger batches: several requests, or a batch file).
MAX_BATCH_ROWS = 10_000


class GenerateBody(JobRow):
    """``POST /api/generate``: the keys of a batch row (sdpipe's, and any A1111 txt2img field by its A1111
    name, sent as written), plus ``count``. Null or absent: the server's setting."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)

    prompt: str  # required here
    count: int = Field(1, description="number of jobs, one image each")
    format: OutputFormat | None = None
    quality: int | None = Field(None, description="JPEG/WebP quality, 1..100 (default OUTPUT_QUALITY)")
    name_template: str | None = Field(None, description=NAME_TEMPLATE_HELP)
    overwrite: bool = Field(False, description=OVERWRITE_HELP)
    webhook: str | None = Field(None, description=WEBHOOK_HELP)


#: A batch row: typed in the OpenAPI schema as a :class:`JobRow`, checked as a ``.jsonl`` line is.
RowObject = Annotated[dict[str, Any], WithJsonSchema(JobRow.model_json_schema())]


class BatchBody(BaseModel):
    """``POST /api/batches``: rows as in a batch file (an object per row, or a plain prompt), plus defaults.

    Rows are checked exactly like the rows of a ``.jsonl`` batch file; ``line`` in a problem is the
    row's position, from 1.
    """

    model_config = ConfigDict(extra="forbid")

    rows: Annotated[list[RowObject | str], Field(min_length=1, max_length=MAX_BATCH_ROWS)]
    defaults: RowObject = Field(default_factory=dict, description="values for every row (a row overrides)")
    name_template: str | None = Field(None, description=NAME_TEMPLATE_HELP + " For rows without a name.")
    overwrite: bool = Field(False, description=OVERWRITE_HELP)
    webhook: str | None = Field(None, description=WEBHOOK_HELP)
    priority: Priority | None = Field(None, description="every row's priority unless the row sets its own")


class JobView(BaseModel):
    """A job as the API shows it."""

    job_id: str
    batch_id: str | None
    state: JobState
    kind: Literal["generate", "process", "upscale"]
    created_at: float
    updated_at: float
    generation: GenerationParams | None
    step_params: StepParams
    upscale: UpscaleParams | None = None
    #: An upscale job's renders (tiles, then seam-fix bands): ``{"done": N, "total": M}``.
    tiles: dict[str, int] | None = None
    output_format: OutputFormat
    steps: dict[str, StepRecord]
    error: ErrorInfo | None
    #: On success: ``width``, ``height``, ``bytes``, ``sha256`` of the output image.
    result: dict[str, Any] | None
    sd_info: SDInfo | None
    status_url: str
    result_url: str | None
    priority: Priority = "normal"
    #: Its queue or batch is paused: its SD call waits for a resume.
    paused: bool = False
    #: Each webhook delivery of the job: event, receiver (no query or credentials), state, attempts,
    #: last status or error, next try.
    webhooks: list[dict[str, Any]] = Field(default_factory=list)


class JobAccepted(BaseModel):
    """A queued job."""

    job_id: str
    state: JobState
    status_url: str


class GenerateAccepted(BaseModel):
    """Queued generation jobs (one batch)."""

    batch_id: str
    job_ids: list[str]
    status_urls: list[str]


class JobsDone(BaseModel):
    """Jobs waited for until each ended (``?wait=true``)."""

    batch_id: str | None
    jobs: list[JobView]


class JobList(BaseModel):
    """Jobs, newest first."""

    jobs: list[JobView]
    #: The ``offset`` of the next page, while this page had jobs (an empty page ends the listing).
    next_offset: int | None = None
    #: A text, model or date filter read its most records: older matches may follow from ``next_offset``.
    truncated: bool = False


class BatchAccepted(BaseModel):
    """A queued batch."""

    batch_id: str
    jobs: int
    job_ids: list[str]
    status_url: str


class BatchView(BaseModel):
    """A batch's manifest: every row with its parameters and its jobs' states, outputs or errors."""

    model_config = ConfigDict(extra="allow")

    batch_id: str
    source: str | None
    schedule: str | None
    created_at: float
    written_at: float
    counts: dict[str, int]
    jobs: int
    rows: list[dict[str, Any]]


class RetryResult(BaseModel):
    """A job requeued from the step that failed."""

    job_id: str
    state: JobState
    from_step: str


class CancelResult(BaseModel):
    """Whether a cancel stopped the job (False: it had already ended)."""

    job_id: str
    cancelled: bool
    state: JobState


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """The status store and an SD server answer."""

    status: Literal["ready"]
    store: str
    sd: str


def job_view(request: Request, record: JobRecord, *, tiles: tuple[int, int] | None = None) -> JobView:
    """``record`` for a client: server paths left out (``s3://`` locations of OUTPUT_URL stay: they name
    no server file), links to its status and its image added."""
    spec = record.spec
    result = None
    if record.result is not None:
        kept = {name for name in ("image", "sidecar") if is_s3_url(getattr(record.result, name))}
        result = record.result.model_dump(exclude={"image", "sidecar"} - kept, exclude_none=True)
    succeeded = record.state is JobState.SUCCEEDED and record.result is not None
    return JobView(
        job_id=record.job_id,
        batch_id=record.batch_id,
        state=record.state,
        kind=spec.kind,
        created_at=record.created_at,
        updated_at=record.updated_at,
        generation=spec.generation,
        step_params=spec.step_params,
        upscale=spec.upscale,
        tiles={"done": tiles[0], "total": tiles[1]} if tiles else None,
        output_format=spec.output_format,
        steps=record.steps,
        error=record.error,
        result=result,
        sd_info=record.sd_info,
        status_url=str(request.url_for("get_job", job_id=record.job_id)),
        result_url=str(request.url_for("get_job_result", job_id=record.job_id)) if succeeded else None,
        priority=spec.priority,
    )
