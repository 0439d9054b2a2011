"""Read-only questions about many jobs, answered from the status store's indexes plus a bounded scan:
filtered listings (text, model, date), recent batches, throughput over a time window, and the queued
jobs per priority.

The store indexes jobs by state and batch, newest first (by creation). Anything else (a word of the
prompt, the checkpoint, a day) is matched here on the records of an indexed listing, read a page at a
time and never more than ``scan_limit`` records per question, so a dashboard refreshing every few
seconds costs the store a bounded amount of work whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeline.models import PRIORITIES, JobRecord, JobState
from pipeline.store.base import StatusStore

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "BatchSummary",
    "JobFilter",
    "JobPage",
    "QueuedByPriority",
    "Throughput",
    "find_jobs",
    "queued_by_priority",
    "recent_batches",
    "throughput",
]

#: Most records one question reads from the store.
DEFAULT_SCAN_LIMIT = 2000
#: Records read per store round trip while scanning.
_PAGE = 200


@dataclass(frozen=True)
class JobFilter:
    """Which jobs: ``state`` and ``batch_id`` are the store's indexes; the rest is matched per record.

    ``text``: a case-insensitive substring of the prompt, the negative prompt, the job id or the
    source file name. ``model``: a substring of the checkpoint the server reported (or the one
    asked for). ``since``/``until``: creation time bounds, epoch seconds (``until`` exclusive).
    """

    state: JobState | None = None
    batch_id: str | None = None
    text: str | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None

    @property
    def scans(self) -> bool:
        """Whether any condition needs the records themselves (not just an index)."""
        return bool(self.text or self.model or self.since is not None or self.until is not None)

    def matches(self, record: JobRecord) -> bool:
        if self.since is not None and record.created_at < self.since:
            return False
        if self.until is not None and record.created_at >= self.until:
            return False
        if self.text:
            needle = self.text.casefold()
            generation = record.spec.generation
            haystack = [record.job_id, record.spec.source_name or ""]
            if generation is not None:
                haystack += [generation.prompt, generation.negative_prompt]
            if not any(needle in part.casefold() for part in haystack):
                return False
        if self.model:
            return self.model.casefold() in (model_of(record) or "").casefold()
        return True


def model_of(record: JobRecord) -> str | None:
    """The checkpoint of a job: the one the server reported, else the one asked for."""
    if record.sd_info is not None and record.sd_info.model_name:
        return record.sd_info.model_name
    generation = record.spec.generation
    return generation.checkpoint if generation is not None else None


@dataclass(frozen=True)
class JobPage:
    """A page of matching jobs, newest first.

    ``next_offset``: the store offset to continue from (None: the listing has ended).
    ``scanned``: records read to find them; ``truncated``: the scan stopped at its limit, so older
    matches may exist beyond ``next_offset``.
    """

    jobs: list[JobRecord]
    next_offset: int | None
    scanned: int = 0
    truncated: bool = False


def _records(store: StatusStore, state: JobState | None, batch_id: str | None, offset: int) -> Iterator[JobRecord]:
    """Every record of an index listing from ``offset`` on, newest first, a page per round trip."""
    while True:
        page = store.list_jobs(state=state, batch_id=batch_id, limit=_PAGE, offset=offset)
        yield from page
        if not page:
            return
        offset += _PAGE


def find_jobs(
    store: StatusStore, where: JobFilter, *, limit: int, offset: int = 0, scan_limit: int = DEFAULT_SCAN_LIMIT
) -> JobPage:
    """Up to ``limit`` jobs matching ``where``, newest first, from store offset ``offset`` on.

    Without per-record conditions this is one indexed read. With them, records are read until
    ``limit`` match or ``scan_limit`` were read (then ``truncated``: continue from ``next_offset``).
    """
    if not where.scans:
        jobs = store.list_jobs(state=where.state, batch_id=where.batch_id, limit=limit, offset=offset)
        return JobPage(jobs=jobs, next_offset=offset + limit if len(jobs) == limit else None, scanned=len(jobs))
    found: list[JobRecord] = []
    position = offset
    for record in _records(store, where.state, where.batch_id, offset):
        position += 1
        if where.since is not None and record.created_at < where.since:
            return JobPage(jobs=found, next_offset=None, scanned=position - offset)  # older ones only follow
        if where.matches(record):
            found.append(record)
            if len(found) == limit:
                return JobPage(jobs=found, next_offset=position, scanned=position - offset)
        if position - offset >= scan_limit:
            return JobPage(jobs=found, next_offset=position, scanned=position - offset, truncated=True)
    return JobPage(jobs=found, next_offset=None, scanned=position - offset)


@dataclass(frozen=True)
class BatchSummary:
    """A batch seen among recent jobs: its id, when it was created, and its jobs' states."""

    batch_id: str
    created_at: float
    counts: dict[JobState, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ended(self) -> int:
        return sum(count for state, count in self.counts.items() if state.terminal)


def recent_batches(store: StatusStore, *, limit: int = 20, scan_limit: int = DEFAULT_SCAN_LIMIT) -> list[BatchSummary]:
    """The batches of the most recent jobs, newest first, each with its state counts (one indexed
    count per batch). A batch whose jobs are all older than ``scan_limit`` jobs is not listed."""
    seen: dict[str, float] = {}
    for scanned, record in enumerate(_records(store, None, None, 0), start=1):
        if record.batch_id is not None and record.batch_id not in seen:
            seen[record.batch_id] = record.created_at
            if len(seen) == limit:
                break
        if scanned >= scan_limit:
            break
    return [
        BatchSummary(batch_id=batch_id, created_at=created, counts=store.count_by_state(batch_id=batch_id))
        for batch_id, created in seen.items()
    ]


@dataclass(frozen=True)
class Throughput:
    """Jobs that ended in the window, per bucket (oldest bucket first), and failures among them."""

    window_s: float
    bucket_s: float
    succeeded: list[int]
    failed: list[int]
    #: The failed jobs of the window, newest first (at most ``failures_kept``).
    failures: list[JobRecord] = field(default_factory=list)
    #: Mean seconds from creation to success over the window (None: no success).
    mean_latency_s: float | None = None
    #: The scan stopped at its limit: the counts are a lower bound.
    truncated: bool = False

    @property
    def total_succeeded(self) -> int:
        return sum(self.succeeded)

    @property
    def total_failed(self) -> int:
        return sum(self.failed)


def throughput(
    store: StatusStore,
    *,
    now: float,
    window_s: float = 3600.0,
    bucket_s: float = 300.0,
    failures_kept: int = 10,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
) -> Throughput:
    """How many jobs succeeded and failed in the last ``window_s``, per ``bucket_s``.

    An ended job's ``updated_at`` is when it ended. The state indexes are ordered by creation, so
    each is read newest first until a whole page holds no job that ended in the window and was
    created before it (a job queued long ago that ended recently still counts, unless more than a
    page of older, earlier-ended jobs were created after it).
    """
    buckets = max(1, int(round(window_s / bucket_s)))
    start = now - window_s
    counts = {JobState.SUCCEEDED: [0] * buckets, JobState.FAILED: [0] * buckets}
    failures: list[JobRecord] = []
    latencies: list[float] = []
    truncated = False
    for state, per_bucket in counts.items():
        quiet = 0
        for scanned, record in enumerate(_records(store, state, None, 0), start=1):
            if record.updated_at >= start:
                index = min(buckets - 1, int((record.updated_at - start) // bucket_s))
                per_bucket[index] += 1
                quiet = 0
                if state is JobState.FAILED and len(failures) < failures_kept:
                    failures.append(record)
                if state is JobState.SUCCEEDED:
                    latencies.append(record.updated_at - record.created_at)
            elif record.created_at < start:
                quiet += 1
                if quiet >= _PAGE:
                    break
            if scanned >= scan_limit:
                truncated = True
                break
    failures.sort(key=lambda record: record.updated_at, reverse=True)
    return Throughput(
        window_s=window_s,
        bucket_s=bucket_s,
        succeeded=counts[JobState.SUCCEEDED],
        failed=counts[JobState.FAILED],
        failures=failures,
        mean_latency_s=sum(latencies) / len(latencies) if latencies else None,
        truncated=truncated,
    )


@dataclass(frozen=True)
class QueuedByPriority:
    """How many queued jobs (waiting for their first step) there are of each priority, best first."""

    counts: dict[str, int]
    #: More than ``scan_limit`` jobs are queued: the counts are those of the newest ``scan_limit``.
    truncated: bool = False


def queued_by_priority(store: StatusStore, *, scan_limit: int = DEFAULT_SCAN_LIMIT) -> QueuedByPriority:
    """The queued jobs per priority (``high``, ``normal``, ``low``), from at most ``scan_limit`` records.

    Counted on the records rather than on the SD pool's priority tickets: a ticket exists only for high
    and normal work, is dropped while a job's batch is paused and lapses after ``PRIORITY_TICKET_S``,
    while this counts every queued job, paused or not.
    """
    counts: dict[str, int] = dict.fromkeys(PRIORITIES, 0)
    for scanned, record in enumerate(_records(store, JobState.QUEUED, None, 0), start=1):
        if scanned > scan_limit:
            return QueuedByPriority(counts=counts, truncated=True)
        counts[record.spec.priority] = counts.get(record.spec.priority, 0) + 1
    return QueuedByPriority(counts=counts)
