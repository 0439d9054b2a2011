"""The four steps of a job (generate, split, seam_blur, merge) and the one way to run a step.

Actors call :func:`run_step` with a job id; this module knows nothing of Dramatiq. Every step is
idempotent, because Dramatiq delivers at least once:

- a step whose output already exists does nothing (and says so: ``skipped``);
- ``generate`` never calls the SD server once the job's image is saved;
- the status store's conditional transitions drop a redelivered step of a job that moved on.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError, JobNotFound, PipelineError, QueuePaused, SDError
from pipeline.events.jobs import announce_end, batch_completed, end_key, end_type, job_data
from pipeline.events.model import JOB_PREVIEW, JOB_PROGRESS, JOB_RETRYING, JOB_STEP_FINISHED, JOB_STEP_STARTED, Event
from pipeline.images import seams
from pipeline.images.codec import decode_image, encode_image
from pipeline.images.infotext import insert_params
from pipeline.jobs.arrays import atomic_save_arrays, load_arrays
from pipeline.jobs.context import StepContext
from pipeline.jobs.files import JobFiles, atomic_write_json, claim_output_name, iso_time, read_json, remove_stale_temps
from pipeline.jobs.naming import resolve_late_tokens
from pipeline.jobs.retention import ORPHAN_WORK_AGE_S
from pipeline.models import PRIORITIES, ErrorInfo, JobRecord, JobResult, JobState, SDInfo, StepName, StepRecord
from pipeline.sd.backends import Backend
from pipeline.sd.pool import affinity
from pipeline.storage.base import Blob
from pipeline.store.base import InlineEvent
from pipeline.upscale import output as upscale_output
from pipeline.upscale import render as upscale_render
from pipeline.upscale import steps as upscale_steps

__all__ = [
    "ORPHAN_WORK_AGE_S",
    "StepContext",
    "check_paused",
    "progress_publisher",
    "StepOutcome",
    "drop_lost_job",
    "fanout_generation",
    "run_step",
    "sd_slot",
]


logger = logging.getLogger(__name__)

#: Version written into sidecars: the installed package's, so pyproject.toml is the one place it is set.
SDPIPE_VERSION = importlib.metadata.version("sdpipe")


@dataclass(frozen=True)
class StepOutcome:
    """How a delivery of a step ended.

    ``ran`` is False when the job was terminal or already past the step (a duplicate delivery):
    the caller must then not continue the pipeline.
    """

    ran: bool
    skipped: bool = False
    #: The split step of an upscale job (and, with ``--seam-fix band``, its seam_blur step): the
    #: renders (tiles, then bands) whose answers are not saved yet; the caller sends one message each.
    renders: tuple[int, ...] = ()
    #: The fan-out's generation (:func:`fanout_generation`): each render message carries it, so a
    #: message from an earlier fan-out (before ``sdpipe retry``, or a duplicate delivery) knows it is stale.
    generation: int = 0
    #: The step the caller must send itself when every render is already saved (a retry, a band
    #: phase without bands): ``seam_blur`` or ``merge``.
    then: StepName | None = None


def run_step(ctx: StepContext, job_id: str, step: StepName, *, retries_left: int | None = None) -> StepOutcome:
    """Run one step of one job, recording its attempt, timing and any error in the status store.

    ``retries_left`` is how many more deliveries the caller's retry policy allows (None: unknown).
    A transient failure with none left marks the job failed here, with the reason.

    A delivery whose previous attempt of the same step ended without any outcome (no finish, no
    error: the worker died, killed or out of memory) is counted; after ``MAX_DELIVERIES`` such
    deaths in a row the job is failed as quarantined instead of run again, so a poison job cannot
    take workers down forever (Dramatiq's own retry count never sees these deaths).

    Raises:
        PipelineError: the step failed. A permanent error has already marked the job failed; a
            transient one is recorded as the last error and should be retried.
        Exception: anything unexpected (recorded as the last error, treated as transient).
    """
    now = ctx.clock()
    state = JobState.for_step(step)
    # The start event goes with the start (one round trip), its attempt and batch filled in there.
    started_event, inline = _inline(
        ctx, JOB_STEP_STARTED, job_id, _BATCH_MARK, {"step": step, "attempt": _ATTEMPT_MARK, "state": state.value}, now
    )
    try:
        started, previous = ctx.store.start_step_after(job_id, step, now=now, event=inline)
    except JobNotFound:
        drop_lost_job(ctx, job_id, step)
        return StepOutcome(ran=False)
    if started is None:
        logger.debug("job %s: %s not needed (job is finished or past this step)", job_id, step)
        # A succeeded job's folder is left only by a crash between its success and that removal
        # (this delivery is then the step that ended the job, never acknowledged): removed now.
        _announce_if_ended(ctx, job_id, remove_work=True)
        return StepOutcome(ran=False)
    record = _unless_quarantined(ctx, started, step, previous)
    if record is None:
        return StepOutcome(ran=False)
    attempt = record.steps[step].attempts
    logger.debug("job %s: %s started (attempt %d)", job_id, step, attempt)
    if started_event is not None:
        data = {"step": step, "attempt": attempt, "state": record.state.value}
        _emit_inline(ctx, started_event.model_copy(update={"batch_id": record.batch_id, "data": data}), inline)
    try:
        skipped, produced = _STEPS[step](ctx, record)
    except PipelineError as exc:
        error = ErrorInfo(
            step=step,
            type=type(exc).__name__,
            message=str(exc),
            transient=exc.transient,
            at=ctx.clock(),
            backend=exc.url if isinstance(exc, SDError) else None,
            field=exc.field,
        )
        _record_failure(ctx, job_id, step, attempt, error, retries_left)
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        error = ErrorInfo(step=step, type=type(exc).__name__, message=message, transient=True, at=ctx.clock())
        logger.exception("job %s: %s attempt %d failed unexpectedly", job_id, step, attempt)
        _record_failure(ctx, job_id, step, attempt, error, retries_left)
        raise
    now = ctx.clock()
    result = produced if isinstance(produced, JobResult) else None
    started_at = record.steps[step].started_at
    duration_s = round(now - started_at, 3) if started_at is not None else None
    # The step's end event is appended by the step's end (the same round trip), and so is the
    # job's success event when this step ends the job.
    finished = _inline(
        ctx,
        JOB_STEP_FINISHED,
        job_id,
        record.batch_id,
        {"step": step, "duration_s": duration_s, "skipped": skipped},
        now,
    )
    ended: tuple[Event | None, InlineEvent | None] = (None, None)
    batch_counts: dict[JobState, int] = {}
    if result is not None:
        done = record.model_copy(update={"state": JobState.SUCCEEDED, "updated_at": now, "result": result})
        ended = _inline(ctx, end_type(done), job_id, record.batch_id, job_data(done), now, once=end_key(done))
        both = [body for body in (finished[1], ended[1]) if body is not None]
        # The step's end, the job's success and its batch's counts (for batch.completed): one round trip.
        ctx.store.end_step(
            job_id,
            step,
            now=now,
            skipped=skipped,
            result=result,
            events=both if len(both) == 2 else (),
            batch_counts=batch_counts,
        )
    else:
        # A generation's answer (what the server said) is stored with the step's end: one round trip.
        sd_info = produced if isinstance(produced, SDInfo) else None
        one = [finished[1]] if finished[1] is not None else []
        ctx.store.end_step(job_id, step, now=now, skipped=skipped, sd_info=sd_info, events=one)
    _emit_inline(ctx, *finished)
    if result is not None:
        logger.info("job %s: succeeded -> %s", job_id, result.image)
        event, body = ended
        if ctx.events is not None and event is not None and body is not None and body.id is not None:
            # The store's write announced the end (as announce_end would have): now its batch's.
            ctx.events.emit_inline(event, body)
            if record.batch_id is not None:
                batch_completed(ctx.events, ctx.store, record.batch_id, counts=batch_counts or None)
        else:
            _announce_if_ended(ctx, job_id)
        # The intermediates go once the job reads as succeeded and its end is announced: their removal
        # (tens of MB of an upscale's tiles) is not part of the job's time. A crash before it leaves the
        # folder to this step's redelivery (remove_work, above), else to the orphan rule
        # (find_orphaned_work: a succeeded job's folder is one).
        _remove_work(ctx, record)
        if (record.spec.prompt_template or {}).get("contact_sheet") and record.spec.batch_id:
            _contact_sheet(ctx, record)
    else:
        logger.debug("job %s: %s %s", job_id, step, "skipped (output exists)" if skipped else "done")
    if record.spec.upscale is not None and step in ("split", "seam_blur"):
        files = _files(ctx, record)
        pending, total = upscale_render.pending_renders(record, files)
        if pending:
            generation = fanout_generation(record)
            return StepOutcome(ran=True, skipped=skipped, renders=tuple(pending), generation=generation)
        following = upscale_render.next_step_after_renders(record, files, total)
        return StepOutcome(ran=True, skipped=skipped, then="merge" if following == "merge" else "seam_blur")
    return StepOutcome(ran=True, skipped=skipped)


#: What the store fills in a step start's event (:class:`~pipeline.store.base.InlineEvent`).
_ATTEMPT_MARK = "@attempt@"
_BATCH_MARK = "@batch_id@"


def _inline(
    ctx: StepContext,
    type: str,
    job_id: str,
    batch_id: str | None,
    data: dict[str, Any],
    now: float | None = None,
    *,
    once: str | None = None,
) -> tuple[Event | None, InlineEvent | None]:
    """An event for a store write to append (:meth:`EventHub.inline`); (None, None) without events."""
    if ctx.events is None:
        return None, None
    return ctx.events.inline(ctx.store, type, job_id=job_id, batch_id=batch_id, data=data, once=once, ts=now)


def _emit_inline(ctx: StepContext, event: Event | None, body: InlineEvent | None) -> None:
    """Tell listeners of an event the store's write appended, or publish it if it did not."""
    if ctx.events is not None and event is not None:
        ctx.events.emit_inline(event, body)


def _announce_if_ended(ctx: StepContext, job_id: str, *, remove_work: bool = False) -> None:
    """Announce the job's end if it has ended (again, for a duplicate delivery: idempotent); with
    ``remove_work``, also remove the work folder of a job that succeeded."""
    if ctx.events is None and not remove_work:
        return
    try:
        record = ctx.store.get(job_id)
    except PipelineError as exc:
        logger.warning("job %s: end not announced: %s", job_id, exc)
        return
    if ctx.events is not None:
        announce_end(ctx.events, ctx.store, record)
    if remove_work and record.state is JobState.SUCCEEDED:
        _remove_work(ctx, record)


def _remove_work(ctx: StepContext, record: JobRecord) -> None:
    """Remove the work folder of a job that succeeded. A failure (a bucket that does not answer) is
    logged, not raised: the job's success is recorded already, and the orphan rule takes the folder."""
    try:
        _files(ctx, record).remove_work_dir()
    except (PipelineError, OSError) as exc:
        logger.warning("job %s: work folder not removed (%s); the orphan rule removes it later", record.job_id, exc)


def progress_publisher(ctx: StepContext, record: JobRecord) -> Callable[[dict[str, Any]], None] | None:
    """What the SD call hands each progress reading to: a ``job.progress`` event (and ``job.preview``
    for a preview image, kept out of the progress event and of every record)."""
    if ctx.events is None:
        return None
    events = ctx.events

    def publish(reading: dict[str, Any]) -> None:
        image = reading.pop("image", None)
        events.emit(JOB_PROGRESS, job_id=record.job_id, batch_id=record.batch_id, data=reading)
        if image is not None:
            data = {"step": reading.get("step"), "steps": reading.get("steps"), "image": image}
            events.emit(JOB_PREVIEW, job_id=record.job_id, batch_id=record.batch_id, data=data)

    return publish


def drop_lost_job(ctx: StepContext, job_id: str, step: str) -> None:
    """A message for a job the store has no record of (Redis restarted without persistence, or was
    flushed): nothing can run it, so say why (WARNING) and remove its work folder (or prefix)."""
    files = JobFiles(ctx.storage(), job_id)
    had_files = files.storage.delete_prefix(files.work_prefix) > 0
    logger.warning(
        "job %s: %s dropped: %s%s",
        job_id,
        step,
        ctx.store.records_gone(job_id).message,
        "; its work folder was removed" if had_files else "",
    )


def _contact_sheet(ctx: StepContext, record: JobRecord) -> None:
    """The batch's contact sheet if this job was its last; a failure here never fails the job."""
    from pipeline.batches.manifests import contact_sheet_when_done

    try:
        sheet = contact_sheet_when_done(ctx.store, str(record.spec.batch_id), ctx.storage(record.spec.output_dir))
    except (PipelineError, OSError) as exc:
        logger.warning("job %s: contact sheet of batch %s not written: %s", record.job_id, record.spec.batch_id, exc)
        return
    if sheet is not None:
        logger.info("job %s: batch %s complete, contact sheet %s", record.job_id, record.spec.batch_id, sheet)


def fanout_generation(record: JobRecord) -> int:
    """How many times an upscale job's renders were sent: the deliveries of ``split`` and ``seam_blur``
    (the two steps that send them) so far. It only grows."""
    return sum(record.steps[step].attempts for step in ("split", "seam_blur") if step in record.steps)


def _files(ctx: StepContext, record: JobRecord) -> JobFiles:
    # The job's own location (--out travelled with it), else this worker's; a local one is absolute,
    # so the paths in the status store and sidecar mean the same from any folder.
    return JobFiles(ctx.storage(record.spec.output_dir), record.job_id)


def _unless_quarantined(
    ctx: StepContext, record: JobRecord, step: StepName, previous: StepRecord | None
) -> JobRecord | None:
    """Count a death of the previous delivery of ``step`` (``previous``: the step before this start).

    Returns the record to run the step with (its error the new ``WorkerDied`` if a death was
    counted), or None past MAX_DELIVERIES deaths in a row: the job is then failed as quarantined.
    """
    if previous is None or previous.started_at is None or previous.finished_at is not None:
        return record
    job_id, last = record.job_id, record.error
    if last is not None and last.step == step and last.at >= previous.started_at and last.type != "WorkerDied":
        return record  # the previous attempt failed with an error: an outcome, not a death
    now = ctx.clock()
    if now - previous.started_at < ctx.settings.broker_heartbeat_timeout_ms / 1000:
        # A dead worker's message comes back only after its heartbeat expired, so one arriving
        # sooner is a duplicate of an attempt that may still be running, not a death.
        return record
    deaths = (last.deaths if last is not None and last.type == "WorkerDied" and last.step == step else 0) + 1
    if deaths >= ctx.settings.max_deliveries:
        message = f"quarantined: {deaths} deliveries of {step} ended without an outcome (the worker died each time)"
        ctx.store.mark_failed(job_id, ErrorInfo(step=step, type="Quarantined", message=message, at=now), now=now)
        logger.error("job %s: %s quarantined after %d deliveries that killed their worker", job_id, step, deaths)
        _announce_if_ended(ctx, job_id)
        return None
    died = ErrorInfo(
        step=step,
        type="WorkerDied",
        message=f"delivery of {step} ended without an outcome (the worker died); running it again",
        transient=True,
        at=now,
        deaths=deaths,
    )
    ctx.store.record_error(job_id, died)
    logger.warning("job %s: the previous delivery of %s died with its worker (%d in a row)", job_id, step, deaths)
    return record.model_copy(update={"error": died})


def _record_failure(
    ctx: StepContext, job_id: str, step: str, attempt: int, error: ErrorInfo, retries_left: int | None
) -> None:
    if not error.transient:
        ctx.store.mark_failed(job_id, error, now=ctx.clock())
        logger.error("job %s: %s failed: %s", job_id, step, error.message)
        _announce_if_ended(ctx, job_id)
    elif retries_left == 0:
        final = error.model_copy(update={"message": f"{error.message} (gave up after {attempt} attempts)"})
        ctx.store.mark_failed(job_id, final, now=ctx.clock())
        logger.error("job %s: %s failed after %d attempts: %s", job_id, step, attempt, error.message)
        _announce_if_ended(ctx, job_id)
    else:
        ctx.store.record_error(job_id, error)
        logger.warning("job %s: %s attempt %d failed, will retry: %s", job_id, step, attempt, error.message)
        if ctx.events is not None:
            data = {"step": step, "attempt": attempt, "error": {"type": error.type, "message": error.message}}
            ctx.events.emit(JOB_RETRYING, job_id=job_id, data=data)


# Each step returns (skipped, what it produced for the status store): the job's result from the
# last step, what the SD server said from generate (stored with the step's end), else None.
_StepFn = Callable[[StepContext, JobRecord], tuple[bool, JobResult | SDInfo | None]]


def _generate(ctx: StepContext, record: JobRecord) -> tuple[bool, SDInfo]:
    files = _files(ctx, record)
    if files.source.exists():
        # The image is saved: never pay for it twice. Re-store what the server said (idempotent).
        return True, SDInfo.model_validate(files.read_sd_answer())
    generation = record.spec.generation
    if generation is None:
        raise ConfigError(f"job {record.job_id} has no generation parameters and no source image")
    result = ctx.pool.txt2img(
        record.job_id,
        generation,
        pinned=pinned_backend(ctx, record),
        avoid=_failed_backend(record),
        on_progress=progress_publisher(ctx, record),
    )
    sd_info = SDInfo(
        seed=result.seed,
        subseed=result.subseed,
        all_seeds=result.all_seeds,
        all_subseeds=result.all_subseeds,
        model_name=result.model_name,
        model_hash=result.model_hash,
        sampler=result.sampler,
        version=result.version,
        infotext=result.infotext,
        format=result.format,
        width=result.extra.get("width"),
        height=result.extra.get("height"),
        backend_url=result.backend_url,
        elapsed_s=round(result.elapsed_s, 3),
        warnings=result.warnings,
    )
    for warning in result.warnings:
        logger.warning("job %s: %s", record.job_id, warning)
    # What the server said and the image, in one durable file: its presence means both are complete.
    # Stored once, in the job's storage: a redelivery on any machine finds it and never asks the GPU again.
    files.write_sd_answer(result.image_bytes, sd_info.model_dump(mode="json"))
    return False, sd_info


def pinned_backend(ctx: StepContext, record: JobRecord) -> str | None:
    """The server a job must use: its spec's ``backend_url`` in Redis mode (``--sd-url`` travelled
    to workers with their own ``SD_API_URL``). Embedded jobs run on the settings of the process that
    runs them, which already name the server (an embedded ``retry`` chooses it: the job's own
    server unless ``--sd-url`` says otherwise), so their recorded server pins nothing."""
    return record.spec.backend_url if ctx.settings.redis_mode else None


def _failed_backend(record: JobRecord) -> str | None:
    """The server this job's last generate attempt failed on: a retry prefers another."""
    error = record.error
    return error.backend if error is not None and error.step == "generate" else None


@contextmanager
def sd_slot(ctx: StepContext, job_id: str) -> Iterator[Backend | None]:
    """Hold a slot on an SD server for the generate step of ``job_id`` around the step's run.

    Taken before the step starts, so a delivery that waits for a slot (and goes back to the queue
    with :class:`~pipeline.errors.NoFreeSlot`) records no attempt. Yields None, holding nothing,
    when the step will make no SD call (the job is finished or its image is already saved).
    """
    try:
        record = ctx.store.get(job_id)
    except JobNotFound:  # its record is lost: run_step drops the message, no SD call
        yield None
        return
    klass = PRIORITIES.index(record.spec.priority)
    if record.state.terminal or _files(ctx, record).source.exists():
        ctx.pool.drop_ticket(job_id, klass)  # it holds no one back now
        yield None
        return
    try:
        check_paused(ctx, record)
    except QueuePaused:
        ctx.pool.drop_ticket(job_id, klass)  # a paused job holds no one back; its next try takes a new ticket
        raise
    with ctx.pool.slot(
        job_id,
        pinned=pinned_backend(ctx, record),
        avoid=_failed_backend(record),
        model=affinity.wanted(record.spec.generation),
        priority=klass,
        since=record.created_at,
    ) as backend:
        yield backend


def check_paused(ctx: StepContext, record: JobRecord) -> None:
    """Refuse to start an SD call for a job whose queue or batch is paused.

    Raises:
        QueuePaused: paused (the caller puts the message back, no retry spent).
    """
    if ctx.control is not None and ctx.control.is_paused(record.batch_id):
        what = f"batch {record.batch_id[:8]}" if record.batch_id and not ctx.control.queue_paused() else "the queue"
        raise QueuePaused(f"job {record.job_id[:8]}: {what} is paused; requeued", field="paused", value=record.batch_id)


def _split(ctx: StepContext, record: JobRecord, *, again: bool = False) -> tuple[bool, JobResult | None]:
    """Cut the source image into its tiles (``again``: even if a tiles file is there, found cut short)."""
    files = _files(ctx, record)
    if record.spec.upscale is not None:
        return upscale_steps.first_pass(ctx, record, files), None
    if not again and files.tiles.exists_unsynced():
        return True, None
    params = record.spec.step_params
    decoded = decode_image(
        files.source_image(),
        max_pixels=ctx.settings.max_pixels,
        max_bytes=ctx.settings.max_image_bytes,
        what=f"source image of job {record.job_id[:8]}",
    )
    seams.validate_geometry(decoded.width, decoded.height, params)
    tiles = seams.split(decoded.array, params)
    manifest = {
        "width": decoded.width,
        "height": decoded.height,
        "mode": decoded.mode,
        "source_format": decoded.format,
        "orientation": decoded.orientation,
        "frames": decoded.frames,
        "bit_depth": decoded.bit_depth,
        "infotext": decoded.infotext,
        "tiles": [box.to_dict() for box, _ in tiles],
    }
    # One file for the manifest and every tile: its presence means the step is done. Not synced: it
    # can be made again from the source (see _made_earlier), and it is gone again in a moment.
    atomic_save_arrays(files.tiles, manifest, [tile for _, tile in tiles], durable=False)
    return False, None


def _made_earlier(
    ctx: StepContext, record: JobRecord, saved: Blob, make: Callable[..., object]
) -> tuple[dict[str, Any], list[Any]]:
    """The arrays an earlier step of this job saved (not synced), or, when they cannot be trusted, the
    same made again by that step (``make``): missing, written before this machine last started (a
    crash may have cut them), or found cut short."""
    try:
        return load_arrays(saved, unsynced=True)
    except (FileNotFoundError, ValueError) as exc:
        logger.warning("job %s: %s: made again", record.job_id, exc)
    make(ctx, record, again=True)
    return load_arrays(saved)


def _seam_blur(ctx: StepContext, record: JobRecord, *, again: bool = False) -> tuple[bool, JobResult | None]:
    """Blur the tiles along the inner cuts (``again``: even if a file is there, found cut short)."""
    files = _files(ctx, record)
    if record.spec.upscale is not None:  # reached only with --seam-fix band, once every tile is saved
        return upscale_steps.band_phase(ctx, record, files)[0], None
    if not again and files.blurred.exists_unsynced():
        return True, None
    manifest, tiles = _made_earlier(ctx, record, files.tiles, _split)
    params = record.spec.step_params
    width, height = manifest["width"], manifest["height"]
    # Only the seam bands are saved: every other pixel is the tile's own, which the merge reads from
    # the tiles file (about a tenth of the bytes written and read again at 512², 2x2).
    bands: list[list[int]] = []
    pieces = []
    for index, (box_dict, tile) in enumerate(zip(manifest["tiles"], tiles, strict=True)):
        box = seams.TileBox.from_dict(box_dict)
        blurred = seams.seam_blur_tile(tile, box, width, height, params)
        for y0, y1, x0, x1 in seams.band_rects(box, width, height, params):
            bands.append([index, y0, y1, x0, x1])
            pieces.append(blurred[y0:y1, x0:x1])
    atomic_save_arrays(files.blurred, {"bands": bands}, pieces, durable=False)
    return False, None


def _blurred_tiles(ctx: StepContext, record: JobRecord, files: JobFiles) -> tuple[dict[str, Any], list[Any]]:
    """The tiles' manifest and the blurred tiles: the tiles with the seam bands :func:`_seam_blur` saved
    put back in place (a file from before bands, which held the blurred tiles whole, is read as is)."""
    meta, pieces = _made_earlier(ctx, record, files.blurred, _seam_blur)
    if "bands" not in meta:
        return meta, pieces
    # The tiles as split (made again if they cannot be trusted: the split is deterministic, so the
    # bands still fit them). load_arrays gives writable arrays of their own: the bands go in in place.
    manifest, tiles = _made_earlier(ctx, record, files.tiles, _split)
    for (index, y0, y1, x0, x1), piece in zip(meta["bands"], pieces, strict=True):
        tiles[index][y0:y1, x0:x1] = piece
    return manifest, tiles


def _merge(ctx: StepContext, record: JobRecord) -> tuple[bool, JobResult | None]:
    files = _files(ctx, record)
    spec = record.spec
    sd_info = record.sd_info or SDInfo()
    # {seed} of a random seed and {model} come from what the server said (saved once with the image),
    # then the name is claimed once: another job's file, or one sdpipe did not write, is never replaced
    # (a counter suffix instead) unless the job was made with --overwrite.
    wanted = resolve_late_tokens(spec.output_name, seed=sd_info.seed, model=sd_info.model_name)
    name = claim_output_name(files, wanted, spec.output_format, overwrite=spec.overwrite)
    image = files.image(name, spec.output_format)
    sidecar = files.sidecar(name)
    # Done only if the sidecar is this job's and the image is the one it describes: with --overwrite
    # the name may hold an earlier job's render, which this job must replace, not adopt.
    existing = _read_sidecar(sidecar)
    ours = existing is not None and existing.get("job_id") == record.job_id
    done = existing.get("output") if ours and existing is not None else None
    if done is not None:
        try:
            if hashlib.sha256(image.read_bytes()).hexdigest() == done["sha256"]:
                return True, JobResult.model_validate(done)
        except FileNotFoundError:
            pass
    merge_step = record.steps.get("merge")
    if merge_step is not None and merge_step.attempts > 1:
        # Only an earlier delivery of this merge can have left temporary files (killed mid-write; on
        # disk only: a PUT leaves nothing). A first delivery skips the scan: it lists the output
        # folder, which grows with every image kept.
        for blob in (image, sidecar):
            if blob.path is not None:
                remove_stale_temps(blob.path)
    if spec.upscale is not None and upscale_output.uses_pieces(record):
        # A PNG upscale: its bands were deflated as their tiles arrived; stitch them (same bytes).
        manifest = upscale_steps.output_manifest(files)
        infotext = _output_infotext(record, manifest)
        data = upscale_output.assemble_png(ctx, record, files, manifest, infotext)
    else:
        if spec.upscale is not None:
            merged, manifest = upscale_steps.merge_upscaled(ctx, record, files)
        else:
            manifest, arrays = _blurred_tiles(ctx, record, files)
            tiles = [(seams.TileBox.from_dict(box), tile) for box, tile in zip(manifest["tiles"], arrays, strict=True)]
            merged = seams.merge(tiles, manifest["width"], manifest["height"])
        infotext = _output_infotext(record, manifest)
        data = encode_image(merged, format=spec.output_format, infotext=infotext, quality=spec.output_quality)
        del merged
    width, height = manifest["width"], manifest["height"]
    output = {
        "image": image.location,
        "sidecar": sidecar.location,
        "format": spec.output_format,
        **({"quality": spec.output_quality} if spec.output_format != "png" and spec.output_quality else {}),
        "width": width,
        "height": height,
        "bytes": len(data),
    }
    if done is not None:
        output["sha256"] = hashlib.sha256(data).hexdigest()
        if done["sha256"] == output["sha256"]:
            # The sidecar is this job's and complete, its image gone (removed by hand): the encoding is
            # deterministic, so write the image alone.
            image.write(data)
            return False, JobResult.model_validate(done)
    # The image first, the sidecar last: a sidecar that records an output is there only once its
    # image is whole (on disk a rename, in a bucket a PUT, each atomic), and its sha256 is the
    # image's. A delivery that died between the two writes finds the claim (or an earlier job's
    # sidecar) and writes both again, the same bytes under the same name. One folder sync, the
    # sidecar's, makes both names durable: they are in the same folder (JobFiles.image, .sidecar).
    # The usual delivery computes the sha256 on another thread while the image is written.
    if "sha256" in output:
        image.write(data, sync_folder=False)
    else:
        output["sha256"] = _sha256_while(data, lambda: image.write(data, sync_folder=False))
    atomic_write_json(sidecar, _sidecar(ctx, record, output, infotext, manifest))
    return False, JobResult.model_validate(output)


def _sha256_while(data: bytes, write: Callable[[], None]) -> str:
    """The sha256 of ``data`` (hex), computed on another thread while ``write()`` runs on this one.

    Raises:
        Exception: what ``write`` raised (the hash is waited for first).
    """
    digest: list[str] = []
    hashing = threading.Thread(target=lambda: digest.append(hashlib.sha256(data).hexdigest()), daemon=True)
    hashing.start()
    try:
        write()
    finally:
        hashing.join()
    return digest[0]


def _read_sidecar(sidecar: Blob) -> dict[str, Any] | None:
    try:
        found = read_json(sidecar)
    except FileNotFoundError:
        return None
    return found if isinstance(found, dict) else None


def _output_infotext(record: JobRecord, manifest: dict[str, Any]) -> str | None:
    """The SD image's infotext (or the input's), with our seam settings added before ``Version``; an
    upscale's is its tiles' (see :meth:`~pipeline.upscale.params.UpscaleParams.output_infotext`).

    None for a process input that had none (a photo): a params-only text would make A1111 tools take
    it for an SD render with an empty prompt. The sidecar records the seam settings either way.
    """
    base = (record.sd_info.infotext if record.sd_info else None) or manifest.get("infotext")
    if record.spec.upscale is not None:  # its tiles are SD renders, whatever the input was
        return record.spec.upscale.output_infotext(base, manifest["width"], manifest["height"])
    if not base:
        return None
    params = record.spec.step_params
    return insert_params(base, {"Seam grid": params.grid, "Seam band": params.band_px, "Seam sigma": params.sigma})


def _sidecar(
    ctx: StepContext, record: JobRecord, output: dict[str, Any], infotext: str | None, manifest: dict[str, Any]
) -> dict[str, Any]:
    spec = record.spec
    sd_info = record.sd_info or SDInfo()
    now = ctx.clock()
    # "timings", not "steps": that is the sampling steps of the parameters (and of A1111's infotext)
    steps: dict[str, Any] = {}
    for name, step in record.steps.items():
        duration = step.duration_s
        if name == "merge" and step.started_at is not None:
            duration = now - step.started_at
        steps[name] = {
            "attempts": step.attempts,
            "duration_s": round(duration, 4) if duration is not None else None,
            "skipped": step.skipped,
        }
    generation = spec.generation
    return {
        "job_id": spec.job_id,
        "batch_id": spec.batch_id,
        "kind": spec.kind,
        "prompt": generation.prompt if generation else None,
        "negative_prompt": generation.negative_prompt if generation else None,
        # A templated prompt: the templates and the choices that made it, and the sweep values it took.
        **(spec.prompt_template or {}),
        # The whole request as sent (no credential is ever part of it; the task id is the job's).
        "parameters": generation.to_payload() if generation else None,
        "seed": sd_info.seed,
        "subseed": sd_info.subseed,
        "all_seeds": sd_info.all_seeds,
        "all_subseeds": sd_info.all_subseeds,
        "model_name": sd_info.model_name,
        "model_hash": sd_info.model_hash,
        "sampler": sd_info.sampler,
        "sd_version": sd_info.version,
        "sd_warnings": sd_info.warnings,
        "backend_url": sd_info.backend_url or spec.backend_url,
        "source": spec.source_name,
        "input_image": _input_image(manifest),
        "grid": spec.step_params.grid,
        "band_px": spec.step_params.band_px,
        "sigma": spec.step_params.sigma,
        **({"upscale": upscale_steps.sidecar_record(spec.upscale, manifest)} if spec.upscale is not None else {}),
        "timings": steps,
        "output": output,
        "infotext": infotext,
        "created_at": iso_time(spec.created_at),
        "finished_at": iso_time(now),
        "sdpipe_version": SDPIPE_VERSION,
    }


def _input_image(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the image rules did to the input (README "Image rules"): EXIF orientation applied, the
    first frame of an animation kept, a 16-bit image reduced to 8 bits per channel."""
    orientation = int(manifest.get("orientation", 1))
    frames = int(manifest.get("frames", 1))
    bit_depth = int(manifest.get("bit_depth", 8))
    return {
        "format": manifest.get("source_format"),
        "exif_orientation": orientation,
        "orientation_applied": orientation != 1,
        "frames": frames,
        "first_frame_only": frames > 1,
        "bit_depth": bit_depth,
        "reduced_to_8_bit": bit_depth > 8,
    }


_STEPS: dict[str, _StepFn] = {
    "generate": _generate,
    "split": _split,
    "seam_blur": _seam_blur,
    "merge": _merge,
}
