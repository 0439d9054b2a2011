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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.errors import AmbiguousId, JobNotFound
from pipeline.models import (
    STEP_NAMES,
    BatchRecord,
    ErrorInfo,
    JobRecord,
    JobResult,
    JobSpec,
    JobState,
    ScheduleRecord,
    ScheduleRun,
    SDInfo,
    StepName,
    StepRecord,
)

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "InlineEvent",
    "SCHEDULE_CLAIM_TTL_S",
    "SCHEDULE_RUNS_KEPT",
    "TERMINAL_RANK",
    "TERMINAL_STATES",
    "StatusStore",
    "empty_counts",
    "job_not_found",
    "new_record",
    "ordered_steps",
    "pick_prefix_match",
]

#: How many jobs ``list_jobs`` returns when no limit is given.
DEFAULT_LIST_LIMIT = 50
#: How long a claimed schedule occurrence is remembered (far longer than any grace window).
SCHEDULE_CLAIM_TTL_S = 30 * 24 * 3600
#: How many runs of a schedule are kept for ``schedule show``.
SCHEDULE_RUNS_KEPT = 50
#: The states no transition leaves.
TERMINAL_STATES: tuple[JobState, ...] = tuple(state for state in JobState if state.terminal)
#: The rank shared by the terminal states; a job at this rank never moves again.
TERMINAL_RANK = JobState.SUCCEEDED.rank
#: Shown with every :class:`~pipeline.errors.JobNotFound` the stores raise.


def job_not_found(job_id: str) -> JobNotFound:
    """The error both stores raise for an unknown id."""
    return JobNotFound(f"no job {job_id!r}", field="job_id", value=job_id)


def pick_prefix_match(
    prefix: str, candidates: Iterable[str], *, noun: str = "job", nouns: str = "jobs", field: str = "job_id"
) -> str:
    """``resolve_id``'s answer (or ``get_batch``'s, with ``noun="batch"``), given the first two ids at
    or after ``prefix`` in id order.

    Ids sharing a prefix are contiguous in that order and start at the prefix itself, so an exact
    id comes first and two candidates tell "one" from "several". An empty prefix matches nothing.

    Args:
        noun, nouns: what the ids name, for the errors ("no job matches ...", "... matches several jobs").
        field: the errors' ``field`` (``job_id``, ``batch_id``): front ends word the fix from it.

    Raises:
        JobNotFound: no candidate, or more than one, starts with ``prefix``.
    """
    matches = [found for found in candidates if prefix and found.startswith(prefix)]
    if matches and matches[0] == prefix:
        return prefix
    if not matches:
        raise JobNotFound(f"no {noun} matches {prefix!r}", field=field, value=prefix)
    if len(matches) > 1:
        raise AmbiguousId(f"{prefix!r} matches several {nouns}; give more characters", field=field, value=prefix)
    return matches[0]


def empty_counts() -> dict[JobState, int]:
    """A zero for every state, in lifecycle order (``count_by_state`` fills it in)."""
    return dict.fromkeys(JobState, 0)


def new_record(spec: JobSpec) -> JobRecord:
    """The record ``create_jobs`` stores for ``spec``: queued, created and updated at ``spec.created_at``."""
    return JobRecord(
        job_id=spec.job_id,
        batch_id=spec.batch_id,
        state=JobState.QUEUED,
        spec=spec,
        created_at=spec.created_at,
        updated_at=spec.created_at,
    )


def ordered_steps(steps: dict[str, StepRecord]) -> dict[str, StepRecord]:
    """``steps`` in pipeline order (unknown names last, alphabetically), so both stores show them alike."""
    order: dict[str, int] = {name: index for index, name in enumerate(STEP_NAMES)}
    return {name: steps[name] for name in sorted(steps, key=lambda name: (order.get(name, len(order)), name))}


@dataclass
class InlineEvent:
    """An event a step's start or end appends to the event log in the same call, when the store and
    the log share a server (Redis mode: the transition's own script XADDs it to the log's stream),
    so it costs no round trip of its own and is in the log exactly when the transition happened,
    in order. Built by :meth:`pipeline.events.hub.EventHub.inline`.

    ``body``: the event's JSON without its id; in a step start's event the store fills in
    ``"@attempt@"`` (the attempt the start counts) and ``"@batch_id@"`` (the job's batch or null).
    ``once_key``: appended only if this key was never set (then set for ``once_ttl_s``), as
    :meth:`pipeline.events.log.EventLog.publish`'s ``once``. The store sets ``id`` to the event's
    id when it appended it (``""``: its once key was used before); left None, nothing was
    appended and the caller publishes the event itself.
    """

    stream: str
    max_len: int
    body: str
    once_key: str = ""
    once_ttl_s: int = 0
    id: str | None = None

    def args(self) -> tuple[str, ...]:
        """The five script arguments that describe it."""
        return (self.stream, str(self.max_len), self.body, self.once_key, str(self.once_ttl_s))


