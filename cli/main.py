"""The ``sdpipe`` command: a Typer app whose commands live in one module each, loaded on first use.

Start-up time is a feature of a CLI: ``sdpipe --help`` lists every command from :data:`COMMANDS`
without importing one, and ``sdpipe NAME`` imports ``NAME``'s module alone (:mod:`cli.lazy`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.help import polish_help
from cli.lazy import LazyCommand, LazyGroup, pause_collector, resume_collector

__all__ = ["COMMANDS", "app", "main"]

#: Every command, in the order ``--help`` lists them, with its one-line help (the first paragraph of
#: its docstring: tests/test_cli/test_help.py keeps them equal).
COMMANDS = (
    LazyCommand(
        "generate",
        "cli.generate",
        "generate",
        "Render PROMPT on the SD server, then split, seam-blur and merge each image.",
    ),
    LazyCommand(
        "process",
        "cli.generate",
        "process",
        "Split, seam-blur and merge existing images (their PNG parameters are kept).",
    ),
    LazyCommand(
        "upscale",
        "cli.upscale",
        "upscale",
        "Enlarge SOURCE by --scale, re-render every tile with img2img across the SD pool, blend them seamlessly.",
    ),
    LazyCommand(
        "status",
        "cli.jobs",
        "status",
        "Show one job (state, steps with attempts and timings, last error, result, webhook deliveries), or a batch "
        "with --batch; with neither, the queue (paused or not, jobs per state).",
        exits_quickly=True,
    ),
    LazyCommand("jobs", "cli.jobs", "jobs", "List jobs, newest first.", exits_quickly=True),
    LazyCommand(
        "worker",
        "cli.worker",
        "worker",
        "Run worker processes against Redis until stopped (SIGTERM/Ctrl-C: finish running steps, then stop).",
    ),
    LazyCommand(
        "mock-sd",
        "cli.worker",
        "mock_sd",
        "Serve an AUTOMATIC1111-compatible mock SD API (one generation at a time, like the real one).",
    ),
    LazyCommand(
        "doctor",
        "cli.doctor",
        "doctor",
        "Check settings, Redis, every SD server, the output folder and (Redis mode) that a worker runs; exit "
        "non-zero when one fails (for the SD servers: when none is ready).",
    ),
    LazyCommand(
        "batch",
        "cli.batch",
        "batch",
        "Render every row of a prompt file as one batch (validated first: nothing is enqueued on errors).",
    ),
    LazyCommand(
        "retry",
        "cli.batch",
        "retry",
        "Re-enqueue failed (or cancelled) jobs from the step that failed; saved SD images are reused.",
    ),
    LazyCommand(
        "cancel",
        "cli.batch",
        "cancel",
        "Stop queued jobs from running (a running SD call finishes; the job then stops, cancelled).",
    ),
    LazyCommand(
        "prune",
        "cli.prune",
        "prune",
        "Remove ended jobs older than --older-than: records, batch records and manifests, work folders, (with "
        "--outputs) result files, and work folders killed processes left behind. Running and queued jobs are never "
        "touched.",
    ),
    LazyCommand(
        "scheduler",
        "cli.schedule",
        "scheduler",
        "Run the scheduler: fire due schedules as batches until stopped (SIGTERM/Ctrl-C).",
    ),
    LazyCommand(
        "serve", "cli.serve", "serve", "Serve the HTTP API (uploads, generation, batches, jobs) until stopped."
    ),
    LazyCommand(
        "backends",
        "cli.backends",
        "backends",
        "Show each SD server of SD_API_URL: health, slots in use, jobs done, failures, mean seconds per image, the "
        "checkpoint it has loaded and how long its checkpoint loads took.",
    ),
    LazyCommand("schedule", "cli.schedule", "schedule_app", "Cron schedules that render a batch file.", group=True),
    LazyCommand(
        "watch",
        "cli.watch",
        "watch",
        "Show the event stream live (steps, sampling progress, ends); exits when the watched job or batch is done.",
    ),
    LazyCommand(
        "pause",
        "cli.pause",
        "pause",
        "Pause the queue (or one batch): no new SD call starts; work already on a GPU finishes.",
    ),
    LazyCommand(
        "resume",
        "cli.pause",
        "resume",
        "Resume the queue (or one batch); a batch paused on its own stays paused until resumed with --batch.",
    ),
    LazyCommand(
        "webhooks",
        "cli.webhooks",
        "webhooks_app",
        "Webhooks: send a signed test event, send pending deliveries again, make a secret.",
        group=True,
    ),
)


class _Commands(LazyGroup):
    entries = COMMANDS


app = typer.Typer(
    name="sdpipe",
    help="Stable Diffusion pipeline: txt2img -> split -> seam-blur -> merge, on Dramatiq workers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_Commands,
)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs, and tracebacks on errors.")] = False,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="Read settings from this file instead of ./.env.")
    ] = None,
) -> None:
    from cli.output import setup_logging

    setup_logging(verbose)
    ctx.obj = {"env_file": env_file}


polish_help()


def main() -> None:
    """Run the command line: no traceback for unexpected errors unless ``--verbose``; the garbage collector
    waits while the command loads (:func:`cli.entry.pause_collector`). The console script enters through
    :func:`cli.entry.main`, which pauses it before this module is imported and ends the process."""
    pause_collector()
    try:
        app()
    except Exception as exc:
        from cli.output import err_console, state

        if state.verbose:
            raise
        err_console.print(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        sys.exit(1)
    finally:
        resume_collector()
