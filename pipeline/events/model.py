"""What the event stream carries: one :class:`Event` per state change, step, progress tick or webhook-worthy end.

Events are the pipeline's public feed (``GET /api/events``, ``sdpipe watch``, webhooks, and later a
dashboard): small JSON objects that name their job and batch, never image bytes (a preview image is
the one exception, an opt-in event of its own). Types::

    job.queued           submitted (data: priority; retry: true when requeued)
    job.step.started     a step began (data: step, attempt)
    job.step.finished    a step ended (data: step, duration_s, skipped)
    job.retrying         a step failed and will be retried (data: step, error, attempt)
    job.progress         sampling progress of a running generation (data: step, steps, progress, eta_s)
    job.preview          the server's preview image while it renders (data: image, base64) - opt-in
    job.succeeded        ended (data: the job's prompt, seed, model, result, sidecar fields)
    job.failed           ended (data: the job's fields and its error)
    job.cancelled        ended
    batch.completed      every job of a batch ended (data: counts)
    queue.paused / queue.resumed    the whole queue or one batch (data: batch_id or none)
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BATCH_COMPLETED",
    "ENDED_TYPES",
    "JOB_CANCELLED",
    "JOB_FAILED",
    "JOB_PREVIEW",
    "JOB_PROGRESS",
    "JOB_QUEUED",
    "JOB_RETRYING",
    "JOB_STEP_FINISHED",
    "JOB_STEP_STARTED",
    "JOB_SUCCEEDED",
    "QUEUE_PAUSED",
    "QUEUE_RESUMED",
    "WEBHOOK_TYPES",
    "Event",
    "EventPage",
]

JOB_QUEUED: Final = "job.queued"
JOB_STEP_STARTED: Final = "job.step.started"
JOB_STEP_FINISHED: Final = "job.step.finished"
JOB_RETRYING: Final = "job.retrying"
JOB_PROGRESS: Final = "job.progress"
JOB_PREVIEW: Final = "job.preview"
JOB_SUCCEEDED: Final = "job.succeeded"
JOB_FAILED: Final = "job.failed"
JOB_CANCELLED: Final = "job.cancelled"
BATCH_COMPLETED: Final = "batch.completed"
QUEUE_PAUSED: Final = "queue.paused"
QUEUE_RESUMED: Final = "queue.resumed"

#: The events that end a job.
ENDED_TYPES: frozenset[str] = frozenset({JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED})
#: The events webhooks receive.
WEBHOOK_TYPES: frozenset[str] = ENDED_TYPES | {BATCH_COMPLETED}


class Event(BaseModel):
    """One event. ``id`` is given by the log (opaque, increasing: what ``Last-Event-ID`` resumes from)."""

    model_config = ConfigDict(frozen=True)

    id: str = ""
    type: str
    #: Epoch seconds when it happened.
    ts: float
    job_id: str | None = None
    batch_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    #: The identity of an event announced once (a job's end): the same on every announcement of it,
    #: where ``id`` is the log's. Webhook ids derive from it, so a retried delivery keeps its id.
    key: str | None = None

    def body(self) -> str:
        """The JSON of the event without its id (how the logs store it)."""
        return self.model_dump_json(exclude={"id"})


class EventPage(BaseModel):
    """What one read of the log returned, and where the next read starts (past events the filter skipped)."""

    events: list[Event]
    cursor: str
