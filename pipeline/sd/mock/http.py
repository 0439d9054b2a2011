"""A faithful mock of AUTOMATIC1111's ``/sdapi/v1`` API (v1.10), for tests, CI and demos.

One request handler, :class:`MockSDServer` (:mod:`pipeline.sd.mock.server`), serves both transports: a real HTTP server
(:func:`serve`, :func:`run_forever` behind ``sdpipe mock-sd``) and an in-process httpx transport
(:func:`mock_transport`, what ``SD_API_URL=mock://`` uses). It copies what docs/a1111-api.md lists:
``{}`` accepted, unknown keys ignored, pydantic-v1 type errors as 422, one generation at a time in
arrival order, A1111 500 bodies, 401 without ``WWW-Authenticate``, a progress payload that drops
back to 0, ``info`` as a JSON string, seeds ``seed+i``, sizes floored to multiples of 8 and the
infotext in each PNG, and the UI's ``POST /internal/progress`` for requests named by ``force_task_id``
(absent with ``nowebui``). Faults are injected per txt2img request from a :class:`FaultPlan` (see
:mod:`pipeline.sd.mock.faults`), and ``/mock/stats`` lists every request with its outcome. Not emulated:
gzip, saved files, img2img and the other routes. The txt2img request itself (hires fix, styles,
checkpoints, ControlNet and ADetailer scripts, grids) follows A1111: see :mod:`pipeline.sd.mock.txt2img`.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from pipeline.errors import InputError
from pipeline.sd.mock.control import RequestRecorder
from pipeline.sd.mock.faults import DEFAULT_HANG_MS, FaultPlan
from pipeline.sd.mock.server import MockResponse, MockSDServer
from pipeline.sd.mock.urls import parse_mock_url, parse_models, url_options

__all__ = [
    "DEFAULT_MOCK_PORT",
    "FaultPlan",
    "MockResponse",
    "MockSDServer",
    "get_mock_server",
    "make_http_server",
    "mock_transport",
    "parse_mock_url",
    "parse_models",
    "run_forever",
    "serve",
]

logger = logging.getLogger(__name__)

#: Port ``sdpipe mock-sd`` listens on by default (A1111's own with ``--api``).
DEFAULT_MOCK_PORT = 7860


# -- transports ---------------------------------------------------------------------------------------
def mock_transport(server: MockSDServer) -> httpx.MockTransport:
    """An httpx transport that answers every request from ``server``, in the calling thread.

    A ``reset`` fault raises :class:`httpx.ReadError`; a ``hang`` longer than the request's read timeout
    sleeps that timeout, then raises :class:`httpx.ReadTimeout` (the hang goes on without its caller).
    """

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        url = request.url
        timeout = request.extensions.get("timeout")
        read_s = timeout.get("read") if isinstance(timeout, dict) else None
        answer = server.handle(
            request.method, url.path, url.query.decode("ascii"), dict(request.headers), body, read_timeout_s=read_s
        )
        if answer.abort == "reset":
            raise httpx.ReadError("[Errno 104] Connection reset by peer (mock fault)", request=request)
        if answer.abort == "timeout":
            raise httpx.ReadTimeout("timed out (mock hang)", request=request)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

    return httpx.MockTransport(handler)


class _MockHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    mock: MockSDServer | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("mock SD: connection from %s ended with an error", client_address, exc_info=True)

    def shutdown(self) -> None:
        if self.mock is not None:
            self.mock.close()  # hanging requests end now instead of holding their threads
        super().shutdown()

    def server_close(self) -> None:
        if self.mock is not None:
            self.mock.close()
        super().server_close()


def make_http_server(server: MockSDServer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A stdlib HTTP server (not started) answering from ``server``; port 0 picks a free port.

    Its ``shutdown()`` and ``server_close()`` also :meth:`~MockSDServer.close` ``server``, ending hangs.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
        server_version = "uvicorn"
        sys_version = ""
        timeout = 60  # seconds an idle keep-alive connection stays open
        disable_nagle_algorithm = True  # headers and body go out in separate writes
        _reset = False

        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            target = urlsplit(self.path)
            answer = server.handle(self.command, unquote(target.path), target.query, dict(self.headers.items()), body)
            if answer.abort is not None:
                self._reset = self.close_connection = True  # finish() resets the connection
                return
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

        def finish(self) -> None:
            if not self._reset:
                super().finish()
                return
            # SO_LINGER 0 then close: the kernel sends RST instead of FIN, and the client sees a reset
            # (socketserver's later shutdown() of the closed socket fails quietly).
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.rfile.close()
            self.connection.close()

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("mock SD: %s " + format, self.address_string(), *args)

    httpd = _MockHTTPServer((host, port), Handler)
    httpd.mock = server
    return httpd


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
    faults: str | FaultPlan | None = None,
    hang_ms: int = DEFAULT_HANG_MS,
    nowebui: bool = False,
    api_auth: str | None = None,
    seed: int | None = None,
    models: tuple[str, ...] | None = None,
    model_load_ms: int = 0,
    on_ready: Callable[[str], None] | None = None,
    record: Path | None = None,
) -> None:
    """Serve a mock A1111 API in the foreground until KeyboardInterrupt (``sdpipe mock-sd``).

    The options are :class:`MockSDServer`'s; ``on_ready`` is called with the server's URL once it listens;
    ``record`` names a file that receives the request log as JSON lines (see :class:`RequestRecorder`).

    Raises:
        InputError: an invalid option (fault plan, negative time), the address cannot be bound, or
            ``record`` cannot be written.
    """
    try:
        server = MockSDServer(
            latency_ms=latency_ms,
            fail_rate=fail_rate,
            faults=faults,
            hang_ms=hang_ms,
            nowebui=nowebui,
            api_auth=api_auth,
            seed=seed,
            model_load_ms=model_load_ms,
            **({"models": models} if models is not None else {}),
        )
    except ValueError as exc:
        raise InputError(f"invalid mock SD option: {exc}", field="faults") from exc
    try:
        httpd = make_http_server(server, host, port)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", field="port", value=port) from exc
    try:
        recorder = RequestRecorder(record) if record is not None else None
    except OSError as exc:
        httpd.server_close()
        raise InputError(
            f"cannot write the request log --record {record}: {exc.strerror or exc}", field="record", value=str(record)
        ) from exc
    if recorder is not None:
        server.control.add_sink(recorder)
    if on_ready is not None:
        on_ready(f"http://{host}:{httpd.server_address[1]}")
    logger.info(
        "mock A1111 API on http://%s:%d (latency %d ms, faults %s, hang %d ms, %s, auth %s)",
        host,
        httpd.server_address[1],
        latency_ms,
        server.faults,
        hang_ms,
        "API only (--nowebui)" if nowebui else "with /internal routes",
        "on" if api_auth else "off",
    )
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        logger.info("mock A1111 API stopped")
    finally:
        httpd.server_close()
        if recorder is not None:
            recorder.close()


# -- mock:// ------------------------------------------------------------------------------------------
_SHARED: dict[tuple[object, ...], MockSDServer] = {}
_SHARED_LOCK = threading.Lock()


def get_mock_server(url: str) -> MockSDServer:
    """The per-process mock behind a ``mock://[name][?option=value&...]`` URL.

    Options: ``latency_ms``, ``fail_rate``, ``seed``, ``faults`` (a fault plan; separate its items with
    ``;`` or ``%2C``, since a plain comma ends an ``SD_API_URL`` entry), ``hang_ms``, ``nowebui``
    (``1``/``0``), ``models`` (checkpoint file names, separated the same way; the first is loaded) and
    ``model_load_ms``, e.g. ``mock://?faults=500:0.2;reset:0.1&seed=3`` or
    ``mock://?models=base.safetensors;refiner.safetensors&model_load_ms=200``. The same URL (same name and
    options) always gives the same instance, so counters persist across clients; a different name
    (``mock://gpu1``) gives a separate server.

    Raises:
        ValueError: not a ``mock://`` URL, an unknown option, or a malformed value.
    """
    name, options = url_options(url)
    key = (name, *sorted(options.items()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = MockSDServer(**options)
        return _SHARED[key]
