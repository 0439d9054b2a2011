"""Each SD server of the pool as front ends show it (``sdpipe backends``, ``GET /api/backends``, the
dashboard): health in words, slots, jobs done, failures, mean seconds per image, its checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pipeline.sd.backends import Backend
from pipeline.sd.pool.state import BackendStatus

__all__ = ["backend_row", "health_text"]


def health_text(status: BackendStatus, now: float) -> str:
    """``healthy``, ``benched, back in N s`` or ``benched, probing``."""
    if status.healthy:
        return "healthy"
    if status.benched_until is not None and status.benched_until > now:
        return f"benched, back in {math.ceil(status.benched_until - now)} s"
    return "benched, probing"


def backend_row(
    backend: Backend, status: BackendStatus | None, answers: Mapping[str, str | None], *, now: float
) -> dict[str, Any]:
    """One server as a JSON object (counters None when there is no pool state for it).

    ``answers``: a live probe's outcome per server key (None: it answered; else the problem); a
    server probed adds ``probe`` and ``answers``.
    """
    row: dict[str, Any] = {
        "key": backend.key,
        "health": health_text(status, now) if status is not None else None,
        "healthy": status.healthy if status is not None else None,
        "benched_until": status.benched_until if status is not None else None,
        "in_use": status.in_use if status is not None else None,
        "max_slots": backend.max_slots,
        "done": status.done if status is not None else None,
        "failures": status.failures if status is not None else None,
        "consecutive_failures": status.consecutive_failures if status is not None else None,
        "mean_s": round(status.mean_s, 3) if status is not None and status.mean_s is not None else None,
        "last_error": status.last_error if status is not None else None,
        "last_error_at": status.last_error_at if status is not None else None,
        "model": status.model if status is not None else None,
        "model_hash": status.model_hash if status is not None else None,
        "loading": status.loading if status is not None else None,
        "model_loads": status.model_loads if status is not None else None,
        "load_s": {k: round(v, 3) for k, v in sorted(status.load_s.items())} if status is not None else {},
    }
    if backend.key in answers:
        row["probe"] = answers[backend.key] or "answers"
        row["answers"] = answers[backend.key] is None
    return row
