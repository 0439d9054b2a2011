"""What every route needs: the process's settings and runtime, and a bounded wait on jobs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from fastapi import Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from actors import Runtime
from cli.api.errors import ApiError
from pipeline.errors import InputError, StoreUnavailable
from pipeline.jobs.files import check_output_dir, current_output
from pipeline.jobs.planning import DEFAULT_POLL_INTERVAL_S, watch_jobs
from pipeline.models import JobRecord, JobState
from pipeline.settings import Settings
from pipeline.storage.base import Blob

__all__ = [
    "MEDIA_TYPES",
    "ensure_output_dir",
    "image_response",
    "runtime_of",
    "settings_of",
    "succeeded_image",
    "wait_for",
]

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


def ensure_output_dir(settings: Settings) -> None:
    """:func:`pipeline.jobs.files.check_output_dir`, as a server problem: a 503 that names no server path.

    Raises:
        ApiError: 503 when OUTPUT_DIR is not a writable folder (the log has the path and the reason).
    """
    try:
        check_output_dir(settings.output_dir)
    except InputError as exc:
        logger.error("OUTPUT_DIR unusable: %s", exc.message)
        raise ApiError(
            503, "storage_unavailable", "the server cannot write its output folder", hint="see the server log"
        ) from None


async def wait_for(
    request: Request, runtime: Runtime, job_ids: Sequence[str], *, timeout_s: float, batch_id: str | None = None
) -> list[JobRecord]:
    """The jobs' records once every one has ended, polling the status store (:func:`pipeline.jobs.planning.watch_jobs`).

    The wait holds no thread: each poll reads the store in the thread pool, and the pauses are
    ``asyncio.sleep``. It also ends when the client goes away (the jobs keep running). A status
    store that stops answering is waited out, like the CLI does, until the deadline.

    Raises:
        ApiError: 504 when ``timeout_s`` passes first or the client disconnected, 503 when the store
            was still unavailable at the deadline. Either way the jobs keep running, and the error
            names every unfinished one (``job_ids``, ``batch_id``): a client must not submit again.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(job_ids)
    watch = None
    while True:
        outage: StoreUnavailable | None = None
        try:
            if watch is None:
                watch = watch_jobs(runtime.store, job_ids, poll_interval_s=0)
            records: list[JobRecord] | None = await run_in_threadpool(next, watch, None)
            assert records is not None  # watch_jobs ends only after yielding all-terminal records
            if all(record.state.terminal for record in records):
                return records
            pending = [record.job_id for record in records if not record.state.terminal]
        except StoreUnavailable as exc:
            outage, watch = exc, None  # the generator ended with the error: start a new one
        gone = await request.is_disconnected()
        if gone or time.monotonic() >= deadline:
            why = "the client disconnected" if gone else f"timed out after {timeout_s:g} s"
            logger.info("wait for job(s) %s: %s; they keep running", ", ".join(pending), why)
            if outage is not None and not gone:
                raise ApiError(
                    503,
                    "store_unavailable",
                    f"the status store (Redis) is unavailable; {len(pending)} job(s) were queued and keep running",
                    hint="poll the jobs' status once it is back; do not submit them again",
                    job_ids=pending,
                    batch_id=batch_id,
                ) from outage
            no_worker = "" if gone else await run_in_threadpool(_no_worker_note, runtime)
            raise ApiError(
                504,
                "timeout",
                f"{len(pending)} job(s) not finished ({why}){no_worker}; they keep running",
                hint="start `sdpipe worker`, then poll the status URL of each job"
                if no_worker
                else "poll the status URL of each job",
                job_id=pending[0],
                job_ids=pending,
                batch_id=batch_id,
            )
        await asyncio.sleep(min(DEFAULT_POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))


def succeeded_image(record: JobRecord, settings: Settings) -> Blob:
    """The output image the job record names (a file, or an object of OUTPUT_URL's bucket), if it is
    still that job's image.

    A later job with the same output name (a batch row's ``name``) replaces the file; its sidecar,
    written first, then names that job. Serving the file would answer with another job's image
    under this job's ETag, so that is a 404.

    Raises:
        ApiError: 409 when the job has not succeeded, 404 when its file is gone or was replaced.
    """
    if record.state is not JobState.SUCCEEDED or not record.result or not record.result.image:
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
    image = current_output(record, settings)
    if image is None:
        raise _result_missing(record)
    return image


def _result_missing(record: JobRecord) -> ApiError:
    return ApiError(
        404,
        "result_missing",
        f"the image of job {record.job_id} is gone (removed, or replaced by a later job of the same name)",
        job_id=record.job_id,
    )


def _matches(etag: str, if_none_match: str) -> bool:
    """``If-None-Match`` against our strong tag: weak comparison (RFC 9110 13.1.2), ``*`` matches."""
    if if_none_match.strip() == "*":
        return True
    return etag in {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}


def image_response(request: Request, record: JobRecord) -> Response:
    """The job's image with a strong ETag (its sha256); ``If-None-Match`` with that tag gives 304.

    An image in a bucket (OUTPUT_URL) is a ``307`` redirect to a presigned GET URL valid
    ``S3_PRESIGN_EXPIRY_S``, or, with that 0, the object itself streamed through this server (in
    chunks, with its length).
    Reads the disk or the bucket: call it in the thread pool.
    """
    settings = settings_of(request)
    image = succeeded_image(record, settings)
    assert record.result is not None
    path = image.path
    stat = path.stat() if path is not None else None
    digest = record.result.sha256 or (
        f"{record.job_id}-{stat.st_size}-{stat.st_mtime_ns}" if stat is not None else record.job_id
    )
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=0, must-revalidate"}
    if _matches(etag, request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    media_type = MEDIA_TYPES[record.spec.output_format]
    if path is not None:
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)
    if settings.s3_presign_expiry_s > 0:
        url = image.storage.presign_get(image.key, settings.s3_presign_expiry_s)
        if url is not None:
            # The URL carries a signature for this object only, never the secret key: the client
            # fetches the image from the bucket itself. Not logged (it is a bearer credential).
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    try:
        download = image.stream()  # chunk by chunk: the server never holds the image whole
    except FileNotFoundError:  # removed since it was found
        raise _result_missing(record) from None
    headers["Content-Length"] = str(download.size)
    return StreamingResponse(download.chunks, media_type=media_type, headers=headers)


def _no_worker_note(runtime: Runtime) -> str:
    """Redis mode with no ``sdpipe worker`` beating in the heartbeat window: why a wait timed out."""
    try:
        if runtime.embedded or runtime.live_workers():
            return ""
    except StoreUnavailable:
        return ""
    window_s = runtime.worker_window_s
    return f"; no sdpipe worker has been alive in the last {window_s:g} s, so they wait in Redis"
