"""``sdpipe batch``, ``sdpipe retry`` and ``sdpipe cancel``: many prompts from a file, and fixing up."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table
from rich.text import Text

from actors import Runtime
from cli.common import (
    OUT_HELP,
    IdempotencyKeyOption,
    PriorityOption,
    RowNameTemplateOption,
    RowOverwriteOption,
    WaitForRoomOption,
    WebhookOption,
    check_submission,
    claim_submission,
    load,
    out_overrides,
    runtime_for,
    submit_when_room,
    wait_for_jobs,
    with_delivery,
    worker_watch,
)
from cli.option_groups import flat_params, with_option_groups
from cli.output import (
    RET_FAILED,
    RET_OK,
    WIDE_COLUMNS,
    cli_errors,
    console,
    echo,
    err_console,
    one_line,
    print_json,
    report_jobs,
)
from cli.progress import watch_batch
from cli.request_options import RequestFlags, RowDefaults, TemplateFlags
from cli.upscale_options import UpscaleFlags
from pipeline.batches.files import BatchFileError, describe_plan, read_batch_file
from pipeline.batches.manifests import batch_records, build_manifest, retry_step, write_manifest
from pipeline.errors import InputError
from pipeline.images.contact_sheet import write_contact_sheet
from pipeline.jobs.files import check_output
from pipeline.jobs.planning import new_id, travelling_overrides
from pipeline.models import JobRecord, JobState
from pipeline.sd.backends import parse_backends
from pipeline.sd.catalog import open_catalog
from pipeline.settings import Settings
from pipeline.storage import open_storage
from pipeline.store import open_store

__all__ = ["batch", "cancel", "retry"]

#: How many rows of a ``--dry-run`` plan are shown without ``--all`` (about a screenful).
PLAN_ROWS_SHOWN = 20


@with_option_groups
def batch(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Prompts: .txt, .jsonl, .csv, .yaml/.yml.")],
    row_defaults: RowDefaults = RowDefaults(),
    upscale_flags: UpscaleFlags = UpscaleFlags(),
    name_template: RowNameTemplateOption = None,
    overwrite: RowOverwriteOption = False,
    request_flags: RequestFlags = RequestFlags(),
    template_flags: TemplateFlags = TemplateFlags(),
    out: Annotated[str | None, typer.Option("--out", help=OUT_HELP)] = None,
    sd_url: Annotated[str | None, typer.Option("--sd-url", help="SD server URL, or mock://.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; enqueue nothing.")] = False,
    all_rows: Annotated[
        bool, typer.Option("--all", help=f"With --dry-run: every row of the plan, not the first {PLAN_ROWS_SHOWN}.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Batch id to resume: re-run only rows not yet succeeded.")
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Skip rows whose exact job already succeeded (any batch).")
    ] = False,
    priority: PriorityOption = None,
    webhook: WebhookOption = None,
    idempotency_key: IdempotencyKeyOption = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Show progress until the batch ends.")] = True,
    wait_for_room: WaitForRoomOption = False,
    keep_order: Annotated[
        bool,
        typer.Option(
            "--keep-order",
            help="Enqueue rows in file order (default: grouped by checkpoint, so a server loads each once; "
            "the manifest and output names keep file order either way).",
        ),
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print only JSON on stdout: the manifest; with --no-wait the batch id and the jobs it queued; "
            "with --dry-run the plan.",
        ),
    ] = False,
) -> None:
    """Render every row of a prompt file as one batch (validated first: nothing is enqueued on errors)."""
    request = {
        k: v for k, v in flat_params(locals()).items() if k not in ("ctx", "wait", "wait_for_room", "json_output")
    }
    request.pop("idempotency_key")
    with cli_errors():
        if idempotency_key is not None and file.is_file():
            request["file_content"] = hashlib.sha256(file.read_bytes()).hexdigest()
        request_defaults = request_flags.fields() | upscale_flags.fields() | template_flags.fields()
    defaults = row_defaults.over(request_defaults, priority=priority)
    with cli_errors():
        settings = load(ctx, sd_api_url=sd_url, **out_overrides(out))
        check_submission(settings, wait=wait or dry_run, sd_url=sd_url)
        if resume and skip_existing:
            raise InputError("--resume and --skip-existing do not go together", field="--resume")
        now = time.time()
        batch_id = resume or new_id()
        output_dir, backend_url = travelling_overrides(settings, out=out, sd_url=sd_url)
        try:
            with open_catalog(settings) as checker:
                rows = read_batch_file(
                    file,
                    settings,
                    defaults=defaults,
                    batch_id=batch_id,
                    now=now,
                    output_dir=output_dir,
                    backend_url=backend_url,
                    name_template=name_template,
                    overwrite=overwrite,
                    checker=checker,
                )
        except BatchFileError as exc:
            for problem in exc.problems:
                echo(f"  {problem}", err=True)
            raise
        if webhook is not None:
            rows = [replace(row, specs=with_delivery(row.specs, priority=None, webhook=webhook)) for row in rows]
        if dry_run:
            _print_plan(describe_plan(rows), json_output=json_output, all_rows=all_rows)
            return
        check_output(settings)
        with runtime_for(settings) as runtime:
            runtime.check_webhook([spec for row in rows for spec in row.specs])
            first, claim = claim_submission(runtime, idempotency_key, "batch", request, batch_id)
            if idempotency_key is not None and claim is None:  # a repeat: the first batch, nothing new
                if not json_output:
                    echo(f"batch {first}")
                echo(f"idempotency key {idempotency_key!r}: batch {first} was submitted with it before", err=True)
                if wait:
                    _wait_and_finish(
                        runtime, settings, first, json_output=json_output, contact_sheet=template_flags.contact_sheet
                    )
                return
            runtime.check_sd_reachable()
            if resume:
                batch_id = runtime.store.get_batch(resume).batch_id  # a prefix resolves to the full id
            # All of it enqueued, or none: Ctrl-C waits for the end of the submission (not of a wait for room).
            try:
                plan = submit_when_room(
                    runtime,
                    sum(len(row.specs) for row in rows),
                    partial(
                        runtime.submit_rows,
                        rows,
                        batch_id=batch_id,
                        source=str(file.absolute()),
                        resume=resume is not None,
                        skip_existing=skip_existing,
                        now=now,
                        keep_order=keep_order,
                    ),
                    wait_for_room=wait_for_room,
                )
            except BaseException:
                if claim is not None:
                    claim.release()
                raise
            # Only now does the batch exist: a refused submission (QueueFull) names no batch.
            if not json_output:
                echo(f"batch {batch_id}")
            echo(
                f"batch {batch_id}: {len(plan.new_specs)} new job(s), {len(plan.retry)} retried, "
                f"{plan.succeeded} already done, {plan.in_flight} still running",
                err=True,
            )
            if not wait:
                if json_output:
                    queued = [spec.job_id for spec in plan.new_specs] + [record.job_id for record in plan.retry]
                    print_json({"batch_id": batch_id, "jobs": [{"job_id": j, "state": "queued"} for j in queued]})
                return
            # The planned jobs are in the store now: keep only the batch record while waiting, so a
            # long wait holds about the manifest's worth of memory, not every job spec.
            del rows, plan
            _wait_and_finish(
                runtime, settings, batch_id, json_output=json_output, contact_sheet=template_flags.contact_sheet
            )


def _wait_and_finish(
    runtime: Runtime, settings: Settings, batch_id: str, *, json_output: bool, contact_sheet: bool = False
) -> None:
    batch_record = runtime.store.get_batch(batch_id)
    total = len(batch_record.job_ids)
    try:
        counts, elapsed_s = watch_batch(
            runtime.store,
            batch_id,
            total,
            live=err_console.is_terminal,
            workers=worker_watch(runtime),
            events=runtime.events.log,
        )
    except KeyboardInterrupt:
        if runtime.embedded:
            cancelled = runtime.cancel(batch_record.job_ids)
            err_console.print(f"stopping: {cancelled} unfinished job(s) cancelled (embedded mode)")
        else:
            err_console.print(
                f"detached: batch {batch_id} keeps running on the workers; `sdpipe status --batch {batch_id}`"
            )
        raise
    manifest = build_manifest(batch_record, batch_records(runtime.store, batch_record))
    storage = open_storage(settings.output_location, settings)
    path = write_manifest(storage, manifest)
    sheet = write_contact_sheet(manifest, storage) if contact_sheet else None
    if json_output:
        print_json(manifest)
    else:
        console.print(_summary_table(batch_id, counts, elapsed_s))
        echo(f"manifest {path}")
        if sheet is not None:
            echo(f"contact sheet {sheet}")
        _print_failed_rows(batch_id, manifest)
    row_states = [job["state"] for row in manifest["rows"] for job in row["jobs"]]
    raise typer.Exit(RET_OK if all(state == "succeeded" for state in row_states) else RET_FAILED)


#: How many failed jobs a batch's summary lists (the manifest and ``status --batch`` have every one).
FAILED_ROWS_SHOWN = 10


def _print_failed_rows(batch_id: str, manifest: dict[str, Any]) -> None:
    """On stderr: each failed or cancelled job (row line, job, why; one line each, the first
    :data:`FAILED_ROWS_SHOWN`), then the command that retries them."""
    failed = [
        (row["line"], job)
        for row in manifest["rows"]
        for job in row["jobs"]
        if job["state"] in (JobState.FAILED.value, JobState.CANCELLED.value)
    ]
    if not failed:
        return
    for line, job in failed[:FAILED_ROWS_SHOWN]:
        reason = job.get("error") or job["state"]
        echo(one_line(f"line {line}: job {job['job_id'][:8]} {job['state']}: {reason}"), err=True)
    if len(failed) > FAILED_ROWS_SHOWN:
        echo(f"… and {len(failed) - FAILED_ROWS_SHOWN} more (the manifest lists every one)", err=True)
    echo(f"retry them: sdpipe retry --batch {batch_id} --failed", err=True)


def _summary_table(batch_id: str, counts: dict[JobState, int], elapsed_s: float) -> Table:
    table = Table(title=f"batch {batch_id[:8]}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    total = sum(counts.values())
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        table.add_row(state.value, str(counts.get(state, 0)))
    table.add_row("total", str(total))
    table.add_row("elapsed", f"{elapsed_s:.1f} s")
    if elapsed_s > 0:
        table.add_row("rate", f"{total / elapsed_s * 60:.1f} jobs/min")
    return table


#: The plan's columns, and those kept below :data:`WIDE_COLUMNS` (the rest is in ``--json``).
_PLAN_COLUMNS = ("line", "prompt", "count", "seeds", "size", "steps", "cfg", "sampler", "grid", "format")
_NARROW_PLAN_COLUMNS = ("line", "prompt", "count", "seeds", "size", "steps", "sampler")


def _print_plan(plan: list[dict[str, Any]], *, json_output: bool, all_rows: bool = False) -> None:
    jobs = sum(int(row["count"]) for row in plan)
    if json_output:
        print_json({"rows": plan, "jobs": jobs})
        return
    columns = _PLAN_COLUMNS if console.width >= WIDE_COLUMNS else _NARROW_PLAN_COLUMNS
    shown = plan if all_rows else plan[:PLAN_ROWS_SHOWN]
    table = Table(title="plan (nothing enqueued)", pad_edge=False, collapse_padding=True)
    for column in columns:
        # Only the prompt gives way when narrow (Rich narrows wrapping columns); no cell wraps.
        table.add_column(column, no_wrap=column != "prompt", min_width=len(column))
    for row in shown:
        table.add_row(*(_plan_cell(column, row.get(column, "")) for column in columns))
    console.print(table)
    if len(shown) < len(plan):
        console.print(f"… and {len(plan) - len(shown)} more row(s): --all shows every one, --json the whole plan")
    console.print(f"{len(plan)} row(s), {jobs} job(s), {jobs} SD call(s)")


def _plan_cell(column: str, value: Any) -> Text:
    if column == "seeds" and isinstance(value, list) and value and all(seed == -1 for seed in value):
        value = "random"
    elif column == "seeds" and isinstance(value, list) and len(value) > 3:
        value = f"{value[0]}…{value[-1]}"  # --count 50 gives 50 consecutive seeds
    elif isinstance(value, list):
        value = ",".join(str(item) for item in value)
    return Text(" ".join(str(value).split()), no_wrap=True, overflow="ellipsis")


#: Up to this many jobs ``retry --batch`` names each one it requeued; beyond, one summary line.
REQUEUED_LINES_SHOWN = 10
#: The states ``retry`` re-enqueues (``Runtime.retry`` / ``StatusStore.requeue`` take only these).
_RETRYABLE = (JobState.FAILED, JobState.CANCELLED)


def retry(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="Job id (or unique prefix) to retry.")] = None,
    batch_id: Annotated[str | None, typer.Option("--batch", help="Retry jobs of this batch (with --failed).")] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="With --batch (required there): retry its failed and cancelled jobs.")
    ] = False,
    sd_url: Annotated[
        str | None,
        typer.Option(
            "--sd-url", help="Embedded mode: the SD server to retry on, or mock:// (default: the job's own server)."
        ),
    ] = None,
) -> None:
    """Re-enqueue failed (or cancelled) jobs from the step that failed; saved SD images are reused.

    Embedded mode runs them and prints each output path; the exit code follows the rule of `sdpipe generate`.
    """
    with cli_errors():
        settings = load(ctx, sd_api_url=sd_url)
        if sd_url is not None and settings.redis_mode:
            raise InputError(
                "--sd-url applies to embedded retries: in Redis mode the workers choose the SD server",
                field="--sd-url",
            )
        if (job_id is None) == (batch_id is None) or (batch_id is not None and not failed):
            raise InputError("give a JOB_ID, or --batch ID --failed", field="--failed")
        if failed and job_id is not None:
            raise InputError(
                "--failed goes with --batch: a JOB_ID is retried on its own",
                field="--failed",
                value=job_id,
            )
        if not settings.redis_mode and sd_url is None:
            settings = _own_server(ctx, settings, job_id=job_id, batch_id=batch_id)
        with runtime_for(settings) as runtime:
            store = runtime.store
            if job_id is not None:
                records = [store.get(store.resolve_id(job_id))]
            else:
                assert batch_id is not None
                found = store.get_batch(batch_id)
                # The batch's rows as they are now (jobs superseded by a --resume of an edited file stay out).
                by_id = batch_records(store, found)
                records = [by_id[job] for job in found.job_ids if job in by_id and by_id[job].state in _RETRYABLE]
            requeued = runtime.retry(records)
            if batch_id is not None and len(requeued) > REQUEUED_LINES_SHOWN:
                steps = Counter(retry_step(record) for record in requeued)
                where = ", ".join(f"{count} from {step}" for step, count in steps.most_common())
                echo(f"batch {store.get_batch(batch_id).batch_id}: {len(requeued)} job(s) requeued ({where})")
            else:
                for record in requeued:
                    echo(f"job {record.job_id} requeued")
            if not requeued:
                if job_id is not None:
                    _refuse_retry(store.get(records[0].job_id))
                err_console.print("nothing to retry: the batch has no failed or cancelled job")
                raise typer.Exit(RET_OK)
            if runtime.embedded:
                final = wait_for_jobs(
                    store, [r.job_id for r in requeued], live=err_console.is_terminal, events=runtime.events.log
                )
                report_jobs(final)


def _own_server(ctx: typer.Context, settings: Settings, *, job_id: str | None, batch_id: str | None) -> Settings:
    """Embedded retry without ``--sd-url``: the settings with the SD server the jobs were made on.

    A job made with ``--sd-url`` records its server (without credentials); one that records none
    ran on ``SD_API_URL``. A server already in ``SD_API_URL`` keeps that entry (and its credentials).
    """
    store = open_store(settings)
    try:
        if job_id is not None:
            servers = {store.get(store.resolve_id(job_id)).spec.backend_url}
        else:
            assert batch_id is not None
            found = store.get_batch(batch_id)
            servers = {record.spec.backend_url for record in store.get_many(found.job_ids)}
    finally:
        store.close()
    servers.discard(None)
    if not servers:
        return settings
    if len(servers) > 1:
        raise InputError(
            f"the jobs were made on {len(servers)} different SD servers: say which to retry on",
            field="--sd-url",
        )
    (server,) = servers
    assert server is not None
    known = {backend.key for backend in parse_backends(settings.sd_api_url)}
    if all(backend.key in known for backend in parse_backends(server)):
        return settings
    return load(ctx, sd_api_url=server)


def _refuse_retry(record: JobRecord) -> NoReturn:
    """A job that is not failed or cancelled cannot be retried: say why and what to do instead."""
    raise InputError(
        f"job {record.job_id} is {record.state.value}: only failed or cancelled jobs can be retried",
        field="state",
        value=record.state.value,
        expected="failed or cancelled",
    )


def cancel(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="Job id (or unique prefix) to cancel.")] = None,
    batch_id: Annotated[str | None, typer.Option("--batch", help="Cancel every unfinished job of this batch.")] = None,
) -> None:
    """Stop queued jobs from running (a running SD call finishes; the job then stops, cancelled)."""
    with cli_errors():
        settings = load(ctx)
        if (job_id is None) == (batch_id is None):
            raise InputError("give a JOB_ID or --batch ID", field="JOB_ID")
        with runtime_for(settings, start_embedded_worker=False) as runtime:
            store = runtime.store
            if job_id is not None:
                ids = [store.resolve_id(job_id)]
            else:
                assert batch_id is not None
                ids = store.get_batch(batch_id).job_ids
            cancelled = runtime.cancel(ids)
            ended = len(ids) - cancelled
            if job_id is not None and ended:
                state = store.get(ids[0]).state.value
                echo(f"job {ids[0]} had already ended ({state}): nothing to cancel", err=True)
        others = f"; {ended} had already ended" if batch_id is not None and ended else ""
        echo(f"cancelled {cancelled} job(s){others}")
