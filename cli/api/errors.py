"""The HTTP API's one error shape, ``{"error": {"code", "message", "hint"}}``, and its handlers.

Every error a client sees has that shape::

    ApiError (HTTPException)      raised by the routes: status, code, message, hint
    PipelineError                 sdpipe's core errors, mapped to a status by type (see status_for),
                                  their hint worded for HTTP from type and data (API_HINTS: request
                                  fields and routes, never CLI options); a 5xx one is logged and
                                  answered with a fixed message (its own names servers: Redis host, paths)
    RequestValidationError        FastAPI's own request checks: 422, code "invalid_request"
    HTTPException                 Starlette's (404 route, 405 method...): code from the status
    anything else                 500, code "internal": logged with its traceback, never sent
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from cli.errors import lookup_hint
from pipeline.errors import (
    AmbiguousId,
    BatchFileError,
    ConfigError,
    IdempotencyConflict,
    ImageError,
    InputError,
    JobNotFound,
    PipelineError,
    QueueFull,
    ScheduleNotFound,
    SDError,
    SDPermanentError,
    StoreUnavailable,
    UploadProblem,
    UploadRejected,
)

__all__ = [
    "API_HINTS",
    "ERROR_RESPONSES",
    "QUEUE_FULL_RETRY_AFTER_S",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "PageRenderer",
    "api_hint",
    "default_hint",
    "error_response",
    "install_error_handlers",
    "status_for",
]

logger = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine code, one line for people, and how to fix it."""

    code: str
    message: str
    hint: str | None = None
    #: For a batch: every bad row (``line``, ``field``, ``message``).
    problems: list[dict[str, Any]] | None = None
    #: The job concerned, when there is one (e.g. a wait that timed out).
    job_id: str | None = None
    #: A wait that ended without an answer: the jobs already queued, still unfinished (poll them).
    job_ids: list[str] | None = None
    #: ... and their batch.
    batch_id: str | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(HTTPException):
    """An error a route answers with on purpose (the base of the API's errors)."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        job_id: str | None = None,
        job_ids: list[str] | None = None,
        batch_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message
        self.hint = hint
        self.job_id = job_id
        self.job_ids = job_ids
        self.batch_id = batch_id


#: What a 429 (queues full) asks a client to wait before it submits again (``Retry-After``), in seconds.
QUEUE_FULL_RETRY_AFTER_S = 10

#: HTTP status of each core error type (the first match in order wins).
STATUS_BY_ERROR: tuple[tuple[type[PipelineError], int, str], ...] = (
    (QueueFull, 429, "queue_full"),
    (IdempotencyConflict, 409, "idempotency_conflict"),
    (AmbiguousId, 400, "ambiguous_id"),
    (JobNotFound, 404, "not_found"),
    (ScheduleNotFound, 404, "not_found"),
    (StoreUnavailable, 503, "store_unavailable"),
    (InputError, 422, "invalid_input"),
    (ImageError, 422, "invalid_image"),
    (ConfigError, 500, "server_misconfigured"),
    (SDPermanentError, 502, "sd_rejected"),
    (SDError, 503, "sd_unavailable"),
)
_UPLOAD_STATUS = {
    UploadProblem.EMPTY: 422,
    UploadProblem.TOO_LARGE: 413,
    UploadProblem.UNSUPPORTED_TYPE: 415,
    UploadProblem.TOO_MANY_PIXELS: 413,
    UploadProblem.UNREADABLE: 422,
}
#: What a client reads for a core error that is the server's problem (the log has the details).
_SERVER_MESSAGES = {
    "store_unavailable": "the status store (Redis) is unavailable",
    "server_misconfigured": "the server is misconfigured",
    "sd_rejected": "the SD server refused the request",
    "sd_unavailable": "no SD server is available",
    "internal": "internal server error",
}
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
    504: "timeout",
}


def status_for(exc: PipelineError) -> tuple[int, str]:
    """The HTTP status and error code for a core error."""
    if isinstance(exc, UploadRejected):
        return _UPLOAD_STATUS[exc.problem], exc.problem.value
    if isinstance(exc, BatchFileError):
        return 422, "invalid_batch"
    for cls, status, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal"


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    hint: str | None = None,
    problems: list[dict[str, Any]] | None = None,
    job_id: str | None = None,
    job_ids: list[str] | None = None,
    batch_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON response in the API's error shape; one without a hint of its own gets its code's or
    its status's (:func:`default_hint`): every error says how to go on."""
    detail = ErrorDetail(
        code=code,
        message=message,
        hint=hint or default_hint(status_code, code),
        problems=problems,
        job_id=job_id,
        job_ids=job_ids,
        batch_id=batch_id,
    )
    body = ErrorBody(error=detail).model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=status_code, headers=headers)


