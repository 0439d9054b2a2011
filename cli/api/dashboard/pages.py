"""The dashboard's pages (GET): overview, jobs, one job, gallery, batches and schedules, one batch,
submit; and the fragments its script swaps in live. Each reads through the same functions the
``/api`` routes answer with, and renders what they return."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cli.api.dashboard.render import render, require_session
from cli.api.dashboard.views import STATE_LABELS, generate_command, request_json, step_progress, timeline
from cli.api.deps import runtime_of, settings_of
from cli.api.errors import ApiError
from cli.api.routes_jobs import filter_of, get_batch, get_job, list_job_page
from cli.api.routes_status import get_job_sidecar
from cli.api.schemas import JobView
from cli.api.status import batch_items, build_overview, schedule_views
from pipeline.models import JobState

__all__ = ["JOBS_PER_PAGE", "router", "row_context"]

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_session)])

#: Rows of the jobs table per page, and thumbnails of the gallery per page.
JOBS_PER_PAGE = 50
GALLERY_PER_PAGE = 48


def row_context(job: JobView) -> dict[str, object]:
    done, total = step_progress(job)
    return {"job": job, "label": STATE_LABELS[job.state], "steps_done": done, "steps_total": total}


@router.get("/")
def overview_page(request: Request) -> Response:
    return render(request, "overview.html", {"o": build_overview(runtime_of(request), settings_of(request))})


@router.get("/fragments/overview")
def overview_fragment(request: Request) -> Response:
    return render(request, "_overview_body.html", {"o": build_overview(runtime_of(request), settings_of(request))})


@router.get("/jobs")
def jobs_page(
    request: Request,
    state: Annotated[JobState | None, Query()] = None,
    batch: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    where = filter_of(request, state, batch or None, q or None)
    page = list_job_page(request, where, JOBS_PER_PAGE, offset)
    return render(
        request,
        "jobs.html",
        {
            "rows": [row_context(job) for job in page.jobs],
            "states": list(JobState),
            "state": state.value if state else "",
            "batch": where.batch_id or "",
            "q": q or "",
            "offset": offset,
            "next_offset": page.next_offset if page.jobs else None,
            "truncated": page.truncated,
            "live_batch": where.batch_id or "",
        },
    )


@router.get("/fragments/jobs/{job_id}/row")
def job_row_fragment(request: Request, job_id: str) -> Response:
    return render(request, "_job_row.html", row_context(get_job(request, job_id)))


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    job = get_job(request, job_id)
    sidecar = None
    if job.state is JobState.SUCCEEDED:
        try:
            sidecar = get_job_sidecar(request, job.job_id)
        except ApiError:  # gone or replaced: the page says so where the image would be
            sidecar = None
    infotext = (sidecar or {}).get("infotext") or (job.sd_info.infotext if job.sd_info else None)
    return render(
        request,
        "job.html",
        {
            **row_context(job),
            "timeline": timeline(job),
            "sidecar": sidecar,
            "infotext": infotext,
            "request_json": request_json(job),
            "command": generate_command(job),
            "retryable": job.state in (JobState.FAILED, JobState.CANCELLED),
            "cancellable": not job.state.terminal,
        },
    )


def _day_start(day: str | None) -> float | None:
    if not day:
        return None
    try:
        return dt.datetime.fromisoformat(day).astimezone().timestamp()
    except ValueError:
        raise ApiError(422, "invalid_request", f"date {day!r} is not YYYY-MM-DD", hint="pick a date") from None


@router.get("/gallery")
def gallery_page(
    request: Request,
    batch: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    day: Annotated[str | None, Query(max_length=10, description="YYYY-MM-DD (local time)")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    since = _day_start(day)
    where = filter_of(
        request, JobState.SUCCEEDED, batch or None, model=model or None, since=since,
        until=since + 86400 if since is not None else None,
    )  # fmt: skip
    page = list_job_page(request, where, GALLERY_PER_PAGE, offset)
    return render(
        request,
        "gallery.html",
        {
            "jobs": page.jobs,
            "batch": where.batch_id or "",
            "model": model or "",
            "day": day or "",
            "offset": offset,
            "next_offset": page.next_offset if page.jobs else None,
            "truncated": page.truncated,
        },
    )


@router.get("/batches")
def batches_page(request: Request) -> Response:
    runtime = runtime_of(request)
    return render(
        request,
        "batches.html",
        {"batches": batch_items(runtime), "schedules": schedule_views(runtime), "now": time.time()},
    )


@router.get("/batches/{batch_id}")
def batch_page(request: Request, batch_id: str) -> Response:
    manifest = get_batch(request, batch_id)
    where = filter_of(request, None, manifest.batch_id)
    page = list_job_page(request, where, JOBS_PER_PAGE, 0)
    return render(
        request,
        "batch.html",
        {"manifest": manifest, "rows": [row_context(job) for job in page.jobs], "live_batch": manifest.batch_id},
    )


@router.get("/submit")
def submit_page(request: Request) -> Response:
    settings = settings_of(request)
    recent = list_job_page(request, filter_of(request, None, None), 10, 0)
    return render(
        request,
        "submit.html",
        {
            "defaults": settings,
            "rows": [row_context(job) for job in recent.jobs],
            "form": {},
            "error": None,
        },
    )
