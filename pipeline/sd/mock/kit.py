"""The mock SD server as other projects' test tool: a real HTTP mock of A1111 on a free port, steered from Python.

:func:`start_mock_sd` starts one (a context manager) and gives a :class:`MockSD`: its ``url``, the
request log (:attr:`MockSD.requests`), assertions (:meth:`MockSD.assert_called`), faults queued or
planned live (:meth:`MockSD.faults`), the checkpoint (:meth:`MockSD.set_model`) and :meth:`MockSD.reset`.
The pytest plugin (:mod:`pipeline.sd.mock.pytest_plugin`) hands these out as the ``sd_server`` and
``sd_server_factory`` fixtures; ``unittest`` users call :func:`start_mock_sd` themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.sd.mock import catalog
from pipeline.sd.mock.control import TXT2IMG
from pipeline.sd.mock.faults import FaultPlan
from pipeline.sd.mock.http import serve
from pipeline.sd.mock.server import MockSDServer

__all__ = ["MockAnswer", "MockRequest", "MockSD", "start_mock_sd"]


@dataclass(frozen=True)
class MockAnswer:
    """What the mock answered: ``status`` (None: no answer, the connection was dropped), the ``fault``
    it injected (``500``, ``reset``, ``hang``, ``garbage``, or None), whether the answer was ``queued``
    by :meth:`MockSD.faults`, the JSON ``body`` (strings over 4 KiB summarised) and ``duration_s``."""

    status: int | None
    fault: str | None
    queued: bool
    body: Any
    duration_s: float


@dataclass(frozen=True)
class MockRequest:
    """One request the mock answered: ``seq`` (1, 2, ... in answer order), ``method``, ``route``
    (``/sdapi/v1/txt2img``...), ``query``, the JSON ``body`` as sent (strings over 4 KiB summarised),
    ``time`` of arrival (``time.time()``) and the :class:`MockAnswer`."""

    seq: int
    method: str
    route: str
    query: str
    body: Any
    time: float
    answer: MockAnswer

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> MockRequest:
        """A request from its ``GET /mock/requests`` form (fields a later version adds are ignored)."""
        answer = MockAnswer(**{f.name: entry["answer"][f.name] for f in dataclasses.fields(MockAnswer)})
        return cls(**{f.name: entry[f.name] for f in dataclasses.fields(cls) if f.name != "answer"}, answer=answer)

    def matches(self, route: str | None = None, **fields: Any) -> bool:
        """True if it went to ``route`` (any, if None) and its JSON body has each of ``fields``."""
        if route is not None and self.route != route:
            return False
        body = self.body if isinstance(self.body, dict) else {}
        return all(name in body and body[name] == value for name, value in fields.items())

    def __str__(self) -> str:
        fields = ", ".join(
            f"{k}={self.body[k]!r}" for k in ("prompt", "seed") if isinstance(self.body, dict) and k in self.body
        )
        answer = self.answer.status if self.answer.status is not None else "no answer"
        fault = f" ({self.answer.fault})" if self.answer.fault else ""
        return f"#{self.seq} {self.method} {self.route}{f' {fields}' if fields else ''} -> {answer}{fault}"


class MockSD:
    """A running mock A1111 server (see :func:`start_mock_sd`); every method is thread-safe.

    Attributes:
        url: its base URL, ``http://127.0.0.1:PORT``.
        host, port: where it listens.
        server: the :class:`~pipeline.sd.mock.server.MockSDServer` behind it, for what this class lacks.
    """

    def __init__(self, server: MockSDServer, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    def __repr__(self) -> str:
        return f"<MockSD {self.url}>"

    # -- the request log ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[MockRequest]:
        """Every request answered since start or :meth:`reset`, oldest first (``/mock/*`` aside)."""
        return [MockRequest.from_json(entry) for entry in self.server.control.requests()]

    def calls(self, route: str | None = TXT2IMG, **fields: Any) -> list[MockRequest]:
        """The requests to ``route`` (txt2img by default; None: any) whose JSON body has each of ``fields``."""
        return [request for request in self.requests if request.matches(route, **fields)]

    def assert_called(
        self, route: str | None = TXT2IMG, *, times: int | None = None, **fields: Any
    ) -> list[MockRequest]:
        """Assert that ``route`` was called with a body having ``fields`` ``times`` times (None: at least once).

        ``sd_server.assert_called(prompt="a cat", times=1)``. Returns the matching requests.

        Raises:
            AssertionError: naming what was expected and listing what the mock received.
        """
        found = self.calls(route, **fields)
        if (len(found) >= 1) if times is None else (len(found) == times):
            return found
        wanted = ", ".join(f"{name}={value!r}" for name, value in fields.items())
        expected = "at least once" if times is None else f"{times} time{'s' * (times != 1)}"
        received = [str(request) for request in self.requests] or ["(no requests)"]
        raise AssertionError(
            f"expected {route or 'any route'}{f' with {wanted}' if wanted else ''} {expected}, "
            f"got {len(found)}; the mock received:\n  " + "\n  ".join(received[-50:])
        )

    def assert_not_called(self, route: str | None = TXT2IMG, **fields: Any) -> None:
        """Assert that no request to ``route`` had a body with ``fields``."""
        self.assert_called(route, times=0, **fields)

    # -- steering -----------------------------------------------------------------------------------
    def faults(self, *answers: object, plan: str | FaultPlan | None = None, route: str = TXT2IMG) -> None:
        """Queue exact answers for the next requests to ``route``, and/or change the fault plan live.

        ``answers``, taken in order, one per request, before the plan is consulted: ``"500"`` (A1111's
        500 OutOfMemoryError), ``"reset"`` (connection dropped), ``"hang"`` (no answer for the server's
        ``hang_ms``), ``"garbage"`` (an image that does not decode), ``"422"``, any other status
        400-599, ``{"status": N, "body": JSON}``, or ``"ok"`` (a normal answer). ``plan``: a fault plan
        such as ``"500:0.2,reset:0.1"`` for every later request (``"none"``: no faults).

        Raises:
            ValueError: an unknown answer or an invalid plan (nothing changes then).
        """
        new_plan = FaultPlan.coerce(plan) if plan is not None else None
        self.server.control.queue(answers, route)
        if new_plan is not None:
            self.server.control.set_plan(new_plan)

    def set_model(self, name: str) -> None:
        """Load the checkpoint ``name`` (a file name, title or alias; added to ``/sd-models`` if the mock
        does not list it) and select it, as a client's ``POST /sdapi/v1/options`` would, without a request:
        the load takes ``model_load_ms`` and counts in ``stats()["model_loads"]``."""
        checkpoints = self.server.checkpoints
        model = checkpoints.find(name)
        if model is None:
            model = catalog.model_entry(name)
            checkpoints.models.append(model)
        checkpoints.ensure_loaded(model)

    def reset(self) -> None:
        """Back to the start: no logged requests, zero counters, no queued answers, the initial fault plan."""
        self.server.control.reset()

    def stats(self) -> dict[str, Any]:
        """The counters of ``GET /mock/stats``."""
        return self.server.stats()


@contextmanager
def start_mock_sd(*, host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[MockSD]:
    """Serve a mock A1111 API over HTTP on a background thread for the duration of the block.

    Args:
        host, port: where to listen; port 0 (the default) picks a free one.
        options: :class:`~pipeline.sd.mock.server.MockSDServer`'s: ``latency_ms``, ``faults`` (a plan),
            ``fail_rate``, ``hang_ms``, ``models``, ``model_load_ms``, ``api_auth`` (``"user:pass"``),
            ``nowebui``, ``seed``.

    Raises:
        ValueError: an invalid option. OSError: the address cannot be bound.
    """
    server = MockSDServer(**options)
    httpd = serve(server, host, port)
    try:
        yield MockSD(server, host, int(httpd.server_address[1]))
    finally:
        httpd.shutdown()
        httpd.server_close()
