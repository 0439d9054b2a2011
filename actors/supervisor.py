"""The ``sdpipe worker`` main process: Dramatiq's worker and fork processes, replaced when they die.

Dramatiq's own main loop (``dramatiq.cli.main``) stops every process when one exits unexpectedly
("Worker with PID ... exited unexpectedly. Shutting down...", dramatiq #376) and leaves the restart
to systemd or Kubernetes. This loop starts the same child processes with Dramatiq's own
``worker_process``/``fork_process`` (so boot, logging, signals and graceful stop are Dramatiq's),
but a child that dies while the worker runs (kill -9, the OOM killer) is started again at once,
with the same id, and the others carry on. Its unacked messages come back through the broker's
heartbeat maintenance, as they would after any crash. A crash loop (:data:`CRASH_LOOP_DEATHS`
deaths within :data:`CRASH_LOOP_WINDOW_S`) or a child that cannot boot (import or broker
connection error) stops everything instead, with one message. SIGTERM/SIGINT stop gracefully
(twice: at once) and SIGHUP reloads, as with Dramatiq's CLI.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from threading import Event, Thread
from typing import Any

from dramatiq import cli as dramatiq_cli
from dramatiq.canteen import Canteen, canteen_get
from dramatiq.compat import StreamablePipe

__all__ = ["CRASH_LOOP_DEATHS", "CRASH_LOOP_WINDOW_S", "RET_CRASH_LOOP", "Supervisor"]

logger = logging.getLogger(__name__)

#: This many child deaths within :data:`CRASH_LOOP_WINDOW_S` is a crash loop: stop, do not restart.
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW_S = 60.0
#: Exit code of a worker stopped by a crash loop (Dramatiq's own codes are 0-4).
RET_CRASH_LOOP = 5
#: Children exiting with these at boot will not do better when started again.
_BOOT_FAILURES = frozenset({dramatiq_cli.RET_IMPORT, dramatiq_cli.RET_CONNECT})


@dataclass
class _Child:
    kind: str  # "worker" or "fork"
    child_id: int
    target: Callable[..., Any]
    make_args: Callable[[StreamablePipe], tuple[Any, ...]]
    process: multiprocessing.Process = field(init=False)


class Supervisor:
    """Runs ``args.processes`` Dramatiq worker processes (and their middleware's forks) until stopped."""

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        crash_loop_deaths: int = CRASH_LOOP_DEATHS,
        crash_loop_window_s: float = CRASH_LOOP_WINDOW_S,
    ) -> None:
        self.args = args
        self.crash_loop_deaths = crash_loop_deaths
        self.crash_loop_window_s = crash_loop_window_s
        #: Set when the run ended in a crash loop or a boot failure: the one-line reason.
        self.failure: str | None = None
        self._deaths: deque[float] = deque()
        self._running = True
        self._reload = False
        self._stop_logs = Event()
        self._log_threads: list[Thread] = []
        self._children: list[_Child] = []

    def _start(self, child: _Child) -> None:
        read_pipe, write_pipe = multiprocessing.Pipe(duplex=False)
        pipe = StreamablePipe(write_pipe)  # type: ignore[no-untyped-call]
        child.process = multiprocessing.Process(
            target=child.target, args=child.make_args(pipe), daemon=child.kind == "fork"
        )
        child.process.start()
        write_pipe.close()
        # Dramatiq's log watcher copies the child's log lines to stderr until the pipe closes.
        watcher = Thread(target=dramatiq_cli.watch_logs, args=(self.args.log_file, [read_pipe], self._stop_logs))
        watcher.start()
        self._log_threads.append(watcher)

    def _signal_all(self, signum: signal.Signals) -> None:
        for child in self._children:
            if child.process.exitcode is None and child.process.pid is not None:
                try:
                    os.kill(child.process.pid, signum.value)
                except OSError:  # exited meanwhile
                    pass

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        sig = signal.Signals(signum)
        self._running = False
        self._reload = sig == getattr(signal, "SIGHUP", None)  # Dramatiq's graceful reload: stop, then re-exec
        self._signal_all(signal.SIGTERM if sig == signal.SIGINT else sig)

    def _crash_loop(self, now: float) -> bool:
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.crash_loop_window_s:
            self._deaths.popleft()
        return len(self._deaths) >= self.crash_loop_deaths

    def _handle_death(self, child: _Child) -> int:
        """A child exited while the worker runs: start it again, or stop everything. Returns the exit code so far."""
        code = child.process.exitcode
        name = f"{child.kind} process {child.child_id} (PID {child.process.pid})"
        if child.kind == "worker" and code in _BOOT_FAILURES:
            self.failure = f"{name} could not start (exit code {code}); see the log above"
        elif self._crash_loop(time.monotonic()):
            self.failure = (
                f"{len(self._deaths)} worker processes died within {self.crash_loop_window_s:g} s "
                f"(last: {name}, exit code {code}): crash loop, stopping"
            )
        if self.failure is not None:
            logger.critical(self.failure)
            self._running = False
            self._signal_all(signal.SIGTERM)
            return RET_CRASH_LOOP if code not in _BOOT_FAILURES else int(code or 1)
        logger.warning("%s exited unexpectedly (exit code %s): starting it again", name, code)
        self._start(child)
        return dramatiq_cli.RET_OK

    def run(self) -> int:
        """Start the children and supervise them until they all stopped; returns the exit code."""
        args = self.args
        canteen = multiprocessing.Value(Canteen)
        dramatiq_cli.try_block_signals()  # type: ignore[no-untyped-call]
        # The root logger of this (parent) process, as Dramatiq's parent sets it up.
        dramatiq_cli.setup_parent_logging(args)  # type: ignore[no-untyped-call]

        def worker_args(worker_id: int) -> Callable[[StreamablePipe], tuple[Any, ...]]:
            event = multiprocessing.Event()
            events.append(event)
            return lambda pipe: (args, worker_id, pipe, canteen, event)

        events: list[Any] = []
        workers = [
            _Child("worker", worker_id, dramatiq_cli.worker_process, worker_args(worker_id))
            for worker_id in range(args.processes)
        ]
        self._children.extend(workers)
        for child in workers:
            self._start(child)
        for child, event in zip(workers, events, strict=True):  # forks start once the workers booted (#297, #701)
            if child.process.is_alive() and not event.wait(timeout=args.worker_fork_timeout / 1000):
                break
        for fork_id, fork_path in enumerate(chain(args.forks, canteen_get(canteen))):  # type: ignore[no-untyped-call]
            fork = _Child("fork", fork_id, dramatiq_cli.fork_process, _fork_args(args, fork_id, fork_path))
            self._children.append(fork)
            self._start(fork)

        for sig in dramatiq_cli.HANDLED_SIGNALS:
            signal.signal(sig, self._on_signal)
        dramatiq_cli.try_unblock_signals()  # type: ignore[no-untyped-call]

        retcode = dramatiq_cli.RET_OK
        try:
            while self._running or any(c.process.exitcode is None for c in workers):
                alive = [c.process.sentinel for c in self._children if c.process.exitcode is None]
                multiprocessing.connection.wait(alive, timeout=1)
                for child in self._children:
                    code = child.process.exitcode
                    if code is None:
                        continue
                    if self._running:
                        retcode = self._handle_death(child) or retcode
                    elif child.kind == "worker" and self.failure is None:
                        retcode = retcode or code
        finally:
            self._signal_all(signal.SIGTERM)  # forks (daemons) and anything left
            for child in self._children:
                child.process.join(timeout=5)
            self._stop_logs.set()
            for watcher in self._log_threads:
                watcher.join()
        if self._reload:
            os.execvp(sys.argv[0], sys.argv)
        return dramatiq_cli.RET_KILLED if retcode < 0 else retcode


def _fork_args(args: argparse.Namespace, fork_id: int, fork_path: str) -> Callable[[StreamablePipe], tuple[Any, ...]]:
    return lambda pipe: (args, fork_id, fork_path, pipe)
