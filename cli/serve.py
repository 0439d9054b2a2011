"""``sdpipe serve``: the HTTP API (FastAPI on uvicorn), from the ``api`` extra, imported only here."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from typing import Annotated

import typer

from cli.common import load
from cli.output import RET_USAGE, cli_errors, echo
from pipeline.errors import InputError
from pipeline.jobs.files import check_output
from pipeline.store import open_store

__all__ = ["EXTRA_MISSING", "MIN_TOKEN_CHARS", "is_loopback", "listen", "serve"]

#: A shorter API_TOKEN gets a warning when the server starts (guessable).
MIN_TOKEN_CHARS = 16
#: On stop (Ctrl-C, SIGTERM), how long requests in flight may finish before they are cancelled: an
#: event stream (every open dashboard) never finishes by itself, and ``?wait=true``
#: may wait minutes; the jobs themselves are not affected (they are in the queue, not the request).
SHUTDOWN_GRACE_S = 5
#: The one line printed (exit code 2) when FastAPI or uvicorn is not installed.
EXTRA_MISSING = "install the API extra: pip install 'sdpipe[api]'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, ``127.x``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, bound before anything says the API is up.

    Raises:
        InputError: the address is taken, not ours, or does not resolve.
    """
    address = host.strip("[]")
    # As uvicorn binds: IPv6 for an address with a colon (``::`` also takes IPv4), else IPv4.
    ipv6 = ":" in address
    try:
        if ipv6:
            dual = address == "::" and socket.has_dualstack_ipv6()
            return socket.create_server((address, port), family=socket.AF_INET6, dualstack_ipv6=dual)
        return socket.create_server((address, port), family=socket.AF_INET)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            field="port",
            value=port,
        ) from exc


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (not the one at set-up: a test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_access_to_stderr() -> None:
    """The API's access lines (:mod:`cli.api.access_log`), always at INFO, each with its local time
    and UTC offset, on stderr: whatever ``--verbose`` says about the rest."""
    from cli.api.access_log import ACCESS_LOGGER

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"))
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False


def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default API_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default PORT, 3000).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback address without API_TOKEN (anyone may submit).")
    ] = False,
) -> None:
    """Serve the HTTP API (uploads, generation, batches, jobs) until stopped."""
    with cli_errors():
        settings = load(ctx, api_host=host, port=port)
        if settings.api_token is not None and not settings.api_token.get_secret_value().strip():
            raise InputError(
                "API_TOKEN is set but empty: no request could authenticate",
                field="API_TOKEN",
                value="",
            )
        token = settings.api_token.get_secret_value() if settings.api_token is not None else None
        if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
            echo(
                f"warning: API_TOKEN has {len(token.strip())} characters: anyone who can guess it can submit jobs; "
                "use a long random value (e.g. openssl rand -hex 32)",
                err=True,
            )
        if settings.api_token is None and not is_loopback(settings.api_host) and not insecure:
            raise InputError(
                f"refusing to serve on {settings.api_host} without API_TOKEN: anyone who reaches it could submit jobs",
                field="API_HOST",
                value=settings.api_host,
            )
        try:
            import uvicorn

            from cli.api import create_app
        except ImportError:
            echo(f"error: {EXTRA_MISSING}", err=True)
            raise typer.Exit(RET_USAGE) from None
        check_output(settings)
        store = open_store(settings)  # fail fast, in one line, when Redis is down
        try:
            store.ping()
        finally:
            store.close()
        app = create_app(settings)
        _log_access_to_stderr()
        # Bound here, not by uvicorn: a taken port is then one `error:` line, not a silent exit 3.
        sock = listen(settings.api_host, settings.port)
        mode = "Redis" if settings.redis_mode else "embedded"
        auth = "bearer token" if settings.api_token is not None else "no token"
        echo(f"sdpipe API on http://{settings.api_host}:{settings.port} ({mode} mode, {auth})", err=True)
        config = uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.port,
            log_config=None,  # keep sdpipe's logging set-up (--verbose)
            access_log=False,  # sdpipe's own access log (cli.api.access_log) has the job ids
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        uvicorn.Server(config).run(sockets=[sock])
