"""The API's access log: one line per request (method, path, status, duration, the job it concerns).

Logged on ``cli.api.access`` at INFO, after the answer is sent: ``POST /api/generate 202 12.3 ms
job=3f2a9c1b…``. The job is the one in the path (``/api/jobs/{job_id}``) or the one(s) a route
noted with :func:`note_jobs` (a submission). The query string is left out (it may carry a client's
data), and nothing of the headers (tokens) is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACCESS_LOGGER", "AccessLogMiddleware", "note_jobs"]

#: The logger of the access lines (``sdpipe serve`` shows it at INFO).
ACCESS_LOGGER = "cli.api.access"

logger = logging.getLogger(ACCESS_LOGGER)

_JOBS_KEY = "sdpipe_jobs"


def note_jobs(request: Request, job_ids: Sequence[str]) -> None:
    """Name the jobs a request created, for its access line."""
    request.state.sdpipe_jobs = list(job_ids)


class AccessLogMiddleware:
    """Pure ASGI middleware (no body buffering): times each HTTP request and logs its line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # shared with the routes' request.state (note_jobs)
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            job = _job_of(scope)
            logger.info(
                "%s %s %d %.1f ms%s",
                scope["method"],
                _printable(scope["path"]),
                status,
                elapsed_ms,
                f" job={_printable(job)}" if job else "",
            )


def _printable(text: str) -> str:
    """``text`` (a client's, decoded) with its control characters escaped: a path cannot start a
    forged log line with a newline, nor colour a terminal."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def _job_of(scope: Scope) -> str | None:
    state: dict[str, Any] = scope.get("state") or {}
    noted = state.get(_JOBS_KEY)
    if noted:
        return str(noted[0]) + (f" (+{len(noted) - 1} more)" if len(noted) > 1 else "")
    params: dict[str, Any] = scope.get("path_params") or {}
    job_id = params.get("job_id")
    return str(job_id) if job_id is not None else None
