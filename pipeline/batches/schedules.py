"""Cron schedules that fire batch files: time arithmetic and the scheduler loop.

Cron parsing and time-zone arithmetic are croniter's and zoneinfo's; this module adds the policy:

- **Exactly once.** Each tick looks only at a schedule's most recent occurrence and claims it in the
  store (:meth:`StatusStore.claim_fire`); only the one caller whose claim succeeds acts on it, so
  any number of scheduler processes fire each occurrence once.
- **Missed runs.** An occurrence handled later than the schedule's grace window (never less than
  :data:`MIN_GRACE_S`) is recorded ``skipped`` with the reason; within it, it fires once. Older
  missed occurrences are coalesced silently: only the most recent one is ever considered.
  Occurrences before the schedule's ``created_at`` never fire.
- **Overlap.** While the batch of the schedule's last ``fired`` run still has unfinished jobs, an
  occurrence is recorded ``skipped`` unless the schedule has ``allow_overlap``.
- **Failures.** ``fire`` raising is recorded ``failed`` with the error; the other schedules go on.

DST follows croniter: a wall-clock time that does not exist (02:30 on the spring-forward day in
Europe/Berlin) fires at the first valid time after it (03:00), and one that exists twice (02:30 on
the fall-back day) fires twice, once at each UTC instant.
"""

from __future__ import annotations

import difflib
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

from pipeline.errors import InputError, PipelineError, ScheduleNotFound
from pipeline.models import JobState, ScheduleRecord, ScheduleRun, ScheduleRunStatus
from pipeline.store.base import StatusStore

__all__ = [
    "CRON_MACROS",
    "MAX_WAIT_S",
    "MIN_GRACE_S",
    "FireFn",
    "Scheduler",
    "effective_grace_s",
    "next_fire_time",
    "parse_timezone",
    "previous_fire_time",
    "validate_cron",
]

logger = logging.getLogger(__name__)

#: (schedule, fire_time) -> batch id. Reads the schedule's file at fire time and enqueues its batch.
FireFn = Callable[[ScheduleRecord, float], str]

#: The longest :meth:`Scheduler.seconds_until_next` answers (also when there are no schedules).
MAX_WAIT_S = 60.0
#: An occurrence handled within this many seconds is on time, whatever the schedule's grace window.
MIN_GRACE_S = 60.0
#: The ``@`` macros croniter reads (each fires: a 5-field expression stands behind it).
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELDS = '5 fields "minute hour day-of-month month day-of-week", or @hourly, @daily, @weekly, @monthly'
_ACTIVE_STATES = tuple(state for state in JobState if not state.terminal)


#: Seconds in a day, and the claim name under which one scheduler a day runs ``Scheduler.daily``
#: (only a schedule named so, firing at 00:00 UTC, would share its claims).
DAY_S = 86400
DAILY_CLAIM = "sdpipe:daily"


def effective_grace_s(schedule: ScheduleRecord) -> float:
    """How late an occurrence may be handled and still fire: the schedule's grace, at least :data:`MIN_GRACE_S`."""
    return max(schedule.grace_s, MIN_GRACE_S)


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``Europe/Berlin``).

    Raises:
        InputError: no such zone (``expected`` is the closest name, if one is close).
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, available_timezones(), n=1)
        raise InputError(
            f"unknown time zone {name!r}", field="timezone", value=name, expected=close[0] if close else None
        ) from None


def validate_cron(expr: str) -> None:
    """Check that ``expr`` is a 5-field cron expression, or one of croniter's macros
    (:data:`CRON_MACROS`: ``@hourly`` ...), that fires at least once.

    Raises:
        InputError: wrong number of fields, a field croniter rejects, or a date that never occurs.
    """
    fields = expr.split()
    if expr.strip() in CRON_MACROS:
        return
    if len(fields) != 5:
        raise InputError(
            f"cron expression {expr!r} has {len(fields)} fields, not 5", field="cron", value=expr, expected=_CRON_FIELDS
        )
    if not croniter.is_valid(expr):
        raise InputError(f"invalid cron expression {expr!r}", field="cron", value=expr, expected=_CRON_FIELDS)
    try:
        croniter(expr, 0.0).get_next(float)
    except CroniterError:
        raise InputError(
            f"cron expression {expr!r} never fires", field="cron", value=expr, expected=_CRON_FIELDS
        ) from None


def _cron(schedule: ScheduleRecord, start: float) -> croniter:
    # Occurrences fall on whole seconds, so flooring changes no answer; it keeps fromtimestamp from
    # rounding 1.9999999 up to 2.0 (which would make an occurrence at 2.0 look already past).
    start_dt = datetime.fromtimestamp(math.floor(start), parse_timezone(schedule.timezone))
    return croniter(schedule.cron, start_dt)


