"""The state of the system over HTTP: overview, SD servers and what they offer, recent batches,
schedules, and each job's thumbnail and sidecar (what ``sdpipe backends``, ``schedule list`` and the
dashboard show)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cli.api.auth import require_token
from cli.api.deps import runtime_of, settings_of
from cli.api.errors import ERROR_RESPONSES, ErrorBody
from cli.api.status import (
    BatchItem,
    CatalogView,
    Overview,
    ScheduleView,
    backend_rows,
    batch_items,
    build_overview,
    catalog_view,
    schedule_views,
    sidecar_for_client,
    thumbnail_for,
)

__all__ = ["router"]

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a short id that several jobs start with"},
    404: {"model": ErrorBody, "description": "no such job, or its file is gone"},
    409: {"model": ErrorBody, "description": "the job has not succeeded"},
}


@router.get("/overview", tags=["status"], response_model=Overview)
def overview(request: Request) -> Overview:
    """Jobs per state, queue depths, steps running, the last hour's throughput and failures, SD servers."""
    return build_overview(runtime_of(request), settings_of(request))


@router.get("/backends", tags=["status"])
def backends(request: Request) -> list[dict[str, Any]]:
    """Each SD server: health, slots in use, jobs done, failures, mean seconds per image, checkpoint
    (as ``sdpipe backends --json``)."""
    return backend_rows(runtime_of(request), settings_of(request), now=time.time())


@router.get("/catalog", tags=["status"], response_model=CatalogView)
def catalog(request: Request) -> CatalogView:
    """The samplers, schedulers and checkpoints of the (first) SD server: the names a request may use
    (each list null when the server does not serve it or does not answer; cached for a minute)."""
    return catalog_view(settings_of(request))


@router.get("/batches", tags=["batches"], response_model=list[BatchItem])
def list_batches(
    request: Request, limit: Annotated[int, Query(ge=1, le=200, description="at most this many")] = 20
) -> list[BatchItem]:
    """The batches of the most recent jobs, newest first, with their progress."""
    return batch_items(runtime_of(request), limit=limit)


@router.get("/schedules", tags=["schedules"], response_model=list[ScheduleView])
def list_schedules(request: Request) -> list[ScheduleView]:
    """Every schedule with its next run and its last runs."""
    return schedule_views(runtime_of(request))


@router.get(
    "/jobs/{job_id}/thumbnail",
    tags=["jobs"],
    response_class=Response,
    responses={200: {"description": "a WebP thumbnail", "content": {"image/webp": {}}}, **_JOB_ERRORS},
)
async def get_job_thumbnail(request: Request, job_id: str) -> Response:
    """A WebP thumbnail of the job's image (made once, then served from the cache)."""
    store = runtime_of(request).store

    def find() -> Response:
        record = store.get(store.resolve_id(job_id))
        data, etag = thumbnail_for(settings_of(request), record)
        headers = {"Cache-Control": "private, max-age=86400", "ETag": f'"{etag}"'}
        return Response(data, media_type="image/webp", headers=headers)

    return await run_in_threadpool(find)


@router.get("/jobs/{job_id}/sidecar", tags=["jobs"], responses=_JOB_ERRORS)
def get_job_sidecar(request: Request, job_id: str) -> dict[str, Any]:
    """The job's JSON sidecar (parameters, seeds, model, timings, infotext), server paths cut to names."""
    store = runtime_of(request).store
    return sidecar_for_client(store.get(store.resolve_id(job_id)), settings_of(request))
