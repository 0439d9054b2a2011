"""A faithful mock of AUTOMATIC1111's ``/sdapi/v1`` API (v1.10), for tests, CI and demos.

One request handler, :class:`MockSDServer`, serves both transports: a real HTTP server
(:func:`serve`, :func:`run_forever` behind ``sdpipe mock-sd``) and an in-process httpx transport
(:func:`mock_transport`, what ``SD_API_URL=mock://`` uses). It copies what the contract (§8) lists:
``{}`` accepted, unknown keys ignored, pydantic-v1 type errors as 422, one generation at a time in
arrival order, A1111 500 bodies, 401 without ``WWW-Authenticate``, a progress payload that drops
back to 0, ``info`` as a JSON string, seeds ``seed+i``, sizes floored to multiples of 8 and the
infotext in each PNG. Not emulated: gzip, saved files and grids, scripts (any ``script_name`` is "not
found"), img2img and the other routes of §3.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from secrets import compare_digest
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

from pipeline import mock_txt2img as t2i
from pipeline.errors import InputError

__all__ = [
    "DEFAULT_MOCK_PORT",
    "MockResponse",
    "MockSDServer",
    "get_mock_server",
    "make_http_server",
    "mock_transport",
    "run_forever",
    "serve",
]

logger = logging.getLogger(__name__)

#: Port ``sdpipe mock-sd`` listens on by default (A1111's own with ``--api``).
DEFAULT_MOCK_PORT = 7860
#: Query parameters a ``mock://`` URL may carry, and their types.
_URL_OPTIONS: dict[str, Callable[[str], Any]] = {"latency_ms": int, "fail_rate": float, "seed": int}
#: Prompts remembered in service order by ``/mock/stats`` (``served``).
_SERVED_HISTORY = 1000

_Handler = Callable[["_Request"], "MockResponse"]


@dataclass(frozen=True)
class MockResponse:
    """One HTTP answer of the mock: status, headers and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Request:
    query: str
    headers: Mapping[str, str]
    body: bytes


def _respond(status: int, payload: Any) -> MockResponse:
    return MockResponse(
        status, {"content-type": "application/json"}, json.dumps(payload, separators=(",", ":")).encode()
    )


def _http_exception(status: int, detail: str) -> MockResponse:
    return _respond(status, {"error": "HTTPException", "detail": detail, "body": "", "errors": ""})


@dataclass
class _Stats:
    requests: int = 0
    completed: int = 0
    images: int = 0
    failures: int = 0
    interrupts: int = 0
    max_concurrent: int = 0
    prompts: Counter[str] = field(default_factory=Counter)
    served: deque[str] = field(default_factory=lambda: deque(maxlen=_SERVED_HISTORY))


