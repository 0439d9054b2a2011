"""Live progress of a batch: a bar with done/failed/running, rate and ETA; survives store outages."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli.output import err_console
from pipeline.errors import StoreUnavailable
from pipeline.events.log import EventLog
from pipeline.models import JobState
from pipeline.store import StatusStore

__all__ = ["StoreOutage", "WorkerWatch", "watch_batch"]

#: Seconds between two reads of the batch's counts.
POLL_INTERVAL_S = 0.5
#: Without a terminal (cron, systemd), seconds between two plain progress lines.
PLAIN_LINE_INTERVAL_S = 30.0
#: Below this terminal width the bar is narrower and leaves out the queued count, the rate and the
#: elapsed time, so the whole line fits (80 columns with 10,000 jobs).
WIDE_BAR_COLUMNS = 120
#: The bar's own width in a narrow terminal, in characters.
NARROW_BAR_CHARS = 16
#: Seconds between two looks at the worker heartbeats while waiting (Redis mode).
WORKER_CHECK_S = 2.0
#: Seconds between reconnection attempts while the status store is unreachable.
STORE_RETRY_S = 1.0

_RUNNING = (JobState.GENERATING, JobState.SPLITTING, JobState.BLURRING, JobState.MERGING)
_DONE = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StoreOutage:
    """Reports a status-store outage once when it starts and once when it ends; waiters keep waiting."""

    def __init__(self) -> None:
        self._since: float | None = None

    def down(self, exc: StoreUnavailable) -> None:
        """Note the outage (printed the first time) and pause before the caller tries again."""
        if self._since is None:
            self._since = time.monotonic()
            err_console.print(f"waiting: {exc.message}; still waiting…", markup=False)
        time.sleep(STORE_RETRY_S)

    def up(self) -> None:
        """The store answered: report how long it was away, if it was."""
        if self._since is not None:
            err_console.print(f"status store back after {time.monotonic() - self._since:.0f}s")
            self._since = None


class WorkerWatch:
    """While a CLI waits in Redis mode: says once when no ``sdpipe worker`` has beaten within the
    heartbeat window (the jobs cannot move), and once when one is back.

    ``live_workers`` is :meth:`actors.Runtime.live_workers`; ``reported``: the caller already said
    that none runs (at submit time), so a first look finding none stays quiet.
    """

    def __init__(self, live_workers: Callable[[], int], *, window_s: float, reported: bool = False) -> None:
        self._live_workers = live_workers
        self._window_s = window_s
        self._none = reported
        self._next_check = 0.0

    def check(self) -> None:
        """Look at the heartbeats (at most every :data:`WORKER_CHECK_S`) and report a change."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + WORKER_CHECK_S
        try:
            alive = self._live_workers()
        except StoreUnavailable:  # the waiter reports the outage itself
            return
        if alive == 0 and not self._none:
            err_console.print(
                f"waiting: no sdpipe worker has been alive in the last {self._window_s:g} s; the jobs wait in "
                "Redis until `sdpipe worker` runs (still waiting…)",
                markup=False,
            )
        elif alive and self._none:
            err_console.print(f"sdpipe worker back: {alive} process(es) alive", markup=False)
        self._none = alive == 0

    def settle(self) -> None:
        """The wait is over: if it said that no worker was alive, look once more so that the worker
        which finished the work is reported back (its jobs can end before the next timed check)."""
        if self._none:
            self._next_check = 0.0
            self.check()


def watch_batch(
    store: StatusStore,
    batch_id: str,
    total: int,
    *,
    live: bool,
    workers: WorkerWatch | None = None,
    events: EventLog | None = None,
) -> tuple[dict[JobState, int], float]:
    """Show the batch's progress until every job is terminal; return the final counts and elapsed seconds.

    ``workers``: say when no worker is alive (Redis mode). ``events``: count again when the batch's
    events say something changed (at most every ``POLL_INTERVAL_S``, at least every second), instead
    of on a fixed poll.
    """
    cursor = events.latest_id() if events is not None else None
    started = time.monotonic()
    last_line = started
    outage = StoreOutage()
    wide = err_console.width >= WIDE_BAR_COLUMNS
    columns: list[ProgressColumn] = [
        TextColumn(f"batch {batch_id[:8]}"),
        BarColumn(bar_width=None if wide else NARROW_BAR_CHARS),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}" if wide else "{task.fields[short]}"),
    ]
    if wide:
        columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    columns += [TextColumn("ETA"), TimeRemainingColumn()]
    progress = Progress(*columns, console=err_console, disable=not live, transient=False)
    with progress:
        task = progress.add_task("batch", total=total, detail="", short="", rate="")
        while True:
            try:
                counts = store.count_by_state(batch_id=batch_id)
            except StoreUnavailable as exc:
                outage.down(exc)
                continue
            outage.up()
            if total and not any(counts.values()):  # the batch's jobs were recorded: the store lost them
                raise store.records_gone(batch_id, kind="batch")
            done = sum(counts[state] for state in _DONE)
            total = max(total, sum(counts.values()))  # a resumed batch also holds superseded jobs
            progress.update(task, total=total)
            elapsed = time.monotonic() - started
            running = sum(counts[state] for state in _RUNNING)
            detail = f"failed {counts[JobState.FAILED]} · in progress {running} · queued {counts[JobState.QUEUED]}"
            short = f"failed {counts[JobState.FAILED]} · running {running}"
            rate = f"{done / elapsed * 60:.1f}/min" if elapsed > 1 else ""
            progress.update(task, completed=done, detail=detail, short=short, rate=rate)
            if not live and time.monotonic() - last_line >= PLAIN_LINE_INTERVAL_S:
                # cron, systemd, CI: no live bar, so a plain progress line now and then
                err_console.print(f"batch {batch_id[:8]}: {done}/{total} done · {detail}", markup=False)
                last_line = time.monotonic()
            if done >= total:
                if workers is not None:
                    workers.settle()
                return counts, elapsed
            if workers is not None:
                workers.check()
            if events is None:
                time.sleep(POLL_INTERVAL_S)
                continue
            try:
                cursor = _wait_for_change(events, batch_id, cursor)
            except StoreUnavailable as exc:
                outage.down(exc)


def _wait_for_change(events: EventLog, batch_id: str, cursor: str | None) -> str:
    """Block until the batch has new events (or a second passed); the new cursor."""
    started = time.monotonic()
    page = events.read(cursor, batch_id=batch_id, block_s=1.0)
    # Several events in a burst (every step of many jobs): count at most every POLL_INTERVAL_S.
    time.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - started)) if page.events else 0.0)
    return page.cursor
