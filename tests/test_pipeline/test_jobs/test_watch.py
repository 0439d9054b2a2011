"""watch_jobs: one batched read of the unfinished jobs per poll, until every job has ended."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.errors import JobNotFound
from pipeline.jobs.planning import watch_jobs
from pipeline.models import ErrorInfo, JobRecord, JobResult, JobSpec, JobState, StepParams
from pipeline.store.sqlite import SqliteStatusStore

T0 = 1_700_000_000.0


class CountingStore(SqliteStatusStore):
    """A SQLite store that remembers which ids each batched read asked for, and refuses single reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[list[str]] = []

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        self.reads.append(list(job_ids))
        return super().get_many(job_ids)

    def get(self, job_id: str) -> JobRecord:
        raise AssertionError(f"watch_jobs read job {job_id} on its own")


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    made = CountingStore(tmp_path / "status.sqlite3")
    made.create_jobs(
        JobSpec(
            job_id=job_id,
            kind="process",
            step_params=StepParams(),
            output_name=f"out/{job_id}",
            source_name="in.png",
            created_at=T0,
        )
        for job_id in ("a", "b", "c")
    )
    return made


def test_watch_jobs_reads_only_unfinished_jobs_in_one_batch_per_poll(store: CountingStore) -> None:
    # Given job a already ended
    store.mark_succeeded("a", JobResult(), now=T0 + 1)
    watch = watch_jobs(store, ["a", "b", "c"], poll_interval_s=0)

    first = next(watch)
    store.mark_failed("b", ErrorInfo(step="generate", type="SDServerError", message="x", at=T0 + 2), now=T0 + 2)
    second = next(watch)
    store.mark_cancelled("c", now=T0 + 3)
    third = next(watch)

    # Then every poll yields all jobs in order, but reads only those not seen ending
    assert [[record.state for record in records] for records in (first, second, third)] == [
        [JobState.SUCCEEDED, JobState.QUEUED, JobState.QUEUED],
        [JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED],
        [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED],
    ]
    assert [record.job_id for record in third] == ["a", "b", "c"]
    assert store.reads == [["a", "b", "c"], ["b", "c"], ["c"]]
    # and the watch ends once all have ended
    assert next(watch, None) is None


def test_watch_jobs_unknown_id_raises_job_not_found_saying_the_records_are_gone(store: CountingStore) -> None:
    # The caller watches jobs it submitted: one the store does not have was lost with its records
    with pytest.raises(JobNotFound, match="job records are gone: .*; job zzz was among them") as raised:
        next(watch_jobs(store, ["a", "zzz"], poll_interval_s=0))
    assert raised.value.field == "persistence" and raised.value.value == "zzz"
