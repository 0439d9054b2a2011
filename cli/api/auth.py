"""Bearer-token authentication of the ``/api`` routes (``API_TOKEN``; none set: the API is open)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cli.api.errors import ApiError
from pipeline.settings import Settings

__all__ = ["require_token"]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: Declares the scheme in the OpenAPI document; the check itself is :func:`require_token`'s.
_BEARER = HTTPBearer(auto_error=False, description="API_TOKEN, when the server has one")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> None:
    """FastAPI dependency: when ``API_TOKEN`` is set, the request must carry ``Authorization: Bearer <token>``.

    Raises:
        ApiError: 401 with ``WWW-Authenticate: Bearer`` when the header is missing or the token is wrong.
    """
    settings: Settings = request.app.state.settings
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.strip() if credentials is not None else ""
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
