"""The shared state of the SD server pool: slot leases and health, and its in-process implementation.

Every worker that talks to a server must see the same slots and the same health, so this state
lives next to the status store: in Redis (:mod:`pipeline.sd.pool.redis_state`) when workers may run on several
machines, in memory (:class:`MemoryPoolState`) in embedded mode, which is one process by design.

A slot is a *lease*: a holder id with an expiry. A live holder renews it; a killed worker's lease
simply expires, so a slot can never leak for longer than ``SD_SLOT_LEASE_S`` (unlike Dramatiq's
``ConcurrentRateLimiter``, whose counter a SIGKILL leaves incremented).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.sd.backends import Backend
from pipeline.sd.pool.affinity import checkpoint_key
from pipeline.settings import Settings

__all__ = [
    "DEFAULT_OOM_PAUSE_S",
    "BackendStatus",
    "Claim",
    "HealthPolicy",
    "LoadedModel",
    "MemoryPoolState",
    "PoolState",
]


#: How long a lone server (no other healthy one to take its jobs) rests after an out-of-memory answer.
DEFAULT_OOM_PAUSE_S = 1.0


@dataclass(frozen=True)
class Claim:
    """How a job that wants a checkpoint takes a slot: from servers ranked already (checkpoint affinity)."""

    #: The checkpoint as the job sends it, and its :func:`~pipeline.sd.pool.affinity.checkpoint_key`.
    model: str
    key: str
    #: Only the first ``eligible`` servers may be taken, the first with room; the others are looked at only.
    eligible: int
    #: The server taken will be switched to ``model``: record it as loading it, at once.
    switch: bool = False
    #: Take nothing when a healthy server already has ``key`` or is loading it (another job just
    #: began that switch: wait for it rather than switch a second server).
    exclusive: bool = False


@dataclass(frozen=True)
class HealthPolicy:
    """When a server is benched, and for how long.

    An out-of-memory answer benches a server only when another healthy one can take its work; a
    lone server only pauses (``oom_pause_s``, its slot held): benched, its jobs would wait out a
    cool-down and probes for a server that rendered the next image fine.
    """

    failure_threshold: int
    cooldown_min_s: float
    cooldown_max_s: float
    oom_pause_s: float = DEFAULT_OOM_PAUSE_S

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthPolicy:
        return cls(settings.sd_failure_threshold, settings.sd_cooldown_min_s, settings.sd_cooldown_max_s)

    def next_cooldown_s(self, previous_s: float) -> float:
        """The first cool-down is the minimum; each one after doubles, up to the maximum."""
        return self.cooldown_min_s if previous_s <= 0 else min(previous_s * 2, self.cooldown_max_s)


@dataclass(frozen=True)
class LoadedModel:
    """The checkpoint a server had loaded as recorded when one of its slots was released: what an
    answer's model is checked against without reading the pool state again (one round trip per job)."""

    #: :func:`~pipeline.sd.pool.affinity.checkpoint_key` of the recorded model (None: not known).
    key: str | None
    #: Its hash is recorded too.
    has_hash: bool
    #: A switch is under way.
    loading: bool

    def confirms(self, model_name: str, model_hash: str | None) -> bool:
        """Whether an answer made with ``model_name`` (``model_hash``) tells nothing new."""
        return (
            not self.loading
            and self.key is not None
            and self.key == checkpoint_key(model_name)
            and (self.has_hash or model_hash is None)
        )


@dataclass(frozen=True)
class BackendStatus:
    """What ``sdpipe backends`` shows of one server."""

    key: str
    max_slots: int
    in_use: int
    healthy: bool
    benched_until: float | None
    cooldown_s: float
    consecutive_failures: int
    done: int
    failures: int
    total_s: float
    last_error: str | None
    last_error_at: float | None
    #: The checkpoint the server has loaded as last seen (an options title or an answer's model
    #: name; a switch sets it when it starts), its hash, and since when. None: not known yet.
    model: str | None = None
    model_hash: str | None = None
    model_since: float | None = None
    #: A switch to ``model`` is in progress.
    loading: bool = False
    #: Mean measured load seconds per checkpoint (by :func:`~pipeline.sd.pool.affinity.checkpoint_key`).
    load_s: dict[str, float] = field(default_factory=dict)
    #: Checkpoint loads seen on this server (the pool's switches and changes noticed in answers).
    model_loads: int = 0

    @property
    def mean_s(self) -> float | None:
        """Mean seconds per image over this server's successful calls."""
        return self.total_s / self.done if self.done else None


