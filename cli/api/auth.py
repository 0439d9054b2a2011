"""Bearer-token authentication of the ``/api`` routes (``API_TOKEN``; none set: the API is open).

A browser signed in to the dashboard (:mod:`cli.api.session`) may call them with its session cookie
instead: reads as they are, state changes (POST) only with the page's CSRF token in ``X-CSRF-Token``.

Two layers check the same token: :class:`TokenGateMiddleware` refuses an ``/api`` request before
its body is read (FastAPI parses a body, a 50 MB upload included, before it runs any dependency),
and the :func:`require_token` dependency on each ``/api`` router declares the scheme in the OpenAPI
document and still guards every route should the gate's path test ever miss one.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from cli.api.errors import ApiError, error_response
from cli.api.session import CSRF_HEADER, SESSION_COOKIE, csrf_ok, session_valid
from pipeline.settings import Settings

__all__ = ["TokenGateMiddleware", "authorize", "check_token", "require_token"]

#: Methods that change nothing: a session cookie alone is enough for them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: Declares the scheme in the OpenAPI document; the check itself is :func:`check_token`'s.
_BEARER = HTTPBearer(auto_error=False, description="API_TOKEN, when the server has one")
#: Path prefix of the authenticated routes.
API_PREFIX = "/api"


def check_token(settings: Settings, authorization: str | None) -> None:
    """Check an ``Authorization`` header value against ``API_TOKEN`` (in constant time).

    Raises:
        ApiError: 401 with ``WWW-Authenticate: Bearer`` when the header is missing, not a bearer
            token, or the token is wrong.
    """
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    scheme, _, given = (authorization or "").strip().partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    if not given:
        raise ApiError(
            401,
            "unauthorized",
            "this API needs a bearer token",
            hint="send Authorization: Bearer <API_TOKEN>",
            headers=_CHALLENGE,
        )
    if not hmac.compare_digest(given.encode(), expected):
        raise ApiError(401, "unauthorized", "the bearer token is wrong", hint="check API_TOKEN", headers=_CHALLENGE)


def authorize(settings: Settings, connection: HTTPConnection, method: str) -> None:
    """A bearer token (:func:`check_token`), or a dashboard session cookie: for a state change, with
    the page's CSRF token in ``X-CSRF-Token``.

    Raises:
        ApiError: 401 as :func:`check_token`; 403 ``csrf_failed`` for a cookie-borne POST without a
            valid CSRF token.
    """
    if settings.api_token is None:
        return
    authorization = connection.headers.get("authorization")
    if not authorization and session_valid(settings, connection.cookies.get(SESSION_COOKIE)):
        if method.upper() in SAFE_METHODS or csrf_ok(connection, connection.headers.get(CSRF_HEADER)):
            return
        raise ApiError(
            403,
            "csrf_failed",
            "this request carries the dashboard's session cookie but no valid CSRF token",
            hint="send the page's token in X-CSRF-Token (reload the page), or use Authorization: Bearer",
        )
    check_token(settings, authorization)


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> None:
    """FastAPI dependency: when ``API_TOKEN`` is set, the request must carry ``Authorization: Bearer <token>``
    (or a dashboard session, see :func:`authorize`).

    Raises:
        ApiError: as :func:`authorize`.
    """
    authorize(request.app.state.settings, request, request.method)


def _is_api_path(scope: Scope) -> bool:
    """Whether the router will see an ``/api`` path (the path less ``root_path``, as Starlette routes)."""
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path + "/"):
        path = path[len(root_path) :]
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


class TokenGateMiddleware:
    """Answer 401 to an unauthenticated ``/api`` request at once, without reading its body."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_api_path(scope):
            try:
                authorize(self.settings, HTTPConnection(scope), scope["method"])
            except ApiError as exc:
                response = error_response(exc.status_code, exc.code, exc.message, hint=exc.hint, headers=exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
