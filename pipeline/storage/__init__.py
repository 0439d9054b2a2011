"""Where outputs and intermediates live: a local folder (``OUTPUT_DIR``) or an S3-compatible bucket
(``OUTPUT_URL=s3://bucket/prefix``), behind one protocol.

- :mod:`~pipeline.storage.base`: the :class:`Storage` protocol, :class:`Blob`, :func:`open_storage`.
- :mod:`~pipeline.storage.local`: a folder, with atomic writes (temporary file, fsync, rename).
- :mod:`~pipeline.storage.s3`: a bucket through obstore, loaded only for an ``s3://`` location.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports
from pipeline.storage.base import Blob, Entry, Storage, blob_at, is_s3_url, open_storage, parse_s3_url

if TYPE_CHECKING:
    from pipeline.storage.local import LocalStorage, atomic_write_bytes
    from pipeline.storage.s3 import S3Storage

__all__ = [
    # Interface
    "Blob",
    "Entry",
    "Storage",
    # Implementations
    "LocalStorage",
    "S3Storage",
    # Opening one
    "blob_at",
    "is_s3_url",
    "open_storage",
    "parse_s3_url",
    # Local files
    "atomic_write_bytes",
]

# The S3 client (obstore) loads only when an s3:// location is used.
__getattr__, __dir__ = lazy_exports(__name__, {".local": ["LocalStorage", "atomic_write_bytes"], ".s3": ["S3Storage"]})
