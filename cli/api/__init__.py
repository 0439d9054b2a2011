"""sdpipe's HTTP API (``sdpipe serve``): a thin FastAPI layer over the same runtime and status store
as the commands. Needs the ``api`` extra (``pip install 'sdpipe[api]'``); the plain CLI never imports it."""

from __future__ import annotations

from cli.api.app import API_VERSION, create_app, readiness
from cli.api.auth import require_token
from cli.api.errors import ERROR_RESPONSES, ApiError, ErrorBody, ErrorDetail, error_response, status_for
from cli.api.uploads import BodyLimitMiddleware, staged_upload

__all__ = [
    # Application
    "API_VERSION",
    "create_app",
    "readiness",
    # Errors
    "ERROR_RESPONSES",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "error_response",
    "status_for",
    # Auth and uploads
    "BodyLimitMiddleware",
    "require_token",
    "staged_upload",
]
