"""Checkpoint affinity: which server a job that names a checkpoint should render on.

Loading a checkpoint costs a server seconds to minutes of GPU time. So the pool remembers each
server's loaded checkpoint (from ``GET /sdapi/v1/options`` when it probes, from every answer's
``info.sd_model_name``, and from its own switches) and a job that names one:

1. takes a free server that has it loaded;
2. else, while such a server exists but is busy, waits for it, unless the wait it can expect is
   clearly longer than loading the checkpoint elsewhere; never longer than ``MODEL_AFFINITY_WAIT_S``;
3. else switches the free server whose switch costs least: first one whose loaded checkpoint no
   waiting job wants (or another server also has), then the shortest measured load. When every
   free server is the only one with a checkpoint other jobs in the pool want, those go first: it
   waits (within the same bound) instead of switching a server they would switch back.

A job that names no checkpoint takes any free server and never switches one. This module is pure:
it ranks servers from a snapshot of the shared pool state (:class:`~pipeline.sd.pool.state.BackendStatus`
and the checkpoints wanted by jobs in the pool now); the state's ``acquire`` takes the slot atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # state imports checkpoint_key from here
    from pipeline.models import GenerationParams, JobSpec
    from pipeline.sd.pool.state import BackendStatus

__all__ = [
    "DEFAULT_LOAD_S",
    "DEFAULT_RENDER_S",
    "Choice",
    "checkpoint_key",
    "choose",
    "grouped_by_checkpoint",
    "load_estimate_s",
    "wanted",
]

#: Assumed checkpoint load time before any was measured (seconds): SD 1.5 from a local SSD.
DEFAULT_LOAD_S = 10.0
#: Assumed render time before a server finished any image (seconds).
DEFAULT_RENDER_S = 1.0
#: A job switches another server before the bound only when its expected wait for a busy server
#: with its checkpoint is more than this many times the switch's load time.
SWITCH_EARLY_FACTOR = 2.0
_SUFFIXES = (".safetensors", ".ckpt", ".gguf", ".pt", ".pth", ".bin", ".sft")


def checkpoint_key(name: str | None) -> str | None:
    """The name a checkpoint is compared by: the file's stem, case-folded, without folder or hash.

    ``"SDXL/juggernaut.safetensors [6ce0161689]"``, ``"juggernaut.safetensors"`` and A1111's
    ``info.sd_model_name`` ``"juggernaut"`` all give ``"juggernaut"``.
    """
    if not isinstance(name, str) or not name.strip():
        return None
    text = name.strip()
    if text.endswith("]") and " [" in text:
        text = text.rsplit(" [", 1)[0]
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    lowered = text.casefold()
    for suffix in _SUFFIXES:
        if lowered.endswith(suffix):
            lowered = lowered[: -len(suffix)]
            break
    return lowered or None


def wanted(generation: GenerationParams | None) -> str | None:
    """The checkpoint a job asks for (``override_settings.sd_model_checkpoint``, as it is sent), or None."""
    if generation is None:
        return None
    value = (generation.override_settings or {}).get("sd_model_checkpoint")
    return value if isinstance(value, str) and value.strip() else None


def grouped_by_checkpoint(specs: Sequence[JobSpec]) -> list[JobSpec]:
    """``specs`` in the order to enqueue them: grouped by the checkpoint each names, the groups in the
    order of their first job, file order within a group (jobs naming none form a group too). A
    single server then switches once per checkpoint instead of once per change of checkpoint."""
    groups: dict[str | None, list[JobSpec]] = {}
    for spec in specs:
        groups.setdefault(checkpoint_key(wanted(spec.generation)), []).append(spec)
    return [spec for group in groups.values() for spec in group]


def load_estimate_s(status: BackendStatus, model: str, everyone: Sequence[BackendStatus]) -> float:
    """How long ``status``'s server should take to load ``model``: measured there, else its mean over
    other checkpoints, else the mean over every server, else :data:`DEFAULT_LOAD_S`."""
    if model in status.load_s:
        return status.load_s[model]
    if status.load_s:
        return sum(status.load_s.values()) / len(status.load_s)
    measured = [s for other in everyone for s in other.load_s.values()]
    return sum(measured) / len(measured) if measured else DEFAULT_LOAD_S


@dataclass(frozen=True)
class Choice:
    """The servers to try, best first (``order``), or none for now (``order`` empty: wait)."""

    order: list[str]
    #: Why, for the debug log: ``affine``, ``switch`` or ``wait``.
    reason: str


def _free(status: BackendStatus) -> bool:
    return status.healthy and status.in_use < status.max_slots


def choose(
    statuses: Sequence[BackendStatus],
    model: str,
    *,
    wants: Mapping[str, int],
    waited_s: float,
    wait_bound_s: float,
    avoid: str | None = None,
    now: float,
) -> Choice:
    """Rank the servers of ``statuses`` for a job that wants checkpoint key ``model``.

    Args:
        statuses: the candidates' current state (healthy, slots in use, loaded checkpoint, load times).
        model: the job's :func:`checkpoint_key`.
        wants: how many jobs in the pool now (waiting or rendering, this one included) want each key.
        waited_s: how long this job has waited for a slot so far.
        wait_bound_s: ``MODEL_AFFINITY_WAIT_S``: past it, any free server is taken.
        avoid: the server the job just failed on: last resort.
        now: the pool state's clock (epoch seconds), for a switch in progress.
    """

    def spread(status: BackendStatus) -> tuple[bool, float]:
        return status.key == avoid, -(status.max_slots - status.in_use) / status.max_slots

    healthy = [s for s in statuses if s.healthy]
    affine = [s for s in healthy if checkpoint_key(s.model) == model]
    affine_free = sorted((s for s in affine if _free(s)), key=spread)
    if affine_free:
        return Choice([s.key for s in affine_free], "affine")
    others = [s for s in healthy if _free(s)]
    if not others:
        return Choice([], "wait")
    holders: dict[str | None, int] = {}
    for status in healthy:
        key = checkpoint_key(status.model)
        holders[key] = holders.get(key, 0) + 1

    def cost(status: BackendStatus) -> tuple[bool, int, float, bool, float]:
        loaded = checkpoint_key(status.model)
        # Taking the only server of a checkpoint other jobs are waiting for makes them switch back.
        needed = loaded is not None and wants.get(loaded, 0) > 0 and holders.get(loaded, 0) <= 1
        return (status.key == avoid, int(needed), load_estimate_s(status, model, statuses), *spread(status))

    ranked = sorted(others, key=cost)
    if waited_s < wait_bound_s:
        best = ranked[0]
        if cost(best)[1]:
            # Every free server is the only one with a checkpoint other jobs wait for: they go first
            # (each of them would switch it back).
            return Choice([], "wait")
        # Estimates are rough: switch early only when waiting is clearly worse (twice the load), as
        # a second server loading the same checkpoint is a load nobody may need once the queue drains.
        load_s = load_estimate_s(best, model, statuses)
        if affine and _expected_wait_s(affine, model, wants, now) <= SWITCH_EARLY_FACTOR * load_s:
            return Choice([], "wait")
    return Choice([s.key for s in ranked], "switch")


def _expected_wait_s(affine: Sequence[BackendStatus], model: str, wants: Mapping[str, int], now: float) -> float:
    """Roughly when a busy server with ``model`` gets to this job: the jobs ahead of it (the others
    that want ``model``) spread over those servers' slots, plus what is left of a switch in progress."""
    slots = sum(s.max_slots for s in affine)
    renders = [s.mean_s for s in affine if s.mean_s is not None]
    render_s = sum(renders) / len(renders) if renders else DEFAULT_RENDER_S
    ahead = max(wants.get(model, 1) - 1, 0)
    loading = [s for s in affine if s.loading]
    loading_left = 0.0
    if len(loading) == len(affine):  # every one is still loading: the first to finish
        loading_left = min(
            max(load_estimate_s(s, model, affine) - (now - (s.model_since or now)), 0.0) for s in loading
        )
    return loading_left + math.ceil(ahead / max(slots, 1)) * render_s
