"""One render of an upscale job (a tile, or a seam-fix band): the way an actor runs it.

Like :func:`~pipeline.jobs.steps.run_step` for a step: the render is skipped when its job ended or
when a later fan-out superseded its message, is never requested again once its answer is saved, and
its failure is recorded on the job (``upscale_tile``) the way a step's is. Counting it done in the
status store tells the caller whether it completed the job's set, and which step follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import NoFreeSlot, PipelineError, SDError
from pipeline.events.model import JOB_STEP_FINISHED
from pipeline.jobs.steps import StepContext, _files, _record_failure, check_paused, fanout_generation
from pipeline.models import ErrorInfo, StepName
from pipeline.upscale import output as upscale_output
from pipeline.upscale import render as upscale_render

if TYPE_CHECKING:
    from pipeline.jobs.files import JobFiles
    from pipeline.models import JobRecord

__all__ = ["TileOutcome", "run_tile"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileOutcome:
    """How a delivery of one tile ended: ``done`` of ``total`` tiles saved (``ran`` False: the job ended)."""

    ran: bool
    done: int = 0
    total: int = 0
    skipped: bool = False
    #: Once complete: the step to send (``merge``; ``seam_blur`` before the seam-fix bands).
    next_step: StepName = "merge"

    @property
    def complete(self) -> bool:
        """Every tile is saved: the merge may run (a duplicate merge message is harmless)."""
        return self.ran and self.total > 0 and self.done >= self.total


def run_tile(
    ctx: StepContext,
    job_id: str,
    index: int,
    *,
    generation: int = 0,
    attempt: int = 1,
    retries_left: int | None = None,
) -> TileOutcome:
    """Render tile ``index`` of an upscale job (never again once its answer is saved) and count it done.

    ``generation``: the fan-out that sent this message (:func:`fanout_generation`; 0: unchecked); a
    message from an earlier fan-out is dropped (the later one sent its own).

    Errors are recorded like a step's (``upscale_tile``): a permanent one fails the job, a transient
    one with no retries left too; otherwise the caller retries this tile alone.

    Raises:
        PipelineError: the call failed (see :func:`run_step`).
    """
    record = ctx.store.get(job_id)
    if record.state.terminal:
        logger.info("job %s: tile %d not needed (job is %s)", job_id, index, record.state)
        return TileOutcome(ran=False)
    if generation and generation != fanout_generation(record):
        # A later fan-out sent its own message for this render (a retry, a band phase, a duplicate
        # delivery): running this one too could pay the server twice for one render.
        logger.info("job %s: tile %d message of fan-out %d is stale; dropped", job_id, index, generation)
        return TileOutcome(ran=False)
    check_paused(ctx, record)  # a paused job starts no new SD call (QueuePaused: requeued, no retry spent)
    files = _files(ctx, record)
    try:
        skipped = upscale_render.render_tile(ctx, record, files, index)
    except NoFreeSlot:
        raise  # every server busy: not an attempt, nothing to record
    except PipelineError as exc:
        error = ErrorInfo(
            step="upscale_tile",
            type=type(exc).__name__,
            message=f"tile {index}: {exc}",
            transient=exc.transient,
            at=ctx.clock(),
            backend=exc.url if isinstance(exc, SDError) else None,
            field=exc.field,
        )
        _record_failure(ctx, job_id, "upscale_tile", attempt, error, retries_left)
        raise
    done, total = ctx.store.add_tile_done(job_id, index)
    _advance_output(ctx, record, files, index)
    logger.info("job %s: tile %d %s (%d/%d)", job_id, index, "already saved" if skipped else "rendered", done, total)
    if ctx.events is not None:
        data = {"step": "upscale_tile", "tile": index, "done": done, "total": total, "skipped": skipped}
        ctx.events.emit(JOB_STEP_FINISHED, job_id=job_id, batch_id=record.batch_id, data=data)
    following: StepName = "merge"
    if done >= total and upscale_render.next_step_after_renders(record, files, total) == "seam_blur":
        following = "seam_blur"
    return TileOutcome(ran=True, done=done, total=total, skipped=skipped, next_step=following)


def _advance_output(ctx: StepContext, record: JobRecord, files: JobFiles, index: int) -> None:
    """Deflate the output's bands this tile completes (:mod:`pipeline.upscale.output`), so that the
    merge after the last tile has little left to do. Only a head start: whatever fails here, the
    merge computes the band itself (and reports a damaged tile as its own error)."""
    try:
        upscale_output.save_ready_pieces(ctx, record, files, index)
    except (PipelineError, OSError, ValueError) as exc:
        logger.warning("job %s: output bands after tile %d left to the merge: %s", record.job_id, index, exc)
