"""Rendering and process-level concerns of the CLI: logging set-up, exit codes, one-line errors."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from cli.errors import (
    RET_FAILED,
    RET_OK,
    RET_UNREACHABLE,
    RET_USAGE,
    exit_code_for,
    exit_code_of_type,
    record_hint,
    render,
)
from pipeline.errors import InputsRejected, PipelineError, error_type
from pipeline.jobs.files import iso_time
from pipeline.models import ErrorInfo, JobRecord, JobState

__all__ = [
    "report_jobs",
    "RET_FAILED",
    "RET_OK",
    "RET_UNREACHABLE",
    "RET_USAGE",
    "WIDE_COLUMNS",
    "cli_errors",
    "deferred_interrupt",
    "console",
    "echo",
    "err_console",
    "exit_code_for",
    "exit_code_for_jobs",
    "iso_times",
    "job_row",
    "jobs_table",
    "one_line",
    "print_json",
    "setup_logging",
    "state",
]

# emoji=False: a prompt's ":fox:" is printed as written, and rich's emoji table (its largest module) stays unloaded.
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)


class _State:
    verbose: bool = False


state = _State()

_STATE_STYLES = {
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "yellow",
    JobState.QUEUED: "dim",
}


class _QuietFilter(logging.Filter):
    """Without ``--verbose``, only warnings about the user's own request reach the terminal.

    Step failures and retries are reported by the command itself, once, when the jobs end.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or record.name.startswith(_USER_FACING_LOGGERS)


_USER_FACING_LOGGERS = ("pipeline.jobs.planning", "pipeline.batches.schedules", "cli")


def setup_logging(verbose: bool) -> None:
    """Warnings about the request (or, with ``--verbose``, every debug line) to stderr."""
    state.verbose = verbose
    level = logging.DEBUG if verbose else logging.WARNING
    handler = RichHandler(console=err_console, show_path=verbose, show_time=verbose, rich_tracebacks=verbose)
    if not verbose:
        handler.addFilter(_QuietFilter())
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        logging.getLogger("dramatiq").setLevel(logging.ERROR)


def exit_code_for_jobs(records: Sequence[JobRecord]) -> int:
    """0 if all succeeded; 3 if every other job failed on an unreachable server; 2 if every other job
    failed on the settings (SD credentials, API not enabled); else 1 (see :data:`cli.errors.EXIT_CODES`)."""
    unsuccessful = [record for record in records if record.state is not JobState.SUCCEEDED]
    if not unsuccessful:
        return RET_OK
    codes = {
        exit_code_of_type(error_type(r.error.type), RET_FAILED)
        if (r.state is JobState.FAILED and r.error)
        else RET_FAILED
        for r in unsuccessful
    }
    return codes.pop() if len(codes) == 1 else RET_FAILED


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block ends (a submission is either whole or not started)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn sdpipe's errors into one red line and the right exit code (traceback only with --verbose);
    the inputs a command refused (``process``, ``upscale``) are listed first, one line each."""
    try:
        yield
    except PipelineError as exc:
        if state.verbose:
            err_console.print_exception()
        if isinstance(exc, InputsRejected):
            for problem in exc.problems:
                echo(f"  {problem}", err=True)
        err_console.print(Text.assemble(("error: ", "bold red"), render(exc)), soft_wrap=True)
        raise typer.Exit(exit_code_for(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def report_jobs(records: Sequence[JobRecord], *, json_output: bool = False) -> None:
    """Finished jobs as ``generate`` reports them: output paths on stdout (or JSON rows), failures on
    stderr, and its exit code (:func:`exit_code_for_jobs`)."""
    if json_output:
        print_json([job_row(record) for record in records])
    else:
        for record in records:
            if record.state is JobState.SUCCEEDED and record.result:
                echo(str(record.result.image))
        for record in records:
            if record.state is not JobState.SUCCEEDED:
                reason = _failure(record.error) if record.error else record.state.value
                echo(" ".join(f"job {record.job_id} {record.state.value}: {reason}".split()), err=True)
    code = exit_code_for_jobs(records)
    if code != RET_OK:
        raise typer.Exit(code)


def _failure(error: ErrorInfo) -> str:
    """A job's recorded error as the CLI shows it: step, message, and how to fix it."""
    hint = record_hint(error)
    return f"{error.step}: {error.message}" + (f" ({hint})" if hint else "")


def one_line(text: str, width: int | None = None) -> str:
    """``text`` on one line (line breaks become spaces), cut with ``…`` to ``width`` characters
    (default: the terminal's width, 80 without a terminal): long errors stay one line."""
    width = width or err_console.width
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 1)] + "…"


