"""The mock SD server's test controls: the request log, queued answers and the ``/mock/*`` HTTP routes.

:class:`MockControl` belongs to one :class:`~pipeline.sd.mock.server.MockSDServer` (``server.control``):

- the **request log**: every request the mock answered (``/mock/*`` aside), in answer order, with its
  route, JSON body, arrival time and answer (status, fault met, body; long strings such as base64
  images summarised), the last :data:`~pipeline.sd.mock.faults.REQUEST_HISTORY` of them; optionally
  written as JSON lines as it grows (``sdpipe mock-sd --record FILE``);
- **queued answers**: exact answers for the next requests to a route (``500``, ``reset``, ``hang``,
  ``garbage``, ``422``, any status 400-599, a custom ``{"status", "body"}``, or ``ok``), taken before
  the fault plan is consulted, and the fault plan itself, changed live;
- the HTTP side of both, ``/mock/requests``, ``/mock/faults``, ``/mock/reset`` (``/mock/stats`` is the
  server's): version :data:`CONTROL_API_VERSION`, documented in docs/mock-control-api.md.

Python tests use them through :class:`pipeline.sd.mock.kit.MockSD` (the pytest fixtures' object).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from pipeline.sd.mock.faults import FAULT_KINDS, REQUEST_HISTORY, FaultPlan, loggable
from pipeline.sd.mock.server import MockResponse, MockSDServer, _Request

__all__ = [
    "ANSWER_KINDS",
    "CONTROL_API_VERSION",
    "TXT2IMG",
    "MockControl",
    "QueuedAnswer",
    "RequestRecorder",
]

#: Version of the ``/mock/*`` control API (header ``x-sdpipe-mock-api`` and ``mock_api`` fields).
#: Within a version, fields and routes are only added, never renamed, removed or given a new meaning.
CONTROL_API_VERSION = 1
#: The route queued answers go to unless another one is named.
TXT2IMG = "/sdapi/v1/txt2img"
#: Named answers that can be queued; besides these, any status code 400-599 (as ``"503"`` or ``503``).
ANSWER_KINDS = ("ok", *FAULT_KINDS, "422")
#: Where ``request.notes`` carries the queued answer kind to the txt2img route, and the fault it met back.
_QUEUED, _FAULT = "queued", "fault"

_Handler = Callable[[_Request], MockResponse]


@dataclass(frozen=True)
class QueuedAnswer:
    """One exact answer for the next request to ``route``.

    ``kind`` is ``ok`` (the normal answer, no fault even if the plan would draw one), a fault kind
    (``500``, ``reset``, ``hang``, ``garbage``: what the fault plan's faults do) or ``status``: ``status``
    at once, with ``body`` if given, else the body A1111 sends with that status.
    """

    route: str
    kind: str
    status: int | None = None
    body: Any = None
    #: Only for a request whose ``force_task_id`` ends with this (e.g. ``-t3``: tile 3 of an upscale).
    task: str | None = None

    @classmethod
    def parse(cls, spec: object, route: str = TXT2IMG) -> QueuedAnswer:
        """An answer from ``"500"``, ``500``, ``"reset"``, ``"ok"``, ``"503"`` or ``{"status": 503, "body": ...}``.

        Raises:
            ValueError: anything else (an unknown name, a status outside 400-599, a malformed dict).
        """
        if not isinstance(route, str) or not route.startswith("/") or route.startswith("/mock/"):
            raise ValueError(f"route {route!r} is not a mock SD route (e.g. {TXT2IMG})")
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"status", "body"})
            status = spec.get("status")
            if unknown or not _is_status(status):
                raise ValueError(
                    f"answer {dict(spec)!r}: use {{'status': 400-599, 'body': JSON}}"
                    + (f" (unknown keys {', '.join(map(str, unknown))})" if unknown else "")
                )
            return cls(route, "status", int(str(status)), spec.get("body"))
        text = str(spec).strip().lower() if isinstance(spec, str | int) and not isinstance(spec, bool) else ""
        if text in ("ok", *FAULT_KINDS):
            return cls(route, text)
        if text.isdigit() and _is_status(int(text)):
            return cls(route, "status", int(text))
        raise ValueError(
            f"unknown answer {spec!r}; use one of {', '.join(ANSWER_KINDS)}, another status 400-599, "
            "or {'status': N, 'body': JSON}"
        )

    def describe(self) -> dict[str, Any]:
        """The JSON form ``GET /mock/faults`` lists."""
        answer: Any = self.kind if self.kind != "status" else str(self.status)
        if self.kind == "status" and self.body is not None:
            answer = {"status": self.status, "body": self.body}
        return {"route": self.route, "answer": answer} | ({"task": self.task} if self.task else {})

    def matches(self, path: str, request: _Request) -> bool:
        """Whether this answer is for ``request`` (its route, and its task if one is named)."""
        if self.route != path:
            return False
        if self.task is None:
            return True
        try:
            task = json.loads(request.body).get("force_task_id") if request.body else None
        except (ValueError, AttributeError):
            task = None
        return isinstance(task, str) and task.endswith(self.task)

    def response(self) -> MockResponse:
        """The answer of a ``status`` kind (or of ``500``/``garbage`` on a route that generates nothing)."""
        if self.kind == "garbage":
            return MockResponse(200, {"content-type": "application/json"}, b'{"images": ["\x89PNG')
        status = 500 if self.kind == "500" else self.status or 500
        if self.body is not None:
            return _json(status, self.body)
        if status == 422:
            return _json(422, {"detail": [{"loc": ["body"], "msg": "mock: queued 422", "type": "value_error"}]})
        if status == 500:
            return _json(500, {"error": "RuntimeError", "detail": "", "body": "", "errors": "mock: queued 500"})
        return _json(status, {"error": "HTTPException", "detail": f"mock: queued {status}", "body": "", "errors": ""})


def _is_status(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599


def _json(status: int, payload: Any) -> MockResponse:
    headers = {"content-type": "application/json", "x-sdpipe-mock-api": str(CONTROL_API_VERSION)}
    return MockResponse(status, headers, json.dumps(payload, separators=(",", ":")).encode())


def _problem(detail: str) -> MockResponse:
    return _json(422, {"detail": detail})


def _body(raw: bytes) -> Any:
    """A logged body: its JSON (long strings summarised), else its text (cut), else None when empty."""
    if not raw:
        return None
    try:
        return loggable(json.loads(raw))
    except ValueError:
        return loggable(raw.decode("utf-8", "replace"))


class MockControl:
    """The request log, queued answers and fault plan of one mock server; thread-safe."""

    def __init__(self, server: MockSDServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._log: deque[dict[str, Any]] = deque(maxlen=REQUEST_HISTORY)
        self._seq = itertools.count(1)
        self._queued: deque[QueuedAnswer] = deque()
        self._initial_plan = server.faults
        self._initial_models = [dict(model) for model in server.models]
        self._initial_options = dict(server.options)
        self._sinks: list[Callable[[dict[str, Any]], None]] = []
        self._closed = threading.Event()

    # -- what the server calls ----------------------------------------------------------------------
    def routes(self) -> dict[str, dict[str, _Handler]]:
        """The control routes the server adds to its own (``/mock/stats`` stays the server's)."""
        return {
            "/mock/requests": {"GET": self._get_requests},
            "/mock/faults": {"GET": self._get_faults, "POST": self._post_faults, "DELETE": self._delete_faults},
            "/mock/reset": {"POST": self._post_reset},
        }

    def answer(self, path: str, request: _Request, handler: _Handler) -> MockResponse:
        """Answer ``request`` with the next queued answer for ``path`` if any, else through ``handler``.

        On txt2img a queued ``ok`` or fault kind goes to the route (which applies it as the fault
        plan's faults are applied); elsewhere ``500``/``garbage`` are answered here, ``reset`` drops the
        connection and ``hang`` holds the request for the server's ``hang_ms`` before answering.
        """
        with self._lock:
            queued = next((item for item in self._queued if item.matches(path, request)), None)
            if queued is not None:
                self._queued.remove(queued)
        if queued is None:
            return handler(request)
        request.notes[_QUEUED] = queued.kind
        if queued.kind == "status" or (path != TXT2IMG and queued.kind in ("500", "garbage")):
            request.notes[_FAULT] = queued.kind if queued.kind != "status" else None
            return queued.response()
        if path == TXT2IMG or queued.kind == "ok":
            return handler(request)
        request.notes[_FAULT] = queued.kind
        if queued.kind == "reset":
            return MockResponse(0, {}, b"", abort="reset")
        return self._hang(request, handler)

    def fault(self, request: _Request, drawn: str | None) -> str | None:
        """The fault a txt2img request meets: the queued answer's kind if one was taken (``ok``: none),
        else ``drawn`` (the fault plan's draw); noted for the request log."""
        queued = request.notes.get(_QUEUED)
        fault = drawn if queued is None else (None if queued == "ok" else str(queued))
        request.notes[_FAULT] = fault
        return fault

    def _hang(self, request: _Request, handler: _Handler) -> MockResponse:
        hang_s = self._server.hang_ms / 1000
        timeout_s = request.read_timeout_s
        if timeout_s is not None and timeout_s < hang_s:  # in-process: the caller gives up first
            self._closed.wait(timeout_s)
            return MockResponse(0, {}, b"", abort="timeout")
        if self._closed.wait(hang_s):
            return MockResponse(0, {}, b"", abort="reset")
        return handler(request)

    def log(self, method: str, path: str, request: _Request, response: MockResponse, duration_s: float) -> None:
        """Add one answered request to the log (``/mock/*`` requests are not logged)."""
        if path.startswith("/mock/"):
            return
        answered = response.abort is None
        entry = {
            "seq": 0,
            "method": method.upper(),
            "route": path,
            "query": request.query,
            "body": _body(request.body),
            "time": time.time() - duration_s,
            "answer": {
                "status": response.status if answered else None,
                "fault": request.notes.get(_FAULT),
                "queued": _QUEUED in request.notes,
                "body": _body(response.body) if answered else None,
                "duration_s": round(duration_s, 6),
            },
        }
        with self._lock:  # sinks inside the lock: a recording lists the entries in seq order
            entry["seq"] = next(self._seq)
            self._log.append(entry)
            for sink in self._sinks:
                sink(entry)

    def close(self) -> None:
        """End every request held by a queued ``hang`` (the server shuts down)."""
        self._closed.set()

    # -- what tests call ----------------------------------------------------------------------------
    def requests(self, route: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Logged requests (copies), oldest first: all, or those to ``route``, with ``seq`` over ``since``."""
        with self._lock:
            entries = list(self._log)
        return [json.loads(json.dumps(e)) for e in entries if e["seq"] > since and route in (None, e["route"])]

    def queue(self, answers: Iterable[object], route: str = TXT2IMG, task: str | None = None) -> None:
        """Queue exact answers for the next requests to ``route`` (whose ``force_task_id`` ends with
        ``task``, if given), after those already queued.

        Raises:
            ValueError: an answer :meth:`QueuedAnswer.parse` refuses (nothing is queued then).
        """
        parsed = [replace(QueuedAnswer.parse(answer, route), task=task) for answer in answers]
        with self._lock:
            self._queued.extend(parsed)

    def set_plan(self, plan: str | FaultPlan | None) -> None:
        """Replace the fault plan (``None`` or ``"none"``: no faults) for the requests from now on.

        Raises:
            ValueError: an invalid plan.
        """
        self._server.faults = FaultPlan.coerce(plan)

    def clear_faults(self) -> None:
        """Forget the queued answers and stop drawing faults (plan ``none``)."""
        with self._lock:
            self._queued.clear()
        self._server.faults = FaultPlan()

    def faults_state(self) -> dict[str, Any]:
        """``GET /mock/faults``: the plan and the queued answers, next first."""
        with self._lock:
            queued = [item.describe() for item in self._queued]
        return {"mock_api": CONTROL_API_VERSION, "plan": str(self._server.faults), "queued": queued}

    def reset(self) -> None:
        """Back to the start: counters and log empty, no queued answers, and the fault plan, checkpoints and
        ``/options`` the server began with (a generation in progress keeps running)."""
        self._server.reset()
        with self._lock:
            self._log.clear()
            self._queued.clear()
        server = self._server
        server.faults = self._initial_plan
        server.models[:] = [dict(model) for model in self._initial_models]
        server.options.clear()
        server.options.update(self._initial_options)
        server.checkpoints.loaded = server.checkpoints.find(self._initial_options.get("sd_model_checkpoint"))

    def add_sink(self, sink: Callable[[dict[str, Any]], None]) -> None:
        """Call ``sink`` with each new log entry, in ``seq`` order (under the log's lock: keep it quick)."""
        with self._lock:
            self._sinks.append(sink)

    # -- the HTTP routes ----------------------------------------------------------------------------
    def _get_requests(self, request: _Request) -> MockResponse:
        query = {key: values[-1] for key, values in parse_qs(request.query).items()}
        since = query.get("since", "0")
        if not since.isdigit():
            return _problem(f"since={since!r} is not a whole number >= 0 (a seq from an earlier answer)")
        entries = self.requests(query.get("route"), int(since))
        return _json(200, {"mock_api": CONTROL_API_VERSION, "requests": entries})

    def _get_faults(self, request: _Request) -> MockResponse:
        return _json(200, self.faults_state())

    def _post_faults(self, request: _Request) -> MockResponse:
        try:
            data = json.loads(request.body) if request.body else {}
        except ValueError:
            data = None
        if not isinstance(data, dict) or set(data) - {"plan", "next", "route", "clear", "task"}:
            return _problem('the body must be a JSON object with "plan", "next", "route", "task" and/or "clear"')
        task = data.get("task")
        if task is not None and (not isinstance(task, str) or not task):
            return _problem('"task" must be a non-empty string, the end of a force_task_id (e.g. "-t3")')
        answers = data.get("next", [])
        if not isinstance(answers, list):
            return _problem('"next" must be a list of answers, e.g. ["500", "reset"]')
        try:
            plan = FaultPlan.coerce(data["plan"]) if "plan" in data else None
            parsed = [replace(QueuedAnswer.parse(answer, data.get("route", TXT2IMG)), task=task) for answer in answers]
        except (ValueError, TypeError, AttributeError) as exc:
            return _problem(str(exc))
        with self._lock:
            if data.get("clear"):
                self._queued.clear()
            self._queued.extend(parsed)
        if plan is not None:
            self._server.faults = plan
        return _json(200, self.faults_state())

    def _delete_faults(self, request: _Request) -> MockResponse:
        self.clear_faults()
        return _json(200, self.faults_state())

    def _post_reset(self, request: _Request) -> MockResponse:
        self.reset()
        return _json(200, {})


class RequestRecorder:
    """Writes each logged request to ``path`` as one JSON line (``sdpipe mock-sd --record FILE``).

    The file is truncated when opened; each line is written whole and flushed as its request is answered,
    so a reader (or a CI step after the server is killed) sees only complete lines.

    Raises:
        OSError: ``path`` cannot be opened for writing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
