"""The status store: job states, attempts, errors, timings, results.

Two implementations share this interface and its tests: :class:`~pipeline.store.redis.RedisStatusStore`
(Redis mode: every worker on every machine sees the same jobs) and
:class:`~pipeline.store.sqlite.SqliteStatusStore` (embedded mode: a file under ``OUTPUT_DIR``, so
``sdpipe status`` works after the process has ended).

Every transition is conditional and atomic: a redelivered message (Dramatiq delivers at least once)
can never move a job backwards or out of a terminal state.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

from pipeline.models import ErrorInfo, JobRecord, JobSpec, JobState, StepName

__all__ = ["DEFAULT_LIST_LIMIT", "StatusStore"]

#: How many jobs ``list_jobs`` returns when no limit is given.
DEFAULT_LIST_LIMIT = 50


class StatusStore(abc.ABC):
    """Where sdpipe keeps the state of every job."""

    @abc.abstractmethod
    def create_jobs(self, specs: Iterable[JobSpec]) -> list[JobRecord]:
        """Record new jobs in state ``queued`` (one round trip for many). Existing ids are left as they are."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """Return the job.

        Raises:
            JobNotFound: no job has that id.
        """

    @abc.abstractmethod
    def resolve_id(self, prefix: str) -> str:
        """Return the one job id that starts with ``prefix`` (ids are shown shortened).

        Raises:
            JobNotFound: none, or more than one, matches.
        """

    @abc.abstractmethod
    def start_step(self, job_id: str, step: StepName, *, now: float) -> JobRecord | None:
        """Move the job into ``step``'s state and count an attempt, if that is a forward move.

        Allowed when the job is not terminal and its state's rank is at most the step's (the same
        step redelivered counts another attempt). Returns the updated record, or None when the job
        is terminal or already past this step (the caller then does nothing).
        """

    @abc.abstractmethod
    def finish_step(self, job_id: str, step: StepName, *, now: float, skipped: bool = False) -> None:
        """Record that ``step`` ended well (``finished_at``, ``duration_s``; ``skipped`` if its output existed)."""

    @abc.abstractmethod
    def record_error(self, job_id: str, error: ErrorInfo) -> None:
        """Store ``error`` as the job's last error without changing its state (a retry will follow)."""

    @abc.abstractmethod
    def set_sd_info(self, job_id: str, sd_info: dict[str, Any]) -> None:
        """Store what the SD server said about the generation (seed used, model, version, server)."""

    @abc.abstractmethod
    def mark_succeeded(self, job_id: str, result: dict[str, Any], *, now: float) -> bool:
        """Move a non-terminal job to ``succeeded`` with its result; False if it was already terminal."""

    @abc.abstractmethod
    def mark_failed(self, job_id: str, error: ErrorInfo, *, now: float) -> bool:
        """Move a non-terminal job to ``failed`` with ``error``; False if it was already terminal."""

    @abc.abstractmethod
    def mark_cancelled(self, job_id: str, *, now: float) -> bool:
        """Move a non-terminal job to ``cancelled``; False if it was already terminal."""

    @abc.abstractmethod
    def list_jobs(
        self, *, state: JobState | None = None, batch_id: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[JobRecord]:
        """Newest first, filtered by state and/or batch, served from indexes (no full scans)."""

    @abc.abstractmethod
    def count_by_state(self, *, batch_id: str | None = None) -> dict[JobState, int]:
        """How many jobs are in each state (of one batch, or all)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Check the store answers.

        Raises:
            StoreUnavailable: it does not.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
