"""``sdpipe worker`` (Dramatiq worker processes) and ``sdpipe mock-sd`` (the A1111 mock server)."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
from pathlib import Path
from typing import Annotated

import typer

from actors import CRASH_LOOP_DEATHS, CRASH_LOOP_WINDOW_S, QUEUES, RET_CRASH_LOOP, check_metrics_port, run_workers
from cli.common import OUT_HELP, load, out_overrides
from cli.output import cli_errors, err_console, state
from pipeline.errors import ConfigError, InputError, PipelineError, StorageRefused, StorageUnavailable
from pipeline.jobs.files import check_output
from pipeline.sd.mock.faults import DEFAULT_HANG_MS, FAULT_KINDS
from pipeline.sd.mock.http import FaultPlan, run_forever
from pipeline.sd.mock.urls import parse_models
from pipeline.settings import Settings, settings_env
from pipeline.store import open_store

__all__ = ["mock_sd", "worker"]

#: Error types a probe in a child process reports back (by name), with the data to raise them again.
_PROBE_ERRORS: dict[str, type[PipelineError]] = {
    cls.__name__: cls for cls in (InputError, StorageRefused, StorageUnavailable, ConfigError)
}


def _check_output_before_fork(settings: Settings) -> None:
    """:func:`~pipeline.jobs.files.check_output`, made in a short-lived child for a bucket.

    The S3 client's runtime starts with its first request and does not survive a fork: a parent that
    made one would leave every worker process it forks (and replaces) hanging on its first request.

    Raises:
        InputError, StorageRefused, StorageUnavailable, ConfigError: as ``check_output``.
    """
    if settings.output_url is None:
        check_output(settings)
        return
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    probe = context.Process(target=_probe, args=(settings, send), daemon=True)
    probe.start()
    send.close()
    try:
        outcome = receive.recv() if receive.poll(120) else ("StorageUnavailable", "the bucket did not answer", None)
    except EOFError:
        outcome = ("StorageUnavailable", "the probe of the bucket died", None)
    probe.join(timeout=10)
    if outcome is not None:
        kind, message, field = outcome
        raise _PROBE_ERRORS.get(kind, StorageUnavailable)(message, field=field)


def _probe(settings: Settings, send: multiprocessing.connection.Connection) -> None:
    try:
        check_output(settings)
    except PipelineError as exc:
        send.send((type(exc).__name__, exc.message, exc.field))
    else:
        send.send(None)


def worker(
    ctx: typer.Context,
    processes: Annotated[int | None, typer.Option(min=1, help="Worker processes (default WORKERS_COUNT).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads per process (default WORKER_THREADS).")] = None,
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume: sd, images.")] = ",".join(QUEUES),
    sd_url: Annotated[str | None, typer.Option("--sd-url", help="SD server URL (default SD_API_URL).")] = None,
    out: Annotated[str | None, typer.Option("--out", help=OUT_HELP)] = None,
) -> None:
    """Run worker processes against Redis until stopped (SIGTERM/Ctrl-C: finish running steps, then stop)."""
    with cli_errors():
        settings = load(ctx, sd_api_url=sd_url, workers_count=processes, worker_threads=threads, **out_overrides(out))
        if not settings.redis_mode:
            raise InputError(
                "sdpipe worker needs Redis: embedded mode runs its workers inside `sdpipe generate`",
                field="REDIS_URL",
            )
        wanted = [q.strip() for q in queues.split(",") if q.strip()]
        unknown = sorted(set(wanted) - set(QUEUES))
        if unknown or not wanted:
            raise InputError(
                f"unknown queue(s): {', '.join(unknown) or '(none given)'}",
                field="--queues",
                expected="sd, images or both",
            )
        _check_output_before_fork(settings)
        check_metrics_port(settings)
        store = open_store(settings)
        try:
            store.ping()
        finally:
            store.close()
        # Worker processes read their settings themselves: hand them exactly these (and none that an
        # option unset, such as OUTPUT_URL after --out FOLDER).
        os.environ.update(settings_env(settings))
        for name in Settings.model_fields:
            if getattr(settings, name) is None:
                os.environ.pop(name.upper(), None)
        err_console.print(
            f"sdpipe worker: {settings.workers_count} process(es) x {settings.worker_threads} thread(s) "
            f"on {', '.join(wanted)}, Redis {settings.redis_dsn_masked()}"
        )
    # Dramatiq's CLI configures logging in every process (INFO, or DEBUG with --verbose): hand it over.
    for handler in logging.root.handlers[:]:
        logging.root.removeHandler(handler)
    logging.getLogger("dramatiq").setLevel(logging.NOTSET)
    code = run_workers(
        processes=settings.workers_count, threads=settings.worker_threads, queues=wanted, verbose=state.verbose
    )
    if code == RET_CRASH_LOOP:
        err_console.print(
            f"[red]error:[/] sdpipe worker stopped: {CRASH_LOOP_DEATHS} worker process deaths within "
            f"{CRASH_LOOP_WINDOW_S:g} s (crash loop); fix the cause shown in the log above, then start it again"
        )
    raise typer.Exit(code)


def mock_sd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 7860,
    latency_ms: Annotated[int, typer.Option(min=0, help="Time each generation takes, in milliseconds.")] = 0,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of txt2img calls answered 500 OutOfMemoryError (= 500:P).")
    ] = 0.0,
    faults: Annotated[
        str | None,
        typer.Option(
            help=f"Fault plan KIND:P[,KIND:P...] (';' also separates), KIND one of {', '.join(FAULT_KINDS)}: "
            "500 OutOfMemoryError, dropped connection, no answer for --hang-ms, an image that does not decode. "
            "E.g. 500:0.2,reset:0.1,hang:0.05,garbage:0.05.",
        ),
    ] = None,
    hang_ms: Annotated[
        int, typer.Option(min=0, help="How long a 'hang' fault holds a request before answering, in ms.")
    ] = DEFAULT_HANG_MS,
    nowebui: Annotated[
        bool, typer.Option("--nowebui", help="API only, like A1111's --nowebui: no /internal/progress (404).")
    ] = False,
    api_auth: Annotated[str | None, typer.Option(help="Require HTTP Basic user:pass, like A1111's --api-auth.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed the mock's random seeds and faults, for repeatable runs.")
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint file names the mock lists, comma-separated (the first is loaded), "
            "e.g. sd_xl_base_1.0.safetensors,sd_xl_refiner_1.0.safetensors.",
        ),
    ] = None,
    model_load_ms: Annotated[
        int, typer.Option(min=0, help="Time loading another checkpoint takes, in milliseconds.")
    ] = 0,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help="Write every request and its answer to FILE as JSON lines, as they are answered "
            "(the format of GET /mock/requests; see docs/mock-control-api.md).",
            metavar="FILE",
        ),
    ] = None,
) -> None:
    """Serve an AUTOMATIC1111-compatible mock SD API (one generation at a time, like the real one)."""
    with cli_errors():
        try:
            plan = FaultPlan.parse(faults)
            if fail_rate:
                plan = plan.with_rate("500", fail_rate)
        except ValueError as exc:
            raise InputError(
                f"invalid --faults {faults!r}: {exc}",
                field="faults",
                value=faults,
            ) from None
        try:
            checkpoints = parse_models(models) if models is not None else None
        except ValueError as exc:
            raise InputError(f"invalid --models {models!r}: {exc}", field="models", value=models) from None
        run_forever(
            host,
            port,
            latency_ms=latency_ms,
            faults=plan,
            hang_ms=hang_ms,
            nowebui=nowebui,
            api_auth=api_auth,
            seed=seed,
            models=checkpoints,
            model_load_ms=model_load_ms,
            record=record,
            on_ready=lambda url: err_console.print(f"mock SD API on {url}, faults {plan} (Ctrl-C to stop)"),
        )
