"""Browser sessions of the dashboard: a sign-in cookie that stands for ``API_TOKEN``, and CSRF tokens.

- **Session.** Signing in with the token sets ``sdpipe_session``: ``v1.<issued>.<nonce>.<mac>``, where
  ``mac`` is an HMAC-SHA256 keyed with ``API_TOKEN`` over the rest. It is HttpOnly (no script reads
  it), ``SameSite=Lax`` (a cross-site POST does not carry it) and Secure over https. Any API server
  with the same token accepts it (nothing is stored server-side, so several machines behind one
  address need no shared session store); it ends after ``DASHBOARD_SESSION_TTL_S``, and changing
  the token ends every session at once. The token itself is never put in a cookie or a page.
- **CSRF.** Every state change (POST) made with the cookie also needs a CSRF token, sent as the form
  field ``csrf_token`` or the ``X-CSRF-Token`` header: the value of the ``sdpipe_csrf`` cookie
  (random, HttpOnly, ``SameSite=Strict``), which the server writes into its pages and another site
  can neither read nor set. A request whose ``Origin`` names another site is refused too. Requests
  with ``Authorization: Bearer`` are not cookie-borne and need no CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import Response

from pipeline.settings import Settings

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "clear_session",
    "csrf_ok",
    "csrf_token_of",
    "issue_session",
    "new_csrf_token",
    "same_origin",
    "session_valid",
    "set_csrf_cookie",
    "set_session",
]

SESSION_COOKIE = "sdpipe_session"
CSRF_COOKIE = "sdpipe_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_VERSION = "v1"


def _mac(settings: Settings, payload: str) -> str:
    assert settings.api_token is not None
    key = settings.api_token.get_secret_value().encode()
    return hmac.new(key, f"sdpipe-session|{payload}".encode(), hashlib.sha256).hexdigest()


def issue_session(settings: Settings, *, now: float | None = None) -> str:
    """A new session cookie value (needs ``API_TOKEN``)."""
    payload = f"{_VERSION}.{int(time.time() if now is None else now)}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_mac(settings, payload)}"


def session_valid(settings: Settings, value: str | None, *, now: float | None = None) -> bool:
    """Whether ``value`` is a session this token issued that has not expired (constant-time check)."""
    if settings.api_token is None or not value:
        return False
    payload, _, mac = value.rpartition(".")
    parts = payload.split(".")
    if len(parts) != 3 or parts[0] != _VERSION or not parts[1].isdigit():
        return False
    if not hmac.compare_digest(mac.encode(), _mac(settings, payload).encode()):
        return False
    age_s = (time.time() if now is None else now) - int(parts[1])
    return -60 <= age_s <= settings.dashboard_session_ttl_s  # a minute of clock skew between machines


def _secure(connection: HTTPConnection) -> bool:
    return connection.url.scheme == "https"


def set_session(response: Response, connection: HTTPConnection, settings: Settings) -> None:
    """Sign the browser in (the cookie lasts as long as the session)."""
    response.set_cookie(
        SESSION_COOKIE,
        issue_session(settings),
        max_age=int(settings.dashboard_session_ttl_s),
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(connection),
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


def csrf_token_of(connection: HTTPConnection) -> str | None:
    """The browser's CSRF token (its cookie), if it has one."""
    value = connection.cookies.get(CSRF_COOKIE)
    return value if value and len(value) >= 20 else None


def set_csrf_cookie(response: Response, connection: HTTPConnection, token: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, path="/", httponly=True, samesite="strict", secure=_secure(connection))


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def same_origin(headers: Headers, host_url: str) -> bool:
    """False when the request's ``Origin`` (or, without one, ``Referer``) names another site than
    ``host_url``; True when it names this one or the browser sent neither."""
    origin = headers.get("origin") or headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    theirs, ours = urlsplit(origin), urlsplit(host_url)
    return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)


def csrf_ok(connection: HTTPConnection, given: str | None) -> bool:
    """Whether ``given`` (the form field or header) is the browser's CSRF token, from this site."""
    expected = csrf_token_of(connection)
    if expected is None or not given:
        return False
    if not same_origin(connection.headers, str(connection.base_url)):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
