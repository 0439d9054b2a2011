"""What the overview, queue, catalog, backends, batches and schedules routes answer, built once for the
JSON API and the dashboard's pages alike (the dashboard renders these same objects)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from actors import Runtime, queue_depths
from cli.api.deps import succeeded_image
from cli.api.errors import ApiError
from pipeline.batches.schedules import next_fire_time
from pipeline.errors import ConfigError, PipelineError
from pipeline.jobs.files import read_json
from pipeline.jobs.queries import BatchSummary, queued_by_priority, recent_batches, throughput
from pipeline.jobs.thumbnails import cached_thumbnail, thumbnail_key
from pipeline.models import JobRecord, JobState, ScheduleRecord
from pipeline.sd.catalog import open_catalog
from pipeline.sd.pool.report import backend_row
from pipeline.settings import Settings
from pipeline.storage.base import Blob, blob_at, open_storage

__all__ = [
    "BatchItem",
    "CatalogView",
    "Overview",
    "QueueDepthView",
    "QueueView",
    "ScheduleView",
    "backend_rows",
    "batch_items",
    "build_overview",
    "catalog_view",
    "queue_view",
    "schedule_views",
    "sidecar_for_client",
    "thumbnail_for",
]

#: Steps in the order a job runs them, each with the state a job is in meanwhile.
RUNNING_STATES = (JobState.GENERATING, JobState.SPLITTING, JobState.BLURRING, JobState.MERGING)


#: Upcoming runs of each schedule that the schedules route lists.
NEXT_RUNS = 3


class QueueDepthView(BaseModel):
    """One Dramatiq queue (``sd``: SD calls; ``images``: split, seam blur, merge)."""

    queue: str
    waiting: int
    delayed: int
    #: Messages a worker holds (prefetched or running); None in embedded mode.
    held: int | None


class QueueView(BaseModel):
    """Whether the queue, and which batches, are paused."""

    paused: bool
    paused_batches: list[str]


class FailureView(BaseModel):
    """A job that failed in the window: where and why."""

    job_id: str
    batch_id: str | None
    at: float
    step: str | None
    message: str | None


class Overview(BaseModel):
    """The state of the whole system at ``now``: what ``GET /api/overview`` answers."""

    now: float
    mode: str
    workers_alive: int
    counts: dict[str, int]
    queues: list[QueueDepthView]
    #: Queued jobs per priority (``high``, ``normal``, ``low``): the order their SD calls start in.
    queued_by_priority: dict[str, int]
    #: More jobs are queued than were counted: ``queued_by_priority`` counts the newest ones.
    queued_by_priority_truncated: bool
    #: Paused queue and batches (``POST /api/pause``): no new SD call starts for them.
    pause: QueueView
    #: Jobs now in each step (``generate``, ``split``, ``seam_blur``, ``merge``).
    running: dict[str, int]
    window_s: float
    bucket_s: float
    succeeded_per_bucket: list[int]
    failed_per_bucket: list[int]
    succeeded_last_hour: int
    failed_last_hour: int
    mean_job_s: float | None
    #: The scan stopped at its limit: the hour's counts are a lower bound.
    counts_truncated: bool
    recent_failures: list[FailureView]
    backends: list[dict[str, Any]]


class BatchItem(BaseModel):
    """A recent batch and its progress."""

    batch_id: str
    created_at: float
    counts: dict[str, int]
    total: int
    ended: int
    schedule: str | None = None
    source: str | None = None


class RunView(BaseModel):
    fire_time: float
    at: float
    status: str
    reason: str | None
    batch_id: str | None
    manual: bool


class ScheduleView(BaseModel):
    """A schedule, its next run and its last runs (newest first). ``file``: the file's name only."""

    name: str
    cron: str
    timezone: str
    file: str
    allow_overlap: bool
    next_fire_time: float | None
    #: The next few runs, soonest first (``next_fire_time`` is the first).
    next_runs: list[float]
    runs: list[RunView]


class CatalogView(BaseModel):
    """What the (first) SD server offers; a list is null when the server does not serve it or does not answer."""

    samplers: list[str] | None
    schedulers: list[str] | None
    models: list[str] | None


def backend_rows(runtime: Runtime, settings: Settings, *, now: float) -> list[dict[str, Any]]:
    """Each SD server from the pool state the workers share (Redis), or, embedded, this process's
    own pool: the one its in-process workers use, so it is live either way."""
    pool = runtime.context.pool
    statuses = {status.key: status for status in pool.status()}
    return [backend_row(backend, statuses.get(backend.key), {}, now=now) for backend in pool.backends]