class PoolState(ABC):
    """Slots and health of the pool's servers, shared by every worker that uses them."""

    @abstractmethod
    def acquire(
        self, backends: Sequence[Backend], holder: str, *, lease_s: float, avoid: str | None, claim: Claim | None = None
    ) -> str | None:
        """Take a slot on the best server of ``backends`` with one free, for ``holder``.

        With a ``claim`` the servers are ranked already (see :class:`Claim`): the first eligible
        healthy one with room, never a benched one.

        Best: a healthy server with the largest share of free slots, then the one used least
        recently (so equal servers take turns); ``avoid`` (the server a job just failed on) only if
        no other has room. When no server is healthy at all (not merely busy), the benched one due
        back first: a job then meets the real error and its retries decide, instead of waiting on
        a pool that may never come back. Returns the server's key, or None when none has room.
        """

    @abstractmethod
    def renew(self, key: str, holder: str, *, lease_s: float) -> bool:
        """Extend ``holder``'s lease, re-taking it if it had expired (its call is still running);
        False in that case: the slot may briefly have been given to another."""

    @abstractmethod
    def release(self, key: str, holder: str, *, answered_s: float | None = None) -> LoadedModel | None:
        """Give the slot back and wake one waiter. ``answered_s``: the server just answered a call
        in that many seconds; recorded as a success (see :meth:`record_success`) in the same step.
        Returns the checkpoint recorded for the server (None: this state does not say)."""

    @abstractmethod
    def wait_for_release(self, timeout_s: float, keys: Sequence[str] | None = None) -> None:
        """Block until a slot of ``keys`` (default: any server) is released or a server comes back,
        or ``timeout_s`` passes (waiters then try again)."""

    @abstractmethod
    def record_success(self, key: str, elapsed_s: float) -> None:
        """A call succeeded: the server is healthy, its failure streak and cool-down reset."""

    @abstractmethod
    def record_failure(self, key: str, error: str, *, bench: bool, policy: HealthPolicy) -> bool:
        """A call failed on the server. Bench it when ``bench`` (out of memory, down at start) or
        when this makes ``policy.failure_threshold`` failures in a row. True if benched by this call."""

    @abstractmethod
    def claim_probes(self, keys: Sequence[str], *, claim_s: float) -> list[str]:
        """The benched servers among ``keys`` whose cool-down is over, claimed for probing by the
        caller for ``claim_s`` (so one process probes each, not every worker)."""

    @abstractmethod
    def probe_result(self, key: str, *, ok: bool, error: str | None, policy: HealthPolicy) -> None:
        """A probe answered (``ok``: back in the pool) or failed (benched again, cool-down doubled)."""

    @abstractmethod
    def status(self, backends: Sequence[Backend]) -> list[BackendStatus]:
        """The current state of each of ``backends``."""

    # -- checkpoints (issue 15) -------------------------------------------------------------------
    @abstractmethod
    def set_model(
        self, key: str, model: str | None, model_hash: str | None, *, loading: bool = False, counts_load: bool = False
    ) -> str | None:
        """Record the checkpoint server ``key`` has loaded (``loading``: a switch to it starts now;
        ``counts_load``: it was loaded, count it). Returns the checkpoint recorded before."""

    @abstractmethod
    def record_load(self, key: str, model: str, elapsed_s: float) -> None:
        """A switch of server ``key`` to checkpoint key ``model`` took ``elapsed_s``; it is loaded now."""

    @abstractmethod
    def want(self, holder: str, model: str, *, ttl_s: float) -> None:
        """``holder`` (a job in the pool) wants checkpoint key ``model``, for at most ``ttl_s``."""

    @abstractmethod
    def unwant(self, holder: str, model: str) -> None:
        """``holder`` has its slot or gave up: it no longer counts in :meth:`wants`."""

    @abstractmethod
    def wants(self) -> dict[str, int]:
        """How many jobs in the pool now (waiting for a slot or rendering) want each checkpoint key."""

    # -- priority (issue 18) ---------------------------------------------------------------------
    @abstractmethod
    def ticket(self, job_ids: Sequence[str], klass: int, *, ttl_s: float) -> None:
        """``job_ids`` wait for an SD server in priority class ``klass`` (0 high, 1 normal, 2 low), for
        at most ``ttl_s``: lower classes defer to them (:meth:`outranked`)."""

    @abstractmethod
    def drop_ticket(self, job_id: str, klass: int) -> None:
        """The job got its slot, or ended: it no longer holds anyone back."""

    @abstractmethod
    def outranked(self, klass: int) -> bool:
        """Whether a live ticket of a class better than ``klass`` exists (a job of ``klass`` then defers)."""

    def ticket_outranked(self, job_id: str, klass: int, *, ttl_s: float, check: int) -> bool:
        """:meth:`ticket` for ``job_id`` in ``klass``, then :meth:`outranked` of class ``check`` (the
        job's class after aging), in that order: one round trip where the state allows it (every SD
        call of a job with a priority starts so)."""
        self.ticket([job_id], klass, ttl_s=ttl_s)
        return self.outranked(check)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass
class _Health:
    fails: int = 0
    benched: bool = False
    until: float = 0.0
    cooldown_s: float = 0.0
    done: int = 0
    failures: int = 0
    total_s: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    last_turn: int = 0
    probe_claim_until: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    model_hash: str | None = None
    model_since: float | None = None
    loading: bool = False
    model_loads: int = 0
    #: checkpoint key -> (loads measured, their total seconds)
    loads: dict[str, tuple[int, float]] = field(default_factory=dict)


class MemoryPoolState(PoolState):
    """The pool state of one process (embedded mode): the same rules, kept under a lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._health: dict[str, _Health] = {}
        self._cond = threading.Condition()
        self._turn = 0
        self._wants: dict[str, tuple[str, float]] = {}
        #: Priority tickets per class: job id -> expiry.
        self._tickets: dict[int, dict[str, float]] = {}

    def _get(self, key: str) -> _Health:
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = _Health()
        return health

    def _purge(self, health: _Health, now: float) -> None:
        for holder in [h for h, expiry in health.leases.items() if expiry <= now]:
            del health.leases[holder]

    def acquire(
        self, backends: Sequence[Backend], holder: str, *, lease_s: float, avoid: str | None, claim: Claim | None = None
    ) -> str | None:
        with self._cond:
            now = self._clock()
            if claim is not None:
                return self._take_first(backends, holder, now, lease_s, claim)
            best: tuple[float, int] | None = None
            chosen: Backend | None = None
            fallback: tuple[float, Backend] | None = None
            any_healthy = False
            for backend in backends:
                health = self._get(backend.key)
                self._purge(health, now)
                has_room = len(health.leases) < backend.max_slots
                if health.benched:
                    if has_room and (fallback is None or health.until < fallback[0]):
                        fallback = (health.until, backend)
                    continue
                any_healthy = True
                if not has_room:
                    continue
                free = (backend.max_slots - len(health.leases)) / backend.max_slots - (2 if backend.key == avoid else 0)
                rank = (-free, health.last_turn)
                if best is None or rank < best:
                    best, chosen = rank, backend
            if chosen is None and not any_healthy and fallback is not None:
                chosen = fallback[1]
            if chosen is None:
                return None
            health = self._get(chosen.key)
            health.leases[holder] = now + lease_s
            self._turn += 1
            health.last_turn = self._turn
            return chosen.key

    def _take_first(
        self, backends: Sequence[Backend], holder: str, now: float, lease_s: float, claim: Claim
    ) -> str | None:
        if claim.exclusive and any(
            not self._get(b.key).benched and checkpoint_key(self._get(b.key).model) == claim.key for b in backends
        ):
            return None
        for backend in backends[: claim.eligible]:
            health = self._get(backend.key)
            self._purge(health, now)
            if not health.benched and len(health.leases) < backend.max_slots:
                health.leases[holder] = now + lease_s
                self._turn += 1
                health.last_turn = self._turn
                if claim.switch and checkpoint_key(health.model) != claim.key:
                    health.model, health.model_hash, health.loading = claim.model, None, True
                    health.model_since = now
                return backend.key
        return None

    def renew(self, key: str, holder: str, *, lease_s: float) -> bool:
        with self._cond:
            health = self._get(key)
            now = self._clock()
            alive = health.leases.get(holder, 0.0) > now
            health.leases[holder] = now + lease_s
            return alive

    def release(self, key: str, holder: str, *, answered_s: float | None = None) -> LoadedModel | None:
        with self._cond:
            health = self._get(key)
            health.leases.pop(holder, None)
            self._cond.notify_all()  # waiters may want different servers: each checks its own
            loaded = LoadedModel(checkpoint_key(health.model), health.model_hash is not None, health.loading)
        if answered_s is not None:
            self.record_success(key, answered_s)
        return loaded

    def wait_for_release(self, timeout_s: float, keys: Sequence[str] | None = None) -> None:
        with self._cond:
            self._cond.wait(timeout_s)

    def record_success(self, key: str, elapsed_s: float) -> None:
        with self._cond:
            health = self._get(key)
            health.fails, health.benched, health.cooldown_s = 0, False, 0.0
            health.done += 1
            health.total_s += elapsed_s

    def record_failure(self, key: str, error: str, *, bench: bool, policy: HealthPolicy) -> bool:
        with self._cond:
            health = self._get(key)
            now = self._clock()
            health.fails += 1
            health.failures += 1
            health.last_error, health.last_error_at = error, now
            if health.benched or not (bench or health.fails >= policy.failure_threshold):
                return False
            health.cooldown_s = policy.next_cooldown_s(health.cooldown_s)
            health.benched, health.until = True, now + health.cooldown_s
            return True

    def claim_probes(self, keys: Sequence[str], *, claim_s: float) -> list[str]:
        with self._cond:
            now = self._clock()
            due = []
            for key in keys:
                health = self._get(key)
                if health.benched and health.until <= now and health.probe_claim_until <= now:
                    health.probe_claim_until = now + claim_s
                    due.append(key)
            return due

    def probe_result(self, key: str, *, ok: bool, error: str | None, policy: HealthPolicy) -> None:
        with self._cond:
            health = self._get(key)
            now = self._clock()
            health.probe_claim_until = 0.0
            if ok:
                health.benched, health.fails = False, 0
                self._cond.notify_all()
                return
            health.cooldown_s = policy.next_cooldown_s(health.cooldown_s)
            health.until = now + health.cooldown_s
            if error is not None:
                health.last_error, health.last_error_at = error, now

    def status(self, backends: Sequence[Backend]) -> list[BackendStatus]:
        with self._cond:
            now = self._clock()
            result = []
            for backend in backends:
                health = self._get(backend.key)
                self._purge(health, now)
                result.append(
                    BackendStatus(
                        key=backend.key,
                        max_slots=backend.max_slots,
                        in_use=len(health.leases),
                        healthy=not health.benched,
                        benched_until=health.until if health.benched else None,
                        cooldown_s=health.cooldown_s,
                        consecutive_failures=health.fails,
                        done=health.done,
                        failures=health.failures,
                        total_s=health.total_s,
                        last_error=health.last_error,
                        last_error_at=health.last_error_at,
                        model=health.model,
                        model_hash=health.model_hash,
                        model_since=health.model_since,
                        loading=health.loading,
                        load_s={model: total / n for model, (n, total) in health.loads.items() if n},
                        model_loads=health.model_loads,
                    )
                )
            return result

    def set_model(
        self, key: str, model: str | None, model_hash: str | None, *, loading: bool = False, counts_load: bool = False
    ) -> str | None:
        with self._cond:
            health = self._get(key)
            previous = health.model
            health.model, health.model_hash, health.loading = model, model_hash, loading
            health.model_since = self._clock()
            health.model_loads += int(counts_load)
            return previous

    def record_load(self, key: str, model: str, elapsed_s: float) -> None:
        with self._cond:
            health = self._get(key)
            n, total = health.loads.get(model, (0, 0.0))
            health.loads[model] = (n + 1, total + elapsed_s)
            health.loading = False
            health.model_loads += 1

    def want(self, holder: str, model: str, *, ttl_s: float) -> None:
        with self._cond:
            self._wants[holder] = (model, self._clock() + ttl_s)

    def unwant(self, holder: str, model: str) -> None:
        with self._cond:
            self._wants.pop(holder, None)

    def wants(self) -> dict[str, int]:
        with self._cond:
            now = self._clock()
            counts: dict[str, int] = {}
            for holder, (model, expiry) in list(self._wants.items()):
                if expiry <= now:
                    del self._wants[holder]
                    continue
                counts[model] = counts.get(model, 0) + 1
            return counts

    def ticket(self, job_ids: Sequence[str], klass: int, *, ttl_s: float) -> None:
        with self._cond:
            expiry = self._clock() + ttl_s
            self._tickets.setdefault(klass, {}).update(dict.fromkeys(job_ids, expiry))

    def drop_ticket(self, job_id: str, klass: int) -> None:
        with self._cond:
            self._tickets.get(klass, {}).pop(job_id, None)

    def outranked(self, klass: int) -> bool:
        with self._cond:
            now = self._clock()
            for better in range(klass):
                tickets = self._tickets.get(better, {})
                for job_id in [job for job, expiry in tickets.items() if expiry <= now]:
                    del tickets[job_id]
                if tickets:
                    return True
            return False
