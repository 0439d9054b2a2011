"""The ``sdpipe`` command: a Typer app whose commands live in one module each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.backends import backends
from cli.batch import batch, cancel, retry
from cli.doctor import doctor
from cli.generate import generate, process
from cli.help import polish_help
from cli.jobs import jobs, status
from cli.output import err_console, setup_logging, state
from cli.prune import prune
from cli.schedule import schedule_app, scheduler
from cli.serve import serve
from cli.upscale import upscale
from cli.worker import mock_sd, worker

__all__ = ["app", "main"]

app = typer.Typer(
    name="sdpipe",
    help="Stable Diffusion pipeline: txt2img -> split -> seam-blur -> merge, on Dramatiq workers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs, and tracebacks on errors.")] = False,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="Read settings from this file instead of ./.env.")
    ] = None,
) -> None:
    setup_logging(verbose)
    ctx.obj = {"env_file": env_file}


app.command()(generate)
app.command()(process)
app.command()(upscale)
app.command()(status)
app.command()(jobs)
app.command()(worker)
app.command("mock-sd")(mock_sd)
app.command()(doctor)
app.command()(batch)
app.command()(retry)
app.command()(cancel)
app.command()(prune)
app.add_typer(schedule_app, name="schedule")
app.command()(scheduler)
app.command()(serve)
app.command()(backends)
polish_help(app)


def main() -> None:
    """Console-script entry: no traceback for unexpected errors unless ``--verbose``."""
    try:
        app()
    except Exception as exc:
        if state.verbose:
            raise
        err_console.print(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        sys.exit(1)
