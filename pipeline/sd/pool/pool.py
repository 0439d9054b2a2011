"""The SD server pool: which server renders a job, how many requests each gets, and their health.

An AUTOMATIC1111 server renders one job at a time; requests beyond that wait on its lock with
their connections open and time out behind proxies (docs/a1111-api.md, "One generation at a time"). So each server has
``max`` slots (default 1) enforced across every worker on every machine through leases in the
shared :class:`~pipeline.sd.pool.state.PoolState`, and a generation goes to a healthy server with a
free slot:

- **Dispatch**: the server with the largest share of free slots, equal ones in turn; a job retried
  after a transient failure prefers another server than the one that failed it.
- **Waiting**: with no free slot, a delivery waits in its thread (woken when a slot is released)
  for up to :data:`SLOT_WAIT_S`, then raises :class:`~pipeline.errors.NoFreeSlot`; the actor puts
  the message back in the queue without spending a retry.
- **Health**: ``SD_FAILURE_THRESHOLD`` transient failures in a row, or an out-of-memory answer
  while another healthy server can take the work (a lone one only pauses), bench a server for a
  cool-down (``SD_COOLDOWN_MIN_S``, doubling per failed probe up to ``SD_COOLDOWN_MAX_S``); a
  background probe (``GET /sdapi/v1/progress``) brings it back. A server down when a worker starts
  is benched at once, not fatal. When every server is benched a call goes to the one due back
  first: the job meets the real error and its retries decide.
- **Leases** are renewed by a background thread while a call runs, so a killed worker's slot frees
  within ``SD_SLOT_LEASE_S``.
- **Checkpoints** (``MODEL_AFFINITY``, issue 15): a job that names a checkpoint goes to a server
  that has it loaded, waiting for one up to ``MODEL_AFFINITY_WAIT_S`` (:mod:`~pipeline.sd.pool.affinity`);
  when the server it gets has another one, the pool switches it first with ``POST /sdapi/v1/options``,
  so the checkpoint stays loaded for the jobs after it (a request's own override is put back
  afterwards, and the next request without one would load the old checkpoint again). That call's
  duration is the load time, kept per server and checkpoint. Every answer's ``info.sd_model_name``
  says what the server has loaded now, so a change made behind sdpipe's back is seen at once.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from pipeline.errors import (
    NoFreeSlot,
    Outranked,
    PipelineError,
    SDServerError,
    SDTransientError,
    SDUnavailable,
    SDWrongCheckpoint,
    StoreUnavailable,
)
from pipeline.models import GenerationParams, SDResult
from pipeline.sd.backends import Backend, backends_for, parse_backends
from pipeline.sd.client import SDClient
from pipeline.sd.pool import affinity
from pipeline.sd.pool.checkpoints import Checkpoints, PoolObserver
from pipeline.sd.pool.state import BackendStatus, HealthPolicy, LoadedModel, PoolState
from pipeline.sd.progress import ProgressCallback, watch_progress
from pipeline.settings import Settings

__all__ = ["SLOT_WAIT_S", "PoolObserver", "SDPool", "is_out_of_memory", "open_pool_state"]

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

#: Longest a delivery waits in its thread for a free slot before its message goes back to the queue.
SLOT_WAIT_S = 5.0
#: Longest single sleep while waiting: a slot freed by an expired lease wakes no one (a release
#: or a probe that brings a server back does). Short enough for that, long enough to cost nothing.
_WAKE_S = 1.0
#: How often the background thread looks for leases to renew and benched servers to probe.
MAINTENANCE_INTERVAL_S = 1.0
#: How long one process owns the probe of a benched server (longer than a probe's timeout).
PROBE_CLAIM_S = 15.0


def is_out_of_memory(exc: PipelineError) -> bool:
    """Whether the server said it ran out of (GPU) memory: it must rest before the next job."""
    if not isinstance(exc, SDServerError):
        return False
    text = f"{exc.server_message or ''} {exc.message}".lower()
    return "outofmemory" in text or "out of memory" in text


@dataclass
class _Held:
    backend: Backend
    holder: str
    renewed_at: float
    #: The checkpoint key the job wants (counted in the state's wants until it is answered).
    want: str | None = None


class SDPool:
    """Dispatches txt2img calls over the servers of ``SD_API_URL``.

    Args:
        settings: the pool (``SD_API_URL``), lease and health settings.
        state: where slots and health live (Redis, or memory in embedded mode).
        client_for: the SD client of a server URL (shared, thread-safe).
        observer: receives call outcomes and benchings (metrics), optional.
        slot_wait_s: how long :meth:`slot` waits in its thread before raising NoFreeSlot.
    """

    def __init__(
        self,
        settings: Settings,
        state: PoolState,
        client_for: Callable[[str], SDClient],
        *,
        observer: PoolObserver | None = None,
        slot_wait_s: float = SLOT_WAIT_S,
    ) -> None:
        self.settings = settings
        self.slot_wait_s = slot_wait_s
        self.state = state
        self.observer = observer
        self.policy = HealthPolicy.from_settings(settings)
        self.backends = parse_backends(settings.sd_api_url)
        self._client_for = client_for
        self.checkpoints = Checkpoints(settings, self.backends, client_for, lambda: self.state, observer)
        # (job id, thread) -> the slot that thread holds for the job: two deliveries of one job
        # (a duplicate) may run in two threads of this process, each with its own slot.
        self._held: dict[tuple[str, int], _Held] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- slots ----------------------------------------------------------------------------------
    @contextmanager
    def slot(
        self,
        job_id: str,
        *,
        pinned: str | None = None,
        avoid: str | None = None,
        wait_s: float | None = None,
        model: str | None = None,
        priority: int | None = None,
        since: float | None = None,
    ) -> Iterator[Backend]:
        """Hold a slot on a server for ``job_id`` (only ``pinned`` if given) while the block runs;
        ``model``: the checkpoint the job names (a server that has it loaded is preferred).

        ``priority``: the job's class (0 high, 1 normal, 2 low; None: no priority rule), waiting since
        ``since`` (epoch seconds): while a job of a better class waits for a server (a ticket, see
        :meth:`~pipeline.sd.pool.state.PoolState.outranked`), this one takes no slot; it moves up a
        class per ``PRIORITY_AGING_S`` of waiting, so low work never waits for ever.

        Raises:
            NoFreeSlot: every usable server stayed busy for ``wait_s`` (default ``slot_wait_s``).
            Outranked: higher-priority work waits (the caller requeues at once, freeing its thread).
        """
        wait_s = self.slot_wait_s if wait_s is None else wait_s
        candidates = backends_for(self.settings, pinned)
        holder = f"{job_id}:{secrets.token_hex(4)}"
        started = time.monotonic()
        deadline = started + wait_s
        want = affinity.checkpoint_key(model) if self.settings.model_affinity else None
        self.start()
        if priority is not None:  # the ticket and the first look at better classes: one round trip
            check = self._aged_class(priority, since)
            if self.state.ticket_outranked(job_id, priority, ttl_s=self.settings.priority_ticket_s, check=check):
                raise Outranked(f"job {job_id[:8]}: higher-priority work waits for the SD servers; requeued")
        if want is not None:
            self.state.want(holder, want, ttl_s=self.settings.sd_slot_lease_s)
        try:
            while True:
                if want is None or model is None:
                    key = self.state.acquire(candidates, holder, lease_s=self.settings.sd_slot_lease_s, avoid=avoid)
                    keys: list[str] | None = [b.key for b in candidates]
                else:
                    key, keys = self.checkpoints.acquire(
                        candidates, holder, model, want, avoid=avoid, waited_s=time.monotonic() - started
                    )
                if key is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoFreeSlot(
                        f"job {job_id[:8]}: all {len(candidates)} SD server(s) busy for {wait_s:g} s; requeued",
                        limit=len(candidates),
                    )
                if keys == []:  # look again at once (see _acquire)
                    continue
                if priority is not None:
                    self._defer_if_outranked(job_id, priority, since)
                timeout_s = min(remaining, _WAKE_S)
                if want is not None:  # look again when the wait for an affine server reaches its bound
                    to_bound_s = self.settings.model_affinity_wait_s - (time.monotonic() - started)
                    if to_bound_s > 0:
                        timeout_s = min(timeout_s, to_bound_s + 0.01)
                self.state.wait_for_release(timeout_s, keys)
        except BaseException:
            if want is not None:
                self.checkpoints.unwant(holder, want)
            raise
        backend = next(b for b in candidates if b.key == key)
        logger.debug("job %s: slot on %s", job_id, backend.key)
        if priority is not None:
            self.drop_ticket(job_id, priority)
        held_key = (job_id, threading.get_ident())
        with self._lock:
            self._held[held_key] = _Held(backend, holder, time.monotonic(), want)
        try:
            yield backend
        finally:
            with self._lock:
                still_held = self._held.pop(held_key, None) is not None
            if still_held:  # else given back already, when the server answered (:meth:`_answered`)
                self._release(backend.key, holder, job_id=job_id)
                if want is not None:
                    self.checkpoints.unwant(holder, want)

    def _aged_class(self, priority: int, since: float | None) -> int:
        """The class a job of ``priority`` waiting since ``since`` counts as: one better per
        ``PRIORITY_AGING_S`` of waiting."""
        waited_s = max(time.time() - since, 0.0) if since is not None else 0.0
        return max(0, priority - int(waited_s // self.settings.priority_aging_s))

    def _defer_if_outranked(self, job_id: str, priority: int, since: float | None) -> None:
        klass = self._aged_class(priority, since)
        if klass > 0 and self.state.outranked(klass):
            raise Outranked(f"job {job_id[:8]}: higher-priority work waits for the SD servers; requeued")

    def drop_ticket(self, job_id: str, priority: int) -> None:
        """``job_id`` (of class ``priority``) got its server, or needs none any more: it holds no one back."""
        try:
            self.state.drop_ticket(job_id, priority)
        except StoreUnavailable as exc:  # it expires by itself
            logger.warning("job %s: priority ticket not dropped (%s)", job_id, exc)

    # -- calls ----------------------------------------------------------------------------------
    def txt2img(
        self,
        job_id: str,
        generation: GenerationParams,
        *,
        pinned: str | None = None,
        avoid: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SDResult:
        """Render one image on the server whose slot this thread holds for ``job_id`` (see
        :meth:`slot`), or on one taken now; record the outcome in the server's health.
        ``on_progress`` receives the sampling progress while it renders (``PROGRESS_POLL_S``).

        Raises:
            SDError: the call failed (``exc.url`` names the server); NoFreeSlot: see :meth:`slot`.
        """
        with self._lock:
            held = self._held.get((job_id, threading.get_ident()))
        if held is None:
            with self.slot(job_id, pinned=pinned, avoid=avoid, model=affinity.wanted(generation)) as backend:
                return self._call(backend, job_id, generation, on_progress)
        return self._call(held.backend, job_id, generation, on_progress)

    def _call(
        self, backend: Backend, job_id: str, generation: GenerationParams, on_progress: ProgressCallback | None = None
    ) -> SDResult:
        model = affinity.wanted(generation)
        if model is not None and self.settings.model_affinity:
            self.checkpoints.switch(backend, model, job_id=job_id)
        started = time.perf_counter()
        client = self._client_for(backend.url)
        every_s, image = self.settings.progress_poll_s, self.settings.progress_preview
        recorded: list[LoadedModel | None] = []  # what the release at the answer saw loaded
        try:
            with watch_progress(client, job_id, on_progress, every_s=every_s, image=image):
                result = client.txt2img(
                    generation,
                    job_id=job_id,
                    on_answer=lambda: recorded.append(self._answered(job_id, time.perf_counter() - started)),
                )
        except SDTransientError as exc:
            self._transient_failure(backend, exc, job_id=job_id, started=started)
            raise
        except SDWrongCheckpoint as exc:  # it renders with another checkpoint than we thought: learn it
            self._observe(backend.key, time.perf_counter() - started, "rejected")
            self.checkpoints.learn(backend.key, exc.value if isinstance(exc.value, str) else None, None, job_id=job_id)
            raise
        except PipelineError:
            self._observe(backend.key, time.perf_counter() - started, "rejected")
            raise
        self._observe(backend.key, result.elapsed_s, "ok")
        self.checkpoints.learn(
            backend.key, result.model_name, result.model_hash, job_id=job_id, recorded=recorded[0] if recorded else None
        )
        return result

    def call(
        self,
        job_id: str,
        request: Callable[[SDClient, Callable[[], None]], _R],
        *,
        pinned: str | None = None,
        avoid: str | None = None,
        model: str | None = None,
        priority: int | None = None,
        since: float | None = None,
    ) -> tuple[_R, str]:
        """Any other SD call (img2img, extras) under the same rules as :meth:`txt2img`: on the slot this
        thread holds for ``job_id`` (or one taken now), its outcome counted in the server's health.

        ``request(client, on_answer)`` makes the call; it calls ``on_answer`` once the server answered.
        ``model``: the checkpoint the request names (``override_settings.sd_model_checkpoint``): as
        for txt2img, a server that has it loaded is preferred, and the one taken is switched to it
        first when it has another. An :class:`~pipeline.models.SDResult` answer's ``info`` tells the
        pool what the server has loaded. ``priority`` and ``since``: the job's class and age, as for
        :meth:`slot` (an upscale's tiles wait behind better-class work like its generation would).
        Returns the result and the server's credential-free URL.

        Raises:
            SDError: the call failed (``exc.url`` names the server); NoFreeSlot (Outranked): see :meth:`slot`.
        """
        with self._lock:
            held = self._held.get((job_id, threading.get_ident()))
        if held is None:
            with self.slot(job_id, pinned=pinned, avoid=avoid, model=model, priority=priority, since=since) as backend:
                return self._call_with(backend, job_id, request, model=model), backend.key
        return self._call_with(held.backend, job_id, request, model=model), held.backend.key

    def _call_with(
        self,
        backend: Backend,
        job_id: str,
        request: Callable[[SDClient, Callable[[], None]], _R],
        *,
        model: str | None = None,
    ) -> _R:
        if model is not None and self.settings.model_affinity:
            self.checkpoints.switch(backend, model, job_id=job_id)
        started = time.perf_counter()

        def answered() -> None:
            self._answered(job_id, time.perf_counter() - started)

        try:
            result = request(self._client_for(backend.url), answered)
        except SDTransientError as exc:
            self._transient_failure(backend, exc, job_id=job_id, started=started)
            raise
        except PipelineError:
            self._observe(backend.key, time.perf_counter() - started, "rejected")
            raise
        self._observe(backend.key, time.perf_counter() - started, "ok")
        if isinstance(result, SDResult):  # img2img: what the server rendered with
            self.checkpoints.learn(backend.key, result.model_name, result.model_hash, job_id=job_id)
        return result

    def _transient_failure(self, backend: Backend, exc: SDTransientError, *, job_id: str, started: float) -> None:
        """Count a transient failure. Out of memory benches the server when others can take its work,
        else pauses it here: the slot stays held, so nothing reaches it meanwhile."""
        out_of_memory = is_out_of_memory(exc)
        bench = out_of_memory and self._others_healthy(backend.key)
        self._failed(backend.key, exc, job_id=job_id, bench=bench)
        self._observe(backend.key, time.perf_counter() - started, "failed")
        if out_of_memory and not bench:
            logger.info(
                "job %s: SD server %s out of memory, and no other server to take its jobs: pausing it %g s",
                job_id,
                backend.key,
                self.policy.oom_pause_s,
            )
            self._stop.wait(self.policy.oom_pause_s)

    def _others_healthy(self, key: str) -> bool:
        """Whether a healthy server other than ``key`` can take its work (an out-of-memory answer
        benches ``key`` only then)."""
        return any(status.healthy for status in self.state.status(self.backends) if status.key != key)

    def _answered(self, job_id: str, elapsed_s: float) -> LoadedModel | None:
        """The server answered 200: it is healthy, and its slot goes to the next job now, not after
        this one's checks and writes (one call to the pool state for both). Returns the checkpoint
        the state had recorded for the server (:meth:`Checkpoints.learn` checks the answer against it)."""
        with self._lock:
            held = self._held.pop((job_id, threading.get_ident()), None)
        if held is None:
            return None
        recorded = self._release(held.backend.key, held.holder, job_id=job_id, answered_s=elapsed_s)
        if held.want is not None:  # rendered: it no longer holds back a switch of this server
            self.checkpoints.unwant(held.holder, held.want)
        return recorded

    def _release(self, key: str, holder: str, *, job_id: str, answered_s: float | None = None) -> LoadedModel | None:
        """Give a slot back; a store outage is logged, not raised: the lease expires by itself, and
        the call's own outcome (an image already answered, or its real error) must not be lost."""
        try:
            return self.state.release(key, holder, answered_s=answered_s)
        except StoreUnavailable as exc:
            logger.warning("job %s: could not release the slot on %s (%s); its lease will expire", job_id, key, exc)
            return None

    def _failed(self, key: str, exc: PipelineError, *, job_id: str | None, bench: bool) -> None:
        if self.state.record_failure(key, exc.message, bench=bench, policy=self.policy):
            logger.warning(
                "job %s: SD server %s benched (%s); its jobs go to the others", job_id or "-", key, exc.message
            )
            if self.observer is not None:
                self.observer.benched(key)

    def _observe(self, key: str, elapsed_s: float, outcome: str) -> None:
        if self.observer is not None:
            self.observer.sd_call(key, elapsed_s, outcome)

    # -- health -----------------------------------------------------------------------------------
    def check_all(self) -> dict[str, str | None]:
        """Probe every server now (a worker starting): one that is down is benched, not fatal.

        Returns each server's key and its problem (None: it answered).
        """
        problems: dict[str, str | None] = {}
        for backend in self.backends:
            problems[backend.key] = self.probe(backend)
            if problems[backend.key] is not None:
                error = SDUnavailable(f"down at start: {problems[backend.key]}", url=backend.key)
                self._failed(backend.key, error, job_id=None, bench=True)
            else:
                self.checkpoints.read(backend)
        return problems

    def all_unreachable(self) -> SDUnavailable | None:
        """Probe every server once: when each one refuses connections (or its host is unknown), the
        first one's error; else None (one answered, or failed otherwise: a timeout, a 5xx, whose
        jobs' retries decide). Changes no state."""
        first: SDUnavailable | None = None
        for backend in self.backends:
            try:
                self._client_for(backend.url).progress()
            except SDUnavailable as exc:
                if exc.field is not None:  # connected, then lost: something listens there
                    return None
                first = first or exc
            except PipelineError:
                return None
            else:
                return None
        return first

    def probe_benched(self) -> None:
        """Probe the benched servers whose cool-down is over (one process each): back, or benched longer."""
        by_key = {backend.key: backend for backend in self.backends}
        for key in self.state.claim_probes(list(by_key), claim_s=PROBE_CLAIM_S):
            problem = self.probe(by_key[key])
            if problem is None:
                self.checkpoints.read(by_key[key])  # restarted? it may have another checkpoint now
            self.state.probe_result(key, ok=problem is None, error=problem, policy=self.policy)
            if problem is None:
                logger.info("SD server %s answers again: back in the pool", key)
            else:
                logger.info("SD server %s still failing (%s): benched longer", key, problem)

    def probe(self, backend: Backend) -> str | None:
        """Ask ``backend`` for its progress (cheap, takes no lock on the server): None if it answered,
        else the problem. Changes no state."""
        try:
            self._client_for(backend.url).progress()
        except PipelineError as exc:
            return exc.message
        return None

    def status(self) -> list[BackendStatus]:
        """Each server's health, slots in use and counters."""
        return self.state.status(self.backends)

    # -- background: lease renewal and probes ---------------------------------------------------------
    def start(self) -> None:
        """Start the threads that renew held leases and probe benched servers (idempotent).

        Two threads: a probe may take seconds per benched server (its timeouts), and renewals
        must never wait for it, or leases of calls still running expire and their slots are given
        to others (more requests on a server than its ``max``).
        """
        with self._lock:
            if self._threads:
                return
            # Renew often enough that a lease never runs out between two looks (lease_s may be 1 s).
            renew_every = min(MAINTENANCE_INTERVAL_S, self.settings.sd_slot_lease_s / 4)
            self._threads = [
                threading.Thread(
                    target=self._maintain, args=(self._renew_due, renew_every), name="sdpipe-pool-renew", daemon=True
                ),
                threading.Thread(
                    target=self._maintain,
                    args=(self.probe_benched, MAINTENANCE_INTERVAL_S),
                    name="sdpipe-pool-probe",
                    daemon=True,
                ),
            ]
            for thread in self._threads:
                thread.start()

    def _maintain(self, task: Callable[[], None], interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                task()
            except Exception:
                logger.warning("SD pool maintenance failed; trying again", exc_info=True)

    def _renew_due(self) -> None:
        lease_s = self.settings.sd_slot_lease_s
        now = time.monotonic()
        with self._lock:
            due = [(k, held) for k, held in self._held.items() if now - held.renewed_at >= lease_s / 3]
        for held_key, held in due:
            job_id = held_key[0]
            alive = self.state.renew(held.backend.key, held.holder, lease_s=lease_s)
            if held.want is not None:
                self.state.want(held.holder, held.want, ttl_s=lease_s)
            with self._lock:
                still_held = self._held.get(held_key) is held
            if not still_held:
                # Released while we renewed: the renewal may have re-created the lease of a slot
                # nobody holds any more (it would stay taken for a whole lease). Give it back.
                self._release(held.backend.key, held.holder, job_id=job_id)
                continue
            if not alive:
                logger.warning(
                    "job %s: slot lease on %s had expired (a long pause?); re-taken", job_id, held.backend.key
                )
            held.renewed_at = now

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self.state.close()


def open_pool_state(settings: Settings) -> PoolState:
    """Redis mode: the state every worker shares; embedded (one process): in memory.

    Raises:
        ConfigError: REDIS_URL is not a Redis URL.
    """
    if settings.redis_mode:
        from pipeline.sd.pool.redis_state import RedisPoolState

        return RedisPoolState.from_settings(settings)
    from pipeline.sd.pool.state import MemoryPoolState

    return MemoryPoolState()
