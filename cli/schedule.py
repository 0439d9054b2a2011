"""``sdpipe schedule add|list|show|remove|run`` and ``sdpipe scheduler`` (the long-running process)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from actors import Runtime
from cli.common import (
    PriorityOption,
    RowNameTemplateOption,
    RowOverwriteOption,
    WebhookOption,
    load,
    runtime_for,
)
from cli.option_groups import with_option_groups
from cli.output import cli_errors, console, echo, err_console, print_json
from cli.progress import watch_batch
from cli.request_options import RequestFlags, RowDefaults, TemplateFlags
from cli.upscale_options import UpscaleFlags
from pipeline.batches.files import BatchFileError, read_batch_file
from pipeline.batches.schedules import (
    DAY_S,
    MIN_GRACE_S,
    FireFn,
    Scheduler,
    effective_grace_s,
    next_fire_time,
    parse_timezone,
    validate_cron,
)
from pipeline.errors import InputError, JobNotFound, ScheduleNotFound
from pipeline.jobs.retention import apply_prune, plan_prune
from pipeline.models import ScheduleRecord, ScheduleRun
from pipeline.sd.catalog import open_catalog
from pipeline.settings import Settings
from pipeline.storage import open_storage
from pipeline.store import StatusStore, open_store
from pipeline.webhooks.urls import check_webhook_url

__all__ = ["schedule_app", "scheduler"]

#: Default grace window for missed occurrences, in seconds.
DEFAULT_GRACE_S = 3600.0

#: How a schedule's run picks each value (``schedule show`` says it).
SCHEDULE_PRECEDENCE = "settings < the file's defaults < these flags < the row"

schedule_app = typer.Typer(help="Cron schedules that render a batch file.", no_args_is_help=True)


@schedule_app.command("add")
@with_option_groups
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    file: Annotated[Path, typer.Argument(help="Batch file, read again at every run.")],
    cron: Annotated[
        str, typer.Option("--cron", help='Cron expression, e.g. "0 2 * * *" (5 fields), or @hourly, @daily, @weekly.')
    ],
    tz: Annotated[str, typer.Option("--tz", help="Time zone the cron is read in, e.g. Europe/Berlin.")] = "UTC",
    grace_s: Annotated[
        float, typer.Option("--grace-s", min=0, help="A run missed by less than this still fires once (at least 60 s).")
    ] = DEFAULT_GRACE_S,
    allow_overlap: Annotated[
        bool, typer.Option("--allow-overlap", help="Fire even while the previous run's batch is still running.")
    ] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a schedule of the same name.")] = False,
    row_defaults: RowDefaults = RowDefaults(),
    upscale_flags: UpscaleFlags = UpscaleFlags(),
    name_template: RowNameTemplateOption = None,
    overwrite: RowOverwriteOption = False,
    request_flags: RequestFlags = RequestFlags(),
    template_flags: TemplateFlags = TemplateFlags(),
    priority: PriorityOption = None,
    webhook: WebhookOption = None,
) -> None:
    """Add a schedule: render FILE as a batch at every occurrence of --cron."""
    with cli_errors():
        # Without --template-seed, random template picks differ at every run; with it, each run is the same.
        request_defaults = request_flags.fields() | upscale_flags.fields() | template_flags.fields()
    options = row_defaults.over(request_defaults, priority=priority)
    with cli_errors():
        settings = load(ctx)
        validate_cron(cron)
        if webhook is not None:
            webhook = check_webhook_url(webhook, field="--webhook")
            if settings.webhook_secret is None:
                raise InputError("a webhook needs WEBHOOK_SECRET (whsec_...) to be signed", field="WEBHOOK_SECRET")
        parse_timezone(tz)
        if not name.strip() or len(name) > 100:
            raise InputError(f"schedule name {name!r} is empty or too long", field="name", value=name, limit=100)
        # Check the file now (it is read again, and validated again, at every run).
        try:
            with open_catalog(settings) as checker:
                read_batch_file(
                    file,
                    settings,
                    defaults=options,
                    batch_id="check",
                    now=time.time(),
                    name_template=name_template,
                    overwrite=overwrite,
                    checker=checker,
                    defaults_over_file=True,
                )
        except BatchFileError as exc:
            for problem in exc.problems:
                echo(f"  {problem}", err=True)
            raise
        store = open_store(settings)
        try:
            if not replace:
                try:
                    store.get_schedule(name)
                except ScheduleNotFound:
                    pass
                else:
                    raise InputError(f"schedule {name!r} exists", field="schedule", value=name)
            record = ScheduleRecord(
                name=name,
                cron=cron,
                timezone=tz,
                file=str(file.absolute()),
                options=options,
                name_template=name_template,
                overwrite=overwrite,
                webhook=webhook,
                allow_overlap=allow_overlap,
                grace_s=grace_s,
                created_at=time.time(),
            )
            store.save_schedule(record)
        finally:
            store.close()
    echo(f"schedule {name}: next run {_when(next_fire_time(record, time.time()), tz)}")


@schedule_app.command("list")
def list_(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print the schedules as JSON on stdout.")] = False,
) -> None:
    """List schedules with their next fire time and last run."""
    with cli_errors():
        try:
            store = open_store(load(ctx), create=False)
        except JobNotFound:  # embedded and nothing ever ran here
            schedules = []
        else:
            try:
                schedules = store.list_schedules()
            finally:
                store.close()
    now = time.time()
    if json_output:
        print_json([{**s.model_dump(mode="json"), "next_fire_time": next_fire_time(s, now)} for s in schedules])
        return
    if not schedules:
        console.print("no schedules")
        return
    table = Table(pad_edge=False, collapse_padding=True)
    for column in ("name", "cron", "tz", "file", "next run", "last run"):
        # Only the file and the last run give way when narrow (Rich narrows wrapping columns); no cell wraps.
        table.add_column(column, no_wrap=column not in ("file", "last run"), min_width=4)
    for record in schedules:
        last = record.runs[0] if record.runs else None
        table.add_row(
            record.name,
            record.cron,
            record.timezone,
            _cell(record.file),
            _when(next_fire_time(record, now), record.timezone),
            _cell(_run_text(last, record.timezone)) if last else "-",
        )
    console.print(table)


@schedule_app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the schedule and its runs as JSON on stdout.")
    ] = False,
) -> None:
    """Show a schedule and its last runs (batch ids, skips and failures with their reasons)."""
    with cli_errors():
        store = open_store(load(ctx))
        try:
            record = store.get_schedule(name)
        finally:
            store.close()
    if json_output:
        print_json(record.model_dump(mode="json"))
        return
    info = Table(show_header=False, box=None)
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    info.add_row("schedule", record.name)
    info.add_row("cron", f"{record.cron} ({record.timezone})")
    info.add_row("file", Text(record.file))
    info.add_row("next run", _when(next_fire_time(record, time.time()), record.timezone))
    info.add_row("overlap", "allowed" if record.allow_overlap else "skipped while the previous batch runs")
    grace_s = effective_grace_s(record)
    asked = "" if grace_s == record.grace_s else f" ({record.grace_s:.0f} s asked; the minimum is {MIN_GRACE_S:.0f} s)"
    info.add_row("grace", f"{grace_s:.0f} s{asked}")
    if record.options:
        info.add_row("defaults", Text(", ".join(f"{k}={v}" for k, v in record.options.items())))
    info.add_row("precedence", Text(SCHEDULE_PRECEDENCE))
    console.print(info)
    runs = Table(title="runs (newest first)")
    for column in ("occurrence", "acted", "status", "batch", "reason"):
        runs.add_column(column, overflow="fold")
    for run in record.runs:
        style = {"fired": "green", "skipped": "yellow", "failed": "red"}[run.status]
        runs.add_row(
            _when(run.fire_time, record.timezone),
            _when(run.at, record.timezone),
            Text(run.status + (" (manual)" if run.manual else ""), style=style),
            run.batch_id or "-",
            Text(run.reason or ""),
        )
    console.print(runs if record.runs else "no runs yet")


@schedule_app.command("remove")
def remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Remove a schedule (its batches and their jobs stay)."""
    with cli_errors():
        store = open_store(load(ctx))
        try:
            if not store.delete_schedule(name):
                raise ScheduleNotFound(f"no schedule named {name!r}", field="name", value=name)
        finally:
            store.close()
    echo(f"schedule {name} removed")


