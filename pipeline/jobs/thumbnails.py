"""Thumbnails of job results: WebP, made once per image and cached where the results are.

Where the cache lives: ``.sdpipe/thumbs/<first two characters of the job id>/<job id>-<sha>.webp``
under OUTPUT_DIR, or under OUTPUT_URL's bucket and prefix: the storage every worker and API machine
already shares (a mounted folder, or the bucket of share-nothing machines), so a thumbnail made by
one API server is served by the others, and made at most once per image whichever server is asked
first. Two servers racing on the same image both write it atomically (a temp file and a rename, or
one PUT): the last write wins with the same bytes. The name carries the image's sha256 (from the
job record), so a result replaced by another job of the same output name never shows the old
thumbnail. ``sdpipe prune`` removes the thumbnails of the jobs it removes (:func:`thumbnail_keys`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from pipeline.errors import ImageError
from pipeline.jobs.files import STATE_DIR_NAME
from pipeline.storage.base import Blob, Storage

__all__ = ["THUMBNAIL_PX", "THUMBS_DIR_NAME", "cached_thumbnail", "make_thumbnail", "thumbnail_key", "thumbnail_keys"]

logger = logging.getLogger(__name__)

#: Longest side of a thumbnail, in pixels (sharp at 160 CSS px on a 2x screen).
THUMBNAIL_PX = 320
#: WebP quality of thumbnails.
THUMBNAIL_QUALITY = 80
#: Folder of the cache under ``.sdpipe`` (of OUTPUT_DIR or OUTPUT_URL).
THUMBS_DIR_NAME = "thumbs"


def thumbnail_key(job_id: str, sha256: str | None) -> str:
    """The storage key of the cached thumbnail of ``job_id``'s image (of digest ``sha256``)."""
    tag = (sha256 or "nosha")[:16]
    return f"{_folder_key(job_id)}/{job_id}-{tag}.webp"


def _folder_key(job_id: str) -> str:
    return f"{STATE_DIR_NAME}/{THUMBS_DIR_NAME}/{job_id[:2]}"


def thumbnail_keys(storage: Storage, job_id: str, *, listed: dict[str, list[str]] | None = None) -> list[str]:
    """The keys of every cached thumbnail of ``job_id`` (of any of its images) in ``storage``: what a
    prune removes. A bucket lists the job's folder (the jobs whose ids share its first two characters);
    ``listed`` keeps those listings for the next calls (a prune of many jobs lists each folder once).

    Raises:
        StorageUnavailable, StorageRefused: the object store failed.
    """
    folder = _folder_key(job_id)
    local = storage.local_path(folder)
    if local is not None:
        names = [path.name for path in local.glob(f"{job_id}-*.webp")] if local.is_dir() else []
    elif listed is not None and folder in listed:
        names = listed[folder]
    else:
        names = [entry.key.rsplit("/", 1)[-1] for entry in storage.list(f"{folder}/")]
        if listed is not None:
            listed[folder] = names
    return sorted(f"{folder}/{name}" for name in names if name.startswith(f"{job_id}-") and name.endswith(".webp"))


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


def cached_thumbnail(image_path: Path | Blob, cache: Blob, *, max_px: int = THUMBNAIL_PX) -> bytes:
    """The thumbnail of ``image_path`` from ``cache``, made and written there first if it is not there yet.

    Raises:
        ImageError: the image cannot be read.
        OSError: the cache folder cannot be written; StorageUnavailable, StorageRefused: the object
            store failed.
    """
    try:
        return cache.read_bytes()
    except FileNotFoundError:
        pass
    data = make_thumbnail(image_path, max_px=max_px)
    cache.write(data)
    logger.debug("thumbnail %s: %d bytes", cache.name, len(data))
    return data
