"""A1111's ``queue_lock`` as the mock keeps it: one generation at a time, in arrival order.

A bare :class:`threading.Lock` wakes its waiters in no particular order, while A1111's lock is FIFO, so
:class:`Turns` hands out tickets and serves them in order. A turn taken for a task (a txt2img) is
tracked on the :class:`~pipeline.sd.mock.faults.TaskBoard` (``/internal/progress``) and counted as
waiting, then active; a turn taken for other work (a checkpoint load from ``POST /options``, which
A1111 queues with ``wrap_queued_call``) is neither.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pipeline.sd.mock.faults import TaskBoard

__all__ = ["Turns"]


class Turns:
    """The FIFO turn queue; every attribute is read and written under ``lock``.

    Args:
        lock: the server's state lock (the queue waits on a condition over it).
        tasks: where tasks are marked queued, active and completed.
    """

    def __init__(self, lock: threading.Lock, tasks: TaskBoard) -> None:
        self._turn = threading.Condition(lock)
        self._tasks = tasks
        self._next_ticket = 0
        self._now_serving = 0
        #: Tasks waiting for their turn, and tasks holding it (0 or 1).
        self.waiting = 0
        self.active = 0
        #: Most tasks holding the turn at once (1 unless the FIFO is broken).
        self.max_concurrent = 0
        #: Most tasks held at once, running or waiting (what a pool must cap).
        self.max_in_flight = 0

    def acquire(self, task_id: str | None) -> None:
        """Wait for this caller's turn; ``task_id`` None for work that is no task."""
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            if task_id is not None:
                self.waiting += 1
                self.max_in_flight = max(self.max_in_flight, self.waiting + self.active)
                self._tasks.enqueue(task_id)
            self._turn.wait_for(lambda: self._now_serving == ticket)
            if task_id is not None:
                self._tasks.start(task_id)
                self.waiting -= 1
                self.active += 1
                self.max_concurrent = max(self.max_concurrent, self.active)

    def release(self, task_id: str | None, *, completed: bool) -> None:
        """Hand the turn to the next ticket."""
        with self._turn:
            if task_id is not None:
                self._tasks.finish(task_id, completed=completed)
                self.active -= 1
            self._now_serving += 1
            self._turn.notify_all()

    def run(self, work: Callable[[], object]) -> object:
        """Run ``work`` holding a turn, like A1111's ``wrap_queued_call``."""
        self.acquire(None)
        try:
            return work()
        finally:
            self.release(None, completed=True)

    def reset_peaks(self) -> None:
        """Start the peaks over from what is held now (``/mock/reset``); call with the lock held."""
        self.max_concurrent = self.active
        self.max_in_flight = self.active + self.waiting
