"""Rendering the dashboard's pages: one Jinja2 environment that escapes everything, the filters the
templates use, the CSRF token every page carries, a strict Content-Security-Policy, and the sign-in
check in front of every page."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cli.api.deps import settings_of
from cli.api.session import SESSION_COOKIE, csrf_token_of, new_csrf_token, session_valid, set_csrf_cookie

__all__ = ["CSP", "SignInRequired", "TEMPLATES_DIR", "page", "render", "require_session", "sign_in_redirect"]

TEMPLATES_DIR = Path(__file__).parent / "templates"

#: Scripts, styles, images and connections from this server only; no inline script (every script is
#: a file), so text that slipped through unescaped still could not run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


def _when(ts: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM:SS``."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _iso(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _seconds(value: float | None) -> str:
    """A duration for people: ``0.42 s``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _short(job_id: str | None) -> str:
    return (job_id or "")[:8]


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template is HTML: prompts and errors are user text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, iso=_iso, seconds=_seconds, short=_short, pretty_json=_pretty_json, urlq=quote)
    return env


templates = Jinja2Templates(env=_environment())


class SignInRequired(Exception):
    """A page was asked for without a session while ``API_TOKEN`` is set."""


def require_session(request: Request) -> None:
    """Dependency of every page but the sign-in page: with ``API_TOKEN`` set, a valid session cookie.

    Raises:
        SignInRequired: none (the handler redirects to the sign-in page, or answers 401 to scripts).
    """
    settings = settings_of(request)
    if settings.api_token is not None and not session_valid(settings, request.cookies.get(SESSION_COOKIE)):
        raise SignInRequired


def sign_in_redirect(request: Request, exc: Exception) -> Response:
    """The answer to :class:`SignInRequired`: the sign-in page, coming back here after."""
    if request.headers.get("x-requested-with") == "fetch":  # a script's fragment request: no redirect
        return HTMLResponse("sign in again", status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{request.scope.get('root_path', '')}/signin?next={quote(target)}", status_code=303)


def render(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200) -> Response:
    """``name`` rendered with ``context``, the page's CSRF token (set as a cookie on first visit), the
    signed-in flag and the security headers."""
    settings = settings_of(request)
    token = csrf_token_of(request)
    fresh = token is None
    if token is None:
        token = new_csrf_token()
    signed_in = settings.api_token is not None and session_valid(settings, request.cookies.get(SESSION_COOKIE))
    response = templates.TemplateResponse(
        request,
        name,
        {
            **context,
            "csrf_token": token,
            "auth_enabled": settings.api_token is not None,
            "signed_in": signed_in,
            "root": request.scope.get("root_path", ""),
            "nav": request.url.path,
        },
        status_code=status_code,
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        },
    )
    if fresh:
        set_csrf_cookie(response, request, token)
    return response


def page(request: Request, status: int, message: str, hint: str | None) -> Response:
    """An error as a page (the API's status, message and hint)."""
    return render(request, "error.html", {"status": status, "message": message, "hint": hint}, status_code=status)
