"""``sdpipe watch``: the event stream of a job, a batch or everything, live in the terminal."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from actors import open_runtime
from cli.common import load
from cli.output import cli_errors, echo, err_console, print_json
from pipeline.errors import InputError
from pipeline.events.model import BATCH_COMPLETED, ENDED_TYPES, JOB_PROGRESS, Event

__all__ = ["watch"]

#: Jobs shown at once by ``watch`` (the most recently active ones); counts cover the rest.
WATCH_ROWS = 15


def watch(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="Job id (or unique prefix) to watch.")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Watch a batch (id or unique prefix).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print each event as a JSON line instead.")] = False,
) -> None:
    """Show the event stream live (steps, sampling progress, ends); exits when the watched job or batch is done.

    Without JOB or --batch: every event, until Ctrl-C.
    """
    with cli_errors():
        if job_id is not None and batch is not None:
            raise InputError("give a JOB or --batch ID, not both", field="JOB")
        settings = load(ctx)
        with open_runtime(settings, start_embedded_worker=False) as runtime:
            store, log = runtime.store, runtime.events.log
            job = store.resolve_id(job_id) if job_id is not None else None
            batch_id = store.get_batch(batch).batch_id if batch is not None else None
            ids = [job] if job else (store.get_batch(batch_id).job_ids if batch_id else [])
            states = {record.job_id: record.state.value for record in store.get_many(ids)} if ids else {}
            rows: dict[str, dict[str, Any]] = {job_id: {"state": state} for job_id, state in states.items()}

            def done() -> bool:
                return bool(ids) and all(row["state"] in ("succeeded", "failed", "cancelled") for row in rows.values())

            cursor: str | None = None if (job or batch_id) else log.latest_id()
            live = not json_output and err_console.is_terminal
            with Live(console=err_console, refresh_per_second=4, auto_refresh=live, transient=False) as display:
                while not done():
                    page = log.read(cursor, batch_id=batch_id, job_id=job, block_s=1.0)
                    cursor = page.cursor
                    for event in page.events:
                        _apply(rows, event)
                        if json_output:
                            print_json(event.model_dump(mode="json"))
                        elif not live:
                            echo(_line(event))
                    if live:
                        display.update(_table(rows, title=f"batch {batch_id[:8]}" if batch_id else None))
                    if batch_id and any(event.type == BATCH_COMPLETED for event in page.events):
                        break
        if not json_output:
            ended = sum(1 for row in rows.values() if row["state"] in ("succeeded", "failed", "cancelled"))
            echo(f"done: {ended}/{len(rows)} job(s) ended", err=True)


def _apply(rows: dict[str, dict[str, Any]], event: Event) -> None:
    if event.job_id is None:
        return
    row = rows.setdefault(event.job_id, {"state": "queued"})
    if event.type == JOB_PROGRESS:
        row["progress"] = f"{event.data.get('step')}/{event.data.get('steps')} eta {event.data.get('eta_s', 0):.0f}s"
    elif event.type in ENDED_TYPES:
        row["state"] = event.type.removeprefix("job.")
        row.pop("progress", None)
    elif "state" in event.data:
        row["state"] = str(event.data["state"])
    if "step" in event.data and event.type != JOB_PROGRESS:
        row["step"] = f"{event.data['step']} {event.type.rsplit('.', 1)[-1]}"
    row["at"] = event.ts


def _table(rows: dict[str, dict[str, Any]], *, title: str | None) -> Table:
    table = Table(title=title, pad_edge=False, collapse_padding=True)
    for column in ("job", "state", "step", "sampling"):
        table.add_column(column, no_wrap=True)
    recent = sorted(rows.items(), key=lambda item: -float(item[1].get("at", 0)))[:WATCH_ROWS]
    for job_id, row in recent:
        table.add_row(job_id[:8], Text(row["state"]), row.get("step", ""), row.get("progress", ""))
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    table.caption = " · ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return table


def _line(event: Event) -> str:
    who = f"job {event.job_id[:8]}" if event.job_id else f"batch {(event.batch_id or '-')[:8]}"
    detail = " ".join(
        f"{key}={value}" for key, value in event.data.items() if key in ("step", "steps", "state", "eta_s")
    )
    return f"{time.strftime('%H:%M:%S', time.localtime(event.ts))} {who} {event.type} {detail}".rstrip()