def next_fire_time(schedule: ScheduleRecord, after: float) -> float:
    """The first occurrence strictly after ``after`` (epoch seconds), the cron read in the schedule's zone."""
    result = float(_cron(schedule, after).get_next(float))
    while result <= after:  # defensive: croniter already answers strictly later
        result = float(_cron(schedule, result).get_next(float))
    return result


def previous_fire_time(schedule: ScheduleRecord, at: float) -> float | None:
    """The latest occurrence at or before ``at`` and not before ``schedule.created_at``, else None."""
    # croniter's get_prev is strictly earlier; the occurrence right after it may still be <= at.
    result = float(_cron(schedule, at).get_prev(float))
    following = next_fire_time(schedule, result)
    if following <= at:
        result = following
    return result if schedule.created_at <= result <= at else None


def format_duration(seconds: float) -> str:
    """``2h 5m``, ``1h``, ``3m 20s``, ``1d 4h``: the two largest units, zero parts left out."""
    total = max(0, round(seconds))
    parts = [(total // 86400, "d"), (total % 86400 // 3600, "h"), (total % 3600 // 60, "m"), (total % 60, "s")]
    first = next((i for i, (value, _) in enumerate(parts) if value), len(parts) - 1)
    return " ".join(f"{value}{unit}" for value, unit in parts[first : first + 2] if value) or "0s"


def _failure_reason(exc: Exception) -> str:
    if not isinstance(exc, PipelineError):
        return f"unexpected error: {type(exc).__name__}: {exc}"
    reason = str(exc)
    problems = getattr(exc, "problems", None)  # BatchFileError lists every bad row
    if isinstance(problems, list) and problems:
        shown = "; ".join(str(problem) for problem in problems[:_REASON_PROBLEMS])
        more = f"; and {len(problems) - _REASON_PROBLEMS} more" if len(problems) > _REASON_PROBLEMS else ""
        reason += f": {shown}{more}"
    return reason


#: How many of a bad file's problems a failed run's reason lists.
_REASON_PROBLEMS = 10


class Scheduler:
    """Fires due schedules from the store; run one or more in any number of processes.

    Args:
        store: where schedules, claims and runs live (shared by every scheduler process).
        fire: enqueues one schedule's batch and returns its id.
        clock: epoch seconds now (injected by tests).
        batch_running: whether a batch still has unfinished jobs; by default asked of the store.
        daily: run once a (UTC) day by one of the schedulers sharing the store (RETENTION_DAYS: the prune).
    """

    def __init__(
        self,
        store: StatusStore,
        fire: FireFn,
        *,
        clock: Callable[[], float] = time.time,
        batch_running: Callable[[str], bool] | None = None,
        daily: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.fire = fire
        self.clock = clock
        self.batch_running = batch_running or self._batch_running_in_store
        self.daily = daily

    def _batch_running_in_store(self, batch_id: str) -> bool:
        counts = self.store.count_by_state(batch_id=batch_id)
        return any(counts.get(state, 0) > 0 for state in _ACTIVE_STATES)

    def tick(self) -> list[ScheduleRun]:
        """Handle each schedule's most recent occurrence once; return what this call did (also recorded).

        Only the latest occurrence at or before now is considered: when the scheduler was down,
        older missed occurrences are coalesced into it silently (and it is skipped, with the reason
        recorded, if beyond the grace window). An occurrence another scheduler claimed is left alone.

        Raises:
            StoreUnavailable: the schedules cannot be listed (errors per schedule are only logged).
        """
        runs: list[ScheduleRun] = []
        for schedule in self.store.list_schedules():
            now = self.clock()  # per schedule: firing the ones before may have taken a while
            try:
                occurrence = previous_fire_time(schedule, now)
                if occurrence is None or not self.store.claim_fire(schedule.name, occurrence):
                    continue
            except Exception:
                logger.exception("schedule %s: cannot check whether it is due", schedule.name)
                continue
            run = self._handle_claimed(schedule.name, occurrence, now, manual=False)
            if run is not None:
                runs.append(run)
        self._run_daily()
        return runs

    def _run_daily(self) -> None:
        """Run :attr:`daily` if no scheduler has run it yet today (a claim, like an occurrence's)."""
        if self.daily is None:
            return
        today = self.clock() // DAY_S * DAY_S
        try:
            if not self.store.claim_fire(DAILY_CLAIM, today):
                return
            self.daily()
        except Exception:
            logger.exception("the daily task (retention) failed; next try tomorrow")

    def fire_now(self, name: str) -> ScheduleRun:
        """Fire ``name`` at once (``schedule run NAME``), the overlap rule included; record the run.

        The claim is for the current instant, so it never stands in for a cron occurrence unless both
        fall on the same instant (to the store's millisecond), in which case it is fired once, by hand.
        If that instant was already claimed, the returned ``skipped`` run is not recorded.

        Raises:
            ScheduleNotFound: no schedule has that name.
        """
        self.store.get_schedule(name)
        now = self.clock()
        if not self.store.claim_fire(name, now):
            return ScheduleRun(fire_time=now, at=now, status="skipped", reason="already fired at this instant")
        run = self._handle_claimed(name, now, now, manual=True)
        if run is None:
            raise ScheduleNotFound(f"no schedule {name!r}", field="name", value=name)
        return run

    def _handle_claimed(self, name: str, occurrence: float, now: float, *, manual: bool) -> ScheduleRun | None:
        """Decide, fire and record a claimed occurrence; None when the schedule is gone."""
        try:
            schedule = self.store.get_schedule(name)  # fresh: runs of other schedulers, edits, removal
        except ScheduleNotFound:
            logger.info("schedule %s was removed; occurrence not fired", name)
            return None
        try:
            run = self._decide_and_fire(schedule, occurrence, now, manual=manual)
        except Exception as exc:
            logger.exception("schedule %s: checking or firing the occurrence failed", name)
            run = ScheduleRun(fire_time=occurrence, at=now, status="failed", reason=_failure_reason(exc), manual=manual)
        try:
            self.store.add_schedule_run(name, run)
        except ScheduleNotFound:
            logger.info("schedule %s was removed meanwhile; its %s run is not recorded", name, run.status)
        except Exception:
            logger.exception("schedule %s: cannot record its %s run (batch %s)", name, run.status, run.batch_id)
        return run

    def _decide_and_fire(self, schedule: ScheduleRecord, occurrence: float, now: float, *, manual: bool) -> ScheduleRun:
        def outcome(status: ScheduleRunStatus, reason: str | None = None, batch_id: str | None = None) -> ScheduleRun:
            return ScheduleRun(
                fire_time=occurrence, at=now, status=status, reason=reason, batch_id=batch_id, manual=manual
            )

        name = schedule.name
        lateness = now - occurrence
        grace = effective_grace_s(schedule)
        if not manual and lateness > grace:
            when = datetime.fromtimestamp(occurrence, parse_timezone(schedule.timezone)).isoformat(timespec="seconds")
            reason = (
                f"missed: the scheduler was not running at {when} "
                f"(late by {format_duration(lateness)}, grace {format_duration(grace)})"
            )
            logger.warning("schedule %s skipped: %s", name, reason)
            return outcome("skipped", reason)
        last = next((run for run in schedule.runs if run.status == "fired" and run.batch_id), None)
        if last is not None and last.batch_id is not None and not schedule.allow_overlap:
            if self.batch_running(last.batch_id):
                reason = f"previous batch {last.batch_id[:8]} still running"
                logger.info("schedule %s skipped: %s", name, reason)
                return outcome("skipped", reason)
        try:
            batch_id = self.fire(schedule, occurrence)
        except PipelineError as exc:
            logger.error("schedule %s failed to fire: %s", name, _failure_reason(exc))
            return outcome("failed", _failure_reason(exc))
        except Exception as exc:
            logger.exception("schedule %s failed to fire", name)
            return outcome("failed", _failure_reason(exc))
        logger.info("schedule %s fired batch %s%s", name, batch_id, " (by hand)" if manual else "")
        return outcome("fired", batch_id=batch_id)

    def seconds_until_next(self) -> float:
        """Seconds until the earliest next occurrence over all schedules, at most :data:`MAX_WAIT_S`."""
        now = self.clock()
        wait = MAX_WAIT_S
        try:
            schedules = self.store.list_schedules()
        except Exception:
            logger.exception("cannot list the schedules")
            return wait
        for schedule in schedules:
            try:
                wait = min(wait, next_fire_time(schedule, now) - now)
            except Exception:
                logger.exception("schedule %s: cannot compute its next fire time", schedule.name)
        return max(wait, 0.0)

    def run_forever(self, stop: threading.Event, *, max_sleep_s: float = 30.0) -> None:
        """Tick, then sleep until the next occurrence (at most ``max_sleep_s``), until ``stop`` is set.

        Never ends on an error: a failing schedule is recorded and logged by :meth:`tick`; a store
        that cannot be reached is logged and tried again after the sleep.
        """
        logger.info("scheduler started")
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("scheduler tick failed; trying again")
            # A hair past the occurrence, so that waking up a little early never misses it.
            stop.wait(min(self.seconds_until_next() + 0.01, max_sleep_s))
        logger.info("scheduler stopped")
