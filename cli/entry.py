"""The ``sdpipe`` process around a command: the collector paused while it loads, and a quick exit after.

The console script starts here, not in :mod:`cli.main`: this module imports nothing but the standard
library, so the cyclic garbage collector is paused (:func:`pause_collector`) before Typer, pydantic and
Rich are imported. Importing ``cli.main`` alone ran ~30 collections (4 ms) over objects that all stay
alive; the rest of start-up is covered by :func:`cli.main.main`, and the command runs with the
collector back on (:func:`resume_collector`, called when the command is invoked).

After a command marked :attr:`cli.lazy.LazyCommand.exits_quickly` (``status``, ``jobs``), or
when no command was even loaded (``sdpipe --help``, a usage error), the process ends with :func:`os._exit` once the
``atexit`` handlers have run and stdout/stderr are flushed: the interpreter's own teardown (clearing
some 400 modules and freeing their objects) took ~10 ms of an embedded ``sdpipe status`` and changes
nothing such a command did (its stores are closed, what it writes is written atomically). Any other
command, or one that left a thread running, exits the usual way.

Before anything is imported, the modules no command of this process runs are blocked
(:func:`block_unused_modules`): a library that imports them only when it can takes the path it takes
when they are not installed.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

__all__ = ["UNUSED_MODULES", "block_unused_modules", "main", "pause_collector", "quick_exit", "resume_collector"]

#: True while :func:`pause_collector` holds the collector off.
_collector_paused = False

#: Modules no sdpipe command runs, which a library imports whenever it can. ``httpx._main`` is httpx's
#: own command line (the ``httpx`` console script, a process of its own): httpx's package imports it
#: whenever click is installed (uvicorn brings it), and with it click, pygments and Rich's syntax and
#: progress modules, ~15 ms of every command that talks HTTP. Blocked, ``httpx.main`` is httpx's stub
#: saying its CLI is not installed; the ``httpx`` program itself is unaffected.
UNUSED_MODULES = ("httpx._main",)


def block_unused_modules() -> None:
    """Make importing any of :data:`UNUSED_MODULES` fail with ImportError in this process (a None entry in
    ``sys.modules``), unless one is already imported."""
    for name in UNUSED_MODULES:
        # None is the entry the import system documents for "not importable" (typeshed omits it).
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def pause_collector() -> None:
    """Turn the cyclic garbage collector off while the command loads (:func:`resume_collector` undoes it)."""
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True


def resume_collector() -> None:
    """Turn the collector back on if :func:`pause_collector` turned it off; otherwise nothing.

    What start-up allocated is frozen first (:func:`gc.freeze`): modules, classes and functions that
    live as long as the process. Otherwise the first collection would traverse all of it at once.
    """
    global _collector_paused
    if _collector_paused:
        _collector_paused = False
        gc.freeze()
        gc.enable()


def quick_exit(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's teardown, if nothing can need it.

    The ``atexit`` handlers run (logging's flush, temporary folders' removal), then stdout and stderr
    are flushed. With another thread still running, or a stream that cannot be flushed (a closed
    pipe), the process exits the usual way instead, so Python reports and waits as it always does.
    """
    if threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    os._exit(code)


def main() -> None:
    """Console-script entry: load and run the command (:func:`cli.main.main`), then exit (see the module)."""
    pause_collector()
    block_unused_modules()
    from cli.lazy import loaded_command
    from cli.main import main as run

    try:
        run()
        code: object = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    command = loaded_command()
    if isinstance(code, int) and (command is None or command.exits_quickly):
        quick_exit(code)
    raise SystemExit(code)
