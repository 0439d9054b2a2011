"""Uploads: a hard cap on every request body (streamed, not trusting Content-Length), and staging an
accepted image on disk (``OUTPUT_DIR/.sdpipe/uploads/<id>.<ext>``) while it is planned and copied
into its job's work folder."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cli.api.errors import ApiError, error_response
from pipeline.jobs.planning import new_id
from pipeline.jobs.uploads import UploadInfo, UploadProblem, check_upload, upload_path
from pipeline.settings import Settings

__all__ = ["FORM_OVERHEAD_BYTES", "BodyLimitMiddleware", "SavedUpload", "body_limit", "staged_upload"]

logger = logging.getLogger(__name__)

#: Room for multipart boundaries, headers and the small form fields around an upload of the maximum size.
FORM_OVERHEAD_BYTES = 64 * 1024


def body_limit(settings: Settings) -> int:
    """Largest request body the API reads, in bytes."""
    return settings.max_upload_bytes + FORM_OVERHEAD_BYTES


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        UploadProblem.TOO_LARGE.value,
        f"the request body is over the {limit:,}-byte limit (MAX_UPLOAD_BYTES plus form overhead)",
        hint="send a smaller image",
    )


class BodyLimitMiddleware:
    """Refuse bodies over ``max_body_bytes``: at once from ``Content-Length``, and while streaming
    (chunked bodies and lying lengths) as soon as the count passes the limit."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > limit:
                        exc = _too_large(limit)
                        response = error_response(exc.status_code, exc.code, exc.message, hint=exc.hint)
                        await response(scope, receive, send)
                        return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)  # raised inside the route's body parsing: the handlers answer it
            return message

        await self.app(scope, limited_receive, send)


@dataclass(frozen=True)
class SavedUpload:
    """An accepted upload on the shared disk."""

    upload_id: str
    path: Path
    info: UploadInfo


@contextlib.contextmanager
def staged_upload(handle: BinaryIO, settings: Settings) -> Iterator[SavedUpload]:
    """Check an uploaded file (size, sniffed format, header pixels), stage it under
    ``OUTPUT_DIR/.sdpipe/uploads/`` and remove it when the block ends, whatever happens in it.

    The copy streams (the upload is never read into memory here) and is not fsynced: the staged file
    only lives for the request; the job's durable copy is its work folder's (written atomically). A
    process killed meanwhile leaves it behind: :func:`pipeline.jobs.uploads.remove_stale_uploads` at
    startup removes such files.

    Raises:
        UploadRejected: the checks of :func:`pipeline.jobs.uploads.check_upload` (nothing is written).
    """
    info = check_upload(handle, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
    upload_id = new_id()
    path = upload_path(settings.output_dir.absolute(), upload_id, info)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb") as staged:
            shutil.copyfileobj(handle, staged)
        logger.info("upload %s: %s %dx%d, %d bytes", upload_id, info.format, info.width, info.height, info.size_bytes)
        yield SavedUpload(upload_id=upload_id, path=path, info=info)
    finally:
        path.unlink(missing_ok=True)
