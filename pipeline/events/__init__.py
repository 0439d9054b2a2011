"""The event stream: every job's state changes, steps, sampling progress and end, and each batch's end.

Its concepts::

    model      Event (type, job and batch ids, time, data), EventPage, the event types
    log        EventLog: append, read after an id (filtered by batch or job, blocking), bounded;
               open_event_log picks the backend
    redis_log  a Redis Stream (Redis mode, shared by every process)
    sqlite_log a table of the embedded store's SQLite file (embedded mode)
    hub        EventHub: publish to the log and to this process's listeners (webhooks)
    jobs       a job's end and its batch's completion, announced once per end
    watching   waiting on jobs by the stream (what the CLI's waits and ``sdpipe watch`` use)

Readers are ``GET /api/events`` (SSE), ``sdpipe watch``, the CLI's waits and the webhook deliveries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.events.hub import EventHub, Listener
    from pipeline.events.jobs import announce_end, batch_completed, batch_round, job_data, reopen_batches
    from pipeline.events.log import EventLog, open_event_log
    from pipeline.events.model import (
        BATCH_COMPLETED,
        ENDED_TYPES,
        JOB_CANCELLED,
        JOB_FAILED,
        JOB_PREVIEW,
        JOB_PROGRESS,
        JOB_QUEUED,
        JOB_RETRYING,
        JOB_STEP_FINISHED,
        JOB_STEP_STARTED,
        JOB_SUCCEEDED,
        QUEUE_PAUSED,
        QUEUE_RESUMED,
        WEBHOOK_TYPES,
        Event,
        EventPage,
    )
    from pipeline.events.redis_log import RedisEventLog
    from pipeline.events.sqlite_log import SqliteEventLog
    from pipeline.events.watching import JobsView, watch_jobs_by_events

_MODEL = [
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

__all__ = [
    # Model
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
    # Logs
    "EventLog",
    "RedisEventLog",
    "SqliteEventLog",
    "open_event_log",
    # Publishing
    "EventHub",
    "Listener",
    "announce_end",
    "batch_completed",
    "batch_round",
    "job_data",
    "reopen_batches",
    # Waiting
    "JobsView",
    "watch_jobs_by_events",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".model": _MODEL,
        ".log": ["EventLog", "open_event_log"],
        ".redis_log": ["RedisEventLog"],
        ".sqlite_log": ["SqliteEventLog"],
        ".hub": ["EventHub", "Listener"],
        ".jobs": ["announce_end", "batch_completed", "batch_round", "job_data", "reopen_batches"],
        ".watching": ["JobsView", "watch_jobs_by_events"],
    },
)
