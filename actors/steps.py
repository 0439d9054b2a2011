"""The step actors: ``generate`` (queue ``sd``), ``split``, ``seam_blur``, ``merge`` (queue ``images``),
and ``upscale_tile`` (queue ``sd``): one message per tile of an upscale job.

An upscale job's pipeline ends at ``split`` (the first pass), whose actor then sends one
``upscale_tile`` message per tile, so every SD server of the pool renders tiles at once; the tile
that completes the job's set (a counter in the status store, at-least-once safe) sends ``merge``.

Each actor is a thin shell over :func:`pipeline.jobs.steps.run_step`; messages carry the job id only.
The step code (and its numpy and PIL) is imported when a step first runs, not when the actors are
declared: the CLI declares them in Redis mode only to send messages (``sdpipe generate --no-wait``);
``sdpipe worker`` imports it at start-up (:func:`actors.worker.setup`).
Retries: transient errors retry with exponential backoff (raised as ``dramatiq.Retry``, so
Dramatiq does not log an expected outage as a crash with a traceback); permanent errors (``PERMANENT_ERRORS``)
fail at once through ``throws``, after :func:`~pipeline.jobs.steps.run_step` marked the job failed; when
retries run out, ``on_retry_exhausted`` (not ``on_failure``, which fires on every attempt) sends
``sdpipe_job_failed``, which marks the job failed with its last error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from pipeline.errors import PERMANENT_ERRORS, JobNotFound, NoFreeSlot, Outranked, PipelineError, QueuePaused
from pipeline.events.jobs import announce_end
from pipeline.jobs.context import StepContext
from pipeline.models import ErrorInfo, JobSpec, JobState, StepName

__all__ = [
    "IMAGES_QUEUE",
    "JOB_FAILED_ACTOR",
    "QUEUES",
    "SD_QUEUE",
    "StepActors",
    "declare_actors",
]

logger = logging.getLogger(__name__)

#: Queue of the SD calls: give it its own workers to cap concurrent requests per server.
SD_QUEUE = "sd"
#: Queue of the CPU-bound image steps.
IMAGES_QUEUE = "images"
QUEUES = (SD_QUEUE, IMAGES_QUEUE)
#: Name of the actor that marks a job failed when a step's retries run out.
JOB_FAILED_ACTOR = "sdpipe_job_failed"
#: Time limit of the image steps (a 8192² image takes seconds, not minutes).
IMAGE_STEP_TIME_LIMIT_MS = 600_000
#: A worker thread picks image steps before generations (lower runs first): threads that free up
#: while every SD slot is taken finish images instead of queueing behind the GPUs.
IMAGES_PRIORITY = 0
GENERATE_PRIORITY = 10
#: A generation outranked by better-class work goes back to the queue after this long (ms, random
#: within the range so waiters do not return in step), doubled each time in a row (below). One that
#: waited SLOT_WAIT_S for a busy server goes back at once: it waited already, and with every waiter
#: away in the delay queue a server that frees up would sit idle (up to 1.5 s measured, bench target 3).
REQUEUE_DELAY_MS = (500, 1500)
#: The same for a generation whose queue or batch is paused: it looks again every few seconds.
PAUSED_DELAY_MS = (2000, 4000)
#: Longest wait of a generation outranked again and again (its wait doubles each time up to this):
#: low jobs behind a long normal queue do not spin through the queue every second.
OUTRANKED_MAX_DELAY_MS = 8000
#: Message option counting a delivery's consecutive outrankings.
OUTRANKED_OPTION = "sdpipe_outranked"


def requeue_delay_ms(exc: NoFreeSlot, *, outranked: int = 0) -> int | None:
    """How long a delivery that could not start its SD call waits in the delay queue (``outranked``:
    how many times in a row it was outranked before this one); None: back to its queue at once (every
    server stayed busy for the whole slot wait, :data:`~pipeline.sd.pool.SLOT_WAIT_S`)."""
    if isinstance(exc, QueuePaused):
        return random.randint(*PAUSED_DELAY_MS)
    low, high = REQUEUE_DELAY_MS
    if isinstance(exc, Outranked):
        factor = 2 ** min(outranked, 8)
        return min(random.randint(low * factor, high * factor), OUTRANKED_MAX_DELAY_MS)
    return None


@dataclass(frozen=True)
class StepActors:
    """The declared actors, bound to one broker."""

    generate: dramatiq.Actor[Any, Any]
    split: dramatiq.Actor[Any, Any]
    seam_blur: dramatiq.Actor[Any, Any]
    merge: dramatiq.Actor[Any, Any]
    job_failed: dramatiq.Actor[Any, Any]
    upscale_tile: dramatiq.Actor[Any, Any]

    def chain_for(self, spec: JobSpec, *, from_step: StepName | None = None) -> dramatiq.pipeline:
        """The pipeline of messages that runs ``spec`` (from ``from_step`` on, for a retry).

        An upscale job's pipeline stops at ``split``: its tiles, bands and merge follow from there. A
        retry from any later step starts again at ``split``, which sends only the renders not saved
        yet (or, all saved, the step that follows them).
        """
        steps: list[StepName] = ["generate", "split", "seam_blur", "merge"]
        if spec.upscale is not None:
            steps = ["generate", "split"]
            from_step = from_step if from_step in (None, "generate") else "split"
        if spec.kind in ("process", "upscale"):
            steps = [step for step in steps if step != "generate"]
        if from_step is not None:
            steps = steps[steps.index(from_step) :]
        messages = [getattr(self, step).message_with_options(args=(spec.job_id,), pipe_ignore=True) for step in steps]
        return dramatiq.pipeline(messages)

    def enqueue(self, specs: Sequence[JobSpec]) -> None:
        """Send the pipelines of jobs already recorded in the status store."""
        for spec in specs:
            self.chain_for(spec).run()  # type: ignore[no-untyped-call]


def _drop_continuation() -> None:
    """A duplicate delivery of a step whose job moved on must not enqueue the next step again."""
    message = CurrentMessage.get_current_message()
    if message is not None:
        message.options.pop("pipe_target", None)


def declare_actors(broker: dramatiq.Broker, context: StepContext) -> StepActors:
    """Declare the step actors on ``broker``, running their steps with ``context``."""
    settings = context.settings
    retry_options: dict[str, Any] = {
        "max_retries": settings.max_retries,
        "min_backoff": settings.retry_min_backoff_ms,
        "max_backoff": settings.retry_max_backoff_ms,
        "throws": PERMANENT_ERRORS,
        "on_retry_exhausted": JOB_FAILED_ACTOR,
    }

    def make(step: StepName, queue: str, time_limit_ms: int) -> dramatiq.Actor[Any, Any]:
        def run(job_id: str) -> None:
            from pipeline.jobs.steps import drop_lost_job, run_step, sd_slot

            message = CurrentMessage.get_current_message()
            retries = int(message.options.get("retries", 0)) if message is not None else 0
            try:
                with sd_slot(context, job_id) if step == "generate" else nullcontext():
                    outcome = run_step(context, job_id, step, retries_left=max(settings.max_retries - retries, 0))
            except NoFreeSlot as exc:
                if message is None:
                    raise dramatiq.Retry(str(exc)) from exc
                # Every server busy, higher-priority work waiting, or paused: not a failure. Back to
                # the queue, retry budget untouched.
                outranked = int(message.options.get(OUTRANKED_OPTION, 0))
                in_a_row = outranked + 1 if isinstance(exc, Outranked) else 0
                if in_a_row != outranked:
                    message = message.copy(options={OUTRANKED_OPTION: in_a_row})
                broker.enqueue(message, delay=requeue_delay_ms(exc, outranked=outranked))
                _drop_continuation()
                logger.log(logging.INFO if type(exc) is NoFreeSlot else logging.DEBUG, "%s", exc.message)
                return
            except JobNotFound:
                # The record went while the step ran (Redis restarted without persistence)
                drop_lost_job(context, job_id, step)
                _drop_continuation()
                return
            except PipelineError as exc:
                if exc.transient:
                    # Expected and already logged with the job id: retry with backoff, no traceback.
                    raise dramatiq.Retry(str(exc)) from exc
                raise
            if not outcome.ran:
                _drop_continuation()
            else:
                for index in outcome.renders:  # the fan-out: every tile (or band) its own message
                    tile_actor.send(job_id, index, outcome.generation)
                if outcome.then is not None:
                    (merge_actor if outcome.then == "merge" else seam_blur_actor).send(job_id)

        run.__name__ = f"sdpipe_{step}"
        decorate = dramatiq.actor(
            broker=broker,
            actor_name=f"sdpipe_{step}",
            queue_name=queue,
            time_limit=time_limit_ms,
            priority=GENERATE_PRIORITY if step == "generate" else IMAGES_PRIORITY,
            **retry_options,
        )
        return decorate(run)

    def upscale_tile(job_id: str, index: int, generation: int = 0) -> None:
        from pipeline.jobs.renders import run_tile
        from pipeline.jobs.steps import drop_lost_job

        message = CurrentMessage.get_current_message()
        retries = int(message.options.get("retries", 0)) if message is not None else 0
        try:
            # The slot is taken inside, once the tile's request is ready (and only if it is not saved).
            outcome = run_tile(
                context,
                job_id,
                index,
                generation=generation,
                attempt=retries + 1,
                retries_left=max(settings.max_retries - retries, 0),
            )
        except NoFreeSlot as exc:
            if message is None:
                raise dramatiq.Retry(str(exc)) from exc
            broker.enqueue(message, delay=requeue_delay_ms(exc))
            logger.log(logging.INFO if type(exc) is NoFreeSlot else logging.DEBUG, "%s", exc.message)
            return
        except JobNotFound:
            drop_lost_job(context, job_id, "upscale_tile")  # the record is gone (Redis restarted empty)
            return
        except PipelineError as exc:
            if exc.transient:
                raise dramatiq.Retry(str(exc)) from exc
            raise
        if outcome.complete:
            (merge_actor if outcome.next_step == "merge" else seam_blur_actor).send(job_id)

    tile_actor = dramatiq.actor(
        broker=broker,
        actor_name="sdpipe_upscale_tile",
        queue_name=SD_QUEUE,
        time_limit=settings.actor_time_limit_ms,
        priority=GENERATE_PRIORITY,
        **retry_options,
    )(upscale_tile)

    def job_failed(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
        job_id = str(message_data["args"][0])
        step = str(message_data["actor_name"]).removeprefix("sdpipe_")
        store = context.store
        try:
            record = store.get(job_id)
        except JobNotFound:
            logger.warning("job %s: %s", job_id, store.records_gone(job_id).message)
            return
        sent_ms = message_data.get("message_timestamp")
        if record.state is JobState.QUEUED and isinstance(sent_ms, int | float) and record.updated_at * 1000 > sent_ms:
            # Requeued (`sdpipe retry`) after this message was sent: a new delivery runs it now; failing it
            # here would undo the retry (seen when this callback waited behind a busy worker thread).
            logger.info("job %s: retried since its %s message gave up; left queued", job_id, step)
            return
        last = record.error
        if last is None:
            last = ErrorInfo(step=step, type="RetriesExhausted", message="the step kept failing", at=context.clock())
        # Normally run_step already marked the job failed on its last attempt; this is the safety net
        # (e.g. a worker killed during that attempt), so the job never stays running forever.
        retries = retry_info.get("retries")
        error = last.model_copy(update={"at": context.clock()})
        if store.mark_failed(job_id, error, now=context.clock()):
            logger.error("job %s: failed in %s after %s retries: %s", job_id, step, retries, last.message)
        # Announced even when it was already failed: a worker may have died before announcing it.
        announce_end(context.events, store, store.get(job_id))

    merge_actor = make("merge", IMAGES_QUEUE, IMAGE_STEP_TIME_LIMIT_MS)
    seam_blur_actor = make("seam_blur", IMAGES_QUEUE, IMAGE_STEP_TIME_LIMIT_MS)
    return StepActors(
        generate=make("generate", SD_QUEUE, settings.actor_time_limit_ms),
        split=make("split", IMAGES_QUEUE, IMAGE_STEP_TIME_LIMIT_MS),
        seam_blur=seam_blur_actor,
        merge=merge_actor,
        upscale_tile=tile_actor,
        job_failed=dramatiq.actor(broker=broker, actor_name=JOB_FAILED_ACTOR, queue_name=IMAGES_QUEUE, max_retries=3)(
            job_failed
        ),
    )
