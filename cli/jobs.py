"""``sdpipe status`` and ``sdpipe jobs``: read the status store."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from cli.common import load, out_overrides
from cli.errors import record_hint
from cli.output import cli_errors, console, echo, job_row, jobs_table, print_json
from pipeline.errors import InputError, JobNotFound
from pipeline.jobs.files import current_output, iso_time
from pipeline.models import JobRecord, JobState
from pipeline.settings import Settings
from pipeline.store import DEFAULT_LIST_LIMIT, open_store

# `jobs` reads the store alone: what only `status` uses (the queue control, webhook deliveries and the
# events they name, a result's file check, batch manifests) is imported where `status` uses it
# (tests/test_cli/test_startup.py keeps `jobs` free of it).

__all__ = ["jobs", "status"]

OutOption = Annotated[
    str | None, typer.Option("--out", help="Output folder (or s3://bucket/prefix) whose jobs to read.")
]


def status(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="Job id (or a unique prefix of it).")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Show a batch instead (and write its manifest).")] = None,
    out: OutOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one job (state, steps with attempts and timings, last error, result, webhook deliveries), or a
    batch with --batch; with neither, the queue (paused or not, jobs per state)."""
    from pipeline.jobs.control import QueueControl
    from pipeline.store.keyvalue import open_keyvalue
    from pipeline.webhooks.deliveries import Deliveries

    with cli_errors():
        if job_id is not None and batch is not None:
            raise InputError("give a JOB_ID or --batch ID, not both", field="JOB_ID")
        settings = load(ctx, **out_overrides(out))
        store = open_store(settings, create=False)
        kv = open_keyvalue(settings)
        control = QueueControl(kv)
        try:
            if batch is not None:
                from pipeline.batches.manifests import batch_records, build_manifest, write_manifest
                from pipeline.storage import open_storage

                found = store.get_batch(batch)
                manifest = build_manifest(found, batch_records(store, found))
                path = write_manifest(open_storage(settings.output_location, settings), manifest)
                manifest["paused"] = control.is_paused(found.batch_id)
                manifest["webhooks"] = [d.summary() for d in Deliveries(kv).of_batch(found.batch_id)]
            elif job_id is not None:
                record = store.get(store.resolve_id(job_id))
                tiles = store.tile_progress(record.job_id) if record.spec.upscale is not None else None
                paused = control.is_paused(record.batch_id) and not record.state.terminal
                deliveries = [d.summary() for d in Deliveries(kv).of_job(record.job_id)]
            else:
                queue: dict[str, Any] = {
                    "paused": control.queue_paused(),
                    "paused_batches": control.paused_batches(),
                    "jobs": {state.value: count for state, count in store.count_by_state().items()},
                }
        finally:
            store.close()
            kv.close()
    if job_id is None and batch is None:
        if json_output:
            print_json(queue)
            return
        echo(f"queue: {'paused' if queue['paused'] else 'running'}")
        for paused_batch in queue["paused_batches"]:
            echo(f"batch {paused_batch}: paused")
        echo(" · ".join(f"{count} {state}" for state, count in queue["jobs"].items() if count) or "no jobs")
        return
    if batch is not None:
        if json_output:
            print_json(manifest)
        else:
            console.print(_batch_detail(manifest))
            if manifest["paused"]:
                echo("paused: no new SD call starts (`sdpipe resume --batch ID`)")
            for delivery in manifest["webhooks"]:
                echo(_delivery_line(delivery))
            echo(f"manifest {path}")
        return
    if json_output:
        extra = {"tiles": {"done": tiles[0], "total": tiles[1]}} if tiles else {}
        print_json(
            job_row(record) | extra | {"priority": record.spec.priority, "paused": paused, "webhooks": deliveries}
        )
        return
    console.print(_detail(record, tiles, settings=settings))
    echo(f"priority: {record.spec.priority}")
    if paused:
        echo("paused: its SD call waits until `sdpipe resume`")
    for delivery in deliveries:
        echo(_delivery_line(delivery))


def _delivery_line(row: dict[str, Any]) -> str:
    last = f", last {row['last_status'] or row['last_error']}" if row["attempts"] else ""
    next_try = f", next try {iso_time(row['next_try_at'])}" if row["next_try_at"] else ""
    return f"webhook {row['event']} -> {row['url']}: {row['state']} ({row['attempts']} attempt(s){last}{next_try})"


