"""Helpers shared by the command modules: loading settings with flag overrides, waiting on jobs."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text

from cli.output import deferred_interrupt, echo, err_console, jobs_table
from pipeline.errors import InputError, PipelineError, QueueFull, StoreUnavailable
from pipeline.models import JobRecord, JobSpec, JobState, Priority
from pipeline.settings import OutputFormat, Settings, load_settings, strip_credentials
from pipeline.storage.base import is_s3_url
from pipeline.store import StatusStore
from pipeline.webhooks.urls import check_webhook_url

# What only submitting and waiting commands use loads when they use it: `status` and `jobs` import this
# module too, and never need Dramatiq, the Redis broker or the live display.
if TYPE_CHECKING:
    from actors import Runtime
    from cli.progress import WorkerWatch
    from pipeline.events.log import EventLog
    from pipeline.jobs.control import Claim

__all__ = [
    "EMBEDDED_POLL_INTERVAL_S",
    "IdempotencyKeyOption",
    "PriorityOption",
    "WaitForRoomOption",
    "WebhookOption",
    "check_submission",
    "claim_submission",
    "load",
    "runtime_for",
    "submit_when_room",
    "wait_for_jobs",
    "with_delivery",
]

WaitForRoomOption = Annotated[
    bool,
    typer.Option(
        "--wait-for-room", help="When more than MAX_QUEUE_DEPTH jobs are queued, wait for room instead of refusing."
    ),
]

_T = TypeVar("_T")

#: How often a wait reads an embedded store: a local SQLite file, the jobs running in this process,
#: so frequent reads cost little and the command ends as soon as its last job does (not up to a
#: Redis-mode poll interval later).
EMBEDDED_POLL_INTERVAL_S = 0.02

#: Above this many jobs the live display shows counts per state instead of one row per job.
TABLE_MAX_JOBS = 12


def _summary(records: Sequence[JobRecord]) -> Text:
    counts = Counter(record.state for record in records)
    done = counts[JobState.SUCCEEDED] + counts[JobState.FAILED] + counts[JobState.CANCELLED]
    parts = [f"{done}/{len(records)} done"]
    parts += [f"{counts[state]} {state.value}" for state in JobState if counts[state]]
    return Text(" · ".join(parts))


def _tiles(store: StatusStore, records: Sequence[JobRecord]) -> dict[str, tuple[int, int] | None]:
    """Renders done and planned of the unfinished upscale jobs among ``records``."""
    return {
        record.job_id: store.tile_progress(record.job_id)
        for record in records
        if record.spec.upscale is not None and not record.state.terminal
    }


@contextlib.contextmanager
def runtime_for(settings: Settings, **options: Any) -> Iterator[Runtime]:
    """``open_runtime(settings, **options)`` for a command. Embedded, before it closes (and its in-memory
    queue goes), it waits up to ``WEBHOOK_EXIT_WAIT_S`` for the webhooks it sent that are still being
    retried, saying so on stderr, and says how many it leaves pending (Ctrl-C: it does not wait)."""
    from actors import open_runtime

    with open_runtime(settings, **options) as runtime:
        interrupted = False
        try:
            yield runtime
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            settle_webhooks(runtime, wait=not interrupted)


def settle_webhooks(runtime: Runtime, *, wait: bool = True) -> int:
    """Embedded: wait for this process's pending webhooks (see :func:`runtime_for`); return how many are left."""

    def notice(count: int) -> None:
        limit = runtime.settings.webhook_exit_wait_s
        echo(
            f"waiting up to {limit:g} s for {count} webhook delivery(ies) being retried (WEBHOOK_EXIT_WAIT_S)…",
            err=True,
        )

    try:
        left = runtime.settle_webhooks(None if wait else 0.0, on_wait=notice)
    except PipelineError as exc:  # the store went away: nothing more to wait for
        echo(f"webhook deliveries not checked before exit: {exc}", err=True)
        return 0
    if left:
        echo(
            f"{left} webhook delivery(ies) still pending: the next sdpipe command that runs jobs on this "
            "OUTPUT_DIR sends them again (same webhook-id), or `sdpipe webhooks retry` now",
            err=True,
        )
    return left