class MockSDServer:
    """The mock's request handler and state; thread-safe, one generation at a time in FIFO order.

    Args:
        latency_ms: simulated generation time per batch (``n_iter`` batches per request).
        fail_rate: probability that a txt2img answers 500 ``OutOfMemoryError``.
        api_auth: ``user:pass[,user2:pass2]`` like A1111's ``--api-auth``; None disables auth.
        seed: seeds the fault and random-seed generators, so runs repeat; None (the default) draws
            them from the OS, so ``seed: -1`` gives a new image on every run, as on a real server.
        models: checkpoint file names listed by ``/sd-models`` (the first one is loaded); may be empty.

    ``models`` and ``options`` (the ``/options`` dict) are plain attributes a test may adjust.
    """

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
        api_auth: str | None = None,
        seed: int | None = None,
        models: tuple[str, ...] = t2i.DEFAULT_MODEL_FILES,
    ) -> None:
        if latency_ms < 0 or not 0.0 <= fail_rate <= 1.0:
            raise ValueError("latency_ms must be >= 0 and fail_rate within [0, 1]")
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self._credentials = [tuple(pair.split(":", 1)) for pair in api_auth.split(",")] if api_auth else []
        self.models = [t2i.model_entry(name) for name in models]
        self.options = t2i.default_options(self.models[0] if self.models else None)
        self._fault_rng = random.Random(seed)
        self._seed_rng = random.Random(None if seed is None else seed + 1)
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._next_ticket = 0
        self._now_serving = 0
        self._waiting = 0
        self._active = 0
        self._stats = _Stats()
        self._job: t2i.JobState | None = None
        self._interrupted = False
        self._routes: dict[str, dict[str, _Handler]] = {
            "/sdapi/v1/txt2img": {"POST": self._txt2img},
            "/sdapi/v1/progress": {"GET": self._progress},
            "/sdapi/v1/interrupt": {"POST": self._interrupt},
            "/sdapi/v1/skip": {"POST": lambda req: _respond(200, None)},
            "/sdapi/v1/options": {"GET": self._get_options, "POST": self._set_options},
            "/sdapi/v1/sd-models": {"GET": lambda req: _respond(200, self.models)},
            "/sdapi/v1/samplers": {"GET": lambda req: _respond(200, t2i.samplers_payload())},
            "/sdapi/v1/schedulers": {"GET": lambda req: _respond(200, t2i.schedulers_payload())},
            "/internal/ping": {"GET": lambda req: _respond(200, {})},
            "/mock/stats": {"GET": lambda req: _respond(200, self.stats())},
            "/mock/reset": {"POST": lambda req: _respond(200, self.reset())},
        }

    # -- the one entry point ------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> MockResponse:
        """Answer one HTTP request the way A1111 v1.10 would (plus ``/mock/stats`` and ``/mock/reset``)."""
        started = time.perf_counter()
        request = _Request(query, {key.lower(): value for key, value in headers.items()}, body)
        methods = self._routes.get(path)
        if methods is None:
            response = _respond(404, {"detail": "Not Found"})
        elif method.upper() not in methods:
            response = _respond(405, {"detail": "Method Not Allowed"})
        elif path.startswith("/sdapi/") and (denied := self._check_auth(request.headers)) is not None:
            response = denied
        else:
            try:
                response = methods[method.upper()](request)
            except Exception as exc:  # A1111's handler turns any exception into this 500 body.
                logger.warning("mock SD: %s %s failed: %s: %s", method, path, type(exc).__name__, exc)
                response = _respond(500, {"error": type(exc).__name__, "detail": "", "body": "", "errors": str(exc)})
        response.headers["x-process-time"] = f"{time.perf_counter() - started:.4f}"
        return response

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last :meth:`reset` (what ``GET /mock/stats`` returns)."""
        with self._lock:
            return {
                "txt2img_requests": self._stats.requests,
                "txt2img_completed": self._stats.completed,
                "images": self._stats.images,
                "failures": self._stats.failures,
                "interrupts": self._stats.interrupts,
                "max_concurrent": self._stats.max_concurrent,
                "active": self._active,
                "queued": self._waiting,
                "prompts": dict(self._stats.prompts),
                "served": list(self._stats.served),
            }

    def reset(self) -> dict[str, Any]:
        """Zero the counters (a generation in progress keeps running); returns ``{}``."""
        with self._lock:
            self._stats = _Stats(max_concurrent=self._active)
        return {}

    # -- auth, FIFO ---------------------------------------------------------------------------------
    def _check_auth(self, headers: Mapping[str, str]) -> MockResponse | None:
        if not self._credentials:
            return None
        scheme, _, param = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not param:
            return _http_exception(401, "Not authenticated")  # A1111 drops WWW-Authenticate.
        try:
            user, sep, password = base64.b64decode(param).decode("ascii").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return _http_exception(401, "Invalid authentication credentials")
        if not sep:
            return _http_exception(401, "Invalid authentication credentials")
        for known_user, known_password in self._credentials:
            if compare_digest(user.encode(), known_user.encode()) and compare_digest(
                password.encode(), known_password.encode()
            ):
                return None
        return _http_exception(401, "Incorrect username or password")

    def _acquire_turn(self) -> None:
        # A ticket queue, not a bare Lock: a Lock wakes waiters in no particular order, A1111's is FIFO.
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting += 1
            self._turn.wait_for(lambda: self._now_serving == ticket)
            self._waiting -= 1
            self._active += 1
            self._stats.max_concurrent = max(self._stats.max_concurrent, self._active)

    def _release_turn(self) -> None:
        with self._turn:
            self._active -= 1
            self._now_serving += 1
            self._turn.notify_all()

    # -- routes -------------------------------------------------------------------------------------
    def _txt2img(self, request: _Request) -> MockResponse:
        with self._lock:
            self._stats.requests += 1
        values, rejection = t2i.parse_request(request.headers, request.body)
        if rejection is not None:
            return _respond(rejection[0], rejection[1])
        self._acquire_turn()
        try:
            payload = self._generate(values)
        except Exception:
            with self._lock:
                self._stats.failures += 1
            raise
        finally:
            self._release_turn()
        return _respond(200, payload)

    def _generate(self, values: dict[str, Any]) -> dict[str, Any]:
        plan = t2i.plan_generation(values, self.options, self.models, self._seed_rng)
        fail = self._fault_rng.random() < self.fail_rate
        job = t2i.JobState(n_iter=plan.n_iter, steps=plan.steps, latency_s=self.latency_ms / 1000)
        with self._lock:
            self._job = job
            self._interrupted = False  # A1111 resets the flag when the next job starts.
            self._stats.prompts[plan.prompt] += 1
            self._stats.served.append(plan.prompt)
        try:
            images: list[str] = []
            for batch in range(plan.n_iter):
                with self._lock:
                    job.start_batch(batch)
                self._sleep_batch()
                if fail:
                    raise t2i.OutOfMemoryError(t2i.OOM_MESSAGE)
                images += plan.render_batch(batch)
                if self._interrupted:  # the current batch comes back, the remaining ones are skipped
                    break
        finally:
            with self._lock:
                self._job = None
        payload = plan.response(images)
        with self._lock:
            self._stats.completed += 1
            self._stats.images += len(images)
            if plan.overrides_persist:
                self.options.update(plan.persisted_options)
        return payload

    def _sleep_batch(self) -> None:
        deadline = time.monotonic() + self.latency_ms / 1000
        while not self._interrupted and (left_s := deadline - time.monotonic()) > 0:
            time.sleep(min(left_s, t2i.TICK_S))

    def _progress(self, request: _Request) -> MockResponse:
        with self._lock:
            return _respond(200, t2i.progress_payload(self._job, self._interrupted))

    def _interrupt(self, request: _Request) -> MockResponse:
        with self._lock:
            self._interrupted = True
            self._stats.interrupts += 1
        return _respond(200, {})

    def _get_options(self, request: _Request) -> MockResponse:
        with self._lock:
            return _respond(200, self.options)

    def _set_options(self, request: _Request) -> MockResponse:
        try:
            changes = json.loads(request.body) if request.body else None
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            error = {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
            return _respond(422, {"detail": [error]})
        checkpoint = changes.get("sd_model_checkpoint")
        if checkpoint is not None:
            model = t2i.find_model(self.models, str(checkpoint))
            if model is None:
                raise RuntimeError(f"model {checkpoint!r} not found")
            changes["sd_model_checkpoint"] = model["title"]
        with self._lock:
            self.options.update(changes)
        return _respond(200, None)


# -- transports ---------------------------------------------------------------------------------------
def mock_transport(server: MockSDServer) -> httpx.MockTransport:
    """An httpx transport that answers every request from ``server``, in the calling thread."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        url = request.url
        answer = server.handle(request.method, url.path, url.query.decode("ascii"), dict(request.headers), body)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

    return httpx.MockTransport(handler)