#: Where a client reads the routes and request formats. ``/docs`` exists only with ENABLE_DOCUMENTATION=true
#: (off by default): every hint naming it says so, so that it is true whichever way the server runs.
_REFERENCE = 'README "HTTP API" (and at /docs when the server sets ENABLE_DOCUMENTATION=true)'
#: The hint of an error raised without one, by code, then by status (then :data:`_DOCS`).
_HINTS_BY_CODE = {
    "job_failed": "GET /api/jobs/{id} has its error; POST /api/jobs/{id}/retry runs it again",
    "idempotency_conflict": "send a new Idempotency-Key with a different request (keys are kept IDEMPOTENCY_TTL_S)",
}
_HINTS_BY_STATUS = {
    401: "send Authorization: Bearer <API_TOKEN>",
    403: "send Authorization: Bearer <API_TOKEN>",
    404: f"the routes are in {_REFERENCE}",
    405: f"each route's methods are in {_REFERENCE}",
    406: "accept application/json",
    409: "GET /api/jobs/{id} shows the job's state",
    413: "send a smaller body",
    415: f"send the content type the route takes; it is in {_REFERENCE}",
    504: "the jobs keep running: poll GET /api/jobs/{id}",
}


def default_hint(status_code: int, code: str) -> str:
    """The hint of an error that brought none."""
    if code in _HINTS_BY_CODE:
        return _HINTS_BY_CODE[code]
    if status_code >= 500:
        return _HINTS_BY_STATUS.get(status_code, "the server log has the details; try again later")
    return _HINTS_BY_STATUS.get(status_code, _DOCS)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ApiError):
        return error_response(
            exc.status_code,
            exc.code,
            exc.message,
            hint=exc.hint,
            job_id=exc.job_id,
            job_ids=exc.job_ids,
            batch_id=exc.batch_id,
            headers=exc.headers,
        )
    code = _CODE_BY_STATUS.get(exc.status_code, "internal" if exc.status_code >= 500 else "bad_request")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _pipeline_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PipelineError)
    status, code = status_for(exc)
    if status >= 500:
        logger.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return error_response(status, code, _SERVER_MESSAGES[code], hint="the server log has the details")
    problems = None
    if isinstance(exc, BatchFileError):
        problems = [{"line": p.line, "field": p.field, "message": p.message} for p in exc.problems]
    headers = {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)} if isinstance(exc, QueueFull) else None
    return error_response(status, code, exc.message, hint=api_hint(exc), problems=problems, headers=headers)


_DOCS = f"the request format is in {_REFERENCE}"
_JOBS = "GET /api/jobs lists the jobs"
_UPLOAD_HINTS = {
    UploadProblem.EMPTY: "send a PNG, JPEG, WebP or GIF image",
    UploadProblem.UNSUPPORTED_TYPE: "send a PNG, JPEG, WebP or GIF image",
    UploadProblem.TOO_LARGE: "send a smaller image",
    UploadProblem.TOO_MANY_PIXELS: "send a smaller image",
    UploadProblem.UNREADABLE: "the file may be truncated or corrupt",
}

