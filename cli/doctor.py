"""``sdpipe doctor``: the settings in effect (secrets masked) and whether everything answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from actors import open_runtime
from cli.common import OUT_HELP, load, out_overrides
from cli.errors import render
from cli.output import RET_OK, RET_UNREACHABLE, RET_USAGE, cli_errors, console, exit_code_for
from pipeline.errors import PipelineError
from pipeline.jobs.files import check_output
from pipeline.sd.backends import Backend, parse_backends
from pipeline.sd.client import SDClient
from pipeline.settings import Settings, mask_url
from pipeline.store import RedisStatusStore, open_store

__all__ = ["doctor"]


def doctor(
    ctx: typer.Context,
    sd_url: Annotated[
        str | None, typer.Option("--sd-url", help="SD server URL(s) to check, comma-separated (default SD_API_URL).")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help=OUT_HELP)] = None,
) -> None:
    """Check settings, Redis, every SD server, the output folder and (Redis mode) that a worker runs;
    exit non-zero when one fails (for the SD servers: when none is ready)."""
    with cli_errors():
        settings = load(ctx, sd_api_url=sd_url, **out_overrides(out))
    console.print(_settings_table(settings))
    checks = Table(title="checks", show_header=False)
    checks.add_column()
    checks.add_column(overflow="fold")
    worst = RET_OK
    for name, check in (("output folder", _check_output), ("status store", _check_store)):
        try:
            detail = check(settings)
        except PipelineError as exc:
            checks.add_row(Text(f"✗ {name}", style="red"), Text(render(exc)))
            worst = max(worst, exit_code_for(exc))
        else:
            checks.add_row(Text(f"✓ {name}", style="green"), Text(detail))
    if settings.redis_mode and worst == RET_OK:
        _check_persistence(settings, checks)
    worst = max(worst, _check_pool(settings, checks))
    if settings.redis_mode and worst == RET_OK:
        worst = max(worst, _check_workers(settings, checks))
    console.print(checks)
    if worst != RET_OK:
        raise typer.Exit(worst if worst in (RET_USAGE, RET_UNREACHABLE) else RET_USAGE)


def _settings_table(settings: Settings) -> Table:
    table = Table(title="settings in effect", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name == "sd_api_url":
            shown = ", ".join(mask_url(u.strip()) for u in str(value).split(","))
        elif name == "redis_url":
            shown = settings.redis_dsn_masked() if value is not None else "-"
        elif value is None:
            shown = "-"
        elif hasattr(value, "get_secret_value"):
            shown = "***"
        else:
            shown = str(value)
        table.add_row(name.upper(), Text(shown))
    mode = f"Redis ({settings.redis_dsn_masked()})" if settings.redis_mode else "embedded (no Redis)"
    table.add_row("mode", mode)
    return table


def _check_output(settings: Settings) -> str:
    return f"{check_output(settings)} is writable"


def _check_store(settings: Settings) -> str:
    store = open_store(settings)
    try:
        store.ping()
    finally:
        store.close()
    return f"Redis at {settings.redis_dsn_masked()} answers" if settings.redis_mode else "embedded SQLite store opens"


def _check_persistence(settings: Settings, checks: Table) -> None:
    """Redis mode: warn (the exit code stays) when Redis keeps neither an AOF nor RDB snapshots:
    a restart then loses every queued job and its record."""
    store = open_store(settings)
    try:
        assert isinstance(store, RedisStatusStore)
        kept = store.persistence()
    except PipelineError:
        return  # the store check already reported it
    finally:
        store.close()
    if kept is None:
        checks.add_row(Text("? Redis persistence", style="yellow"), Text("unknown: Redis does not allow CONFIG GET"))
    elif not any(kept):
        checks.add_row(
            Text("⚠ Redis persistence", style="yellow"),
            Text(
                "Redis keeps neither an AOF nor RDB snapshots: a restart loses every queued job "
                "(set appendonly yes, or a save schedule)"
            ),
        )
    else:
        checks.add_row(Text("✓ Redis persistence", style="green"), Text("AOF" if kept[0] else "RDB snapshots (`save`)"))


def _check_pool(settings: Settings, checks: Table) -> int:
    """One row per server of the pool; the exit code is non-zero only when no server is ready
    (workers bench the others and send their jobs to the ready ones)."""
    try:
        backends = parse_backends(settings.sd_api_url)
    except PipelineError as exc:
        checks.add_row(Text("✗ SD server", style="red"), Text(render(exc)))
        return exit_code_for(exc)
    # At once: servers that are down then cost one connect timeout, not one each.
    with ThreadPoolExecutor(max_workers=min(len(backends), 8)) as executor:
        outcomes = list(executor.map(lambda backend: _check_sd(settings, backend), backends))
    ready = sum(1 for outcome in outcomes if isinstance(outcome, str))
    for backend, outcome in zip(backends, outcomes, strict=True):
        name = f"SD server {backend.key}"
        if isinstance(outcome, str):
            checks.add_row(Text(f"✓ {name}", style="green"), Text(outcome))
            continue
        note = " - workers bench it and send its jobs to the others" if ready else ""
        checks.add_row(Text(f"✗ {name}", style="red"), Text(f"{render(outcome)}{note}"))
    if ready:
        return RET_OK
    return max(exit_code_for(outcome) for outcome in outcomes if isinstance(outcome, PipelineError))


def _check_workers(settings: Settings, checks: Table) -> int:
    """Redis mode: whether any ``sdpipe worker`` is alive (a recent heartbeat); without one, jobs
    wait in Redis however healthy everything else is."""
    try:
        with open_runtime(settings, start_embedded_worker=False) as runtime:
            alive, window_s = runtime.live_workers(), runtime.worker_window_s
    except PipelineError as exc:
        checks.add_row(Text("✗ workers", style="red"), Text(render(exc)))
        return exit_code_for(exc)
    if alive:
        checks.add_row(Text("✓ workers", style="green"), Text(f"{alive} worker process(es) alive"))
        return RET_OK
    checks.add_row(
        Text("✗ workers", style="red"),
        Text(f"no sdpipe worker has sent a heartbeat in {window_s:g} s: jobs wait in Redis until `sdpipe worker` runs"),
    )
    return RET_UNREACHABLE


def _check_sd(settings: Settings, backend: Backend) -> str | PipelineError:
    """``check_ready`` of one server: its one-line state, or the error."""
    try:
        with SDClient(settings, base_url=backend.url) as client:
            return client.check_ready()
    except PipelineError as exc:
        return exc
