"""Helpers shared by the command modules: loading settings with flag overrides, waiting on jobs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.live import Live

from cli.output import err_console, jobs_table
from pipeline.errors import StoreUnavailable
from pipeline.jobs import watch_jobs
from pipeline.models import JobRecord
from pipeline.settings import Settings, load_settings
from pipeline.store import StatusStore

__all__ = ["load", "wait_for_jobs"]

#: Seconds between reconnection attempts while the status store is unreachable.
STORE_RETRY_S = 1.0


def load(ctx: typer.Context, **overrides: Any) -> Settings:
    """Settings from the environment / ``--env-file``, with the command's flags (None = not given) on top."""
    env_file: Path | None = (ctx.obj or {}).get("env_file")
    given = {name: value for name, value in overrides.items() if value is not None}
    return load_settings(env_file, **given)


def wait_for_jobs(store: StatusStore, job_ids: Sequence[str], *, live: bool) -> list[JobRecord]:
    """Wait until every job is terminal, showing each job's step; survives a store outage."""
    records: list[JobRecord] = []
    outage_since: float | None = None
    with Live(console=err_console, refresh_per_second=4, transient=False, auto_refresh=live) as display:
        while True:
            try:
                for records in watch_jobs(store, job_ids):
                    if outage_since is not None:
                        err_console.print(f"status store back after {time.monotonic() - outage_since:.0f}s")
                        outage_since = None
                    if live:
                        display.update(jobs_table(records))
                return records
            except StoreUnavailable as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    err_console.print(f"[yellow]waiting:[/yellow] {exc.message}; still waiting…", markup=True)
                time.sleep(STORE_RETRY_S)