def jobs(
    ctx: typer.Context,
    state: Annotated[JobState | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only jobs of this batch id.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = DEFAULT_LIST_LIMIT,
    out: OutOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List jobs, newest first."""
    with cli_errors():
        settings = load(ctx, **out_overrides(out))
        try:
            store = open_store(settings, create=False)
        except JobNotFound:
            records = []
        else:
            try:
                batch_id = store.get_batch(batch).batch_id if batch is not None else None
                records = store.list_jobs(state=state, batch_id=batch_id, limit=limit)
            finally:
                store.close()
    if json_output:
        print_json([job_row(record) for record in records])
    elif not records:
        console.print("no jobs")
    else:
        console.print(jobs_table(records))


def _batch_detail(manifest: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("batch", manifest["batch_id"])
    if manifest.get("source"):
        table.add_row("source", Text(str(manifest["source"])))
    if manifest.get("schedule"):
        table.add_row("schedule", Text(str(manifest["schedule"])))
    table.add_row("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest["created_at"])))
    from_file = bool(manifest.get("source"))
    if from_file:  # a generate --count batch has no file, so no rows or lines to speak of
        table.add_row("rows", str(len(manifest["rows"])))
    table.add_row("jobs", str(manifest["jobs"]))
    for state, count in manifest["counts"].items():
        table.add_row(f"  {state}", str(count))
    failed = [
        (row["line"], job) for row in manifest["rows"] for job in row["jobs"] if job["state"] in ("failed", "cancelled")
    ]
    for line, job in failed[:10]:
        reason = f": {job['error']}" if job.get("error") else ""
        where = f"  line {line}" if from_file else ""
        failure = " ".join(f"{job['job_id'][:8]} {job['state']}{reason}".split())  # one line: `status JOB` has it all
        table.add_row(where, Text(failure, style="red", no_wrap=True, overflow="ellipsis"))
    if len(failed) > 10:
        table.add_row("", f"… and {len(failed) - 10} more (see the manifest)")
    return table


def _waiting_note(record: JobRecord, tiles: tuple[int, int] | None = None) -> str:
    """For a job whose current step is done: an upscale's renders under way on the SD servers, or
    the next step waiting to be picked up."""
    name = record.state.step
    step = record.steps.get(name) if name is not None else None
    if step is None or step.finished_at is None:
        return ""
    if tiles is not None and tiles[0] < tiles[1] and name in ("split", "seam_blur"):
        what = "tiles" if name == "split" else "seam-fix bands"
        return f" ({name} done; {what} rendering on the SD servers: {tiles[0]}/{tiles[1]} renders done)"
    return f" ({name} done; the next step waits for a worker thread to pick it up)"


def _detail(record: JobRecord, tiles: tuple[int, int] | None = None, *, settings: Settings | None = None) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    spec = record.spec
    table.add_row("job", record.job_id)
    table.add_row("state", record.state.value + _waiting_note(record, tiles))
    if record.batch_id:
        table.add_row("batch", record.batch_id)
    if spec.generation is not None:
        gen = spec.generation
        table.add_row("prompt", Text(gen.prompt))
        if gen.negative_prompt:
            table.add_row("negative", Text(gen.negative_prompt))
        table.add_row(
            "parameters",
            f"seed {gen.seed}, {gen.steps} steps, cfg {gen.cfg_scale}, {gen.width}x{gen.height}, "
            f"{gen.sampler_name} / {gen.scheduler}",
        )
    if spec.source_name:
        table.add_row("source", Text(spec.source_name))
    params = spec.step_params
    if spec.upscale is not None:
        up = spec.upscale
        table.add_row(
            "upscale",
            Text(
                f"x{up.scale:g} with {up.upscaler}, tiles {up.tile_px}px overlapping {up.overlap_px}px, "
                f"denoise {up.denoise:g}, seam fix {up.seam_fix}"
            ),
        )
        if tiles is not None:
            table.add_row("tiles", f"{tiles[0]}/{tiles[1]} done")
    else:
        table.add_row("seams", f"grid {params.grid}, band {params.band_px}px, sigma {params.sigma}")
    if record.sd_info:
        info = record.sd_info
        table.add_row(
            "sd",
            Text(f"seed {info.seed}, model {info.model_name} [{info.model_hash}], {info.version}, {info.backend_url}"),
        )
        for warning in info.warnings:
            table.add_row("sd warning", Text(warning, style="yellow"))
    for name, step in record.steps.items():
        if step.duration_s is not None:
            duration = f"{step.duration_s:.3f}s"
        elif record.state.terminal:
            duration = "did not finish"
        else:
            duration = "running"
        skipped = " (skipped: output existed)" if step.skipped else ""
        table.add_row(f"  {name}", f"{step.attempts} attempt(s), {duration}{skipped}")
    if record.error is not None:
        hint = record_hint(record.error)
        text = f"{record.error.step}: {record.error.type}: {record.error.message}" + (f" ({hint})" if hint else "")
        if record.state is JobState.FAILED:
            table.add_row("error", Text(text, style="red"))
        else:  # an error a retry got past
            table.add_row("retried after", Text(text, style="yellow"))
    if record.result:
        image = str(record.result.image)
        if record.state is JobState.SUCCEEDED and current_output(record, settings) is None:
            gone = f"{image} (gone: removed, or replaced by a later job of the same name)"
            table.add_row("image", Text(gone, style="yellow"))
        else:
            table.add_row("image", Text(image))
        table.add_row("sidecar", Text(str(record.result.sidecar)))
    return table
