"""Fault injection and task bookkeeping for the mock SD server (:mod:`pipeline.sd.mock.http`).

A :class:`FaultPlan` says how often a txt2img request meets each fault; the server draws once per
request from its seeded generator, so a run with the same ``seed`` repeats. The kinds:

===========  ======================================================================================
``500``      500 ``OutOfMemoryError`` after the usual generation time (what ``fail_rate`` always did)
``reset``    the connection is dropped at once, without an answer (a TCP reset over HTTP)
``hang``     no answer for ``hang_ms``, then a normal one; the request waits outside the FIFO lock
             (like a request stuck in a proxy) and ends early, without an answer, on an interrupt or
             when the server shuts down
``garbage``  200 with well-formed JSON whose first real image (``images[index_of_first_image]``) starts with
             the PNG magic but does not decode
===========  ======================================================================================

In-process (``mock://``), ``reset`` raises :class:`httpx.ReadError`, and a hang longer than the caller's
read timeout sleeps that timeout then raises :class:`httpx.ReadTimeout`, while the hang itself goes on
(still *active* for ``/internal/progress``) until ``hang_ms`` or an interrupt.

:class:`TaskBoard` copies A1111's task tracking (``modules/progress.py``): requests named by
``force_task_id`` are *queued* while they wait for the FIFO lock, *active* while they generate (a
hanging request counts as active: the server claims to work on it), then *completed*; the UI route
``POST /internal/progress`` reports those three flags per task id.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import re
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_HANG_MS",
    "FAULT_KINDS",
    "LOGGED_STRING_CHARS",
    "OUTCOMES",
    "REQUEST_HISTORY",
    "FaultPlan",
    "Hang",
    "TaskBoard",
    "garbage_image_base64",
    "loggable",
    "request_record",
]

#: Fault kinds, in the order a draw tests them (so equal plans give equal sequences for a seed).
FAULT_KINDS = ("500", "reset", "hang", "garbage")
#: How a txt2img request ended, as ``/mock/stats`` ``requests[].outcome`` reports it: ``ok``; the fault
#: it met (``hang``: still held, answered normally after ``hang_ms``, or abandoned by an in-process
#: caller); ``interrupted`` (a hang ended by ``/interrupt``, or a generation cut short by it); or
#: ``error`` (a 500 the mock raised on its own: null prompt, absurd size...).
OUTCOMES = ("ok", *FAULT_KINDS, "interrupted", "error")
#: Default duration of a ``hang`` fault, in milliseconds: longer than a typical client read timeout.
DEFAULT_HANG_MS = 60_000
#: txt2img requests remembered by ``/mock/stats`` (``requests``), the most recent ones.
REQUEST_HISTORY = 10_000
#: Longest string a logged request body keeps as is (longer ones are summarised by :func:`loggable`).
LOGGED_STRING_CHARS = 4096
#: Completed task ids ``/internal/progress`` remembers (A1111 keeps the last 16).
FINISHED_TASKS = 16
#: Separators between the items of a plan: ``,`` or ``;`` (a comma ends an ``SD_API_URL`` entry).
_ITEM_SEPARATOR = re.compile(r"[,;]")
#: Tolerance on the sum of the probabilities (``0.1+0.2+0.7`` is not exactly 1.0 in floats).
_SUM_SLACK = 1e-9


@dataclass(frozen=True)
class FaultPlan:
    """How often a txt2img request meets each fault: ``((kind, probability), ...)`` in FAULT_KINDS order.

    Build one with :meth:`parse`; ``str(plan)`` gives the canonical text back (``"none"`` when empty).
    """

    rates: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> FaultPlan:
        """Read ``KIND:P[,KIND:P...]`` (``;`` also separates items; ``""`` and ``none`` are no faults).

        Raises:
            ValueError: an unknown kind, a repeated kind, a probability outside [0, 1], or a sum over 1.
        """
        if text is None or text.strip().lower() in ("", "none"):
            return cls()
        found: dict[str, float] = {}
        for item in (part.strip() for part in _ITEM_SEPARATOR.split(text)):
            if not item:
                continue
            kind, sep, raw = (piece.strip() for piece in item.partition(":"))
            if not sep:
                raise ValueError(f"fault {item!r} is not KIND:PROBABILITY (e.g. reset:0.1)")
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; use {', '.join(FAULT_KINDS)}")
            if kind in found:
                raise ValueError(f"fault kind {kind!r} is given twice")
            found[kind] = _probability(kind, raw)
        return cls._of(found)

    @classmethod
    def _of(cls, found: dict[str, float]) -> FaultPlan:
        plan = cls(tuple((kind, found[kind]) for kind in FAULT_KINDS if kind in found))
        if plan.total > 1.0 + _SUM_SLACK:
            raise ValueError(f"fault probabilities add up to {plan.total:g}, over 1")
        return plan

    @classmethod
    def coerce(cls, value: str | FaultPlan | None) -> FaultPlan:
        """``value`` itself if it is a plan, else :meth:`parse` of it."""
        return value if isinstance(value, FaultPlan) else cls.parse(value)

    @property
    def total(self) -> float:
        """The probability that a request meets some fault."""
        return math.fsum(rate for _, rate in self.rates)

    def rate(self, kind: str) -> float:
        """The probability of ``kind`` (0.0 when the plan does not name it)."""
        return dict(self.rates).get(kind, 0.0)

    def with_rate(self, kind: str, probability: float) -> FaultPlan:
        """This plan plus ``kind`` at ``probability`` (how ``fail_rate`` becomes ``500:P``).

        Raises:
            ValueError: the plan already names ``kind``, or the result would be invalid.
        """
        found = dict(self.rates)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use {', '.join(FAULT_KINDS)}")
        if kind in found:
            raise ValueError(f"fault kind {kind!r} is given twice")
        return FaultPlan._of(found | {kind: _probability(kind, repr(probability))})

    def draw(self, u: float) -> str | None:
        """The fault a uniform draw ``u`` in [0, 1) selects, or None."""
        cumulative = 0.0
        for kind, rate in self.rates:
            cumulative += rate
            if u < cumulative:
                return kind
        # A plan that sums to 1 always selects a fault, whatever the float rounding of the sum.
        return self.rates[-1][0] if self.rates and self.total >= 1.0 - _SUM_SLACK else None

    def __bool__(self) -> bool:
        return any(rate > 0 for _, rate in self.rates)

    def __str__(self) -> str:
        return ",".join(f"{kind}:{rate:g}" for kind, rate in self.rates) or "none"


def _probability(kind: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"fault {kind}:{raw} has a probability that is not a number") from None
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise ValueError(f"fault {kind}:{raw} has a probability outside [0, 1]")
    return value


def _png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")


def garbage_image_base64() -> str:
    """Base64 of bytes that start like a 64x64 PNG but do not decode (the IHDR checksum is wrong)."""
    header = (64).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    broken_ihdr = _png_chunk(b"IHDR", header, crc=zlib.crc32(b"IHDR" + header) ^ 0xFFFFFFFF)
    data = b"\x89PNG\r\n\x1a\n" + broken_ihdr + _png_chunk(b"IDAT", b"\x00garbage" * 16) + _png_chunk(b"IEND", b"")
    return base64.b64encode(data).decode("ascii")


def loggable(body: Any) -> Any:
    """``body`` as the request log keeps it: strings over :data:`LOGGED_STRING_CHARS` (base64 images of
    ControlNet units...) become ``<N chars, sha256 XXXXXXXXXXXXXXXX>``, so 10,000 logged requests stay small."""
    if isinstance(body, str) and len(body) > LOGGED_STRING_CHARS:
        return f"<{len(body)} chars, sha256 {hashlib.sha256(body.encode()).hexdigest()[:16]}>"
    if isinstance(body, dict):
        return {key: loggable(value) for key, value in body.items()}
    if isinstance(body, list):
        return [loggable(value) for value in body]
    return body


def request_record(prompt: Any, seed: Any, task_id: str, outcome: str, body: Any = None) -> dict[str, Any]:
    """One entry of ``/mock/stats`` ``requests``; ``at`` is the arrival time (``time.time()``), ``body`` the
    JSON body as received (see :func:`loggable`)."""
    return {
        "prompt": prompt,
        "seed": seed,
        "task_id": task_id,
        "at": time.time(),
        "outcome": outcome,
        "body": loggable(body),
    }


@dataclass(eq=False)
class Hang:
    """A request held by a ``hang`` fault, until ``deadline`` (``time.monotonic()``) or until ``ended``.

    ``detached`` is set when the in-process transport gave up waiting (its caller's read timeout) while
    the hang, as on a real server, goes on until its deadline or an interrupt.
    """

    task_id: str
    record: dict[str, Any]
    deadline: float
    ended: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None
    detached: bool = False

    def end(self, reason: str) -> None:
        """Stop the hang early: ``interrupted`` or ``shutdown``."""
        if self.reason is None:
            self.reason = reason
            if reason == "interrupted":
                self.record["outcome"] = "interrupted"
        self.ended.set()


class TaskBoard:
    """A1111's per-task state (pending, current, finished) plus the mock's hanging requests.

    Not thread-safe: :class:`pipeline.sd.mock.http.MockSDServer` calls it under its own lock.
    """

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}
        self._current: str | None = None
        self._finished: deque[str] = deque(maxlen=FINISHED_TASKS)
        self._hangs: list[Hang] = []
        self._ids = itertools.count(1)
        self._arrivals = itertools.count()

    def new_task_id(self) -> str:
        """A task id for a request sent without ``force_task_id`` (A1111: ``task(...)``)."""
        return f"task(mock-{next(self._ids)})"

    # -- the FIFO path -------------------------------------------------------------------------------
    def enqueue(self, task_id: str) -> None:
        self._pending[task_id] = next(self._arrivals)

    def start(self, task_id: str) -> None:
        self._pending.pop(task_id, None)
        self._current = task_id

    def finish(self, task_id: str, *, completed: bool) -> None:
        if self._current == task_id:
            self._current = None
        if completed:
            self._finished.append(task_id)

    # -- hangs ---------------------------------------------------------------------------------------
    def add_hang(self, hang: Hang) -> None:
        self._hangs.append(hang)

    def remove_hang(self, hang: Hang) -> None:
        if hang in self._hangs:
            self._hangs.remove(hang)

    def live_hangs(self) -> list[Hang]:
        """Hangs still running; detached ones past their deadline are dropped (their answer was lost)."""
        now = time.monotonic()
        self._hangs = [h for h in self._hangs if not (h.detached and now >= h.deadline) and not h.ended.is_set()]
        return list(self._hangs)

    def end_hangs(self, reason: str) -> int:
        """End every running hang (``interrupted`` or ``shutdown``); returns how many there were."""
        hangs = self.live_hangs()
        for hang in hangs:
            hang.end(reason)
        self._hangs.clear()
        return len(hangs)

    # -- /internal/progress --------------------------------------------------------------------------
    def progress(self, task_id: str, running: tuple[float, float] | None) -> dict[str, Any]:
        """The ``ProgressResponse`` of ``POST /internal/progress`` for ``task_id``.

        Args:
            task_id: the ``id_task`` asked about.
            running: ``(progress, eta_s)`` of the generation in progress, if any.
        """
        hanging = any(h.task_id == task_id for h in self.live_hangs())
        active = hanging or task_id == self._current
        queued = task_id in self._pending
        answer: dict[str, Any] = {
            "active": active,
            "queued": queued,
            "completed": task_id in self._finished,
            "progress": None,
            "eta": None,
            "live_preview": None,
            "id_live_preview": -1,
            "textinfo": None,
        }
        if not active:
            order = sorted(self._pending, key=self._pending.__getitem__)
            answer["textinfo"] = f"In queue: {order.index(task_id) + 1}/{len(order)}" if queued else "Waiting..."
        elif hanging:
            answer["progress"] = 0.0
        elif running is not None:
            answer["progress"], answer["eta"] = running
        return answer