def echo(text: str, *, err: bool = False) -> None:
    """One plain line (ids, paths) on stdout, or stderr: never wrapped or styled, so scripts can read it."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def print_json(data: Any) -> None:
    """Machine-readable output on stdout, its timestamps in ISO 8601 UTC (:func:`iso_times`)."""
    sys.stdout.write(json.dumps(iso_times(data), indent=2, default=str) + "\n")
    sys.stdout.flush()


#: The keys whose numbers are moments (epoch seconds) in sdpipe's own records (jobs, steps, errors,
#: batches, schedules and their runs, backends); only these are converted.
_TIME_KEYS = frozenset(
    {"at", "created_at", "updated_at", "started_at", "finished_at", "written_at", "fire_time", "next_fire_time"}
    | {"benched_until", "last_error_at"}
)
#: Subtrees that are the user's or the SD server's own data (a row's parameters, the A1111 request):
#: their keys (``refiner_switch_at``...) are never taken for moments.
_VERBATIM_KEYS = frozenset({"generation", "params", "parameters", "override_settings", "alwayson_scripts"})


def iso_times(data: Any) -> Any:
    """``data`` (JSON-able) with every moment (:data:`_TIME_KEYS`) as ``iso_time``, as in
    sidecars; durations (``duration_s``, ``elapsed_s``) stay numbers."""
    if isinstance(data, dict):
        return {
            key: iso_time(value)
            if key in _TIME_KEYS and isinstance(value, int | float) and not isinstance(value, bool)
            else value
            if key in _VERBATIM_KEYS
            else iso_times(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [iso_times(item) for item in data]
    return data


def _ago(ts: float | None, *, short: bool = False) -> str:
    if ts is None:
        return "-"
    return time.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S", time.localtime(ts))


def job_row(record: JobRecord) -> dict[str, Any]:
    """The JSON shape of a job for ``--json`` output."""
    return record.model_dump(mode="json")


def _cell(text: str, style: str = "") -> Text:
    """A table cell on one line whatever its column's width: line breaks flattened, cut with "…"."""
    return Text(" ".join(text.split()), style=style, no_wrap=True, overflow="ellipsis")


#: Below this many columns ``jobs_table`` drops the attempts column and shortens the creation time.
WIDE_COLUMNS = 110


def jobs_table(
    records: Sequence[JobRecord],
    *,
    title: str | None = None,
    width: int | None = None,
    progress: Mapping[str, Mapping[str, Any]] | None = None,
    tiles: Mapping[str, tuple[int, int] | None] | None = None,
) -> Table:
    """A table of jobs, one line each whatever the width: id, state, (attempts), created, prompt or
    source, result or error (cut with ``…``: ``sdpipe status`` has the whole text). ``width``: the
    terminal's (default: stdout's). ``progress``: a running generation's sampling step by job id
    (``job.progress`` events), shown after its state. ``tiles``: an unfinished upscale job's renders
    done and planned (by job id), shown in place of its result."""
    wide = (width or console.width) >= WIDE_COLUMNS
    table = Table(title=title, show_lines=False, pad_edge=False, collapse_padding=True)
    table.add_column("job", no_wrap=True, min_width=8)
    table.add_column("state", no_wrap=True, min_width=max(len(state.value) for state in JobState))
    if wide:
        table.add_column("attempts", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("created", no_wrap=True, min_width=19 if wide else 11)
    # These two give way when the table is too wide (Rich narrows only wrapping columns); their
    # cells never wrap: one line, cut with "…".
    table.add_column("what", min_width=8)
    table.add_column("result / error", min_width=10)
    for record in records:
        spec = record.spec
        what = spec.generation.prompt if spec.generation else (spec.source_name or "")
        if record.state is JobState.SUCCEEDED and record.result:
            outcome = _cell(str(record.result.image or ""))
        elif record.error is not None:
            outcome = _cell(f"{record.error.step}: {record.error.message}", style="red")
        elif (rendered := (tiles or {}).get(record.job_id)) is not None and rendered[1]:
            outcome = _cell(f"tiles {rendered[0]}/{rendered[1]}")
        else:
            outcome = _cell("")
        style = _STATE_STYLES.get(record.state, "cyan")
        state = record.state.value
        sampling = (progress or {}).get(record.job_id)
        if sampling and record.state is JobState.GENERATING and sampling.get("steps"):
            state = f"{state} {sampling.get('step', 0)}/{sampling['steps']}"
        cells: list[str | Text] = [record.job_id[:8], Text(state, style=style)]
        if wide:
            cells.append(" ".join(f"{name}:{step.attempts}" for name, step in record.steps.items()) or "-")
        cells += [_ago(record.created_at, short=not wide), _cell(what), outcome]
        table.add_row(*cells)
    return table
