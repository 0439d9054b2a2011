"""``sdpipe pause`` and ``sdpipe resume``: stop and restart new SD calls for the queue or one batch."""

from __future__ import annotations

from typing import Annotated

import typer

from actors import open_runtime
from cli.common import load
from cli.output import cli_errors, echo

__all__ = ["pause", "resume"]


def pause(
    ctx: typer.Context,
    batch: Annotated[str | None, typer.Option("--batch", help="Pause one batch (id or unique prefix).")] = None,
) -> None:
    """Pause the queue (or one batch): no new SD call starts; work already on a GPU finishes."""
    with cli_errors():
        with open_runtime(load(ctx), start_embedded_worker=False) as runtime:
            batch_id = runtime.store.get_batch(batch).batch_id if batch is not None else None
            runtime.pause(batch_id)
    echo(f"paused {'batch ' + batch_id if batch_id else 'the queue'}")


def resume(
    ctx: typer.Context,
    batch: Annotated[str | None, typer.Option("--batch", help="Resume one batch (id or unique prefix).")] = None,
) -> None:
    """Resume the queue (or one batch); a batch paused on its own stays paused until resumed with --batch."""
    with cli_errors():
        with open_runtime(load(ctx), start_embedded_worker=False) as runtime:
            batch_id = runtime.store.get_batch(batch).batch_id if batch is not None else None
            runtime.resume(batch_id)
    echo(f"resumed {'batch ' + batch_id if batch_id else 'the queue'}")
