"""What a job's life publishes: its end (once per end, with what a receiver needs) and its batch's end.

A job's end is announced with the key ``<job>:<state>:<updated_at>``: the terminal transition's time
never changes once the job ended, so every announcement of that end (a redelivered step, the
retries-exhausted actor after the last attempt already marked it) carries the same key, while the
same job failing again after ``sdpipe retry`` is a new end with a new key. A batch completes when its
last job ends: every job's end counts the batch's states (one Redis round trip) and the announcement
whose counts show no job left running publishes ``batch.completed``, keyed by the batch's round, so
two last jobs ending at once publish it once. The round is the time the batch was last reopened
(:func:`reopen_batches`: a retry or a ``--resume`` puts some of its jobs back in the queue), kept in
the shared key-value store: a batch that completes again after a retry is a new completion, with a new
key, even when its counts are what they were.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pipeline.errors import PipelineError
from pipeline.events.hub import EventHub
from pipeline.events.log import ONCE_TTL_S
from pipeline.events.model import BATCH_COMPLETED, JOB_CANCELLED, JOB_FAILED, JOB_SUCCEEDED, Event
from pipeline.models import JobRecord, JobState
from pipeline.store.base import StatusStore

__all__ = ["announce_end", "batch_completed", "batch_round", "end_key", "end_type", "job_data", "reopen_batches"]

logger = logging.getLogger(__name__)

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


def end_type(record: JobRecord) -> str:
    """The type of the event that announces ``record``'s end (it must be terminal)."""
    return _TYPE_OF[record.state]


def end_key(record: JobRecord) -> str:
    """The ``once`` key of ``record``'s end: the same on every announcement of this end."""
    return f"{record.job_id}:{record.state.value}:{record.updated_at!r}"


def announce_end(hub: EventHub | None, store: StatusStore, record: JobRecord) -> Event | None:
    """Publish ``record``'s end (it must be terminal), then its batch's if this was the batch's last job.

    Idempotent: call it again for the same end (a duplicate delivery) and the log is not written twice.
    """
    if hub is None or not record.state.terminal:
        return None
    event = hub.emit(
        end_type(record), job_id=record.job_id, batch_id=record.batch_id, data=job_data(record), once=end_key(record)
    )
    if record.batch_id is not None:
        batch_completed(hub, store, record.batch_id)
    return event


def batch_completed(
    hub: EventHub, store: StatusStore, batch_id: str, *, counts: dict[JobState, int] | None = None
) -> Event | None:
    """Publish ``batch.completed`` (with counts) if no job of the batch is left to run; else None.

    ``counts``: the batch's jobs per state, already read with the job's end (the store's
    ``end_step``); None: counted here."""
    if counts is None:
        counts = store.count_by_state(batch_id=batch_id)
    total = sum(counts.values())
    if total == 0 or any(count for state, count in counts.items() if not state.terminal):
        return None
    ended = {state.value: counts[state] for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)}
    counted = ":".join(str(ended[name]) for name in ("succeeded", "failed", "cancelled"))
    return hub.emit(
        BATCH_COMPLETED,
        batch_id=batch_id,
        data={"counts": ended, "total": total},
        once=f"batch:{batch_id}:{batch_round(hub, batch_id)}:{counted}",
    )


def _round_key(batch_id: str) -> str:
    return f"batch-round:{batch_id}"


def batch_round(hub: EventHub, batch_id: str) -> str:
    """The batch's round: ``0`` until it is first reopened, then the time of its latest reopening."""
    if hub.kv is None:
        return "0"
    try:
        return hub.kv.get(_round_key(batch_id)) or "0"
    except PipelineError as exc:  # the batch's completion is then keyed as if never reopened
        logger.warning("batch %s: its round cannot be read: %s", batch_id, exc)
        return "0"


def reopen_batches(hub: EventHub, batch_ids: Iterable[str | None]) -> None:
    """Start a new round of each batch: its next completion is announced even if one was before.

    Call it after the batch's jobs are back in the queue (so no announcement of the previous
    completion can take the new round) and before any of them is enqueued (so none can end first).
    Kept :data:`~pipeline.events.log.ONCE_TTL_S`, as long as the key of the completion it follows.
    """
    if hub.kv is None:
        return
    now = f"{hub.clock():.6f}"
    for batch_id in dict.fromkeys(batch_id for batch_id in batch_ids if batch_id is not None):
        try:
            hub.kv.put(_round_key(batch_id), now, ttl_s=ONCE_TTL_S)
        except PipelineError as exc:
            logger.warning("batch %s: its new round is not recorded: %s", batch_id, exc)
