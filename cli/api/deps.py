"""What every route needs: the process's settings and runtime, and a bounded wait on jobs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, Response

from actors import Runtime
from cli.api.errors import ApiError
from pipeline.jobs import watch_jobs
from pipeline.models import JobRecord, JobState
from pipeline.settings import Settings

__all__ = ["MEDIA_TYPES", "image_response", "runtime_of", "settings_of", "succeeded_image", "wait_for"]

logger = logging.getLogger(__name__)

#: Content type of each output format.
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def settings_of(request: Request) -> Settings:
    """The settings the server was started with."""
    settings: Settings = request.app.state.settings
    return settings


def runtime_of(request: Request) -> Runtime:
    """The one runtime of this server process (opened at startup)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "starting", "the server is starting or stopping", hint="try again in a moment")
    return runtime


def wait_for(runtime: Runtime, job_ids: Sequence[str], *, timeout_s: float) -> list[JobRecord]:
    """The jobs' records once every one has ended, polling the status store.

    Raises:
        ApiError: 504 when ``timeout_s`` passes first (the jobs keep running; the error names them).
        StoreUnavailable: the store stopped answering.
    """
    deadline = time.monotonic() + timeout_s
    records: list[JobRecord] = []
    for records in watch_jobs(runtime.store, job_ids):
        if all(record.state.terminal for record in records):
            break
        if time.monotonic() >= deadline:
            pending = [record.job_id for record in records if not record.state.terminal]
            logger.info("wait for job(s) %s timed out after %.1f s", ", ".join(pending), timeout_s)
            raise ApiError(
                504,
                "timeout",
                f"{len(pending)} job(s) not finished after {timeout_s:g} s; they keep running",
                hint="poll the status URL of each job",
                job_id=pending[0],
            )
    return records


def succeeded_image(record: JobRecord) -> Path:
    """The output image the job record names.

    Raises:
        ApiError: 409 when the job has not succeeded, 404 when its file is gone.
    """
    if record.state is not JobState.SUCCEEDED or not record.result or not record.result.get("image"):
        reason = ""
        if record.state is JobState.FAILED and record.error is not None:
            reason = f": {record.error.step}: {record.error.message}"
        raise ApiError(
            409,
            "no_result",
            f"job {record.job_id} is {record.state.value}{reason}",
            hint="a job has an image once it has succeeded",
            job_id=record.job_id,
        )
    path = Path(str(record.result["image"]))
    if not path.is_file():
        raise ApiError(
            404, "result_missing", f"the image of job {record.job_id} is no longer on disk", job_id=record.job_id
        )
    return path


def image_response(request: Request, record: JobRecord) -> Response:
    """The job's image with a strong ETag (its sha256); ``If-None-Match`` with that tag gives 304."""
    path = succeeded_image(record)
    assert record.result is not None
    digest = record.result.get("sha256") or f"{record.job_id}-{path.stat().st_size}-{path.stat().st_mtime_ns}"
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=0, must-revalidate"}
    wanted = request.headers.get("if-none-match", "")
    if etag in {tag.strip() for tag in wanted.split(",")} or wanted.strip() == "*":
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=MEDIA_TYPES[record.spec.output_format], headers=headers)
