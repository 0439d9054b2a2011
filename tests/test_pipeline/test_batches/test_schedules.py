"""The scheduler core: cron/time-zone arithmetic, exactly-once firing, missed runs, overlap, failures.

Every test drives the scheduler with an injected clock; nothing sleeps for real minutes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.errors import hint_for
from pipeline.batches.schedules import (
    MAX_WAIT_S,
    Scheduler,
    format_duration,
    next_fire_time,
    parse_timezone,
    previous_fire_time,
    validate_cron,
)
from pipeline.errors import InputError, ScheduleNotFound, StoreUnavailable
from pipeline.models import (
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
    StepParams,
)
from pipeline.store import RedisStatusStore, SqliteStatusStore, StatusStore
from pipeline.store.base import SCHEDULE_RUNS_KEPT, empty_counts

BERLIN = ZoneInfo("Europe/Berlin")
#: Monday 2026-01-05 02:00 in Berlin (01:00 UTC).
T0 = datetime(2026, 1, 5, 2, 0, tzinfo=BERLIN).timestamp()
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


class FakeStore(StatusStore):
    """In memory, thread-safe; only what the scheduler uses (schedules, claims, runs, counts)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.schedules: dict[str, ScheduleRecord] = {}
        self.runs: dict[str, list[ScheduleRun]] = {}
        self.claims: set[tuple[str, float]] = set()
        self.claim_calls = 0
        #: batch id -> counts, for count_by_state(batch_id=...)
        self.batch_counts: dict[str, dict[JobState, int]] = {}
        self.list_error: Exception | None = None

    # -- used by the scheduler ---------------------------------------------------------------------
    def save_schedule(self, schedule: ScheduleRecord) -> None:
        with self.lock:
            self.schedules[schedule.name] = schedule.model_copy(update={"runs": []})
            self.runs.setdefault(schedule.name, [])

    def get_schedule(self, name: str) -> ScheduleRecord:
        with self.lock:
            if name not in self.schedules:
                raise ScheduleNotFound(f"no schedule {name!r}")
            return self.schedules[name].model_copy(update={"runs": list(self.runs[name])})

    def list_schedules(self) -> list[ScheduleRecord]:
        if self.list_error is not None:
            error, self.list_error = self.list_error, None
            raise error
        with self.lock:
            names = sorted(self.schedules)
        return [self.get_schedule(name) for name in names]

    def delete_schedule(self, name: str) -> bool:
        with self.lock:
            self.runs.pop(name, None)
            return self.schedules.pop(name, None) is not None

    def claim_fire(self, name: str, fire_time: float) -> bool:
        with self.lock:
            self.claim_calls += 1
            if (name, fire_time) in self.claims:
                return False
            self.claims.add((name, fire_time))
            return True

    def add_schedule_run(self, name: str, run: ScheduleRun) -> None:
        with self.lock:
            if name not in self.schedules:
                raise ScheduleNotFound(f"no schedule {name!r}")
            self.runs[name] = [run, *self.runs[name]][:SCHEDULE_RUNS_KEPT]

    def count_by_state(self, *, batch_id: str | None = None) -> dict[JobState, int]:
        return {**empty_counts(), **self.batch_counts.get(batch_id or "", {})}

    # -- not used by the scheduler -----------------------------------------------------------------
    def create_jobs(self, specs: Iterable[JobSpec]) -> list[JobRecord]:
        raise NotImplementedError

    def get(self, job_id: str) -> JobRecord:
        raise NotImplementedError

    def resolve_id(self, prefix: str) -> str:
        raise NotImplementedError

    def start_step(self, job_id: str, step: StepName, *, now: float) -> JobRecord | None:
        raise NotImplementedError

    def finish_step(self, job_id: str, step: StepName, *, now: float, skipped: bool = False) -> None:
        raise NotImplementedError

    def record_error(self, job_id: str, error: ErrorInfo) -> None:
        raise NotImplementedError

    def set_sd_info(self, job_id: str, sd_info: SDInfo) -> None:
        raise NotImplementedError

    def mark_succeeded(self, job_id: str, result: JobResult, *, now: float) -> bool:
        raise NotImplementedError

    def mark_failed(self, job_id: str, error: ErrorInfo, *, now: float) -> bool:
        raise NotImplementedError

    def mark_cancelled(self, job_id: str, *, now: float) -> bool:
        raise NotImplementedError

    def list_jobs(
        self, *, state: JobState | None = None, batch_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        raise NotImplementedError

    def ping(self) -> None:
        raise NotImplementedError

    def requeue(self, job_id: str, *, now: float) -> JobRecord | None:
        raise NotImplementedError

    def succeeded_fingerprints(self, fingerprints: Sequence[str]) -> set[str]:
        raise NotImplementedError

    def save_batch(self, batch: BatchRecord) -> None:
        raise NotImplementedError

    def get_batch(self, batch_id: str) -> BatchRecord:
        raise NotImplementedError


class Clock:
    """A settable clock shared by the schedulers of one test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A ``fire`` callback: records its calls and answers batch ids ``batch-0001``, ``batch-0002``..."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.calls: list[tuple[str, float]] = []
        self.fail = fail or {}
        self.lock = threading.Lock()

    def __call__(self, schedule: ScheduleRecord, fire_time: float) -> str:
        with self.lock:
            self.calls.append((schedule.name, fire_time))
            number = len(self.calls)
        if schedule.name in self.fail:
            raise self.fail[schedule.name]
        return f"batch-{number:04d}-{schedule.name}"


def make_schedule(name: str = "nightly", cron: str = "0 2 * * *", **changes: Any) -> ScheduleRecord:
    values: dict[str, Any] = {
        "name": name,
        "cron": cron,
        "timezone": "Europe/Berlin",
        "file": "/data/prompts.txt",
        "created_at": T0 - 7 * DAY,
    }
    return ScheduleRecord(**{**values, **changes})


def tick_together(schedulers: Sequence[Scheduler]) -> list[list[ScheduleRun]]:
    """Tick every scheduler at once, each from its own thread (released together by a barrier)."""
    barrier = threading.Barrier(len(schedulers))
    results: list[list[ScheduleRun]] = []

    def run(scheduler: Scheduler) -> None:
        barrier.wait()
        results.append(scheduler.tick())

    threads = [threading.Thread(target=run, args=(scheduler,)) for scheduler in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.fixture
def fake() -> FakeStore:
    return FakeStore()


# -- time arithmetic ---------------------------------------------------------------------------------


def test_next_fire_time_reads_cron_in_schedule_timezone() -> None:
    winter = datetime(2026, 1, 10, 12, tzinfo=UTC).timestamp()
    summer = datetime(2026, 7, 10, 12, tzinfo=UTC).timestamp()
    berlin = make_schedule(cron="0 2 * * *", timezone="Europe/Berlin")
    new_york = make_schedule(cron="0 2 * * *", timezone="America/New_York")

    assert next_fire_time(berlin, winter) == datetime(2026, 1, 11, 1, tzinfo=UTC).timestamp()
    assert next_fire_time(berlin, summer) == datetime(2026, 7, 11, 0, tzinfo=UTC).timestamp()
    assert next_fire_time(new_york, winter) == datetime(2026, 1, 11, 7, tzinfo=UTC).timestamp()
    assert next_fire_time(make_schedule(timezone="UTC"), winter) == datetime(2026, 1, 11, 2, tzinfo=UTC).timestamp()


def test_next_fire_time_is_strictly_after_an_occurrence() -> None:
    every_minute = make_schedule(cron="* * * * *")
    assert next_fire_time(every_minute, T0) == T0 + MINUTE
    assert next_fire_time(every_minute, T0 - 0.25) == T0
    just_before = math.nextafter(T0, 0.0)  # found by hypothesis: must not round up to T0
    assert next_fire_time(every_minute, just_before) == T0
    assert previous_fire_time(every_minute, just_before) == T0 - MINUTE


def test_previous_fire_time_includes_the_instant_itself() -> None:
    schedule = make_schedule(cron="0 2 * * *")
    assert previous_fire_time(schedule, T0) == T0
    assert previous_fire_time(schedule, T0 + 0.5) == T0
    assert previous_fire_time(schedule, T0 - 0.5) == T0 - DAY


def test_previous_fire_time_never_before_created_at() -> None:
    schedule = make_schedule(cron="0 2 * * *", created_at=T0 + 30 * MINUTE)  # added at 02:30
    assert previous_fire_time(schedule, T0 + HOUR) is None
    assert previous_fire_time(schedule, T0 + DAY) == T0 + DAY


def test_next_fire_time_spring_forward_berlin_follows_croniter() -> None:
    """02:30 does not exist on 2026-03-29 in Berlin: croniter fires at 03:00 CEST instead, once."""
    schedule = make_schedule(cron="30 2 * * *")
    t = datetime(2026, 3, 27, 12, tzinfo=BERLIN).timestamp()
    times = []
    for _ in range(4):
        t = next_fire_time(schedule, t)
        times.append(t)
    assert times == sorted(set(times))
    assert [datetime.fromtimestamp(x, BERLIN).isoformat() for x in times] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    assert previous_fire_time(schedule, times[1] + 1) == times[1]


def test_next_fire_time_fall_back_berlin_follows_croniter() -> None:
    """02:30 happens twice on 2026-10-25 in Berlin: croniter fires at both instants, an hour apart."""
    schedule = make_schedule(cron="30 2 * * *")
    t = datetime(2026, 10, 24, 12, tzinfo=BERLIN).timestamp()
    times = []
    for _ in range(3):
        t = next_fire_time(schedule, t)
        times.append(t)
    assert times == sorted(set(times))
    assert [datetime.fromtimestamp(x, BERLIN).isoformat() for x in times] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]


@settings(max_examples=200, deadline=None)
@given(
    at=st.floats(
        min_value=datetime(2026, 3, 28, tzinfo=UTC).timestamp(),
        max_value=datetime(2026, 10, 27, tzinfo=UTC).timestamp(),
    ),
    cron=st.sampled_from(["30 2 * * *", "*/7 * * * *", "0 */3 * * 1-5", "15 1,2,3 * * *"]),
)
def test_previous_and_next_fire_time_bracket_any_instant(at: float, cron: str) -> None:
    schedule = make_schedule(cron=cron, created_at=0.0)
    previous = previous_fire_time(schedule, at)
    assert previous is not None
    following = next_fire_time(schedule, at)
    assert previous <= at < following
    assert next_fire_time(schedule, previous) == following  # nothing in between


@pytest.mark.parametrize(
    "expr",
    ["0 2 * * *", "*/5 * * * MON-FRI", "0 0 L * *", "  15 3 1 * *  ", "@hourly", "@daily", "@weekly", "@monthly"],
)
def test_validate_cron_accepts_five_field_expressions_and_macros(expr: str) -> None:
    validate_cron(expr)  # no InputError: accepted

    # and what it accepts is a schedule that fires
    schedule = make_schedule(cron=expr)
    following = next_fire_time(schedule, T0)
    assert T0 < following <= T0 + 31 * DAY
    assert previous_fire_time(schedule, following) == following


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "has 4 fields, not 5"),
        ("0 2 * * * *", "has 6 fields, not 5"),
        ("@reboot", "has 1 fields, not 5"),
        ("61 * * * *", "invalid cron expression '61 * * * *'"),
        ("0 2 * * funday", "invalid cron expression"),
        ("0 2 30 2 *", "never fires"),
    ],
)
def test_validate_cron_rejects_with_one_line_and_example(expr: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_cron(expr)
    assert message in caught.value.message
    assert "\n" not in str(caught.value)
    assert hint_for(caught.value) is not None and '"0 2 * * *"' in hint_for(caught.value)


def test_parse_timezone_returns_zone_and_suggests_close_name() -> None:
    assert parse_timezone("Europe/Berlin") == BERLIN
    with pytest.raises(InputError) as caught:
        parse_timezone("Europe/Berln")
    assert caught.value.message == "unknown time zone 'Europe/Berln'"
    assert hint_for(caught.value) == "did you mean 'Europe/Berlin'?"


@pytest.mark.parametrize("name", ["", "Nowhere/Xyzzy12345", "../etc/passwd"])
def test_parse_timezone_rejects_nonsense(name: str) -> None:
    with pytest.raises(InputError, match="unknown time zone"):
        parse_timezone(name)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (200, "3m 20s"), (3600, "1h"), (7500, "2h 5m"), (7512, "2h 5m"), (100000, "1d 3h")],
)
def test_format_duration_two_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- exactly once ------------------------------------------------------------------------------------


def test_scheduler_two_instances_interleaved_fire_each_minute_once(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(cron="* * * * *", allow_overlap=True))
    clock, fire = Clock(T0 - 1), Recorder()
    first, second = Scheduler(fake, fire, clock=clock), Scheduler(fake, fire, clock=clock)

    for minute in range(3):
        for offset in (0.0, 0.2, 0.2, 15.0, 59.9):
            clock.now = T0 + minute * MINUTE + offset
            first.tick()
            second.tick()

    assert fire.calls == [("nightly", T0), ("nightly", T0 + MINUTE), ("nightly", T0 + 2 * MINUTE)]
    runs = fake.get_schedule("nightly").runs
    assert [(run.status, run.fire_time) for run in runs] == [("fired", T0 + m * MINUTE) for m in (2, 1, 0)]
    assert fake.claim_calls == 30  # both schedulers asked at every tick; the claim decided


def test_scheduler_four_threads_same_minute_fire_once(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(cron="* * * * *", allow_overlap=True))
    clock, fire = Clock(T0), Recorder()
    schedulers = [Scheduler(fake, fire, clock=clock) for _ in range(4)]
    for minute in range(3):
        clock.now = T0 + minute * MINUTE + 1
        results = tick_together(schedulers)
        assert sorted(len(r) for r in results) == [0, 0, 0, 1]

    assert len(fire.calls) == 3
    assert [run.status for run in fake.get_schedule("nightly").runs] == ["fired"] * 3


# -- missed runs -------------------------------------------------------------------------------------


def test_scheduler_missed_run_inside_grace_fires_once_at_start(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(grace_s=HOUR))
    clock, fire = Clock(T0 + 40 * MINUTE), Recorder()  # started 40 min after 02:00
    scheduler = Scheduler(fake, fire, clock=clock)

    runs = scheduler.tick()
    clock.now += 10 * MINUTE
    assert scheduler.tick() == []
    assert Scheduler(fake, fire, clock=clock).tick() == []  # a restarted scheduler too

    assert fire.calls == [("nightly", T0)]
    assert [(r.status, r.fire_time, r.at, r.batch_id) for r in runs] == [
        ("fired", T0, T0 + 40 * MINUTE, "batch-0001-nightly")
    ]


def test_scheduler_missed_run_outside_grace_recorded_skipped(fake: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    fake.save_schedule(make_schedule(grace_s=HOUR))
    fire = Recorder()
    scheduler = Scheduler(fake, fire, clock=Clock(T0 + 2 * HOUR + 5 * MINUTE))

    with caplog.at_level(logging.WARNING, logger="pipeline.batches.schedules"):
        runs = scheduler.tick()
        assert scheduler.tick() == []

    assert fire.calls == []
    reason = "missed: the scheduler was not running at 2026-01-05T02:00:00+01:00 (late by 2h 5m, grace 1h)"
    assert [(r.status, r.reason) for r in runs] == [("skipped", reason)]
    assert fake.get_schedule("nightly").runs == runs
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "nightly" in caplog.text and reason in caplog.text


def test_scheduler_only_most_recent_missed_occurrence_considered(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(cron="0 * * * *"))  # hourly; the scheduler was down 5 hours
    fire = Recorder()
    Scheduler(fake, fire, clock=Clock(T0 + 5 * HOUR + 10 * MINUTE)).tick()

    assert fire.calls == [("nightly", T0 + 5 * HOUR)]
    assert fake.claims == {("nightly", T0 + 5 * HOUR)}
    assert len(fake.get_schedule("nightly").runs) == 1


def test_scheduler_occurrence_before_created_at_never_fires(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(cron="0 2 * * *", created_at=T0 + 30 * MINUTE))  # added 02:30
    clock, fire = Clock(T0 + 31 * MINUTE), Recorder()
    scheduler = Scheduler(fake, fire, clock=clock)

    assert scheduler.tick() == []
    clock.now = T0 + DAY + 1
    assert [r.status for r in scheduler.tick()] == ["fired"]
    assert fire.calls == [("nightly", T0 + DAY)]


def test_scheduler_on_time_tolerance_covers_zero_grace(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(grace_s=0))
    fire = Recorder()
    assert [r.status for r in Scheduler(fake, fire, clock=Clock(T0 + 2)).tick()] == ["fired"]


# -- overlap -----------------------------------------------------------------------------------------


def overlap_run(fake: FakeStore, *, allow_overlap: bool, running: bool) -> list[ScheduleRun]:
    fake.save_schedule(make_schedule(cron="* * * * *", allow_overlap=allow_overlap))
    clock, fire = Clock(T0 + 1), Recorder()
    asked: list[str] = []

    def batch_running(batch_id: str) -> bool:
        asked.append(batch_id)
        return running

    scheduler = Scheduler(fake, fire, clock=clock, batch_running=batch_running)
    scheduler.tick()
    clock.now += MINUTE
    scheduler.tick()
    assert asked == ([] if allow_overlap else ["batch-0001-nightly"])
    return fake.get_schedule("nightly").runs


def test_scheduler_overlap_skips_while_previous_batch_running(fake: FakeStore) -> None:
    runs = overlap_run(fake, allow_overlap=False, running=True)
    assert [(r.status, r.reason) for r in runs] == [
        ("skipped", "previous batch batch-00 still running"),
        ("fired", None),
    ]


def test_scheduler_overlap_fires_when_previous_batch_done(fake: FakeStore) -> None:
    runs = overlap_run(fake, allow_overlap=False, running=False)
    assert [r.status for r in runs] == ["fired", "fired"]


def test_scheduler_allow_overlap_fires_while_previous_batch_running(fake: FakeStore) -> None:
    runs = overlap_run(fake, allow_overlap=True, running=True)
    assert [r.status for r in runs] == ["fired", "fired"]


def test_scheduler_default_batch_running_counts_unfinished_jobs(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(cron="* * * * *"))
    clock, fire = Clock(T0 + 1), Recorder()
    scheduler = Scheduler(fake, fire, clock=clock)
    scheduler.tick()
    fake.batch_counts["batch-0001-nightly"] = {JobState.SUCCEEDED: 3, JobState.MERGING: 1}
    clock.now += MINUTE
    assert [r.status for r in scheduler.tick()] == ["skipped"]
    fake.batch_counts["batch-0001-nightly"] = {JobState.SUCCEEDED: 3, JobState.FAILED: 1}
    clock.now += MINUTE
    assert [r.status for r in scheduler.tick()] == ["fired"]


# -- failures ----------------------------------------------------------------------------------------


class FakeBatchFileError(InputError):
    """Stands in for pipeline.batches.files.BatchFileError: an InputError listing every bad row."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


def test_scheduler_fire_raising_records_failed_and_next_schedule_fires(
    fake: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a-bad-file", "b-crash", "c-store", "d-good"):
        fake.save_schedule(make_schedule(name))
    fire = Recorder(
        fail={
            "a-bad-file": FakeBatchFileError("/data/prompts.txt is invalid", ["line 3: steps", "line 9: prompt"]),
            "b-crash": RuntimeError("boom"),
            "c-store": StoreUnavailable("cannot reach Redis"),
        }
    )
    with caplog.at_level(logging.ERROR, logger="pipeline.batches.schedules"):
        runs = Scheduler(fake, fire, clock=Clock(T0 + 1)).tick()

    assert [name for name, _ in fire.calls] == ["a-bad-file", "b-crash", "c-store", "d-good"]
    assert [(r.status, r.reason) for r in runs] == [
        ("failed", "/data/prompts.txt is invalid: line 3: steps; line 9: prompt"),
        ("failed", "unexpected error: RuntimeError: boom"),
        ("failed", "cannot reach Redis"),
        ("fired", None),
    ]
    assert fake.get_schedule("a-bad-file").runs[0].status == "failed"
    assert fake.get_schedule("d-good").runs[0].batch_id == "batch-0004-d-good"
    logged = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert logged == [
        (
            "schedule a-bad-file failed to fire: /data/prompts.txt is invalid: line 3: steps; line 9: prompt",
            False,
        ),
        ("schedule b-crash failed to fire", True),  # logger.exception: the traceback is logged
        ("schedule c-store failed to fire: cannot reach Redis", False),
    ]


def test_scheduler_batch_check_raising_records_failed(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule("a-first", cron="* * * * *"))
    fake.save_schedule(make_schedule("b-second", cron="* * * * *"))
    clock, fire = Clock(T0 + 1), Recorder()

    def batch_running(batch_id: str) -> bool:
        raise StoreUnavailable("cannot reach Redis")

    scheduler = Scheduler(fake, fire, clock=clock, batch_running=batch_running)
    scheduler.tick()
    clock.now += MINUTE
    runs = scheduler.tick()
    assert [(r.status, r.reason) for r in runs] == [("failed", "cannot reach Redis")] * 2
    assert len(fire.calls) == 2  # only the first minute fired


def test_scheduler_removed_schedule_ignored_quietly(fake: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    fake.save_schedule(make_schedule("gone-before-claim"))
    fake.save_schedule(make_schedule("gone-while-firing"))
    fake.save_schedule(make_schedule("stays"))
    listed = fake.list_schedules()
    fake.delete_schedule("gone-before-claim")
    fake.list_schedules = lambda: listed  # type: ignore[method-assign]
    fire = Recorder()

    def firing(schedule: ScheduleRecord, fire_time: float) -> str:
        if schedule.name == "gone-while-firing":
            fake.delete_schedule(schedule.name)
        return fire(schedule, fire_time)

    with caplog.at_level(logging.INFO, logger="pipeline.batches.schedules"):
        runs = Scheduler(fake, firing, clock=Clock(T0 + 1)).tick()

    assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [name for name, _ in fire.calls] == ["gone-while-firing", "stays"]
    assert [r.status for r in runs] == ["fired", "fired"]
    assert fake.get_schedule("stays").runs == runs[1:]


def test_scheduler_store_error_on_one_schedule_keeps_others(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule("broken", timezone="Mars/Olympus"))
    fake.save_schedule(make_schedule("fine"))
    fire = Recorder()
    runs = Scheduler(fake, fire, clock=Clock(T0 + 1)).tick()
    assert fire.calls == [("fine", T0)] and len(runs) == 1


# -- fire_now ----------------------------------------------------------------------------------------


def test_scheduler_fire_now_records_manual_run(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule())
    now = T0 + 5 * HOUR + 0.5
    fire = Recorder()
    run = Scheduler(fake, fire, clock=Clock(now)).fire_now("nightly")

    assert (run.status, run.fire_time, run.at, run.manual, run.batch_id) == (
        "fired",
        now,
        now,
        True,
        "batch-0001-nightly",
    )
    assert fire.calls == [("nightly", now)]
    assert fake.get_schedule("nightly").runs == [run]


def test_scheduler_fire_now_respects_overlap(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule())
    clock, fire = Clock(T0 + 1), Recorder()
    scheduler = Scheduler(fake, fire, clock=clock, batch_running=lambda batch_id: True)
    scheduler.tick()
    clock.now += HOUR
    run = scheduler.fire_now("nightly")
    assert (run.status, run.reason, run.manual) == ("skipped", "previous batch batch-00 still running", True)
    assert len(fire.calls) == 1


def test_scheduler_fire_now_unknown_schedule_raises(fake: FakeStore) -> None:
    with pytest.raises(ScheduleNotFound):
        Scheduler(fake, Recorder(), clock=Clock(T0)).fire_now("nope")
    assert fake.claims == set()


# -- the loop ----------------------------------------------------------------------------------------


def test_scheduler_seconds_until_next_earliest_capped(fake: FakeStore) -> None:
    clock = Clock(T0 + 0.25)
    scheduler = Scheduler(fake, Recorder(), clock=clock)
    assert scheduler.seconds_until_next() == MAX_WAIT_S
    fake.save_schedule(make_schedule("daily"))
    assert scheduler.seconds_until_next() == MAX_WAIT_S
    fake.save_schedule(make_schedule("minutely", cron="* * * * *"))
    assert scheduler.seconds_until_next() == pytest.approx(59.75)
    clock.now = T0 + 59.5
    assert scheduler.seconds_until_next() == pytest.approx(0.5)


def test_scheduler_run_forever_returns_promptly_when_stop_set(fake: FakeStore) -> None:
    fake.save_schedule(make_schedule(cron="* * * * *"))
    stop = threading.Event()
    fire = Recorder()

    def fire_and_stop(schedule: ScheduleRecord, fire_time: float) -> str:
        stop.set()
        return fire(schedule, fire_time)

    scheduler = Scheduler(fake, fire_and_stop, clock=Clock(T0 + 1))  # the next minute is 59 s away
    started = time.monotonic()
    thread = threading.Thread(target=scheduler.run_forever, args=(stop,), daemon=True)
    thread.start()
    thread.join(timeout=5)

    assert not thread.is_alive()
    assert time.monotonic() - started < 2
    assert fire.calls == [("nightly", T0)]


def test_scheduler_run_forever_survives_store_outage(fake: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    fake.save_schedule(make_schedule(cron="* * * * *"))
    fake.list_error = StoreUnavailable("redis is down")
    stop = threading.Event()
    fire = Recorder(fail={"nightly": RuntimeError("fire broke")})
    clock = Clock(T0 + 1)

    def fire_then_stop(schedule: ScheduleRecord, fire_time: float) -> str:
        if len(fire.calls) == 1:
            stop.set()
        clock.now += MINUTE
        return fire(schedule, fire_time)

    thread = threading.Thread(
        target=Scheduler(fake, fire_then_stop, clock=clock).run_forever, args=(stop,), kwargs={"max_sleep_s": 0.01}
    )
    with caplog.at_level(logging.ERROR, logger="pipeline.batches.schedules"):
        thread.start()
        thread.join(timeout=5)

    assert not thread.is_alive()
    assert len(fire.calls) == 2  # went on after the outage and after fire raising
    assert [r.status for r in fake.get_schedule("nightly").runs] == ["failed", "failed"]
    assert "scheduler tick failed" in caplog.text


# -- real stores: two schedulers (two connections) on one store ----------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StatusStore, StatusStore]]:
    """Two store objects on one store, as two scheduler processes would open it."""
    if request.param == "sqlite":
        path = tmp_path / "status.sqlite3"
        pair: tuple[StatusStore, StatusStore] = (SqliteStatusStore(path), SqliteStatusStore(path))
    else:
        url = request.getfixturevalue("redis_url")
        pair = (RedisStatusStore.from_url(url), RedisStatusStore.from_url(url))
    yield pair
    for made in pair:
        made.close()


def test_scheduler_real_store_two_schedulers_fire_each_minute_once(
    store_pair: tuple[StatusStore, StatusStore],
) -> None:
    store_a, store_b = store_pair
    store_a.save_schedule(make_schedule(cron="* * * * *", allow_overlap=True))
    clock, fire = Clock(T0), Recorder()
    schedulers = [Scheduler(s, fire, clock=clock) for s in (store_a, store_b, store_a, store_b)]

    for minute in range(3):
        clock.now = T0 + minute * MINUTE + 0.5
        if minute == 1:  # a fresh occurrence raced by four threads
            assert sorted(len(runs) for runs in tick_together(schedulers)) == [0, 0, 0, 1]
        first_two = [schedulers[1], schedulers[0]] if minute % 2 else schedulers[:2]
        for scheduler in first_two + schedulers:  # interleaved, either process first
            clock.now += 5
            scheduler.tick()

    assert fire.calls == [("nightly", T0 + m * MINUTE) for m in range(3)]
    runs = store_b.get_schedule("nightly").runs
    assert [(r.status, r.fire_time) for r in runs] == [("fired", T0 + m * MINUTE) for m in (2, 1, 0)]


def test_scheduler_real_store_overlap_uses_job_states(store_pair: tuple[StatusStore, StatusStore]) -> None:
    store, _ = store_pair
    store.save_schedule(make_schedule(cron="* * * * *"))
    job_ids: list[str] = []

    def fire(schedule: ScheduleRecord, fire_time: float) -> str:
        batch_id = f"b{int(fire_time)}"
        job_id = f"{batch_id}-job"
        spec = JobSpec(
            job_id=job_id,
            kind="process",
            batch_id=batch_id,
            step_params=StepParams(),
            output_name=f"out/{job_id}",
            created_at=fire_time,
        )
        store.create_jobs([spec])
        job_ids.append(job_id)
        return batch_id

    clock = Clock(T0 + 1)
    scheduler = Scheduler(store, fire, clock=clock)
    scheduler.tick()
    clock.now += MINUTE
    assert [r.status for r in scheduler.tick()] == ["skipped"]  # the first batch's job is queued
    store.mark_succeeded(job_ids[0], JobResult(), now=clock.now)
    clock.now += MINUTE
    assert [r.status for r in scheduler.tick()] == ["fired"]
    assert [r.status for r in store.get_schedule("nightly").runs] == ["fired", "skipped", "fired"]
