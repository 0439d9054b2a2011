"""Generation, batches and jobs: ``sdpipe generate``/``batch``/``jobs``/``status``/``retry``/``cancel`` over HTTP."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from actors import Runtime
from cli.api.access_log import note_jobs
from cli.api.auth import require_token
from cli.api.deps import MEDIA_TYPES, ensure_output_dir, image_response, runtime_of, settings_of, wait_for
from cli.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from cli.api.schemas import (
    BatchAccepted,
    BatchBody,
    BatchView,
    CancelResult,
    GenerateAccepted,
    GenerateBody,
    JobList,
    JobsDone,
    JobView,
    RetryResult,
    job_view,
)
from pipeline.batches.expansion import plan_templated, split_template_keys
from pipeline.batches.files import BatchFileError, PlannedRow, read_batch_file
from pipeline.batches.manifests import batch_records, build_manifest, retry_step
from pipeline.batches.rows import check_request
from pipeline.errors import InputError, JobNotFound
from pipeline.jobs.control import body_hash
from pipeline.jobs.planning import build_step_params, new_id
from pipeline.jobs.queries import JobFilter, find_jobs
from pipeline.models import PRIORITIES, JobRecord, JobSpec, JobState
from pipeline.sd.catalog import open_catalog
from pipeline.settings import Settings
from pipeline.store import DEFAULT_LIST_LIMIT
from pipeline.webhooks.urls import check_webhook_url, host_allowed

__all__ = ["MAX_LIST_LIMIT", "filter_of", "list_job_page", "plan_batch_rows", "router", "submit_generate"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

#: Most jobs one ``GET /api/jobs`` returns.
MAX_LIST_LIMIT = 1000
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a short id that several jobs (or batches) start with"},
    404: {"model": ErrorBody, "description": "no such job or batch"},
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "the job is not in a state for this"}
}
_TIMEOUT: dict[int | str, dict[str, Any]] = {
    504: {"model": ErrorBody, "description": "not finished within API_WAIT_TIMEOUT_S (the jobs keep running)"}
}
_IDEMPOTENCY: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorBody,
        "description": "the Idempotency-Key was used with another body, or its first request is still being submitted",
    }
}


@router.post(
    "/generate",
    tags=["generate"],
    summary="Render prompts on the SD server, then split, seam-blur and merge",
    status_code=202,
    response_model=GenerateAccepted,
    responses={200: {"model": JobsDone, "description": "with ?wait=true: every job ended"}, **_TIMEOUT, **_IDEMPOTENCY},
)
async def generate(
    request: Request,
    body: GenerateBody,
    wait: Annotated[bool, Query(description="block until every job ended (at most API_WAIT_TIMEOUT_S)")] = False,
    idempotency_key: Annotated[
        str | None,
        Header(description="the same key with the same body gives the first jobs back; with another body: 409"),
    ] = None,
) -> Response:
    """Queue ``count`` generation jobs (one batch), as ``sdpipe generate`` does."""
    batch_id, job_ids = await run_in_threadpool(submit_generate, request, body, idempotency_key)
    if wait:
        timeout_s = settings_of(request).api_wait_timeout_s
        records = await wait_for(request, runtime_of(request), job_ids, timeout_s=timeout_s, batch_id=batch_id)
        done = JobsDone(batch_id=batch_id, jobs=await run_in_threadpool(job_views, request, records))
        return JSONResponse(done.model_dump(mode="json"))
    accepted = GenerateAccepted(
        batch_id=batch_id,
        job_ids=job_ids,
        status_urls=[str(request.url_for("get_job", job_id=job_id)) for job_id in job_ids],
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)


def submit_generate(request: Request, body: GenerateBody, idempotency_key: str | None = None) -> tuple[str, list[str]]:
    """Plan and submit the jobs of a ``POST /api/generate`` (blocking: run it in the thread pool)."""
    settings = settings_of(request)
    runtime = runtime_of(request)
    webhook = allowed_webhook(settings, body.webhook)
    batch_id, claim = new_id(), None
    if idempotency_key is not None:
        digest = body_hash(body.model_dump(mode="json"))
        batch_id, claim = runtime.idempotency.claim("generate", idempotency_key, digest, batch_id)
        if claim is None:
            return batch_id, _original_jobs(runtime, batch_id)
    try:
        job_ids = _plan_and_submit(request, body, batch_id, webhook)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    return batch_id, job_ids


def allowed_webhook(settings: Settings, url: str | None) -> str | None:
    """A webhook given over the API, if http(s) and on a host of ``WEBHOOK_ALLOW_HOSTS``.

    Raises:
        InputError: another scheme, or a host not allowed (422).
    """
    if url is None:
        return None
    checked = check_webhook_url(url)
    if not host_allowed(checked, settings.webhook_allow_hosts):
        raise InputError(
            "webhook: its host is not in WEBHOOK_ALLOW_HOSTS (webhooks go only to hosts the operator lists)",
            field="webhook",
            expected="a URL on a host in WEBHOOK_ALLOW_HOSTS",
        )
    return checked


#: How long a repeated request waits for the first one (same key, still submitting) to record its batch.
_REPEAT_WAIT_S = 10.0


def _original_jobs(runtime: Runtime, batch_id: str) -> list[str]:
    """The jobs of the batch a first request with the same idempotency key created (it may still be submitting)."""
    deadline = time.monotonic() + _REPEAT_WAIT_S
    while True:
        try:
            return runtime.store.get_batch(batch_id).job_ids
        except JobNotFound:
            if time.monotonic() >= deadline:
                raise ApiError(
                    409,
                    "idempotency_in_progress",
                    "a request with this idempotency key is still being submitted",
                    hint="try again in a moment",
                ) from None
            time.sleep(0.2)


def _plan_and_submit(request: Request, body: GenerateBody, batch_id: str, webhook: str | None) -> list[str]:
    settings = settings_of(request)
    runtime = runtime_of(request)
    step_params = build_step_params(settings, grid=body.grid, band_px=body.band_px, sigma=body.sigma)
    fields = body.model_dump(
        exclude_none=True,
        exclude={
            "count",
            "grid",
            "band_px",
            "sigma",
            "format",
            "quality",
            "name",
            "name_template",
            "overwrite",
            "webhook",
            "priority",
        },
    )
    options, fields = split_template_keys(fields)  # template, combinatorial, template_seed, sweep...
    with open_catalog(settings) as checker:
        specs = plan_templated(
            settings,
            check_request(fields, known_fields=checker.known_fields()),
            options,
            step_params,
            count=body.count,
            checker=checker,
            output_format=body.format,
            quality=body.quality,
            name=body.name,
            name_template=body.name_template,
            overwrite=body.overwrite,
            batch_id=batch_id,
            now=time.time(),
        )
    specs = _with_delivery(specs, body.priority, webhook)
    ensure_output_dir(settings)
    runtime.submit(specs, as_batch=True)
    job_ids = [spec.job_id for spec in specs]
    logger.info("batch %s: %d generation job(s) queued", batch_id, len(job_ids))
    note_jobs(request, job_ids)
    return job_ids


def _with_delivery(specs: list[JobSpec], priority: str | None, webhook: str | None) -> list[JobSpec]:
    if priority is not None and priority not in PRIORITIES:
        raise InputError(f"priority: must be high, normal or low (got {priority!r})", field="priority")
    update: dict[str, Any] = {}
    if priority is not None:
        update["priority"] = priority
    if webhook is not None:
        update["webhook_url"] = webhook
    return [spec.model_copy(update=update) for spec in specs] if update else specs


def plan_batch_rows(settings: Settings, body: BatchBody, *, batch_id: str, now: float) -> list[PlannedRow]:
    """Check and plan a JSON batch exactly as the rows of a ``.jsonl`` batch file (row N is line N).

    Raises:
        BatchFileError: every problem of every row (nothing is planned).
        InputError: a bad value in ``defaults``.
    """
    with tempfile.TemporaryDirectory(prefix="sdpipe-batch-") as folder:
        path = Path(folder) / "rows.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in body.rows:
                handle.write(json.dumps({"prompt": row} if isinstance(row, str) else row) + "\n")
        try:
            with open_catalog(settings) as checker:
                return read_batch_file(
                    path,
                    settings,
                    defaults=body.defaults,
                    batch_id=batch_id,
                    now=now,
                    name_template=body.name_template,
                    overwrite=body.overwrite,
                    checker=checker,
                )
        except BatchFileError as exc:
            raise BatchFileError("the batch", exc.problems) from None


@router.post(
    "/batches",
    tags=["batches"],
    summary="Queue a batch of rows (as in batch files)",
    status_code=202,
    response_model=BatchAccepted,
    responses={422: {"model": ErrorBody, "description": "bad rows: error.problems lists every one"}, **_IDEMPOTENCY},
)
def create_batch(
    request: Request,
    body: BatchBody,
    idempotency_key: Annotated[
        str | None,
        Header(description="the same key with the same body gives the first batch back; with another body: 409"),
    ] = None,
) -> BatchAccepted:
    """Validate every row (nothing is queued when one is bad), then queue the batch."""
    settings = settings_of(request)
    runtime = runtime_of(request)
    now = time.time()
    batch_id, claim = new_id(), None
    webhook = allowed_webhook(settings, body.webhook)
    if idempotency_key is not None:
        digest = body_hash(body.model_dump(mode="json"))
        batch_id, claim = runtime.idempotency.claim("batch", idempotency_key, digest, batch_id)
        if claim is None:
            job_ids = _original_jobs(runtime, batch_id)
            return BatchAccepted(
                batch_id=batch_id,
                jobs=len(job_ids),
                job_ids=job_ids,
                status_url=str(request.url_for("get_batch", batch_id=batch_id)),
            )
    try:
        if body.priority is not None:
            body = body.model_copy(update={"defaults": {**body.defaults, "priority": body.priority}})
        rows = plan_batch_rows(settings, body, batch_id=batch_id, now=now)
        if webhook is not None:
            rows = [replace(row, specs=_with_delivery(row.specs, None, webhook)) for row in rows]
        ensure_output_dir(settings)
        plan = runtime.submit_rows(rows, batch_id=batch_id, source=None, now=now)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    job_ids = [spec.job_id for spec in plan.new_specs]
    logger.info("batch %s: %d row(s), %d job(s) queued", batch_id, len(rows), len(job_ids))
    note_jobs(request, job_ids)
    return BatchAccepted(
        batch_id=batch_id,
        jobs=len(job_ids),
        job_ids=job_ids,
        status_url=str(request.url_for("get_batch", batch_id=batch_id)),
    )


@router.get("/batches/{batch_id}", tags=["batches"], response_model=BatchView, responses=_NOT_FOUND)
def get_batch(request: Request, batch_id: str) -> BatchView:
    """A batch (id or unique prefix) and its manifest: rows, their jobs, states, result URLs and errors."""
    store = runtime_of(request).store
    batch = store.get_batch(batch_id)
    records = batch_records(store, batch)
    return BatchView.model_validate(_for_client(request, build_manifest(batch, records), records))


def _for_client(request: Request, manifest: dict[str, Any], records: dict[str, JobRecord]) -> dict[str, Any]:
    """The manifest without server paths (as :func:`job_view`): each output becomes its job's
    ``result_url``, and a source file (a batch file, a ``process`` input) keeps its name only."""
    if manifest.get("source"):
        manifest["source"] = Path(str(manifest["source"])).name
    for row in manifest["rows"]:
        if isinstance(row["params"].get("source"), str):
            row["params"] = {**row["params"], "source": Path(row["params"]["source"]).name}
        for job in row["jobs"]:
            job.pop("sidecar", None)
            if job.pop("output", None) is not None and job["job_id"] in records:
                job["result_url"] = str(request.url_for("get_job_result", job_id=job["job_id"]))
    return manifest


@router.get("/jobs", tags=["jobs"], response_model=JobList, responses=_NOT_FOUND)
def list_jobs(
    request: Request,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    batch: Annotated[str | None, Query(description="only jobs of this batch (id or unique prefix)")] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="text in the prompt, negative prompt, job id or file name")
    ] = None,
    model: Annotated[str | None, Query(max_length=200, description="text in the checkpoint's name")] = None,
    since: Annotated[float | None, Query(description="created at or after (epoch seconds)")] = None,
    until: Annotated[float | None, Query(description="created before (epoch seconds)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="at most this many")] = DEFAULT_LIST_LIMIT,
    offset: Annotated[int, Query(ge=0, description="skip this many first (the next page: next_offset)")] = 0,
) -> JobList:
    """Jobs, newest first, a page at a time: ``next_offset`` is set while a page has jobs, and an
    empty page ends the listing. (A page may hold fewer than ``limit`` jobs while more follow: a job
    that changes state between the index read and its own is left out.)

    New jobs enter at the front and shift the pages of an unfiltered listing, and jobs changing
    state shift those of a state filter; a batch's listing is stable once the batch is submitted.

    ``q``, ``model``, ``since`` and ``until`` are matched on the records (state and batch are
    indexes): each request reads at most a few thousand; ``truncated`` then says older matches may
    follow from ``next_offset``.
    """
    return list_job_page(request, filter_of(request, state, batch, q, model, since, until), limit, offset)


def filter_of(
    request: Request,
    state: JobState | None,
    batch: str | None,
    q: str | None = None,
    model: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> JobFilter:
    """The filter of a listing (``batch``: an id or a unique prefix, resolved here)."""
    batch_id = runtime_of(request).store.get_batch(batch).batch_id if batch else None
    return JobFilter(state=state, batch_id=batch_id, text=q or None, model=model or None, since=since, until=until)


def list_job_page(request: Request, where: JobFilter, limit: int, offset: int) -> JobList:
    """A page of ``GET /api/jobs`` (the dashboard's job table and gallery read the same)."""
    page = find_jobs(runtime_of(request).store, where, limit=limit, offset=offset)
    next_offset = page.next_offset
    if not where.scans and page.jobs:
        next_offset = offset + limit  # as before: set while a page has jobs
    return JobList(jobs=job_views(request, page.jobs), next_offset=next_offset, truncated=page.truncated)


def job_views(request: Request, records: Sequence[JobRecord]) -> list[JobView]:
    """The views of ``records``, an upscale job's with its renders done/total (a store read each, as
    ``GET /api/jobs/{id}`` shows it). Blocking: call it in the thread pool."""
    store = runtime_of(request).store
    return [
        job_view(request, record, tiles=store.tile_progress(record.job_id) if record.spec.upscale else None)
        for record in records
    ]


@router.get("/jobs/{job_id}", tags=["jobs"], response_model=JobView, responses=_NOT_FOUND)
def get_job(request: Request, job_id: str) -> JobView:
    """One job (id or unique prefix): state, steps with attempts and timings, last error, result."""
    runtime = runtime_of(request)
    store = runtime.store
    record = store.get(store.resolve_id(job_id))
    tiles = store.tile_progress(record.job_id) if record.spec.upscale is not None else None
    view = job_view(request, record, tiles=tiles)
    view.paused = not record.state.terminal and runtime.control.is_paused(record.batch_id)
    view.webhooks = [delivery.summary() for delivery in runtime.deliveries.of_job(record.job_id)]
    return view


@router.get(
    "/jobs/{job_id}/result",
    tags=["jobs"],
    response_class=Response,
    responses={
        200: {
            "description": "the output image, with a strong ETag",
            "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
        },
        304: {"description": "not modified (If-None-Match matched the ETag)"},
        307: {"description": "with OUTPUT_URL (a bucket): a redirect to a presigned GET URL of the image"},
        **_NOT_FOUND,
        409: {"model": ErrorBody, "description": "the job has not succeeded"},
    },
)
def get_job_result(request: Request, job_id: str) -> Response:
    """The job's image (only the file its record names)."""
    store = runtime_of(request).store
    return image_response(request, store.get(store.resolve_id(job_id)))


@router.post("/jobs/{job_id}/retry", tags=["jobs"], response_model=RetryResult, responses={**_NOT_FOUND, **_CONFLICT})
def retry_job(request: Request, job_id: str) -> RetryResult:
    """Requeue a failed or cancelled job from the step that failed (a saved SD image is not requested again)."""
    runtime = runtime_of(request)
    record = runtime.store.get(runtime.store.resolve_id(job_id))
    requeued = runtime.retry([record]) if record.state in (JobState.FAILED, JobState.CANCELLED) else []
    if not requeued:
        raise ApiError(
            409,
            "not_retryable",
            f"job {record.job_id} is {record.state.value}: only failed or cancelled jobs are retried",
            job_id=record.job_id,
        )
    fresh = requeued[0]
    return RetryResult(job_id=fresh.job_id, state=fresh.state, from_step=retry_step(fresh))


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], response_model=CancelResult, responses=_NOT_FOUND)
def cancel_job(request: Request, job_id: str) -> CancelResult:
    """Stop a queued job from running (a running SD call finishes; the job then stops, cancelled)."""
    runtime = runtime_of(request)
    full_id = runtime.store.resolve_id(job_id)
    cancelled = runtime.cancel([full_id]) > 0
    return CancelResult(job_id=full_id, cancelled=cancelled, state=runtime.store.get(full_id).state)
