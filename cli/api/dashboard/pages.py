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
from cli.api.schemas import JobList, JobView
from cli.api.status import batch_items, build_overview, catalog_view, queue_view, schedule_views
from pipeline.errors import PipelineError
from pipeline.jobs.queries import JobFilter
from pipeline.models import PRIORITIES, JobState

__all__ = ["JOBS_PER_PAGE", "events_after", "router", "row_context", "submit_context"]

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_session)])

#: Rows of the jobs table per page, and thumbnails of the gallery per page.
JOBS_PER_PAGE = 50
GALLERY_PER_PAGE = 48


def row_context(job: JobView) -> dict[str, object]:
    done, total = step_progress(job)
    return {"job": job, "label": STATE_LABELS[job.state], "steps_done": done, "steps_total": total}


def _older(page: JobList, where: JobFilter, limit: int) -> int | None:
    """Where the "Older" link starts, if older jobs may follow: a full page of an index listing, or
    a scan that stopped before the end (never a link to an empty page)."""
    if not page.jobs or (not where.scans and len(page.jobs) < limit):
        return None
    return page.next_offset


def events_after(request: Request) -> str:
    """The id of the newest event now, rendered into a live page: its stream starts there (``after``), so
    nothing that happens between this render and the stream's connection is missed, and nothing older
    is replayed. Empty (the stream's own default) when the log does not answer."""
    try:
        return runtime_of(request).events.log.latest_id()
    except PipelineError:
        return ""


@router.get("/")
def overview_page(request: Request) -> Response:
    overview = build_overview(runtime_of(request), settings_of(request))
    return render(request, "overview.html", {"o": overview, "events_after": events_after(request)})


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
            "next_offset": _older(page, where, JOBS_PER_PAGE),
            "truncated": page.truncated,
            "live_batch": where.batch_id or "",
            "events_after": events_after(request),
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
            "events_after": events_after(request),
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
            "next_offset": _older(page, where, GALLERY_PER_PAGE),
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
    pause = queue_view(runtime_of(request))
    ended = sum(n for state, n in manifest.counts.items() if JobState(state).terminal)
    return render(
        request,
        "batch.html",
        {
            "manifest": manifest,
            "ended": ended,
            "rows": [row_context(job) for job in page.jobs],
            "live_batch": manifest.batch_id,
            "batch_paused": manifest.batch_id in pause.paused_batches,
            "queue_paused": pause.paused,
            "events_after": events_after(request),
        },
    )


@router.get("/submit")
def submit_page(request: Request) -> Response:
    return render(request, "submit.html", submit_context(request, form={}, error=None))


def submit_context(request: Request, *, form: dict[str, str], error: dict[str, str | None] | None) -> dict[str, object]:
    """What the submit page shows: the form (as filled in), the server's samplers, schedulers and
    checkpoints for its choices (free text where the server does not list them), the newest jobs."""
    recent = list_job_page(request, filter_of(request, None, None), 10, 0)
    return {
        "defaults": settings_of(request),
        "catalog": catalog_view(settings_of(request)),
        "priorities": PRIORITIES,
        "rows": [row_context(job) for job in recent.jobs],
        "form": form,
        "error": error,
        "events_after": events_after(request),
    }
