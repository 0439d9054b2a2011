"""The event stream over HTTP (``GET /api/events``, Server-Sent Events) and the queue's pause state."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from cli.api.auth import require_token
from cli.api.deps import runtime_of, settings_of
from cli.api.errors import ERROR_RESPONSES, ErrorBody
from cli.api.status import QueueView, queue_view
from pipeline.events.model import JOB_PREVIEW, Event

__all__ = ["QueueView", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a short id that several jobs (or batches) start with"},
    404: {"model": ErrorBody, "description": "no such job or batch"},
}
#: Longest a stream waits for events in one read (it then checks the client and the heartbeat).
_READ_BLOCK_S = 1.0


def _sse(event: Event) -> str:
    data = json.dumps(event.model_dump(mode="json", exclude={"key"}), ensure_ascii=False)
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


@router.get(
    "/events",
    tags=["events"],
    summary="Server-Sent Events: job and batch events (state changes, steps, sampling progress, ends)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an endless event stream"}, **_NOT_FOUND},
)
async def events(
    request: Request,
    batch: Annotated[str | None, Query(description="only this batch's events (id or unique prefix)")] = None,
    job: Annotated[str | None, Query(description="only this job's events (id or unique prefix)")] = None,
    previews: Annotated[bool, Query(description="also job.preview events (base64 images; PROGRESS_PREVIEW)")] = False,
    after: Annotated[
        str | None,
        Query(
            pattern=r"^\d{1,20}(-\d{1,20})?$",
            description="start after this event id, as Last-Event-ID does (a browser's EventSource cannot send "
            "a header on its first connection); Last-Event-ID wins when both are given",
        ),
    ] = None,
    last_event_id: Annotated[str | None, Header(description="resume after this event id (replay)")] = None,
) -> StreamingResponse:
    """Events as they happen, each with its ``id`` (send it back as ``Last-Event-ID`` to replay what
    was missed). Without ``Last-Event-ID`` (or ``after``), a stream of one batch or job starts with the
    events the log still holds for it, an unfiltered one with new events only. A comment line every
    ``SSE_HEARTBEAT_S`` keeps idle connections open."""
    runtime = runtime_of(request)
    store, log = runtime.store, runtime.events.log
    batch_id = (await run_in_threadpool(store.get_batch, batch)).batch_id if batch is not None else None
    job_id = await run_in_threadpool(store.resolve_id, job) if job is not None else None
    cursor = last_event_id or after or (None if (batch_id or job_id) else await run_in_threadpool(log.latest_id))
    heartbeat_s = settings_of(request).sse_heartbeat_s

    async def stream() -> AsyncIterator[str]:
        nonlocal cursor
        last_sent = time.monotonic()
        yield ": sdpipe events\n\n"
        while not await request.is_disconnected():
            page = await run_in_threadpool(log.read, cursor, batch_id=batch_id, job_id=job_id, block_s=_READ_BLOCK_S)
            cursor = page.cursor
            for event in page.events:
                if event.type == JOB_PREVIEW and not previews:
                    continue
                yield _sse(event)
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= heartbeat_s:
                yield ": heartbeat\n\n"
                last_sent = time.monotonic()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/queue", tags=["queue"], response_model=QueueView)
def queue(request: Request) -> QueueView:
    """Whether the queue (and which batches) are paused."""
    return queue_view(runtime_of(request))


@router.post("/pause", tags=["queue"], response_model=QueueView, responses=_NOT_FOUND)
def pause(
    request: Request, batch: Annotated[str | None, Query(description="pause only this batch")] = None
) -> QueueView:
    """Pause the queue (or one batch): no new SD call starts; work already on a GPU finishes."""
    runtime = runtime_of(request)
    runtime.pause(runtime.store.get_batch(batch).batch_id if batch is not None else None)
    return queue_view(runtime_of(request))


@router.post("/resume", tags=["queue"], response_model=QueueView, responses=_NOT_FOUND)
def resume(
    request: Request, batch: Annotated[str | None, Query(description="resume only this batch")] = None
) -> QueueView:
    """Resume the queue (or one batch)."""
    runtime = runtime_of(request)
    runtime.resume(runtime.store.get_batch(batch).batch_id if batch is not None else None)
    return queue_view(runtime_of(request))
