"""Thumbnails of job results: WebP, made once per image and cached on the shared disk.

Where the cache lives: ``OUTPUT_DIR/.sdpipe/thumbs/<first two characters of the job id>/<job id>-<sha>.webp``,
next to the results. In Redis mode every worker and API machine mounts the same ``OUTPUT_DIR`` (the
steps already hand each other files there), so a thumbnail made by one API server is served by the
others, and made at most once per image whichever server is asked first. Two servers racing on the
same image both write it atomically (temp file, rename): the one that renames last wins with the same
bytes. The name carries the image's sha256 (from the job record), so a result replaced by another
job of the same output name never shows the old thumbnail. ``sdpipe prune`` removes the thumbnails
of the jobs it removes (:func:`thumbnail_paths`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from pipeline.errors import ImageError
from pipeline.jobs.files import STATE_DIR_NAME, atomic_write_bytes
from pipeline.storage.base import Blob

__all__ = ["THUMBNAIL_PX", "THUMBS_DIR_NAME", "cached_thumbnail", "make_thumbnail", "thumbnail_path", "thumbnail_paths"]

logger = logging.getLogger(__name__)

#: Longest side of a thumbnail, in pixels (sharp at 160 CSS px on a 2x screen).
THUMBNAIL_PX = 320
#: WebP quality of thumbnails.
THUMBNAIL_QUALITY = 80
#: Folder of the cache under ``OUTPUT_DIR/.sdpipe``.
THUMBS_DIR_NAME = "thumbs"


def thumbnail_path(output_dir: Path, job_id: str, sha256: str | None) -> Path:
    """Where the thumbnail of ``job_id``'s image (of digest ``sha256``) is cached."""
    tag = (sha256 or "nosha")[:16]
    return output_dir / STATE_DIR_NAME / THUMBS_DIR_NAME / job_id[:2] / f"{job_id}-{tag}.webp"


def thumbnail_paths(output_dir: Path, job_id: str) -> list[Path]:
    """Every cached thumbnail of ``job_id`` (of any of its images): what a prune removes."""
    folder = output_dir / STATE_DIR_NAME / THUMBS_DIR_NAME / job_id[:2]
    return sorted(folder.glob(f"{job_id}-*.webp")) if folder.is_dir() else []


def make_thumbnail(image_path: Path | Blob, *, max_px: int = THUMBNAIL_PX) -> bytes:
    """The image at ``image_path`` (a file, or an object of OUTPUT_URL's bucket) shrunk to fit ``max_px``
    (never enlarged), as WebP bytes.

    Raises:
        ImageError: the file is not an image Pillow reads.
    """
    from PIL import Image, ImageOps  # here: a prune (thumbnail_paths) loads no Pillow

    try:
        source = image_path if isinstance(image_path, Path) else io.BytesIO(image_path.read_bytes())
        with Image.open(source) as opened:
            opened.draft("RGB", (max_px, max_px))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
            if image.mode not in ("RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            buffer = io.BytesIO()
            image.save(buffer, "WEBP", quality=THUMBNAIL_QUALITY, method=4)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot make a thumbnail of {image_path.name}: {exc}", field="image") from exc
    return buffer.getvalue()


def cached_thumbnail(image_path: Path | Blob, cache_path: Path, *, max_px: int = THUMBNAIL_PX) -> Path:
    """``cache_path``, made from ``image_path`` first if it is not there yet.

    Raises:
        ImageError: the image cannot be read.
        OSError: the cache folder cannot be written.
    """
    if cache_path.exists():
        return cache_path
    data = make_thumbnail(image_path, max_px=max_px)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache_path, data)
    logger.debug("thumbnail %s: %d bytes", cache_path.name, len(data))
    return cache_path
