"""The dashboard's state changes (POST, each with its CSRF token): submit, retry, cancel, pause and
resume, sign in and out. Each calls the function the matching ``/api`` route calls, then sends the
browser on (303)."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from cli.api.dashboard.pages import submit_context
from cli.api.dashboard.render import render, require_session
from cli.api.deps import settings_of
from cli.api.errors import ApiError, api_hint, error_response, status_for
from cli.api.routes_events import pause as pause_queue
from cli.api.routes_events import resume as resume_queue
from cli.api.routes_jobs import cancel_job, retry_job, submit_generate
from cli.api.schemas import GenerateBody
from cli.api.session import CSRF_FIELD, clear_session, csrf_ok, set_session
from pipeline.errors import PipelineError
from pipeline.models import validation_message

__all__ = ["router"]

#: Pause after a wrong token, so guessing it over HTTP is slow.
WRONG_TOKEN_PAUSE_S = 1.0
#: The form's fields (the rest of a request goes in its advanced JSON box).
FORM_FIELDS = (
    "prompt",
    "negative",
    "seed",
    "width",
    "height",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "model",
    "count",
    "priority",
)
_NUMBERS = {"seed": int, "width": int, "height": int, "steps": int, "count": int, "cfg": float}


async def check_csrf(request: Request) -> None:
    """Dependency of every POST: the form's CSRF token must be the browser's.

    Raises:
        ApiError: 403 when it is missing or wrong (a cross-site form, or a page from before a restart
            of the browser's cookies).
    """
    form = await request.form()
    given = form.get(CSRF_FIELD)
    if not csrf_ok(request, given if isinstance(given, str) else None):
        raise ApiError(403, "csrf_failed", "the form's security token is missing or stale", hint="reload the page")


router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])
guarded = [Depends(require_session)]


def _back(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(f"{request.scope.get('root_path', '')}{path}", status_code=303)


def _local(target: str | None) -> str:
    """``next`` if it is a path on this site (never ``//host`` or a URL), else ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def form_body(form: dict[str, str]) -> dict[str, Any]:
    """The JSON body of ``POST /api/generate`` from the form: its advanced JSON box (an object of any
    request keys), then the common fields that are filled in (they win).

    Raises:
        ApiError: 422 naming the field whose value is not a number, or an advanced box that is not
            a JSON object.
    """
    example = 'e.g. {"enable_hr": true, "hr_scale": 2}'
    body: dict[str, Any] = {}
    advanced = form.get("advanced", "").strip()
    if advanced:
        try:
            parsed = json.loads(advanced)
        except ValueError as exc:
            raise ApiError(
                422, "invalid_request", f"advanced: not JSON: {exc}", hint='e.g. {"enable_hr": true}'
            ) from None
        if not isinstance(parsed, dict):
            raise ApiError(422, "invalid_request", "advanced: a JSON object is needed", hint=example)
        body.update(parsed)
    for name in FORM_FIELDS:
        value = form.get(name, "").strip()
        if not value:
            continue
        if name in _NUMBERS:
            try:
                body[name] = _NUMBERS[name](value)
            except ValueError:
                raise ApiError(
                    422, "invalid_request", f"{name}: {value!r} is not a number", hint="give a number"
                ) from None
        else:
            body[name] = value
    return body


@router.post("/submit", dependencies=guarded)
async def submit(request: Request) -> Response:
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    try:
        body = GenerateBody.model_validate(form_body(form))
        batch_id, job_ids = await run_in_threadpool(submit_generate, request, body)
    except (ApiError, PipelineError, ValidationError) as exc:
        status, message, hint = _problem(exc)
        if _wants_json(request):  # the page's script: it shows the error in place
            return error_response(status, "invalid_request" if status == 422 else "refused", message, hint=hint)
        error = {"message": message, "hint": hint}
        context = await run_in_threadpool(lambda: submit_context(request, form=form, error=error))
        return render(request, "submit.html", context, status_code=status)
    if _wants_json(request):  # the page's script: it shows the jobs appear in place
        return JSONResponse({"batch_id": batch_id, "job_ids": job_ids}, status_code=202)
    return _back(request, f"/jobs?batch={quote(batch_id)}")


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _problem(exc: Exception) -> tuple[int, str, str | None]:
    """Status, message and hint of a refused submission, as the API words them."""
    if isinstance(exc, ApiError):
        return exc.status_code, exc.message, exc.hint
    if isinstance(exc, PipelineError):
        status, _ = status_for(exc)
        if status >= 500:
            return status, "the server could not take the job", "the server log has the details"
        return status, exc.message, api_hint(exc)
    return 422, validation_message(exc), "check the fields"


@router.post("/jobs/{job_id}/retry", dependencies=guarded)
def retry(request: Request, job_id: str) -> Response:
    result = retry_job(request, job_id)
    return _back(request, f"/jobs/{quote(result.job_id)}")


@router.post("/jobs/{job_id}/cancel", dependencies=guarded)
def cancel(request: Request, job_id: str) -> Response:
    result = cancel_job(request, job_id)
    return _back(request, f"/jobs/{quote(result.job_id)}")


@router.post("/pause", dependencies=guarded)
async def pause(request: Request) -> Response:
    """Pause the queue, or the batch of the form's ``batch`` field (as ``POST /api/pause``)."""
    batch, target = await _queue_form(request)
    await run_in_threadpool(pause_queue, request, batch)
    return _back(request, target)


@router.post("/resume", dependencies=guarded)
async def resume(request: Request) -> Response:
    """Resume the queue, or the batch of the form's ``batch`` field (as ``POST /api/resume``)."""
    batch, target = await _queue_form(request)
    await run_in_threadpool(resume_queue, request, batch)
    return _back(request, target)


async def _queue_form(request: Request) -> tuple[str | None, str]:
    """The batch a pause or resume form names (none: the whole queue) and the page to go back to."""
    form = await request.form()
    batch = str(form.get("batch") or "").strip() or None
    return batch, _local(str(form.get("next") or "/"))


@router.post("/signin")
async def sign_in(request: Request) -> Response:
    settings = settings_of(request)
    form = await request.form()
    target = _local(str(form.get("next") or "/"))
    if settings.api_token is None:
        return _back(request, target)
    given = str(form.get("token") or "").strip().encode()
    if not hmac.compare_digest(given, settings.api_token.get_secret_value().encode()):
        await asyncio.sleep(WRONG_TOKEN_PAUSE_S)
        context = {"next": target, "error": "that is not this server's API token"}
        return render(request, "signin.html", context, status_code=401)
    response = _back(request, target)
    set_session(response, request, settings)
    return response


@router.post("/signout")
def sign_out(request: Request) -> Response:
    response = _back(request, "/signin" if settings_of(request).api_token is not None else "/")
    clear_session(response)
    return response


signin_page = APIRouter(include_in_schema=False)


@signin_page.get("/signin")
def sign_in_page(request: Request, next: str = "/") -> Response:
    if settings_of(request).api_token is None:
        return _back(request, _local(next))
    return render(request, "signin.html", {"next": _local(next), "error": None})
