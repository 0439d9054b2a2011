"""The SD pool's checkpoint half (issue 15): a slot for a job that names a checkpoint, switches
that stay loaded, and what each server has loaded.

:mod:`~pipeline.sd.pool.affinity` ranks the servers; this module takes the slot with a
:class:`~pipeline.sd.pool.state.Claim` (so two jobs never switch two servers to the same new
checkpoint), switches a server with ``POST /sdapi/v1/options`` (timed: its measured load time),
and records what the server says it has loaded: ``GET /sdapi/v1/options`` when probed, every
answer's ``info.sd_model_name``, and the checkpoint a wrong-checkpoint answer names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pipeline.errors import PipelineError, StoreUnavailable
from pipeline.sd.backends import Backend
from pipeline.sd.client import SDClient
from pipeline.sd.pool import affinity
from pipeline.sd.pool.state import Claim, LoadedModel, PoolState
from pipeline.settings import Settings

__all__ = ["Checkpoints", "PoolObserver"]

logger = logging.getLogger(__name__)


class PoolObserver(Protocol):
    """Receives the pool's events (for metrics)."""

    def sd_call(self, backend: str, elapsed_s: float, outcome: str) -> None:
        """A txt2img call ended: ``outcome`` is ``ok``, ``failed`` (transient) or ``rejected`` (permanent)."""

    def benched(self, backend: str) -> None:
        """A server was taken out of the pool for a cool-down."""

    def model_loaded(self, backend: str, model: str) -> None:
        """A server loaded checkpoint ``model`` (a switch by the pool, or one seen in an answer)."""


