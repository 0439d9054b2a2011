"""``sdpipe backends``: each SD server of the pool with its health, slots, jobs done, failures, its
loaded checkpoint and the load times measured per checkpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.common import load
from cli.output import cli_errors, console, print_json
from pipeline.errors import PipelineError, SDUnavailable
from pipeline.sd.backends import Backend, parse_backends
from pipeline.sd.client import SDClient
from pipeline.sd.pool.pool import SDPool, open_pool_state
from pipeline.sd.pool.report import backend_row
from pipeline.sd.pool.state import BackendStatus
from pipeline.settings import Settings

__all__ = ["backends"]

#: What ``backends`` says in embedded mode, where each process has its own pool state.
_EMBEDDED_NOTE = "embedded mode: processes share no pool state; showing a live probe of each server"
#: Longest last error shown (``--json`` has it whole).
ERROR_WIDTH = 100


class _Clients:
    """One SD client per server URL, built on first use (probes run in threads) and closed together."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[str, SDClient] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str) -> SDClient:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = self._clients[url] = SDClient(self._settings, base_url=url)
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()


def backends(
    ctx: typer.Context,
    probe: Annotated[bool, typer.Option("--probe", help="Also ask each server now (GET /sdapi/v1/progress).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each SD server of SD_API_URL: health, slots in use, jobs done, failures, mean seconds per image,
    the checkpoint it has loaded and how long its checkpoint loads took."""
    with cli_errors():
        settings = load(ctx)
        configured = parse_backends(settings.sd_api_url)
        shared = settings.redis_mode
        # Pool state from Redis when workers share one; embedded processes share nothing: ask the servers.
        statuses, answers, loaded = _read(settings, configured, shared=shared, probe=probe or not shared)
        rows = [backend_row(backend, statuses.get(backend.key), answers, now=time.time()) for backend in configured]
        for row in rows:
            if row["key"] in loaded:  # a live answer wins over the state's last sighting
                row["model"] = loaded[row["key"]]
        if json_output:
            print_json(rows)
        else:
            if not shared:
                console.print(Text(_EMBEDDED_NOTE, style="dim"))
            for part in _report(rows, shared=shared, console=console):
                console.print(part)
            for line in _notes(rows):
                console.print(line)
        if answers and all(problem is not None for problem in answers.values()):
            raise SDUnavailable(
                f"no SD server answers ({len(configured)} configured)",
            )


def _read(
    settings: Settings, configured: Sequence[Backend], *, shared: bool, probe: bool
) -> tuple[dict[str, BackendStatus], dict[str, str | None], dict[str, str]]:
    """The shared pool state of each server (Redis mode), each one's live answer and loaded
    checkpoint (``probe``; the checkpoint only from those whose ``/options`` answer)."""
    clients = _Clients(settings)
    # Embedded, open_pool_state is this process's own (empty) memory: only its probe is used.
    pool = SDPool(settings, open_pool_state(settings), clients)
    try:
        statuses = {status.key: status for status in pool.status()} if shared else {}
        answers: dict[str, str | None] = {}
        loaded: dict[str, str] = {}
        if probe:  # at once, so dead servers cost one connect timeout, not one each
            with ThreadPoolExecutor(max_workers=min(len(configured), 8)) as executor:
                answers = dict(zip((b.key for b in configured), executor.map(pool.probe, configured), strict=True))
                alive = [b for b in configured if answers[b.key] is None]
                for backend, model in zip(alive, executor.map(_checkpoint_of(clients), alive), strict=True):
                    if model is not None:
                        loaded[backend.key] = model
        return statuses, answers, loaded
    finally:
        pool.close()
        clients.close()


def _checkpoint_of(clients: _Clients) -> Any:
    def read(backend: Backend) -> str | None:
        try:
            return clients(backend.url).loaded_checkpoint()[0]
        except PipelineError:  # optional: forks trim /options
            return None

    return read


def _table(rows: Sequence[dict[str, Any]], *, shared: bool) -> Table:
    """The numbers per server (from the shared state); embedded, only the configured slots."""
    table = Table(title="SD servers", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = (
        ["server", "health", "slots", "done", "failed", "in a row", "s/image", "checkpoint", "loads"]
        if shared
        else ["server", "slots", "checkpoint"]
    )
    for column in columns:
        numeric = column in ("done", "failed", "in a row", "s/image", "loads")
        no_wrap = column in ("health", "checkpoint")
        table.add_column(column, overflow="fold", no_wrap=no_wrap, justify="right" if numeric else "left")
    for row in rows:
        if not shared:
            table.add_row(Text(row["key"]), f"max {row['max_slots']}", _model_text(row))
            continue
        table.add_row(
            Text(row["key"]),
            Text(row["health"], style="green" if row["healthy"] else "red"),
            f"{row['in_use']}/{row['max_slots']}",
            str(row["done"]),
            str(row["failures"]),
            str(row["consecutive_failures"]),
            f"{row['mean_s']:.2f}" if row["mean_s"] is not None else "-",
            _model_text(row),
            str(row["model_loads"]),
        )
    return table


#: A width no table reaches: what a table measures at its ease.
_UNBOUNDED = 10_000


def _report(rows: Sequence[dict[str, Any]], *, shared: bool, console: Console) -> list[Table] | list[Text]:
    """The table, or where ``console`` is too narrow for its columns (a URL would fold letter by
    letter beside them), :func:`_blocks`."""
    table = _table(rows, shared=shared)
    if console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum <= console.width:
        return [table]
    return _blocks(rows, shared=shared)


def _blocks(rows: Sequence[dict[str, Any]], *, shared: bool) -> list[Text]:
    """The table's facts for a narrow terminal: each server on a line of its own, then its numbers
    and its checkpoint indented below it (folded as the terminal needs)."""
    lines: list[Text] = []
    for row in rows:
        model = _model_text(row)
        if not shared:
            lines += [Text(row["key"]), Text(f"  max {row['max_slots']} slot(s), checkpoint ") + model]
            continue
        health = Text(row["health"], style="green" if row["healthy"] else "red")
        mean = f"{row['mean_s']:.2f} s/image" if row["mean_s"] is not None else "no image yet"
        numbers = (
            f", slots {row['in_use']}/{row['max_slots']}, done {row['done']}, failed {row['failures']} "
            f"({row['consecutive_failures']} in a row), {mean}"
        )
        loads = f" ({row['model_loads']} load(s))"
        lines += [Text(row["key"]), Text("  ") + health + numbers, Text("  checkpoint ") + model + loads]
    return lines


def _model_text(row: dict[str, Any]) -> Text:
    if not row.get("model"):
        return Text("-", style="dim")
    name = row["model"].rsplit(" [", 1)[0] if row["model"].endswith("]") else row["model"]  # --json has the hash
    return Text(name + (" (loading)" if row.get("loading") else ""))


def _notes(rows: Sequence[dict[str, Any]]) -> list[Text]:
    """Under the table, one line each: a server's last error (cut short), its live answer."""
    lines = []
    for row in rows:
        if row.get("last_error"):
            error = (
                row["last_error"]
                if len(row["last_error"]) <= ERROR_WIDTH
                else row["last_error"][: ERROR_WIDTH - 1] + "…"
            )
            lines.append(Text.assemble((row["key"], "bold"), " last error: ", (error, "red")))
        if row.get("load_s"):
            times = ", ".join(f"{model} {seconds:.1f} s" for model, seconds in row["load_s"].items())
            lines.append(Text.assemble((row["key"], "bold"), f" checkpoint load times: {times}"))
        if "probe" in row:
            answer = Text("answers", style="green") if row["answers"] else Text(row["probe"], style="red")
            lines.append(Text.assemble((row["key"], "bold"), " probe now: ", answer))
    return lines