class _MockHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("mock SD: connection from %s ended with an error", client_address, exc_info=True)


def make_http_server(server: MockSDServer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A stdlib HTTP server (not started) answering from ``server``; port 0 picks a free port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
        server_version = "uvicorn"
        sys_version = ""
        timeout = 60  # seconds an idle keep-alive connection stays open
        disable_nagle_algorithm = True  # headers and body go out in separate writes

        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            target = urlsplit(self.path)
            answer = server.handle(self.command, unquote(target.path), target.query, dict(self.headers.items()), body)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (e.g. its read timeout); like A1111, the work was done anyway.
                logger.debug("mock SD: client went away before %s %s was answered", self.command, self.path)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("mock SD: %s " + format, self.address_string(), *args)

    return _MockHTTPServer((host, port), Handler)


def serve(server: MockSDServer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start an HTTP server for ``server`` on a daemon thread; stop it with ``shutdown()`` + ``server_close()``.

    Returns:
        The running server; ``server_address[1]`` is its port.
    """
    httpd = make_http_server(server, host, port)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.name = f"mock-sd-{httpd.server_address[1]}"
    thread.start()
    return httpd


def run_forever(
    host: str = "127.0.0.1",
    port: int = DEFAULT_MOCK_PORT,
    *,
    latency_ms: int = 0,
    fail_rate: float = 0.0,
    api_auth: str | None = None,
    seed: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve a mock A1111 API in the foreground until KeyboardInterrupt (``sdpipe mock-sd``).

    ``on_ready`` is called with the server's URL once it listens.

    Raises:
        InputError: the address cannot be bound (port in use, unknown host).
    """
    server = MockSDServer(latency_ms=latency_ms, fail_rate=fail_rate, api_auth=api_auth, seed=seed)
    try:
        httpd = make_http_server(server, host, port)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="choose another --port or --host"
        ) from exc
    if on_ready is not None:
        on_ready(f"http://{host}:{httpd.server_address[1]}")
    logger.info(
        "mock A1111 API on http://%s:%d (latency %d ms, fail rate %.2f, auth %s)",
        host,
        httpd.server_address[1],
        latency_ms,
        fail_rate,
        "on" if api_auth else "off",
    )
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        logger.info("mock A1111 API stopped")
    finally:
        httpd.server_close()


# -- mock:// ------------------------------------------------------------------------------------------
_SHARED: dict[tuple[object, ...], MockSDServer] = {}
_SHARED_LOCK = threading.Lock()


def get_mock_server(url: str) -> MockSDServer:
    """The per-process mock behind a ``mock://[name][?latency_ms=&fail_rate=&seed=]`` URL.

    The same URL (same name and options) always gives the same instance, so counters persist across
    clients; a different name (``mock://gpu1``) gives a separate server.

    Raises:
        ValueError: not a ``mock://`` URL, an unknown option, or a malformed value.
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "mock":
        raise ValueError(f"{url!r} is not a mock:// URL")
    options: dict[str, Any] = {}
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _URL_OPTIONS:
            raise ValueError(f"unknown mock:// option {name!r}; use {', '.join(_URL_OPTIONS)}")
        try:
            options[name] = _URL_OPTIONS[name](raw)
        except ValueError:
            raise ValueError(f"mock:// option {name}={raw!r} is not a number") from None
    key = (parts.netloc, *sorted(options.items()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = MockSDServer(**options)
        return _SHARED[key]