@schedule_app.command("run")
def run_now(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Fire a schedule now (the batch is queued; in embedded mode it runs here until done)."""
    with cli_errors():
        settings = load(ctx)
        with runtime_for(settings) as runtime:
            scheduler = Scheduler(runtime.store, _fire(runtime))
            run = scheduler.fire_now(name)
            echo(_run_text(run, runtime.store.get_schedule(name).timezone))
            if run.status != "fired":
                raise typer.Exit(1)
            if runtime.embedded and run.batch_id:
                batch = runtime.store.get_batch(run.batch_id)
                try:
                    watch_batch(runtime.store, batch.batch_id, len(batch.job_ids), live=err_console.is_terminal)
                except KeyboardInterrupt:
                    # This process runs the jobs: unfinished ones would block the schedule (overlap).
                    runtime.cancel(batch.job_ids)
                    raise


def scheduler(ctx: typer.Context) -> None:
    """Run the scheduler: fire due schedules as batches until stopped (SIGTERM/Ctrl-C).

    Several schedulers may run against one Redis: each occurrence fires exactly once. In embedded
    mode this process also runs the workers.
    """
    with cli_errors():
        settings = load(ctx)
        with runtime_for(settings) as runtime:
            stop = threading.Event()

            def _stop(signum: int, frame: FrameType | None) -> None:
                err_console.print("scheduler stopping…")
                stop.set()

            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
            logging.getLogger("pipeline.batches.schedules").setLevel(logging.INFO)
            count = len(runtime.store.list_schedules())
            err_console.print(f"sdpipe scheduler: {count} schedule(s); Ctrl-C to stop")
            fired: list[str] = []
            fire = _fire(runtime)

            def fire_and_remember(schedule: ScheduleRecord, fire_time: float) -> str:
                batch_id = fire(schedule, fire_time)
                fired.append(batch_id)
                return batch_id

            daily = _retention(runtime.store, settings) if settings.retention_days is not None else None
            if daily is not None:
                logging.getLogger("pipeline.jobs.retention").setLevel(logging.INFO)
                err_console.print(f"pruning ended jobs older than {settings.retention_days} day(s) daily")
            Scheduler(runtime.store, fire_and_remember, daily=daily).run_forever(stop)
            if runtime.embedded:
                # The jobs ran in this process: left unfinished they would block their schedules.
                cancelled = sum(runtime.cancel(runtime.store.get_batch(b).job_ids) for b in fired)
                if cancelled:
                    err_console.print(f"{cancelled} unfinished job(s) cancelled (embedded mode)")


def _retention(store: StatusStore, settings: Settings) -> Callable[[], object]:
    """RETENTION_DAYS: what the scheduler runs once a day (``sdpipe prune --older-than <N>d``)."""
    assert settings.retention_days is not None
    older_than_s = settings.retention_days * DAY_S
    output = open_storage(settings.output_location, settings)
    return lambda: apply_prune(store, plan_prune(store, output, older_than_s=older_than_s, settings=settings))


def _fire(runtime: Runtime) -> FireFn:
    def fire(schedule: ScheduleRecord, fire_time: float) -> str:
        plan = runtime.submit_file(
            Path(schedule.file),
            defaults=schedule.options,
            schedule=schedule.name,
            name_template=schedule.name_template,
            overwrite=schedule.overwrite,
            webhook=schedule.webhook,
        )
        return plan.batch.batch_id

    return fire


def _cell(text: str) -> Text:
    """One line, cut with "…" (a long path, a long reason): ``schedule show`` has the whole text."""
    return Text(" ".join(text.split()), no_wrap=True, overflow="ellipsis")


def _when(ts: float | None, tz: str) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, parse_timezone(tz)).strftime("%Y-%m-%d %H:%M %Z")


def _run_text(run: ScheduleRun, tz: str) -> str:
    text = f"{run.status} at {_when(run.at, tz)}"
    if run.batch_id:
        text += f", batch {run.batch_id}"
    if run.reason:
        text += f" ({run.reason})"
    return text