def submit_when_room(runtime: Runtime, count: int, submit: Callable[[], _T], *, wait_for_room: bool) -> _T:
    """Run ``submit`` (whole, Ctrl-C deferred) once ``count`` jobs fit under MAX_QUEUE_DEPTH.

    Without ``wait_for_room`` a full queue refuses (QueueFull). With it, the wait itself stays
    interruptible, and a submission that lost the room to another submitter waits again.
    """
    limit = runtime.settings.max_queue_depth

    def notice(depth: int) -> None:
        echo(f"the queue holds {depth} job(s) (MAX_QUEUE_DEPTH={limit}): waiting for room for {count}…", err=True)

    while True:
        if wait_for_room:
            runtime.make_room(count, wait=True, on_wait=notice)
        try:
            with deferred_interrupt():
                return submit()
        except QueueFull:
            if not wait_for_room:
                raise


#: Help of every command's ``--out``.
OUT_HELP = "Output folder, or s3://bucket/prefix (default OUTPUT_URL, else OUTPUT_DIR)."


def out_overrides(out: str | None) -> dict[str, Any]:
    """The settings ``--out`` overrides: ``OUTPUT_URL`` for an ``s3://`` location, else ``OUTPUT_DIR``
    (and no ``OUTPUT_URL``, so a folder given on the command line wins over one in the environment)."""
    if out is None:
        return {}
    if is_s3_url(out):
        return {"output_url": out}
    return {"output_dir": Path(out), "output_url": ""}


def load(ctx: typer.Context, **overrides: Any) -> Settings:
    """Settings from the environment / ``--env-file``, with the command's flags (None = not given) on top."""
    env_file: Path | None = (ctx.obj or {}).get("env_file")
    given = {name: value for name, value in overrides.items() if value is not None}
    return load_settings(env_file, **given)


def check_submission(settings: Settings, *, wait: bool, sd_url: str | None) -> None:
    """What every submitting command refuses before doing anything.

    Raises:
        InputError: ``--no-wait`` in embedded mode (the jobs run inside this process), or
            credentials in ``--sd-url`` in Redis mode (they would travel in messages).
    """
    if not wait and not settings.redis_mode:
        raise InputError(
            "--no-wait needs Redis mode: embedded jobs run inside this process",
            field="--no-wait",
        )
    if sd_url is not None and settings.redis_mode and strip_credentials(sd_url) != sd_url:
        raise InputError(
            "--sd-url must not carry credentials in Redis mode: they would travel in messages",
            field="--sd-url",
            expected="a URL without user:pass@",
        )


def wait_for_jobs(
    store: StatusStore,
    job_ids: Sequence[str],
    *,
    live: bool,
    workers: WorkerWatch | None = None,
    poll_interval_s: float | None = None,
    events: EventLog | None = None,
    batch_id: str | None = None,
) -> list[JobRecord]:
    """Wait until every job is terminal, showing each job's step (and sampling step); survives a store outage.

    ``workers``: say when no worker is alive (Redis mode; :func:`worker_watch`). ``events``: wait on the
    event stream (``batch_id``: the jobs' batch), re-reading only the jobs an event names, instead of
    polling every job. Without it, ``poll_interval_s``: how often to read the store (default: the
    waiting CLI's).
    """
    from rich.live import Live

    from cli.progress import StoreOutage
    from pipeline.jobs.planning import watch_jobs

    records: list[JobRecord] = []
    outage = StoreOutage()
    with Live(console=err_console, refresh_per_second=4, transient=False, auto_refresh=live) as display:
        while True:
            try:
                if events is not None:
                    from pipeline.events.watching import watch_jobs_by_events

                    for view in watch_jobs_by_events(store, events, job_ids, batch_id=batch_id):
                        records = view.records
                        outage.up()
                        if workers is not None:
                            workers.check()
                        if live:
                            display.update(
                                jobs_table(records, progress=view.progress, tiles=_tiles(store, records))
                                if len(records) <= TABLE_MAX_JOBS
                                else _summary(records)
                            )
                    if workers is not None:
                        workers.settle()
                    return records
                polls = {} if poll_interval_s is None else {"poll_interval_s": poll_interval_s}
                for records in watch_jobs(store, job_ids, **polls):
                    outage.up()
                    if workers is not None:
                        workers.check()
                    if live and len(records) <= TABLE_MAX_JOBS:
                        display.update(jobs_table(records, tiles=_tiles(store, records)))
                    elif live:
                        display.update(_summary(records))
                if workers is not None:
                    workers.settle()
                return records
            except StoreUnavailable as exc:
                outage.down(exc)


