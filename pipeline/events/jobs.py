"""What a job's life publishes: its end (once per end, with what a receiver needs) and its batch's end.

A job's end is announced with the key ``<job>:<state>:<updated_at>``: the terminal transition's time
never changes once the job ended, so every announcement of that end (a redelivered step, the
retries-exhausted actor after the last attempt already marked it) carries the same key, while the
same job failing again after ``sdpipe retry`` is a new end with a new key. A batch completes when its
last job ends: every job's end counts the batch's states (one Redis round trip) and the announcement
whose counts show no job left running publishes ``batch.completed``, keyed by the counts, so two
last jobs ending at once publish it once.
"""

from __future__ import annotations

from typing import Any

from pipeline.events.hub import EventHub
from pipeline.events.model import BATCH_COMPLETED, JOB_CANCELLED, JOB_FAILED, JOB_SUCCEEDED, Event
from pipeline.models import JobRecord, JobState
from pipeline.store.base import StatusStore

__all__ = ["announce_end", "batch_completed", "job_data"]

_TYPE_OF = {JobState.SUCCEEDED: JOB_SUCCEEDED, JobState.FAILED: JOB_FAILED, JobState.CANCELLED: JOB_CANCELLED}


def job_data(record: JobRecord) -> dict[str, Any]:
    """A job as events and webhooks describe it: state, request, what the server said, result or error.

    Paths are the server's (a receiver on the same machine reads them); nothing secret is in a record.
    """
    spec, info = record.spec, record.sd_info
    generation = spec.generation
    data: dict[str, Any] = {
        "state": record.state.value,
        "kind": spec.kind,
        "priority": spec.priority,
        "prompt": generation.prompt if generation else None,
        "negative_prompt": generation.negative_prompt if generation else None,
        "seed": info.seed if info and info.seed is not None else (generation.seed if generation else None),
        "model": info.model_name if info else None,
        "model_hash": info.model_hash if info else None,
        "sampler": info.sampler if info else (generation.sampler_name if generation else None),
        "steps": generation.steps if generation else None,
        "width": generation.width if generation else None,
        "height": generation.height if generation else None,
        "created_at": record.created_at,
        "ended_at": record.updated_at if record.state.terminal else None,
    }
    if record.result is not None:
        data["result"] = record.result.model_dump(exclude_none=True)
    if record.error is not None and record.state is not JobState.SUCCEEDED:
        data["error"] = {"step": record.error.step, "type": record.error.type, "message": record.error.message}
    return data


def announce_end(hub: EventHub | None, store: StatusStore, record: JobRecord) -> Event | None:
    """Publish ``record``'s end (it must be terminal), then its batch's if this was the batch's last job.

    Idempotent: call it again for the same end (a duplicate delivery) and the log is not written twice.
    """
    if hub is None or not record.state.terminal:
        return None
    event = hub.emit(
        _TYPE_OF[record.state],
        job_id=record.job_id,
        batch_id=record.batch_id,
        data=job_data(record),
        once=f"{record.job_id}:{record.state.value}:{record.updated_at!r}",
    )
    if record.batch_id is not None:
        batch_completed(hub, store, record.batch_id)
    return event


def batch_completed(hub: EventHub, store: StatusStore, batch_id: str) -> Event | None:
    """Publish ``batch.completed`` (with counts) if no job of the batch is left to run; else None."""
    counts = store.count_by_state(batch_id=batch_id)
    total = sum(counts.values())
    if total == 0 or any(count for state, count in counts.items() if not state.terminal):
        return None
    ended = {state.value: counts[state] for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)}
    key = ":".join(str(ended[name]) for name in ("succeeded", "failed", "cancelled"))
    return hub.emit(
        BATCH_COMPLETED,
        batch_id=batch_id,
        data={"counts": ended, "total": total},
        once=f"batch:{batch_id}:{key}",
    )
