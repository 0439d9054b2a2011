"""``sdpipe prune``: remove ended jobs' records, batch records and manifests, work folders and
(with ``--outputs``) result files older than a cut-off; orphaned work folders too."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from cli.common import load
from cli.output import cli_errors, echo
from pipeline.jobs.retention import apply_prune, parse_age, plan_prune
from pipeline.models import JobState
from pipeline.storage import open_storage
from pipeline.store import open_store

__all__ = ["prune"]


class PruneState(enum.StrEnum):
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"


def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of the jobs' last change: 30d, 12h, 90m, 0s.", show_default=False)
    ],
    state: Annotated[
        PruneState | None, typer.Option("--state", help="Only jobs that ended so (default: every ended job).")
    ] = None,
    batch_id: Annotated[str | None, typer.Option("--batch", help="Only jobs of this batch (id or prefix).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
    outputs: Annotated[bool, typer.Option("--outputs", help="Remove the result images and sidecars too.")] = False,
) -> None:
    """Remove ended jobs older than --older-than: records, batch records and manifests, work folders,
    (with --outputs) result files, and work folders killed processes left behind. Running and
    queued jobs are never touched."""
    with cli_errors():
        settings = load(ctx)
        older_than_s = parse_age(older_than)
        states = [JobState(state.value)] if state is not None else None
        store = open_store(settings)
        try:
            plan = plan_prune(
                store,
                open_storage(settings.output_location, settings),
                older_than_s=older_than_s,
                batch_id=batch_id,
                outputs=outputs,
                states=states,
                settings=settings,
            )
            done = plan if dry_run else apply_prune(store, plan)
        finally:
            store.close()
        for line in done.lines():
            echo(line)
        files = sum(len(paths) for paths in done.job_files.values()) + len(done.manifests)
        verb = "would remove" if dry_run else "removed"
        echo(
            f"{verb} {len(done.jobs)} job(s), {len(done.batches)} batch(es), {files} file(s)/folder(s), "
            f"{len(done.orphans)} orphaned work folder(s)",
            err=True,
        )