def build_overview(runtime: Runtime, settings: Settings, *, now: float | None = None) -> Overview:
    """Counts, queues, steps running, the last hour's throughput and failures, and the SD servers.

    Raises:
        StoreUnavailable: the status store or Redis does not answer.
    """
    now = time.time() if now is None else now
    store = runtime.store
    counts = store.count_by_state()
    hour = throughput(store, now=now)
    queued = queued_by_priority(store)
    return Overview(
        now=now,
        mode="embedded" if runtime.embedded else "redis",
        workers_alive=runtime.live_workers(),
        counts={state.value: count for state, count in counts.items()},
        queues=[QueueDepthView(**vars(depth)) for depth in queue_depths(runtime.broker)],
        queued_by_priority=queued.counts,
        queued_by_priority_truncated=queued.truncated,
        pause=queue_view(runtime),
        running={state.step or state.value: counts[state] for state in RUNNING_STATES},
        window_s=hour.window_s,
        bucket_s=hour.bucket_s,
        succeeded_per_bucket=hour.succeeded,
        failed_per_bucket=hour.failed,
        succeeded_last_hour=hour.total_succeeded,
        failed_last_hour=hour.total_failed,
        mean_job_s=round(hour.mean_latency_s, 3) if hour.mean_latency_s is not None else None,
        counts_truncated=hour.truncated,
        recent_failures=[
            FailureView(
                job_id=record.job_id,
                batch_id=record.batch_id,
                at=record.updated_at,
                step=record.error.step if record.error else None,
                message=record.error.message if record.error else None,
            )
            for record in hour.failures
        ],
        backends=backend_rows(runtime, settings, now=now),
    )


def queue_view(runtime: Runtime) -> QueueView:
    """The pause state of the queue and of each batch (``GET /api/queue``)."""
    control = runtime.control
    return QueueView(paused=control.queue_paused(), paused_batches=control.paused_batches())


def catalog_view(settings: Settings) -> CatalogView:
    """The samplers, schedulers and checkpoints of the first SD server, as submissions are checked
    against them (the same cached lists; a server that does not answer gives nulls, not an error)."""
    with open_catalog(settings) as catalog:
        return CatalogView(samplers=catalog.samplers(), schedulers=catalog.schedulers(), models=catalog.models())


def batch_items(runtime: Runtime, *, limit: int = 20) -> list[BatchItem]:
    """The batches of the most recent jobs, newest first, with their progress."""
    items = []
    for summary in recent_batches(runtime.store, limit=limit):
        items.append(_batch_item(runtime, summary))
    return items


def _batch_item(runtime: Runtime, summary: BatchSummary) -> BatchItem:
    schedule = source = None
    try:
        record = runtime.store.get_batch(summary.batch_id)
        schedule = record.schedule
        source = Path(record.source).name if record.source else None
    except PipelineError:  # jobs without a batch record (pruned meanwhile): counts only
        pass
    return BatchItem(
        batch_id=summary.batch_id,
        created_at=summary.created_at,
        counts={state.value: count for state, count in summary.counts.items()},
        total=summary.total,
        ended=summary.ended,
        schedule=schedule,
        source=source,
    )


def schedule_views(runtime: Runtime, *, now: float | None = None, runs_kept: int = 5) -> list[ScheduleView]:
    """Every schedule with its next fire time and its last ``runs_kept`` runs."""
    now = time.time() if now is None else now
    return [_schedule_view(schedule, now, runs_kept) for schedule in runtime.store.list_schedules()]


def _schedule_view(schedule: ScheduleRecord, now: float, runs_kept: int) -> ScheduleView:
    upcoming: list[float] = []
    try:
        while len(upcoming) < NEXT_RUNS:
            upcoming.append(next_fire_time(schedule, upcoming[-1] if upcoming else now))
    except (PipelineError, ValueError):  # a zone or cron this machine cannot read
        upcoming = []
    return ScheduleView(
        name=schedule.name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        file=Path(schedule.file).name,
        allow_overlap=schedule.allow_overlap,
        next_fire_time=upcoming[0] if upcoming else None,
        next_runs=upcoming,
        runs=[RunView(**run.model_dump()) for run in schedule.runs[:runs_kept]],
    )


def thumbnail_for(settings: Settings, record: JobRecord) -> tuple[bytes, str]:
    """The WebP thumbnail of a succeeded job's image, from the cache where the results are (made now
    if needed), and its ETag. Reads and may write the disk or the bucket: call it in the thread pool.

    Raises:
        ApiError: as :func:`cli.api.deps.succeeded_image` (409 not succeeded, 404 image gone).
        ImageError: the image cannot be read.
    """
    image = succeeded_image(record, settings)
    assert record.result is not None
    cache = Blob(open_storage(settings.output_location, settings), thumbnail_key(record.job_id, record.result.sha256))
    return cached_thumbnail(image, cache), cache.name.removesuffix(".webp")


def sidecar_for_client(record: JobRecord, settings: Settings) -> dict[str, Any]:
    """A succeeded job's JSON sidecar, with its server paths cut to file names.

    Raises:
        ApiError: 409 when the job has no result, 404 when its sidecar is gone.
    """
    if record.result is None or not record.result.sidecar:
        raise ApiError(
            409,
            "no_result",
            f"job {record.job_id} is {record.state.value}",
            hint="a job has a sidecar once it has succeeded",
            job_id=record.job_id,
        )
    try:
        sidecar: dict[str, Any] = read_json(blob_at(record.result.sidecar, settings))
    except (OSError, ValueError, ConfigError):
        raise ApiError(
            404,
            "result_missing",
            f"the sidecar of job {record.job_id} is gone",
            hint="it was removed (sdpipe prune --outputs) or replaced; retry the job to render it again",
            job_id=record.job_id,
        ) from None
    output = sidecar.get("output")
    if isinstance(output, dict):
        sidecar["output"] = {
            key: Path(value).name if key in ("image", "sidecar") and isinstance(value, str) else value
            for key, value in output.items()
        }
    return sidecar