#: The API's hint per (error code, field) of a core error it answers 4xx with (``None``: any field):
#: request fields and routes, never CLI options (``cli/errors.py`` words the same errors for the CLI).
API_HINTS: dict[tuple[str, str | None], str | Callable[[PipelineError], str | None]] = {
    ("invalid_input", None): lambda e: (
        "check the batch's defaults" if (e.field or "").startswith("defaults.") else _DOCS
    ),
    ("invalid_input", "name"): lambda e: f"use {e.expected}" if e.expected else _DOCS,
    ("invalid_input", "MAX_PIXELS"): "send a smaller width and height",
    ("invalid_input", "upscale"): lambda e: (
        _DOCS
        if e.limit is None
        else "send a larger upscale or a larger image"
        if e.expected is not None
        else "send a smaller upscale or a smaller image"
    ),
    ("invalid_input", "cron"): (
        'use 5 fields "minute hour day-of-month month day-of-week", e.g. "0 2 * * *" for 02:00 daily, '
        "or @hourly, @daily, @weekly, @monthly"
    ),
    ("invalid_input", "timezone"): lambda e: (
        f"did you mean {e.expected!r}?" if e.expected else "use an IANA name such as Europe/Berlin or UTC"
    ),
    ("invalid_batch", None): "fix the rows listed (line N is row N of the request) and send the batch again",
    ("invalid_image", None): "the file may be truncated or corrupt",
    ("invalid_image", "MAX_PIXELS"): "send a smaller image",
    ("invalid_image", "bytes"): "send a smaller image",
    ("invalid_image", "format"): "send a PNG, JPEG, WebP or GIF image",
    ("invalid_image", "first_frame"): "send first_frame=true to process its first frame",
    ("upload_rejected", None): lambda e: _UPLOAD_HINTS.get(e.problem) if isinstance(e, UploadRejected) else None,
    ("job_not_found", None): _JOBS,
    ("job_not_found", "persistence"): "the server's Redis lost its jobs; submit them again (its operator: enable AOF)",
    ("ambiguous_id", None): "give more characters of the id",
    ("queue_full", None): f"try again in {QUEUE_FULL_RETRY_AFTER_S} s or later",
}


def api_hint(exc: PipelineError) -> str | None:
    """How a client fixes ``exc``, in HTTP terms (or None)."""
    return lookup_hint(API_HINTS, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": [str(part) for part in error.get("loc", ())], "message": str(error.get("msg", "invalid"))}
        for error in exc.errors()
    ]
    broken = next((error for error in exc.errors() if error.get("type") == "json_invalid"), None)
    if broken is not None:  # FastAPI's "body.0: JSON decode error" names a character, not the problem
        reason = str((broken.get("ctx") or {}).get("error") or "").strip()
        position = broken.get("loc", ("body", None))[-1]
        detail = f": {reason} at character {position}" if reason and isinstance(position, int) else ""
        return error_response(
            422,
            "invalid_request",
            f"the body is not valid JSON{detail}",
            hint='send a JSON object with Content-Type: application/json, e.g. {"prompt": "a lighthouse"}',
        )
    first = problems[0] if problems else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"])
    message = f"{where}: {first['message']}" if where else str(first["message"])
    return error_response(422, "invalid_request", message, hint=_DOCS, problems=problems)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal server error", hint="the server log has the details")


#: Renders an error as a web page: ``(request, status, message, hint)``.
PageRenderer = Callable[[Request, int, str, str | None], Response]
_Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def install_error_handlers(app: FastAPI, *, pages: PageRenderer | None = None) -> None:
    """Answer every error in the one shape; nothing (no trace) beyond it reaches the client.

    ``pages``: a browser asking for a page (``Accept: text/html``, outside ``/api``) gets the same
    error (status, message, hint) rendered by it instead of JSON (the dashboard's error page).
    """

    def for_browsers(handler: _Handler) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            response = await handler(request, exc)
            path = request.url.path.removeprefix(request.scope.get("root_path", ""))
            if pages is None or path.startswith("/api") or "text/html" not in request.headers.get("accept", ""):
                return response
            error = json.loads(bytes(response.body))["error"]
            return pages(request, response.status_code, error["message"], error.get("hint"))

        return handle

    app.add_exception_handler(HTTPException, for_browsers(_api_error))
    app.add_exception_handler(PipelineError, for_browsers(_pipeline_error))
    app.add_exception_handler(RequestValidationError, for_browsers(_validation_error))
    app.add_exception_handler(Exception, for_browsers(_unexpected))


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: OpenAPI ``responses`` shared by every ``/api`` route (routes add their own on top).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _documented("missing or wrong bearer token"),
    413: _documented("request body too large"),
    422: _documented("invalid request"),
    429: _documented("the queues are full (MAX_QUEUE_DEPTH): try again after Retry-After seconds"),
    500: _documented("internal error (no details are sent)"),
    503: _documented("the status store (Redis) or the output folder is unavailable, or the server is starting"),
}
