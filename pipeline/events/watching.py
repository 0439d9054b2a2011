"""Waiting on jobs by the event stream instead of polling each one: what ``generate``/``batch`` and
``sdpipe watch`` wait with.

A watch reads the jobs once, then blocks on the event log; only jobs an event names are read again
(one batched read), and every :data:`RESYNC_S` the unfinished ones are re-read anyway, so a lost or
trimmed event delays a wait by seconds, never forever. Sampling progress (``job.progress``) is kept
per job for the display.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import JobNotFound
from pipeline.events.log import EventLog
from pipeline.events.model import JOB_PROGRESS, JOB_STEP_STARTED, Event
from pipeline.models import JobRecord
from pipeline.store.base import StatusStore

__all__ = ["RESYNC_S", "WAKE_S", "JobsView", "watch_jobs_by_events"]

#: Longest a watch blocks on the log before looking at the clock (and its caller at the workers).
WAKE_S = 1.0
#: How often the unfinished jobs are re-read whatever the events said.
RESYNC_S = 5.0


@dataclass
class JobsView:
    """The watched jobs as last seen, their latest sampling progress, and the events of the last wait."""

    records: list[JobRecord]
    #: job id -> the latest ``job.progress`` data (step, steps, progress, eta_s) of its running generation.
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(record.state.terminal for record in self.records)


def watch_jobs_by_events(
    store: StatusStore, log: EventLog, job_ids: Sequence[str], *, batch_id: str | None = None
) -> Iterator[JobsView]:
    """Yield the jobs' view after each change until all are terminal (the last yield included).

    ``batch_id``: the batch all of them belong to (the log is then read for that batch only).

    Raises:
        JobNotFound: a job has no record (``field="persistence"``: the store lost it).
        StoreUnavailable: the store or the log cannot be reached (the caller may call again).
    """
    wanted = set(job_ids)
    cursor = log.latest_id()  # before the first read: nothing between the two is missed
    latest = {record.job_id: record for record in _read(store, list(dict.fromkeys(job_ids)))}
    view = JobsView([latest[job_id] for job_id in job_ids])
    yield view
    synced = time.monotonic()
    while not view.done:
        page = log.read(cursor, batch_id=batch_id, block_s=WAKE_S)
        cursor = page.cursor
        mine = [event for event in page.events if event.job_id in wanted]
        for event in mine:
            if event.type == JOB_PROGRESS:
                view.progress[str(event.job_id)] = event.data
            elif event.type == JOB_STEP_STARTED:
                view.progress.pop(str(event.job_id), None)
        changed = {str(event.job_id) for event in mine if event.type != JOB_PROGRESS}
        if time.monotonic() - synced >= RESYNC_S:
            changed |= {job_id for job_id, record in latest.items() if not record.state.terminal}
            synced = time.monotonic()
        if changed:
            latest.update((record.job_id, record) for record in _read(store, sorted(changed)))
        view = JobsView([latest[job_id] for job_id in job_ids], view.progress, mine)
        yield view


def _read(store: StatusStore, job_ids: list[str]) -> list[JobRecord]:
    try:
        return store.get_many(job_ids)
    except JobNotFound as exc:
        raise store.records_gone(str(exc.value)) from exc
