"""What both stores share about batch and schedule records: their errors, prefixes and encodings.

Kept apart from :mod:`pipeline.store.base` (the interface) so the two backends' record modules
(:mod:`~pipeline.store.redis_records`, :mod:`~pipeline.store.sqlite_records`) stay small and say
the same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from pipeline.errors import JobNotFound, ScheduleNotFound
from pipeline.models import BatchRecord, ScheduleRecord, ScheduleRun
from pipeline.store.base import pick_prefix_match

__all__ = [
    "BatchScheduleRecords",
    "DelegatedBatchesSchedules",
    "batch_not_found",
    "fire_time_ms",
    "pick_batch_match",
    "schedule_json",
    "schedule_not_found",
    "schedule_with_runs",
]


def batch_not_found(batch_id: str) -> JobNotFound:
    """The error both stores raise when no batch matches ``batch_id``."""
    return JobNotFound(f"no batch matches {batch_id!r}", field="batch_id", value=batch_id)


def pick_batch_match(prefix: str, candidates: Iterable[str]) -> str:
    """``get_batch``'s id: :func:`~pipeline.store.base.pick_prefix_match`'s rule, in the words of batches.

    Raises:
        JobNotFound: no candidate, or more than one, starts with ``prefix``.
    """
    return pick_prefix_match(prefix, candidates, noun="batch", nouns="batches", field="batch_id")


def schedule_not_found(name: str) -> ScheduleNotFound:
    """The error both stores raise for an unknown schedule name."""
    return ScheduleNotFound(f"no schedule {name!r}", field="name", value=name)


def fire_time_ms(fire_time: float) -> int:
    """The canonical form of an occurrence in claims: whole milliseconds, so float noise cannot split a claim."""
    return round(fire_time * 1000)


def schedule_json(schedule: ScheduleRecord) -> str:
    """A schedule as stored: everything but its runs (those are kept apart, newest first)."""
    return schedule.model_dump_json(exclude={"runs"})


def schedule_with_runs(stored: str | bytes, runs: Sequence[str | bytes]) -> ScheduleRecord:
    """The record for a stored :func:`schedule_json` and its stored runs (JSON, newest first)."""
    return ScheduleRecord.model_validate_json(stored).model_copy(
        update={"runs": [ScheduleRun.model_validate_json(run) for run in runs]}
    )


class BatchScheduleRecords(Protocol):
    """What a backend's record module offers (:class:`~pipeline.store.redis_records.RedisRecords`,
    :class:`~pipeline.store.sqlite_records.SqliteRecords`)."""

    def save_batch(self, batch: BatchRecord) -> None: ...
    def get_batch(self, batch_id: str) -> BatchRecord: ...
    def delete_batch(self, batch_id: str) -> bool: ...
    def save_schedule(self, schedule: ScheduleRecord) -> None: ...
    def get_schedule(self, name: str) -> ScheduleRecord: ...
    def list_schedules(self) -> list[ScheduleRecord]: ...
    def delete_schedule(self, name: str) -> bool: ...
    def claim_fire(self, name: str, fire_time: float) -> bool: ...
    def add_schedule_run(self, name: str, run: ScheduleRun) -> None: ...


class DelegatedBatchesSchedules:
    """Mixin for a store: the batch and schedule part of ``StatusStore``, served by ``_batches_schedules``.

    Listed before ``StatusStore`` in a store's bases, so these satisfy its abstract methods.
    """

    _batches_schedules: BatchScheduleRecords

    def save_batch(self, batch: BatchRecord) -> None:
        self._batches_schedules.save_batch(batch)

    def get_batch(self, batch_id: str) -> BatchRecord:
        return self._batches_schedules.get_batch(batch_id)

    def save_schedule(self, schedule: ScheduleRecord) -> None:
        self._batches_schedules.save_schedule(schedule)

    def get_schedule(self, name: str) -> ScheduleRecord:
        return self._batches_schedules.get_schedule(name)

    def list_schedules(self) -> list[ScheduleRecord]:
        return self._batches_schedules.list_schedules()

    def delete_schedule(self, name: str) -> bool:
        return self._batches_schedules.delete_schedule(name)

    def delete_batch(self, batch_id: str) -> bool:
        return self._batches_schedules.delete_batch(batch_id)

    def claim_fire(self, name: str, fire_time: float) -> bool:
        return self._batches_schedules.claim_fire(name, fire_time)

    def add_schedule_run(self, name: str, run: ScheduleRun) -> None:
        self._batches_schedules.add_schedule_run(name, run)