class Checkpoints:
    """The checkpoint half of an :class:`~pipeline.sd.pool.pool.SDPool` (its settings, servers,
    clients and observer; ``state`` returns the pool's current state)."""

    def __init__(
        self,
        settings: Settings,
        backends: Sequence[Backend],
        client_for: Callable[[str], SDClient],
        state: Callable[[], PoolState],
        observer: PoolObserver | None,
    ) -> None:
        self.settings = settings
        self.backends = list(backends)
        self._client_for = client_for
        self._state = state
        self.observer = observer

    def acquire(
        self, candidates: Sequence[Backend], holder: str, model: str, want: str, *, avoid: str | None, waited_s: float
    ) -> tuple[str | None, list[str] | None]:
        """One try at a slot for a job that wants checkpoint ``model`` (key ``want``): the server
        taken (or None), and the servers whose release to wait for (``[]``: look again at once)."""
        lease_s = self.settings.sd_slot_lease_s
        state = self._state()
        statuses = state.status(candidates)
        if not any(s.healthy for s in statuses):  # every one benched: the plain rule picks the one due back first
            return state.acquire(candidates, holder, lease_s=lease_s, avoid=avoid), [b.key for b in candidates]
        choice = affinity.choose(
            statuses,
            want,
            wants=state.wants(),
            waited_s=waited_s,
            wait_bound_s=self.settings.model_affinity_wait_s,
            avoid=avoid,
            now=time.time(),
        )
        if choice.order:
            by_key = {b.key: b for b in candidates}
            ranked = [by_key[key] for key in choice.order]
            switching = choice.reason == "switch"
            claim = Claim(
                model=model,
                key=want,
                eligible=len(ranked),
                switch=switching,
                # No server had the checkpoint when we looked: if one has it now, another job just
                # began that switch, and this one waits for it instead of switching a second server.
                exclusive=switching and not any(affinity.checkpoint_key(s.model) == want for s in statuses),
            )
            others = [b for b in candidates if b.key not in choice.order]
            key = state.acquire([*ranked, *others], holder, lease_s=lease_s, avoid=None, claim=claim)
            if key is not None:
                return key, None
            if claim.exclusive:
                return None, []  # look again at once: the other job's switch is recorded now
        # Waiting for an affine server: only its release wakes us (up to the bound, then any).
        affine = [s.key for s in statuses if affinity.checkpoint_key(s.model) == want]
        return None, affine if choice.reason == "wait" and affine else [b.key for b in candidates]

    def unwant(self, holder: str, want: str) -> None:
        """``holder`` no longer waits for (or renders with) ``want``; never raises."""
        try:
            self._state().unwant(holder, want)
        except StoreUnavailable as exc:  # it expires with the lease
            logger.debug("could not forget %s's wanted checkpoint: %s", holder, exc)

    def switch(self, backend: Backend, model: str, *, job_id: str) -> None:
        """Load ``model`` on ``backend`` (whose slot this job holds) unless it is loaded already, with
        ``POST /sdapi/v1/options`` so that it stays loaded. A failure is logged, not raised: the
        request names its checkpoint itself, and the answer's check catches a wrong one."""
        want = affinity.checkpoint_key(model)
        try:
            current = next(s for s in self._state().status([backend]) if s.key == backend.key)
        except StoreUnavailable as exc:
            logger.warning("job %s: cannot read the checkpoint of %s (%s); not switching", job_id, backend.key, exc)
            return
        if affinity.checkpoint_key(current.model) == want and not current.loading:
            return
        # Loading: this job's slot claimed the switch (or one died with its worker: switch again to be sure).
        if not current.loading:
            self._state().set_model(backend.key, model, None, loading=True)
        logger.info("job %s: switching %s to checkpoint %s", job_id, backend.key, model)
        started = time.perf_counter()
        try:
            self._client_for(backend.url).set_checkpoint(model, job_id=job_id)
        except PipelineError as exc:
            logger.warning("job %s: switching %s to %s failed: %s", job_id, backend.key, model, exc.message)
            self._state().set_model(backend.key, None, None)  # unknown: the next answer says
            return
        elapsed_s = time.perf_counter() - started
        self._state().record_load(backend.key, want or model, elapsed_s)
        logger.info("job %s: %s loaded %s in %.1f s", job_id, backend.key, model, elapsed_s)
        if self.observer is not None:
            self.observer.model_loaded(backend.key, want or model)

    def learn(
        self,
        key: str,
        model_name: str | None,
        model_hash: str | None,
        *,
        job_id: str | None,
        recorded: LoadedModel | None = None,
    ) -> None:
        """What the server says it has loaded (an answer's ``info``, or its options when probed).

        ``recorded``: the checkpoint the pool state had for the server when the call's slot was
        released; when the answer confirms it (the usual case), nothing is read or written.
        """
        if model_name is None or (recorded is not None and recorded.confirms(model_name, model_hash)):
            return
        try:
            status = next(s for s in self._state().status([b for b in self.backends if b.key == key]) if s.key == key)
            if status.loading:  # a switch is under way: it records the outcome
                return
            if affinity.checkpoint_key(status.model) == affinity.checkpoint_key(model_name):
                if status.model_hash is None and model_hash is not None:
                    self._state().set_model(key, status.model, model_hash)
                return
            changed = status.model is not None
            self._state().set_model(key, model_name, model_hash, counts_load=changed)
        except (StoreUnavailable, StopIteration) as exc:
            logger.debug("job %s: could not record the checkpoint of %s: %s", job_id or "-", key, exc)
            return
        if changed:
            logger.info(
                "job %s: SD server %s now has checkpoint %s (was %s)", job_id or "-", key, model_name, status.model
            )
            if self.observer is not None:
                self.observer.model_loaded(key, affinity.checkpoint_key(model_name) or model_name)

    def read(self, backend: Backend) -> None:
        """Read the server's loaded checkpoint (``GET /sdapi/v1/options``) into the pool state; never raises."""
        try:
            name, model_hash = self._client_for(backend.url).loaded_checkpoint()
        except PipelineError as exc:  # optional: forks trim /options; answers tell us later
            logger.debug("cannot read the checkpoint of %s: %s", backend.key, exc.message)
            return
        self.learn(backend.key, name, model_hash, job_id=None)