def worker_watch(runtime: Runtime, *, reported: bool = False) -> WorkerWatch | None:
    """What a wait in Redis mode watches to say that no worker is alive; None in embedded mode."""
    from cli.progress import WorkerWatch

    if runtime.embedded:
        return None
    return WorkerWatch(runtime.live_workers, window_s=runtime.worker_window_s, reported=reported)


# Batch-row defaults given as flags (``batch``, ``schedule add``): the keys of a batch row.
NegativeDefault = Annotated[str | None, typer.Option("--negative", "-n", help="Default negative prompt.")]
SeedDefault = Annotated[int | None, typer.Option("--seed", help="Default seed (-1 random).")]
StepsDefault = Annotated[int | None, typer.Option("--steps", help="Default sampling steps.")]
CfgDefault = Annotated[float | None, typer.Option("--cfg", help="Default CFG scale.")]
WidthDefault = Annotated[int | None, typer.Option("--width", help="Default width.")]
HeightDefault = Annotated[int | None, typer.Option("--height", help="Default height.")]
SamplerDefault = Annotated[str | None, typer.Option("--sampler", help="Default sampler.")]
SchedulerDefault = Annotated[str | None, typer.Option("--scheduler", help="Default SD scheduler.")]
CountDefault = Annotated[int | None, typer.Option("--count", help="Default images per row.")]
GridDefault = Annotated[str | None, typer.Option("--grid", help="Default split grid ROWSxCOLS.")]
BandDefault = Annotated[int | None, typer.Option("--band-px", help="Default blend band in pixels.")]
SigmaDefault = Annotated[float | None, typer.Option("--sigma", help="Default Gaussian sigma.")]
FormatDefault = Annotated[OutputFormat | None, typer.Option("--format", help="Default output format.")]
QualityDefault = Annotated[
    int | None, typer.Option("--quality", help="Default JPEG/WebP quality, 1..100 (default OUTPUT_QUALITY).")
]
RowNameTemplateOption = Annotated[
    str | None,
    typer.Option(
        "--name-template",
        help="Output names of rows without a name: {date} {time} {job} {batch} {seed} {model} {prompt} "
        "{row}, / for folders (default OUTPUT_NAME).",
    ),
]
PriorityOption = Annotated[
    Priority | None,
    typer.Option(
        "--priority",
        help="high, normal or low: queued high work starts its SD call before normal, normal before low "
        "(low moves up after PRIORITY_AGING_S of waiting).",
    ),
]
WebhookOption = Annotated[
    str | None,
    typer.Option(
        "--webhook",
        help="POST job.succeeded/failed/cancelled and batch.completed here (signed; needs WEBHOOK_SECRET), "
        "besides WEBHOOK_URL.",
    ),
]
IdempotencyKeyOption = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help="Submit once: the same key with the same request again gives the first jobs back (no second SD "
        "call); with another request it is refused (exit 2). Kept IDEMPOTENCY_TTL_S.",
    ),
]


def with_delivery(specs: list[JobSpec], *, priority: str | None, webhook: str | None) -> list[JobSpec]:
    """The specs with ``--priority`` (unless a row set its own) and ``--webhook`` applied.

    Raises:
        InputError: the webhook is not an http(s) URL.
    """
    url = check_webhook_url(webhook, field="--webhook") if webhook is not None else None
    update: dict[str, Any] = {}
    if url is not None:
        update["webhook_url"] = url
    if priority is not None:
        update["priority"] = priority
    return [spec.model_copy(update=update) for spec in specs] if update else specs


def claim_submission(
    runtime: Runtime, key: str | None, scope: str, request: Any, new_id: str
) -> tuple[str, Claim | None]:
    """Claim ``--idempotency-key`` for this request: ``(new_id, claim)`` the first time, ``(the first
    submission's batch id, None)`` for a repeat (nothing is submitted then); no key: ``(new_id, None)``.

    Raises:
        IdempotencyConflict: the key was used with another request (exit 2).
    """
    from pipeline.jobs.control import body_hash

    if key is None:
        return new_id, None
    return runtime.idempotency.claim(scope, key, body_hash(request), new_id)


RowOverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace files of the same name instead of adding a -0001 counter.")
]