class StatusStore(abc.ABC):
    """Where sdpipe keeps the state of every job."""

    #: The server whose event stream this store's step transitions can append to
    #: (:class:`InlineEvent`); None: none, the caller publishes events itself.
    inline_events_server: str | None = None

    #: Why records of jobs known to exist would be missing (see :meth:`records_gone`).
    records_lost_reason: str = "the status store was emptied"

    def records_gone(self, job_id: str, *, kind: str = "job") -> JobNotFound:
        """The error for a job (``kind="batch"``: a batch) known to have existed, submitted or sent to
        a worker, whose record this store no longer has: ``field="persistence"``, with the likeliest reason."""
        return JobNotFound(
            f"job records are gone: {self.records_lost_reason}; {kind} {job_id} was among them",
            field="persistence",
            value=job_id,
        )

    @abc.abstractmethod
    def create_jobs(self, specs: Iterable[JobSpec]) -> list[JobRecord]:
        """Record new jobs in state ``queued`` (one round trip for many). Existing ids are left as they are."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """Return the job.

        Raises:
            JobNotFound: no job has that id.
        """

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """Return the jobs, one record per id in ``job_ids`` and in that order, read in one round trip.

        This default calls :meth:`get` once per id; both stores override it with one batched read.

        Raises:
            JobNotFound: an id has no job (the first such id is named).
        """
        return [self.get(job_id) for job_id in job_ids]

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

    def start_step_after(
        self, job_id: str, step: StepName, *, now: float, event: InlineEvent | None = None
    ) -> tuple[JobRecord | None, StepRecord | None]:
        """:meth:`start_step`, also returning ``step``'s record as it was before this start (None: never started;
        ``(None, None)`` when the start is refused).

        What a new delivery needs to tell whether the previous one died (started, never finished).
        This default reads the job first; a store may do both in one round trip. A store with
        :attr:`inline_events_server` appends ``event`` with a start that is made, unless the
        previous delivery of the step started and never finished (the caller then decides whether
        the job runs at all, see :func:`pipeline.jobs.steps.run_step`).
        """
        previous = self.get(job_id).steps.get(step)
        record = self.start_step(job_id, step, now=now)
        return (record, previous) if record is not None else (None, None)

    @abc.abstractmethod
    def finish_step(self, job_id: str, step: StepName, *, now: float, skipped: bool = False) -> None:
        """Record that ``step`` ended well (``finished_at``, ``duration_s``; ``skipped`` if its output existed)."""

    def end_step(
        self,
        job_id: str,
        step: StepName,
        *,
        now: float,
        skipped: bool = False,
        sd_info: SDInfo | None = None,
        result: JobResult | None = None,
        events: Sequence[InlineEvent] = (),
        batch_counts: dict[JobState, int] | None = None,
    ) -> bool:
        """:meth:`finish_step`, and what the step produced: the SD server's answer (``sd_info``, as
        :meth:`set_sd_info`) or, for the job's last step, its ``result`` (the job succeeds, as
        :meth:`mark_succeeded`, whose answer is returned; True without a result).

        This default makes the separate calls; a store may do it in one round trip. A store with
        :attr:`inline_events_server` appends ``events`` with it: the first (the step's end) always,
        the second (the job's success) only if the job moved to succeeded here. A store that can read
        them in the same call fills ``batch_counts`` (when given, the job moved to succeeded here and
        has a batch) with the batch's jobs per state right after the move, as :meth:`count_by_state`
        would; otherwise it is left as it was.
        """
        self.finish_step(job_id, step, now=now, skipped=skipped)
        if sd_info is not None:
            self.set_sd_info(job_id, sd_info)
        return self.mark_succeeded(job_id, result, now=now) if result is not None else True

    @abc.abstractmethod
    def record_error(self, job_id: str, error: ErrorInfo) -> None:
        """Store ``error`` as the job's last error without changing its state (a retry will follow)."""

    @abc.abstractmethod
    def set_sd_info(self, job_id: str, sd_info: SDInfo) -> None:
        """Store what the SD server said about the generation (seed used, model, version, server)."""

    @abc.abstractmethod
    def mark_succeeded(self, job_id: str, result: JobResult, *, now: float) -> bool:
        """Move a non-terminal job to ``succeeded`` with its result; False if it was already terminal."""

    @abc.abstractmethod
    def mark_failed(self, job_id: str, error: ErrorInfo, *, now: float) -> bool:
        """Move a non-terminal job to ``failed`` with ``error``; False if it was already terminal."""

    @abc.abstractmethod
    def mark_cancelled(self, job_id: str, *, now: float) -> bool:
        """Move a non-terminal job to ``cancelled``; False if it was already terminal."""

    @abc.abstractmethod
    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        batch_id: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Newest first, filtered by state and/or batch, served from indexes (no full scans);
        ``offset`` skips that many first (a page of a long listing)."""

    @abc.abstractmethod
    def count_by_state(self, *, batch_id: str | None = None) -> dict[JobState, int]:
        """How many jobs are in each state (of one batch, or all)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Check the store answers.

        Raises:
            StoreUnavailable: it does not.
        """

    # -- tiles of an upscale job (a counter at-least-once delivery cannot inflate) ---------------------

    def set_tile_total(self, job_id: str, total: int) -> None:
        """Record how many tiles the job's upscale has (idempotent: the plan is fixed once made)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no tile counts")

    def add_tile_done(self, job_id: str, index: int) -> tuple[int, int]:
        """Mark tile ``index`` done (again: no change) and return ``(done, total)`` atomically.

        A set, not a counter: a redelivered tile is counted once, and exactly the addition that
        completes the set sees ``done == total`` first (later re-additions see it too).
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no tile counts")

    def tile_progress(self, job_id: str) -> tuple[int, int] | None:
        """``(done, total)`` of the job's tiles, or None for a job that has none (not an upscale)."""
        return None

    def tiles_done(self, job_id: str) -> set[int] | None:
        """The indices marked done by :meth:`add_tile_done` (each saved before it was marked), or None
        when this store keeps no tile counts (the caller looks at the saved files instead)."""
        return None

    # -- retry, cancel, skip-existing ---------------------------------------------------------------

    @abc.abstractmethod
    def requeue(self, job_id: str, *, now: float) -> JobRecord | None:
        """Move a ``failed`` or ``cancelled`` job back to ``queued`` (for ``sdpipe retry``).

        Keeps its steps (attempt counts go on counting) and its last error (history); returns the
        updated record, or None when the job is in any other state (nothing to retry).
        """

    @abc.abstractmethod
    def succeeded_fingerprints(self, fingerprints: Sequence[str]) -> set[str]:
        """The subset of ``fingerprints`` (``JobSpec.fingerprint``) that some succeeded job has."""

    # -- retention (``sdpipe prune``) ---------------------------------------------------------------

    def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        """Remove ended jobs' records and every index entry of them; returns the ids removed.

        A job that is not terminal (or not there) is left alone, so a prune never removes live work.
        A succeeded job's fingerprint stops counting for ``--skip-existing``.
        """
        raise NotImplementedError

    def delete_batch(self, batch_id: str) -> bool:
        """Remove a batch record (exact id, not a prefix); False if there was none."""
        raise NotImplementedError

    # -- batches -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def save_batch(self, batch: BatchRecord) -> None:
        """Create or replace a batch record (rows and their job ids)."""

    @abc.abstractmethod
    def get_batch(self, batch_id: str) -> BatchRecord:
        """Return the batch; ``batch_id`` may be a unique prefix.

        Raises:
            JobNotFound: no batch, or several, match.
        """

    # -- schedules ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def save_schedule(self, schedule: ScheduleRecord) -> None:
        """Create or replace a schedule (its ``runs`` are kept as stored, not taken from the argument)."""

    @abc.abstractmethod
    def get_schedule(self, name: str) -> ScheduleRecord:
        """Return the schedule with its runs, newest first.

        Raises:
            ScheduleNotFound: no schedule has that name.
        """

    @abc.abstractmethod
    def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name, each with its runs."""

    @abc.abstractmethod
    def delete_schedule(self, name: str) -> bool:
        """Remove a schedule and its runs; False if there was none."""

    @abc.abstractmethod
    def claim_fire(self, name: str, fire_time: float) -> bool:
        """Atomically claim one occurrence of a schedule: True for exactly one caller, ever.

        This is what makes several scheduler processes fire each occurrence once. Claims are kept
        at least ``SCHEDULE_CLAIM_TTL_S``.
        """

    @abc.abstractmethod
    def add_schedule_run(self, name: str, run: ScheduleRun) -> None:
        """Record what happened at an occurrence (newest first, keeping the last ``SCHEDULE_RUNS_KEPT``).

        Raises:
            ScheduleNotFound: the schedule was removed meanwhile.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
