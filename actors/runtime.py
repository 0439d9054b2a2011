"""Broker + status store + actors, opened together, for the CLI and the worker processes.

Embedded mode (no Redis configured) also starts in-process worker threads on the
:class:`~dramatiq.brokers.stub.StubBroker`, so ``sdpipe generate`` works with nothing else running:
the same actors, the same middleware (retries, time limits, pipelines), the same code paths.

Several embedded processes may share one ``OUTPUT_DIR``. Each holds a shared ``flock`` on
``OUTPUT_DIR/.sdpipe/embedded.lock`` while open; one that finds no other holder (an exclusive lock
is free) knows every unfinished job in the store belongs to a process that died (its queue was in
its memory) and marks them failed (``Interrupted``), so ``sdpipe retry`` can run them again; and,
when it runs jobs, sends again the webhook deliveries such a process left pending (same ``webhook-id``,
at the next try their records name; see :mod:`pipeline.webhooks.recovery`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import dramatiq

from actors.broker import CLI_ENQUEUE_PATIENCE_S, build_broker, redis_errors
from actors.steps import QUEUES, StepActors, declare_actors
from actors.webhooks import WebhookOutbox
from pipeline.batches.manifests import ResumePlan, plan_resume, retry_step
from pipeline.errors import InputError, JobNotFound, PipelineError, QueueFull, SDUnavailable, StoreUnavailable
from pipeline.events.hub import EventHub
from pipeline.events.jobs import announce_end, reopen_batches
from pipeline.events.log import open_event_log
from pipeline.events.model import JOB_QUEUED, QUEUE_PAUSED, QUEUE_RESUMED
from pipeline.jobs.context import StepContext
from pipeline.jobs.control import Idempotency, QueueControl
from pipeline.jobs.files import JobFiles
from pipeline.jobs.planning import ProcessPlan, new_id
from pipeline.jobs.retention import remove_orphaned_work
from pipeline.models import PRIORITIES, BatchRecord, BatchRow, ErrorInfo, JobRecord, JobSpec, JobState, StepName
from pipeline.sd.catalog import open_catalog
from pipeline.sd.pool.affinity import grouped_by_checkpoint
from pipeline.sd.pool.pool import PoolObserver
from pipeline.settings import Settings, mask_url
from pipeline.storage.base import open_storage
from pipeline.store import StatusStore, open_store
from pipeline.store.keyvalue import KeyValue, open_keyvalue
from pipeline.webhooks.deliveries import Deliveries, delivery_listener

if TYPE_CHECKING:
    from pipeline.batches.files import PlannedRow

if sys.platform != "win32":
    import fcntl

__all__ = [
    "EMBEDDED_LOCK_PATH",
    "EMBEDDED_WORKER_TIMEOUT_MS",
    "WORKERS_KEY",
    "WORKER_BEAT_S",
    "Runtime",
    "open_runtime",
]

logger = logging.getLogger(__name__)

#: How long an idle embedded worker thread waits for a message before checking again.
EMBEDDED_WORKER_TIMEOUT_MS = 100
#: How often a submission waiting for room in the queue (``--wait-for-room``) looks again.
ROOM_POLL_S = 1.0
#: Held (shared) by every open embedded runtime, relative to ``OUTPUT_DIR``; see :func:`_hold_embedded_lock`.
EMBEDDED_LOCK_PATH = ".sdpipe/embedded.lock"
#: Sorted set of the live ``sdpipe worker`` processes (member host:pid, score: last beat in ms).
WORKERS_KEY = "sdpipe:workers"
#: How often each worker process beats (:meth:`Runtime.worker_beat`), in seconds.
WORKER_BEAT_S = 5.0
#: An entry this old is removed at the next beat of any worker (a process that died long ago).
WORKER_ENTRY_KEEP_MS = 3_600_000
#: How many orphaned jobs :func:`_fail_orphans` reads per query.
_ORPHAN_PAGE = 500


@dataclass
class Runtime:
    """An open broker, status store and set of actors (and, embedded, the worker running them)."""

    settings: Settings
    broker: dramatiq.Broker
    store: StatusStore
    context: StepContext
    actors: StepActors
    #: Idempotency keys, pause state and webhook deliveries live here.
    kv: KeyValue
    deliveries: Deliveries
    #: Sends deliveries to the webhook actor; runs the ``webhooks`` queue's worker where this process has one.
    webhooks: WebhookOutbox
    worker: dramatiq.Worker | None = field(default=None)
    #: Embedded: the jobs this process submitted (its in-memory queue is the only one they are in).
    _submitted: set[str] = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    #: Embedded: the descriptor of ``EMBEDDED_LOCK_PATH``, locked shared while this runtime is open.
    _embedded_lock_fd: int | None = field(default=None, init=False, repr=False)

    @property
    def embedded(self) -> bool:
        return not self.settings.redis_mode

    @property
    def events(self) -> EventHub:
        """The event stream (and this process's listeners: webhooks)."""
        assert self.context.events is not None
        return self.context.events

    @property
    def control(self) -> QueueControl:
        """Pause state of the queue and of batches."""
        assert self.context.control is not None
        return self.context.control

    @property
    def idempotency(self) -> Idempotency:
        """Idempotency keys (``IDEMPOTENCY_TTL_S``)."""
        return Idempotency(self.kv, ttl_s=self.settings.idempotency_ttl_s)

    def check_webhook(self, specs: Sequence[JobSpec]) -> None:
        """Refuse jobs that name a webhook when no ``WEBHOOK_SECRET`` can sign it.

        Raises:
            InputError: a webhook without a secret.
        """
        if self.settings.webhook_secret is None and any(spec.webhook_url for spec in specs):
            raise InputError(
                "a webhook needs WEBHOOK_SECRET (whsec_...) to be signed", field="WEBHOOK_SECRET", expected="whsec_..."
            )

    def pause(self, batch_id: str | None = None) -> None:
        """Pause the queue (or one batch): no new SD call starts; work on a GPU finishes."""
        self.control.pause(batch_id)
        self.events.emit(QUEUE_PAUSED, batch_id=batch_id, data={"batch_id": batch_id})

    def resume(self, batch_id: str | None = None) -> None:
        """Resume the queue (or one batch)."""
        self.control.resume(batch_id)
        self.events.emit(QUEUE_RESUMED, batch_id=batch_id, data={"batch_id": batch_id})

    def queue_depth(self) -> int:
        """Jobs waiting for their first step (state ``queued``), from every submitter.

        Embedded: only this process's own jobs. Its queue lives in memory, so queued jobs another
        (ended) process left in the database can never run and take no room.
        """
        if not self.embedded:
            return self.store.count_by_state()[JobState.QUEUED]
        with self._lock:
            tracked = list(self._submitted)
        waiting = {job_id for job_id in tracked if self.store.get(job_id).state is JobState.QUEUED}
        with self._lock:
            self._submitted -= set(tracked) - waiting  # forget the jobs that left the queue
        return len(waiting)

    def make_room(self, count: int, *, wait: bool = False, on_wait: Callable[[int], None] | None = None) -> None:
        """Backpressure: return once ``count`` more jobs fit under ``MAX_QUEUE_DEPTH`` (0: unlimited).

        A submission larger than the whole limit fits only into an empty queue, so a big batch file
        still runs, alone. ``wait``: poll until there is room (``on_wait(depth)`` is called once,
        to say so) instead of refusing.

        Raises:
            QueueFull: no room and not ``wait``; nothing was submitted.
        """
        limit = self.settings.max_queue_depth
        if limit == 0 or count == 0:
            return
        told = False
        while True:
            depth = self.queue_depth()
            if depth + count <= limit or (count > limit and depth == 0):
                return
            if not wait:
                raise QueueFull(
                    f"the queue holds {depth} job(s); {count} more would pass MAX_QUEUE_DEPTH={limit}",
                    field="MAX_QUEUE_DEPTH",
                    value=depth + count,
                    limit=limit,
                )
            if on_wait is not None and not told:
                on_wait(depth)
                told = True
            time.sleep(ROOM_POLL_S)

    def submit(
        self,
        specs: Sequence[JobSpec],
        *,
        as_batch: bool = False,
        wait_for_room: bool = False,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        """Record ``specs`` in the status store, then enqueue their pipelines.

        ``as_batch``: also record the specs' batch (one row per job), as ``generate``/``process`` do,
        so ``status --batch`` and ``jobs --batch`` know it. ``wait_for_room``, ``on_wait``: see :meth:`make_room`.

        Raises:
            QueueFull: the queue is too deep (``MAX_QUEUE_DEPTH``) and not ``wait_for_room``.
            StoreUnavailable: Redis cannot be reached (nothing was enqueued).
        """
        self.make_room(len(specs), wait=wait_for_room, on_wait=on_wait)
        self._record_and_enqueue(specs, as_batch=as_batch)

    def stage_inputs(self, inputs: Sequence[ProcessPlan]) -> None:
        """Copy the input images of ``process``/``upscale`` jobs into their work folders (or prefixes),
        where their first step reads them: just before the jobs are submitted, once every check passed.
        Whatever stops it (an error, Ctrl-C) takes the copies made so far back (no job is recorded yet)."""
        try:
            for plan in inputs:
                plan.ingest(self.settings)
        except BaseException:
            self.remove_copies(inputs)
            raise

    def discard_unrecorded(self, inputs: Sequence[ProcessPlan]) -> None:
        """After a submission that failed (a full queue, Redis gone, Ctrl-C): remove the copies of the
        inputs whose jobs have no record, as no record will ever name them. One read of the store for
        all of them; when it cannot answer, they are left to the orphan rule (workers, ``prune``)."""
        ids = [plan.spec.job_id for plan in inputs]
        if not ids:
            return
        try:
            recorded = {record.job_id for record in self.store.get_many(ids)}
        except JobNotFound:  # one at least has no record (usually none has): one read per id
            recorded = set()
            for job_id in ids:
                try:
                    recorded.add(self.store.get(job_id).job_id)
                except JobNotFound:
                    continue
                except PipelineError as exc:
                    logger.warning("input copies of %d job(s) left to the orphan rule: %s", len(ids), exc)
                    return
        except PipelineError as exc:
            logger.warning("input copies of %d job(s) left to the orphan rule: %s", len(ids), exc)
            return
        self.remove_copies([plan for plan in inputs if plan.spec.job_id not in recorded])

    def remove_copies(self, inputs: Sequence[ProcessPlan]) -> None:
        """Remove the input copies of jobs known to have no record (no store read)."""
        for plan in inputs:
            if plan.spec.output_dir is None:
                continue
            try:
                JobFiles(open_storage(plan.spec.output_dir, self.settings), plan.spec.job_id).remove_work_dir()
            except (PipelineError, OSError) as exc:
                logger.warning("job %s: input copy left to the orphan rule: %s", plan.spec.job_id, exc)

    def _record_and_enqueue(self, specs: Sequence[JobSpec], *, as_batch: bool, reopen: bool = False) -> None:
        """Record ``specs`` and enqueue them; ``reopen``: they join batches that may have completed before."""
        if as_batch and specs and specs[0].batch_id is not None:
            rows = [
                BatchRow(
                    line=index + 1,
                    params=_row_params(spec),
                    job_ids=[spec.job_id],
                )
                for index, spec in enumerate(specs)
            ]
            self.store.save_batch(BatchRecord(batch_id=specs[0].batch_id, created_at=specs[0].created_at, rows=rows))
        self.check_webhook(specs)
        self.store.create_jobs(specs)
        if reopen:
            reopen_batches(self.events, (spec.batch_id for spec in specs))
        self._track([spec.job_id for spec in specs])
        self._ticket(specs)
        self._enqueue_or_raise(lambda: self.actors.enqueue(specs))
        self.events.emit_many(
            (JOB_QUEUED, spec.job_id, spec.batch_id, {"priority": spec.priority, "kind": spec.kind}) for spec in specs
        )
        logger.info("enqueued %d job(s)", len(specs))

    def _ticket(self, specs: Sequence[JobSpec]) -> None:
        """High and normal jobs hold lower classes back from the moment they are queued (README
        "Priority"), not only once a worker thread picks them up: a queued high job starts its SD call
        before queued normal ones, a queued normal one before queued low ones. Low jobs hold no one back."""
        by_class: dict[int, list[str]] = {}
        for spec in specs:
            klass = PRIORITIES.index(spec.priority)
            if spec.kind != "process" and klass < len(PRIORITIES) - 1:
                by_class.setdefault(klass, []).append(spec.job_id)
        for klass, job_ids in by_class.items():
            try:
                self.context.pool.state.ticket(job_ids, klass, ttl_s=self.settings.priority_ticket_s)
            except StoreUnavailable as exc:
                logger.warning("priority tickets of %d job(s) not recorded: %s", len(job_ids), exc)

    def _enqueue_or_raise(self, enqueue: Callable[[], object]) -> None:
        try:
            enqueue()
        except redis_errors() as exc:
            raise StoreUnavailable(
                f"cannot enqueue on Redis at {mask_url(self.settings.redis_dsn())}: {exc}",
                field="REDIS_URL",
            ) from exc

    def submit_rows(
        self,
        rows: Sequence[PlannedRow],
        *,
        batch_id: str,
        source: str | None,
        resume: bool = False,
        skip_existing: bool = False,
        schedule: str | None = None,
        now: float,
        wait_for_room: bool = False,
        on_wait: Callable[[int], None] | None = None,
        keep_order: bool = False,
    ) -> ResumePlan:
        """Submit the planned rows of a batch file as batch ``batch_id``.

        Jobs are enqueued grouped by the checkpoint they name (file order within a group), so a
        server switches once per checkpoint; ``keep_order``: in file order. The manifest keeps
        file order either way.

        With ``resume`` the batch exists: rows already succeeded (or still running) are left alone and
        failed ones retried; with ``skip_existing`` rows whose exact job succeeded before are skipped.

        Raises:
            QueueFull: the queue is too deep (``MAX_QUEUE_DEPTH``) and not ``wait_for_room``.
        """
        existing = self.store.get_batch(batch_id) if resume else None
        plan = plan_resume(
            self.store,
            [(row.line, row.params, row.specs) for row in rows],
            batch=existing,
            skip_existing=skip_existing,
            new_batch_id=batch_id,
            source=source,
            schedule=schedule,
            now=now,
        )
        self.submit_plan(plan, wait_for_room=wait_for_room, on_wait=on_wait, keep_order=keep_order)
        return plan

    def submit_file(
        self,
        path: Path,
        *,
        defaults: Mapping[str, Any],
        schedule: str | None = None,
        name_template: str | None = None,
        overwrite: bool = False,
        webhook: str | None = None,
    ) -> ResumePlan:
        """Read, validate and submit a batch file as a new batch (what a schedule does when it fires);
        ``webhook``: every job's own webhook (the schedule's ``--webhook``).

        Raises:
            BatchFileError: rows are invalid (nothing was enqueued).
            InputError: the file is missing or unreadable.
        """
        now = time.time()
        batch_id = new_id()
        # Here, not at the top: only a schedule reads a batch file (YAML) through the runtime.
        from pipeline.batches.files import read_batch_file

        # The file may have changed since the schedule was added: its names are checked again.
        with open_catalog(self.settings) as checker:
            rows = read_batch_file(
                path,
                self.settings,
                defaults=defaults,
                batch_id=batch_id,
                now=now,
                name_template=name_template,
                overwrite=overwrite,
                checker=checker,
                defaults_over_file=schedule is not None,
            )
        if webhook is not None:
            update = {"webhook_url": webhook}
            rows = [replace(row, specs=[spec.model_copy(update=update) for spec in row.specs]) for row in rows]
        return self.submit_rows(rows, batch_id=batch_id, source=str(path.absolute()), schedule=schedule, now=now)

    def submit_plan(
        self,
        plan: ResumePlan,
        *,
        wait_for_room: bool = False,
        on_wait: Callable[[int], None] | None = None,
        keep_order: bool = False,
    ) -> None:
        """Enqueue a batch plan: its new jobs, and its failed jobs again from the step that failed;
        grouped by checkpoint unless ``keep_order`` (see :meth:`submit_rows`).

        Jobs of the batch that no row matches any more (rows edited before ``--resume``) and that
        have not finished are cancelled: the batch is what the file says now.

        Raises:
            QueueFull: the queue is too deep (``MAX_QUEUE_DEPTH``) and not ``wait_for_room``.
        """
        self.make_room(len(plan.new_specs) + len(plan.retry), wait=wait_for_room, on_wait=on_wait)
        self.store.save_batch(plan.batch)
        if plan.superseded:
            self.cancel(plan.superseded)
        if plan.new_specs:
            specs = plan.new_specs if keep_order else grouped_by_checkpoint(plan.new_specs)
            self._record_and_enqueue(specs, as_batch=False, reopen=True)
        if keep_order:
            self.retry(plan.retry)
        else:
            by_id = {record.job_id: record for record in plan.retry}
            self.retry([by_id[spec.job_id] for spec in grouped_by_checkpoint([r.spec for r in plan.retry])])

    def retry(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        """Re-enqueue failed or cancelled jobs from the step that failed (an SD image already saved
        is not requested again). Returns the jobs that were requeued."""
        requeued = []
        for record in records:
            fresh = self.store.requeue(record.job_id, now=time.time())
            if fresh is not None:
                requeued.append(fresh)
        # Every job back in the queue before any runs: the batch cannot complete half-retried, and
        # completes again in a new round (announced even with the counts of its last completion).
        reopen_batches(self.events, (fresh.batch_id for fresh in requeued))
        for fresh in requeued:
            step = retry_step(fresh)
            self._track([fresh.job_id])
            self._ticket([fresh.spec])
            chain = self.actors.chain_for(fresh.spec, from_step=step)
            self._enqueue_or_raise(chain.run)
            data = {"priority": fresh.spec.priority, "retry": True, "from_step": step}
            self.events.emit(JOB_QUEUED, job_id=fresh.job_id, batch_id=fresh.batch_id, data=data)
            logger.info("job %s: requeued from %s", fresh.job_id, step)
        return requeued

    def check_sd_reachable(self) -> None:
        """Embedded mode, before the first job: refuse at once when every SD server refuses
        connections, instead of running each job through its retries (about a minute) to say so.

        Redis mode checks nothing here: the workers reach the servers from their own network, and
        a server down when they start is benched, not fatal.

        Raises:
            SDUnavailable: no SD server accepts a connection (nothing was submitted).
        """
        if not self.embedded:
            return
        error = self.context.pool.all_unreachable()
        if error is None:
            return
        servers = len(self.context.pool.backends)
        message = error.message if servers == 1 else f"none of the {servers} SD servers accepts a connection; {error}"
        raise SDUnavailable(message, url=error.url)

    def cancel(self, job_ids: Sequence[str]) -> int:
        """Mark unfinished jobs cancelled: queued ones never start, a running SD call finishes and
        the job then stops. Returns how many were cancelled."""
        now = time.time()
        cancelled = 0
        for job_id in job_ids:
            if self.store.mark_cancelled(job_id, now=now):
                cancelled += 1
                record = self.store.get(job_id)
                announce_end(self.events, self.store, record)
                self.context.pool.drop_ticket(job_id, PRIORITIES.index(record.spec.priority))  # holds no one back
        return cancelled

    @property
    def worker_window_s(self) -> float:
        """How long without a beat before a worker process counts as gone: Dramatiq's heartbeat timeout,
        but at least two beats (:data:`WORKER_BEAT_S`) and a second, so a short heartbeat timeout (tests
        use 3 s) never makes a live worker flicker out between two beats."""
        return max(self.settings.broker_heartbeat_timeout_ms / 1000, 2 * WORKER_BEAT_S + 1)

    def live_workers(self) -> int:
        """How many ``sdpipe worker`` processes beat lately (:meth:`worker_beat`; embedded: the in-process one).

        Not Dramatiq's own heartbeats: every process that enqueues (a CLI, the API, the scheduler)
        writes those too, and would pass for a worker.
        """
        if self.embedded:
            return 1 if self.worker is not None else 0
        since_ms = int((time.time() - self.worker_window_s) * 1000)
        with self._reaching_redis():
            return int(self.broker.client.zcount(WORKERS_KEY, since_ms, "+inf"))  # type: ignore[attr-defined]

    def worker_beat(self, member: str, *, gone: bool = False) -> None:
        """Record that worker process ``member`` (host:pid) is alive, or (``gone``) that it stopped."""
        now_ms = int(time.time() * 1000)
        client = self.broker.client  # type: ignore[attr-defined]
        with self._reaching_redis():
            if gone:
                client.zrem(WORKERS_KEY, member)
                return
            pipe = client.pipeline(transaction=False)
            pipe.zadd(WORKERS_KEY, {member: now_ms})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", now_ms - WORKER_ENTRY_KEEP_MS)  # long-dead entries
            pipe.execute()

    @contextmanager
    def _reaching_redis(self) -> Iterator[None]:
        try:
            yield
        except redis_errors() as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {mask_url(self.settings.redis_dsn())}: {exc}",
                field="REDIS_URL",
            ) from exc

    def _track(self, job_ids: Sequence[str]) -> None:
        if self.embedded:
            with self._lock:
                self._submitted.update(job_ids)

    def close(self) -> None:
        """Stop (embedded: the in-process workers; jobs they never started are marked cancelled,
        since their queue dies with this process) and close every connection."""
        try:
            self._stop_job_worker()
            self.webhooks.stop_worker()
            self.broker.close()
            self.context.close()
            self.store.close()
            self.kv.close()
        finally:
            # Last: while held, no other process takes this one's unfinished jobs for orphans.
            fd, self._embedded_lock_fd = self._embedded_lock_fd, None
            if fd is not None:
                os.close(fd)  # releases the flock

    def settle_webhooks(self, limit_s: float | None = None, *, on_wait: Callable[[int], None] | None = None) -> int:
        """Embedded: stop the job threads (as :meth:`close` would: call it only once done with the jobs), then
        wait up to ``limit_s`` (default ``WEBHOOK_EXIT_WAIT_S``) for the webhook deliveries this process sent,
        before it closes and its in-memory queue goes; return how many are still pending (the
        next embedded runtime that opens alone resends them). Redis mode: 0 at once (the queue is in Redis).
        ``on_wait(count)``: called once if it waits."""
        if not self.embedded:
            return 0
        # The job threads first: a step ending now still announces its job's end (and sends its webhooks).
        self._stop_job_worker()
        limit = self.settings.webhook_exit_wait_s if limit_s is None else limit_s
        return self.webhooks.settle(limit, on_wait=on_wait)

    def _stop_job_worker(self) -> None:
        """Embedded: stop the in-process job threads; jobs they never started are marked cancelled."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
            self._cancel_unstarted()

    def _cancel_unstarted(self) -> None:
        with self._lock:
            tracked, self._submitted = self._submitted, set()
        now = time.time()
        cancelled = 0
        for job_id in tracked:
            try:
                if self.store.get(job_id).state is JobState.QUEUED:
                    cancelled += self.store.mark_cancelled(job_id, now=now)
            except PipelineError:  # the store is gone too: nothing more to tidy
                logger.warning("embedded runtime stopped; could not mark job %s cancelled", job_id)
        if cancelled:
            logger.info("embedded runtime stopped: %d job(s) that never started marked cancelled", cancelled)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_runtime(
    settings: Settings,
    *,
    start_embedded_worker: bool = True,
    enqueue_patience_s: float = CLI_ENQUEUE_PATIENCE_S,
    pool_observer: PoolObserver | None = None,
) -> Runtime:
    """Open everything for ``settings``; in embedded mode also start the in-process workers.

    ``enqueue_patience_s``: how long enqueues wait out a Redis outage (short for commands, long
    for worker processes). ``pool_observer``: receives the SD pool's events (metrics).

    Raises:
        StoreUnavailable: Redis mode and Redis cannot be reached.
    """
    broker = build_broker(settings, enqueue_patience_s=enqueue_patience_s)
    store = open_store(settings)
    kv: KeyValue | None = None
    try:
        store.ping()
        kv = open_keyvalue(settings)
        hub = EventHub(open_event_log(settings), kv=kv)
        control = QueueControl(kv)
        context = StepContext(settings=settings, store=store, pool_observer=pool_observer, events=hub, control=control)
        actors = declare_actors(broker, context)
        deliveries = Deliveries(kv)
        webhooks = WebhookOutbox(broker, settings, deliveries)
        hub.add_listener(
            delivery_listener(
                deliveries,
                store,
                default_url=settings.webhook_url,
                can_sign=settings.webhook_secret is not None,
                send=webhooks.send,
            )
        )
    except BaseException:
        store.close()
        if kv is not None:
            kv.close()
        broker.close()
        raise
    runtime = Runtime(
        settings=settings,
        broker=broker,
        store=store,
        context=context,
        actors=actors,
        kv=kv,
        deliveries=deliveries,
        webhooks=webhooks,
    )
    alone = False
    if runtime.embedded:
        try:
            lock_path = settings.output_dir / EMBEDDED_LOCK_PATH
            runtime._embedded_lock_fd, alone = _hold_embedded_lock(lock_path, lambda: _recover_alone(context))
        except BaseException:
            runtime.close()
            raise
    if runtime.embedded and start_embedded_worker:
        broker.emit_after("process_boot")
        worker = dramatiq.Worker(
            broker,
            queues=set(QUEUES),
            worker_threads=settings.worker_threads,
            worker_timeout=EMBEDDED_WORKER_TIMEOUT_MS,
        )
        worker.start()
        runtime.worker = worker
        runtime.webhooks.start_worker()
        if alone:  # no other embedded process holds a queue: every pending delivery lost its message
            try:
                runtime.webhooks.resend()
            except PipelineError as exc:
                logger.warning("could not resend the webhooks an ended sdpipe process left pending: %s", exc)
    return runtime


def _hold_embedded_lock(path: Path, recover: Callable[[], None]) -> tuple[int | None, bool]:
    """Lock ``path`` shared for as long as the returned descriptor stays open (None: no lock); the flag
    says whether this process was alone on it.

    First, if an exclusive lock is free, no other embedded process is alive on this ``OUTPUT_DIR``:
    ``recover`` runs (:func:`_recover_alone`) while that lock is held, so no other process starts a
    job meanwhile. The OS drops a dead process's lock, so a kill -9 cannot leave it held.
    """
    if sys.platform == "win32":
        logger.debug("no fcntl on this platform: jobs of a killed embedded process are not recovered")
        return None, False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        try:  # a lock file another user created: flock works on a read-only descriptor too
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            logger.warning("cannot open %s (%s): jobs of a killed embedded process are not recovered", path, exc)
            return None, False
    alone = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another embedded process is open: its jobs may be running
            pass
        else:
            alone = True
            recover()
        # Downgrades the exclusive lock, or waits out another process's brief recovery.
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as exc:  # a filesystem without flock (ENOLCK, EOPNOTSUPP): run, but recover nothing
        os.close(fd)
        logger.warning("cannot lock %s (%s): jobs of a killed embedded process are not recovered", path, exc)
        return None, False
    except BaseException:
        os.close(fd)
        raise
    return fd, alone


def _recover_alone(context: StepContext) -> None:
    """What an embedded process alone on its ``OUTPUT_DIR`` does first: every unfinished job was left
    by a process that ended, and is marked failed (:func:`_fail_orphans`); then, when the work folders
    are in that ``OUTPUT_DIR``, those the orphan rule takes are removed
    (:func:`~pipeline.jobs.retention.remove_orphaned_work`: a succeeded job's folder a kill left
    between its success and the folder's removal, or a job the store lost, unchanged for an hour), as
    a Redis-mode worker does when it starts. Not in ``OUTPUT_URL``'s bucket: other processes, with
    status stores of their own, may share it (their jobs are not this store's to judge). Neither
    failing stops the process."""
    try:
        _fail_orphans(context.store)
    except PipelineError as exc:
        logger.warning("could not mark the jobs of an ended embedded process failed: %s", exc)
    if context.settings.output_url is not None:
        return
    try:
        remove_orphaned_work(context.store, context.storage(), now=context.clock())
    except (PipelineError, OSError) as exc:
        logger.warning("could not look for orphaned work folders: %s", exc)


def _fail_orphans(store: StatusStore) -> int:
    """Mark every unfinished job in ``store`` failed with an ``Interrupted`` error; return how many.

    Only called when no other embedded process is alive: the queue those jobs were in died with the
    process that held it, so nothing would ever run them.
    """
    now = time.time()
    failed = 0
    for state in JobState:
        if state.terminal:
            continue
        while True:
            records = store.list_jobs(state=state, limit=_ORPHAN_PAGE)
            marked = sum(store.mark_failed(record.job_id, _interrupted(record, now), now=now) for record in records)
            failed += marked
            if len(records) < _ORPHAN_PAGE or not marked:  # the last page, or nothing left that moves
                break
    if failed:
        logger.warning(
            "%d job(s) left unfinished by an sdpipe process that ended (killed or crashed) marked failed "
            "(Interrupted); `sdpipe retry <id>` runs them again",
            failed,
        )
    return failed


def _interrupted(record: JobRecord, now: float) -> ErrorInfo:
    step = _current_step(record)
    return ErrorInfo(
        step=step,
        type="Interrupted",
        message=(
            f"the sdpipe process running it ended before it finished (killed or crashed); "
            f"`sdpipe retry {record.job_id}` runs it again from {step}"
        ),
        transient=True,
        at=now,
    )


def _current_step(record: JobRecord) -> StepName:
    """The step an unfinished job was at: its state's, or (queued) where its retry would start."""
    return record.state.step or retry_step(record)


def _row_params(spec: JobSpec) -> dict[str, Any]:
    """A ``generate``/``process`` job as a batch row of its own: its prompt (or file), and for a templated
    or swept job the template and sweep values, so its manifest and contact sheet read like a batch file's."""
    if spec.generation is None:
        return {"source": spec.source_name}
    made = {key: value for key, value in (spec.prompt_template or {}).items() if key in ("template", "sweep")}
    return {"prompt": spec.generation.prompt, **made}
