"""Checking an uploaded image before anything is planned on it: size, sniffed format, pixel count.

The HTTP API (``POST /api/files``) streams an upload to a temporary file, then calls
:func:`check_upload` on it, and stages an accepted one at :func:`upload_path` for the length of the
request (:func:`remove_stale_uploads` removes what a killed server left there). Nothing here
trusts what the client said: the format comes from the file's magic bytes (never the
``Content-Type`` header or the file name), and the pixel count from the image header (Pillow's
:func:`PIL.Image.open` reads the header only) before any full decode.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from PIL import Image

from pipeline.errors import UploadProblem, UploadRejected
from pipeline.images.codec import sniff_format
from pipeline.jobs.files import STATE_DIR_NAME

__all__ = [
    "SNIFF_BYTES",
    "STALE_UPLOAD_AGE_S",
    "UPLOAD_EXTENSIONS",
    "UploadFormat",
    "UploadInfo",
    "UploadProblem",
    "UploadRejected",
    "check_upload",
    "remove_stale_uploads",
    "sniff_upload",
    "upload_path",
]

logger = logging.getLogger(__name__)

UploadFormat = Literal["png", "jpeg", "webp", "gif"]
#: How many leading bytes :func:`sniff_upload` looks at.
SNIFF_BYTES = 16
#: File extension of each accepted upload format.
UPLOAD_EXTENSIONS: dict[UploadFormat, str] = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif"}
_PIL_FORMATS: dict[UploadFormat, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
#: A staged upload older than this was left by a killed server (a live one is removed within its
#: request, seconds after it is written), so :func:`remove_stale_uploads` may delete it.
STALE_UPLOAD_AGE_S = 3600.0
#: Folder of staged uploads, under ``OUTPUT_DIR/.sdpipe/``.
_UPLOADS_DIR_NAME = "uploads"


@dataclass(frozen=True)
class UploadInfo:
    """What :func:`check_upload` found: the sniffed format and the size from the header."""

    format: UploadFormat
    width: int
    height: int
    size_bytes: int

    @property
    def extension(self) -> str:
        return UPLOAD_EXTENSIONS[self.format]


def sniff_upload(head: bytes) -> UploadFormat:
    """The format of an upload from its first bytes: PNG, JPEG, WebP or GIF (what ``sdpipe process`` reads).

    Raises:
        UploadRejected: empty, or anything else.
    """
    if not head:
        raise UploadRejected(UploadProblem.EMPTY, "the uploaded file is empty")
    found = sniff_format(head)
    for fmt in _PIL_FORMATS:
        if found == fmt:
            return fmt
    raise UploadRejected(
        UploadProblem.UNSUPPORTED_TYPE,
        "the uploaded file is not a PNG, JPEG, WebP or GIF image (checked from its content, not its name or type)",
    )


def check_upload(handle: BinaryIO, *, max_bytes: int, max_pixels: int) -> UploadInfo:
    """Check an upload (a seekable binary file, read from its start): size, magic bytes, header pixels.

    Only the header is parsed; the image is never fully decoded here.

    Raises:
        UploadRejected: empty, over ``max_bytes``, not PNG/JPEG/WebP/GIF, an unreadable header, or more
            than ``max_pixels`` pixels.
    """
    handle.seek(0, 2)
    size = handle.tell()
    if size > max_bytes:
        raise UploadRejected(
            UploadProblem.TOO_LARGE,
            f"the upload is {size:,} bytes, more than MAX_UPLOAD_BYTES ({max_bytes:,})",
        )
    handle.seek(0)
    fmt = sniff_upload(handle.read(SNIFF_BYTES))
    handle.seek(0)
    try:
        with Image.open(handle, formats=[_PIL_FORMATS[fmt]]) as im:
            width, height = im.size
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise UploadRejected(
            UploadProblem.UNREADABLE,
            f"the uploaded {fmt.upper()} image has an unreadable header",
        ) from exc
    finally:
        handle.seek(0)
    if width * height > max_pixels:
        raise UploadRejected(
            UploadProblem.TOO_MANY_PIXELS,
            f"the uploaded image is {width}x{height} px, more than MAX_PIXELS ({max_pixels:,})",
            limit=max_pixels,
        )
    return UploadInfo(format=fmt, width=width, height=height, size_bytes=size)


def upload_path(output_dir: Path, upload_id: str, info: UploadInfo) -> Path:
    """Where an accepted upload is staged during its request: ``OUTPUT_DIR/.sdpipe/uploads/<id>.<ext>``."""
    return output_dir / STATE_DIR_NAME / _UPLOADS_DIR_NAME / f"{upload_id}.{info.extension}"


def remove_stale_uploads(
    output_dir: Path, *, older_than_s: float = STALE_UPLOAD_AGE_S, now: float | None = None
) -> int:
    """Delete staged uploads older than ``older_than_s`` (left by a server that was killed mid-request).

    Safe while other servers share ``OUTPUT_DIR``: their staged files are seconds old. Returns how
    many files were removed.
    """
    folder = output_dir / STATE_DIR_NAME / _UPLOADS_DIR_NAME
    cutoff = (time.time() if now is None else now) - older_than_s
    removed = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for path in entries:
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    if removed:
        logger.info("removed %d stale upload(s) from %s", removed, folder)
    return removed
