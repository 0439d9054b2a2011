"""``sdpipe generate`` and ``sdpipe process``: submit jobs, wait for them, print the results."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from cli.common import (
    OUT_HELP,
    IdempotencyKeyOption,
    PriorityOption,
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
    cli_errors,
    echo,
    err_console,
    print_json,
    report_jobs,
)
from cli.request_options import RequestFlags, TemplateFlags, apply_flags
from cli.upscale_options import UPSCALE_FLAG_OF, UpscaleFlags
from pipeline.batches.expansion import plan_templated, split_template_keys
from pipeline.batches.manifests import contact_sheet_when_done
from pipeline.batches.rows import check_request
from pipeline.errors import QueueFull, StoreUnavailable
from pipeline.jobs.files import check_output
from pipeline.jobs.planning import ProcessPlan, build_step_params, new_id, plan_process, travelling_overrides
from pipeline.models import JobSpec, JobState
from pipeline.sd.catalog import open_catalog
from pipeline.settings import OutputFormat, Settings
from pipeline.storage import open_storage
from pipeline.store import StatusStore

__all__ = ["generate", "process", "submit_and_report"]

FormatOption = Annotated[OutputFormat | None, typer.Option("--format", help="Output format (default OUTPUT_FORMAT).")]
NameTemplateOption = Annotated[
    str | None,
    typer.Option(
        "--name-template",
        help="Output name: {date} {time} {job} {batch} {seed} {model} {prompt} {row}, / for folders "
        "(default OUTPUT_NAME).",
    ),
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace a file of the same name instead of adding a -0001 counter.")
]
QualityOption = Annotated[
    int | None, typer.Option("--quality", help="JPEG/WebP quality, 1..100 (default OUTPUT_QUALITY).")
]
GridOption = Annotated[str | None, typer.Option("--grid", help="Split grid ROWSxCOLS (default GRID, 2x2).")]
BandOption = Annotated[
    int | None, typer.Option("--band-px", help="Blend band on each side of a cut, in pixels (default BAND_PX).")
]
SigmaOption = Annotated[float | None, typer.Option("--sigma", help="Gaussian sigma in pixels (default SIGMA).")]
OutOption = Annotated[str | None, typer.Option("--out", help=OUT_HELP)]
SdUrlOption = Annotated[str | None, typer.Option("--sd-url", help="SD server URL, or mock:// (default SD_API_URL).")]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the jobs and show their progress.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


@with_option_groups
def generate(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(help="What to render (or the prompt of --request).")] = None,
    negative: Annotated[str | None, typer.Option("--negative", "-n", help="Negative prompt.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; -1 for random. With --count N: seed … seed+N-1.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default STEPS).")] = None,
    cfg: Annotated[float | None, typer.Option("--cfg", help="CFG scale (default CFG_SCALE).")] = None,
    width: Annotated[int | None, typer.Option(help="Width in pixels (default WIDTH).")] = None,
    height: Annotated[int | None, typer.Option(help="Height in pixels (default HEIGHT).")] = None,
    sampler: Annotated[str | None, typer.Option(help="Sampler name, e.g. 'Euler a' (default SAMPLER).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Scheduler, e.g. Karras (default SCHEDULER).")] = None,
    count: Annotated[int, typer.Option(help="Number of jobs (one image each).")] = 1,
    request_flags: RequestFlags = RequestFlags(),
    template_flags: TemplateFlags = TemplateFlags(),
    grid: GridOption = None,
    band_px: BandOption = None,
    sigma: SigmaOption = None,
    upscale_flags: UpscaleFlags = UpscaleFlags(),
    output_format: FormatOption = None,
    quality: QualityOption = None,
    name_template: NameTemplateOption = None,
    overwrite: OverwriteOption = False,
    out: OutOption = None,
    sd_url: SdUrlOption = None,
    priority: PriorityOption = None,
    webhook: WebhookOption = None,
    idempotency_key: IdempotencyKeyOption = None,
    wait: WaitOption = True,
    wait_for_room: WaitForRoomOption = False,
    json_output: JsonOption = False,
) -> None:
    """Render PROMPT on the SD server, then split, seam-blur and merge each image."""
    # What the idempotency key stands for: every argument that shapes the jobs (not how to wait).
    request = {
        k: v for k, v in flat_params(locals()).items() if k not in ("ctx", "wait", "wait_for_room", "json_output")
    }
    request.pop("idempotency_key")
    request_file = request_flags.request_file
    if request_file is not None and request_file.is_file():
        request["request_file"] = request_file.read_text(errors="replace")
    with cli_errors():
        settings = load(ctx, sd_api_url=sd_url, **out_overrides(out))
        check_submission(settings, wait=wait, sd_url=sd_url)
        step_params = build_step_params(settings, grid=grid, band_px=band_px, sigma=sigma)
        fields = request_flags.fields() | upscale_flags.fields()
        fields = apply_flags(
            fields,
            prompt=prompt,
            negative=negative,
            seed=seed,
            steps=steps,
            cfg=cfg,
            width=width,
            height=height,
            sampler=sampler,
            scheduler=scheduler,
        )
        output_dir, backend_url = travelling_overrides(settings, out=out, sd_url=sd_url)
        options, _ = split_template_keys(template_flags.fields())
        with open_catalog(settings) as checker:
            specs = plan_templated(
                settings,
                check_request(fields, known_fields=checker.known_fields()),
                options,
                step_params,
                count=count,
                checker=checker,
                upscale_names=UPSCALE_FLAG_OF,
                output_format=output_format,
                quality=quality,
                name_template=name_template,
                overwrite=overwrite,
                output_dir=output_dir,
                backend_url=backend_url,
                batch_id=new_id(),
                now=time.time(),
            )
        specs = with_delivery(specs, priority=priority, webhook=webhook)
        check_output(settings)
        submit_and_report(
            settings,
            specs,
            wait=wait,
            json_output=json_output,
            wait_for_room=wait_for_room,
            calls_sd=True,
            contact_sheet=template_flags.contact_sheet,
            idempotency=(idempotency_key, request) if idempotency_key is not None else None,
        )


def process(
    ctx: typer.Context,
    images: Annotated[
        list[Path],
        typer.Argument(help="Image files, folders (their images) or quoted patterns ('shots/*.png')."),
    ],
    first_frame: Annotated[
        bool, typer.Option("--first-frame", help="Process the first frame of an animated GIF/WebP/PNG (else refused).")
    ] = False,
    grid: GridOption = None,
    band_px: BandOption = None,
    sigma: SigmaOption = None,
    output_format: FormatOption = None,
    quality: QualityOption = None,
    name_template: NameTemplateOption = None,
    overwrite: OverwriteOption = False,
    out: OutOption = None,
    wait: WaitOption = True,
    wait_for_room: WaitForRoomOption = False,
    json_output: JsonOption = False,
) -> None:
    """Split, seam-blur and merge existing images (their PNG parameters are kept)."""
    with cli_errors():
        settings = load(ctx, **out_overrides(out))
        check_submission(settings, wait=wait, sd_url=None)
        step_params = build_step_params(settings, grid=grid, band_px=band_px, sigma=sigma)
        plans = plan_process(
            settings,
            images,
            step_params,
            output_dir=settings.output_location,
            output_format=output_format,
            quality=quality,
            batch_id=new_id(),
            first_frame=first_frame,
            name_template=name_template,
            overwrite=overwrite,
            now=time.time(),
        )
        for plan in plans:
            for note in plan.notes:
                # Text, not markup: a file name may hold "[" (shots/[ab].png).
                err_console.print(Text.assemble(("warning: ", "yellow"), note), soft_wrap=True)
        check_output(settings)
        submit_and_report(
            settings,
            [plan.spec for plan in plans],
            wait=wait,
            json_output=json_output,
            wait_for_room=wait_for_room,
            inputs=plans,
        )


def submit_and_report(
    settings: Settings,
    specs: list[JobSpec],
    *,
    wait: bool,
    json_output: bool,
    wait_for_room: bool,
    calls_sd: bool = False,
    contact_sheet: bool = False,
    idempotency: tuple[str, Any] | None = None,
    inputs: Sequence[ProcessPlan] = (),
) -> None:
    """Submit ``specs`` (refused when the SD server is unreachable, if ``calls_sd``), then report them
    or wait for them. ``inputs``: the images of ``process``/``upscale`` jobs, copied into their work
    folders only once every check passed (see :meth:`~actors.Runtime.stage_inputs`)."""
    with runtime_for(settings) as runtime:
        runtime.check_webhook(specs)
        batch_id = specs[0].batch_id if specs else None
        claim = None
        if idempotency is not None and batch_id is not None:
            first, claim = claim_submission(runtime, idempotency[0], "generate", idempotency[1], batch_id)
            if claim is None:  # a repeat: the first submission's jobs, nothing new
                echo(f"idempotency key {idempotency[0]!r}: batch {first} was submitted with it before", err=True)
                specs = [record.spec for record in runtime.store.get_many(runtime.store.get_batch(first).job_ids)]
        if claim is not None or idempotency is None:
            if calls_sd:
                runtime.check_sd_reachable()
            submitted = False

            def stage_and_submit() -> None:
                # Staged once there is room (a copy waiting for room would have no record for the
                # orphan rule to spare); submitted is set before a deferred Ctrl-C can arrive.
                nonlocal submitted
                runtime.stage_inputs(inputs)
                try:
                    runtime.submit(specs, as_batch=True)
                except QueueFull:  # refused before recording anything: no copy waits for room again
                    runtime.remove_copies(inputs)
                    raise
                submitted = True

            try:
                submit_when_room(runtime, len(specs), stage_and_submit, wait_for_room=wait_for_room)
            except BaseException:
                if not submitted:  # recorded and queued jobs keep their copies and their key's claim
                    runtime.discard_unrecorded(inputs)
                    if claim is not None:
                        claim.release()
                raise
        ids = [spec.job_id for spec in specs]
        if not json_output:
            if len(ids) > 1 and specs[0].batch_id:
                echo(f"batch {specs[0].batch_id}", err=True)
            for job_id in ids:
                echo(f"job {job_id}")
        none_alive = not runtime.embedded and runtime.live_workers() == 0
        if none_alive:
            err_console.print(
                "[yellow]warning:[/yellow] no sdpipe worker is running: the jobs wait in Redis until "
                "`sdpipe worker` starts"
            )
        if not wait:
            if json_output:
                print_json([{"job_id": spec.job_id, "batch_id": spec.batch_id, "state": "queued"} for spec in specs])
            return
        try:
            records = wait_for_jobs(
                runtime.store,
                ids,
                live=not json_output and err_console.is_terminal,
                workers=worker_watch(runtime, reported=none_alive),
                events=runtime.events.log,
                batch_id=specs[0].batch_id if specs else None,
            )
        except KeyboardInterrupt:
            _on_interrupt(runtime.embedded, runtime.store, ids)
            raise
        # The worker ending the batch's last job wrote it (unless that job failed): this call only finds it.
        batch_id = specs[0].batch_id if specs else None
        sheet = (
            contact_sheet_when_done(runtime.store, batch_id, open_storage(settings.output_location, settings))
            if contact_sheet and batch_id
            else None
        )
    report_jobs(records, json_output=json_output)
    if sheet is not None and not json_output:
        echo(f"contact sheet {sheet}", err=True)


def _on_interrupt(embedded: bool, store: StatusStore, ids: list[str]) -> None:
    # What already finished is not lost with the rest: its paths, as a completed run prints them.
    try:
        records = store.get_many(ids)
    except StoreUnavailable:
        records = []
    for record in records:
        if record.state is JobState.SUCCEEDED and record.result:
            echo(str(record.result.image))
    if embedded:
        now = time.time()
        cancelled = sum(store.mark_cancelled(job_id, now=now) for job_id in ids)
        err_console.print(
            f"stopping: {cancelled} unfinished job(s) marked cancelled; waiting for running steps to end…"
        )
    else:
        err_console.print("detached: the jobs keep running on the workers; see `sdpipe jobs`")
