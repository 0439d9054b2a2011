"""Where outputs and intermediates live: the :class:`Storage` protocol, one object of it (:class:`Blob`),
and :func:`open_storage`, which picks a local folder (``OUTPUT_DIR``, the default) or an S3-compatible
bucket (``OUTPUT_URL=s3://bucket/prefix``).

Keys are relative, ``/``-separated (``20261207/fox-7.png``, ``.sdpipe/work/<job id>/source.img``);
a storage maps them under its root. Both implementations give the same guarantees:

- :meth:`Storage.write` is atomic: a reader sees the old object or the whole new one (local: temporary
  file, fsync, rename, folder fsync; S3: a single PUT is atomic). ``durable=False`` is for what can be
  made again (the intermediates between steps): on disk it skips the fsyncs, and such an object is
  read only after :meth:`Storage.exists_unsynced` says it is whole;
- :meth:`Storage.create` writes only when the key is free, and says whether it did (local: a hard link
  of a complete temporary file; S3: a conditional PUT, ``If-None-Match: *``), so two jobs never take
  one name;
- no credential is ever part of a location, a message or an error.

This module imports no client library: the S3 one (obstore) loads only when an ``s3://`` location
is opened, so ``sdpipe --help`` and local-only commands never pay for it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = [
    "Blob",
    "Download",
    "Entry",
    "S3_SCHEME",
    "Storage",
    "blob_at",
    "is_s3_url",
    "open_storage",
    "parse_s3_url",
]

#: The scheme of an object-store location (any S3-compatible service).
S3_SCHEME = "s3://"
#: S3's bucket naming rules (lower-case letters, digits, dots and hyphens; 3-63 characters).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART_RE = re.compile(r"[A-Za-z0-9._ -]+")

#: What a write takes: bytes, or pieces written one after another (the arrays files).
Data = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]
#: A byte range of an object: ``(start, end)``, ``end`` exclusive.
ByteRange = tuple[int, int]
#: The chunk size of :meth:`Storage.stream` unless told: a response's memory, whatever the object's size.
STREAM_CHUNK_BYTES = 1024 * 1024


class Entry(NamedTuple):
    """One stored object as listed: its key, size and last change (epoch seconds)."""

    key: str
    size: int
    modified_at: float


class Download(NamedTuple):
    """An object read in chunks (:meth:`Storage.stream`): its size, then its bytes, chunk by chunk.

    The object was found when this exists; iterating ``chunks`` may still raise
    StorageUnavailable (the connection broke midway). A ``chunks`` left unfinished is closed to
    release its file or connection."""

    size: int
    chunks: Iterator[bytes]


class Storage(Protocol):
    """A place for sdpipe's files: a local folder or an S3-compatible bucket and prefix."""

    #: The root as users write it: an absolute folder, or ``s3://bucket/prefix``.
    url: str

    def location(self, key: str) -> str:
        """Where ``key`` is, as users see it (an absolute path, or ``s3://bucket/prefix/key``)."""
        ...

    def key_of(self, location: str) -> str | None:
        """The key of a location under this storage's root (:meth:`location`'s inverse), else None."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file of ``key`` on this machine (local storage), or None (object storage)."""
        ...

    def read(self, key: str) -> bytes:
        """The whole object.

        Raises:
            FileNotFoundError: there is none.
            StorageUnavailable, StorageRefused: the object store failed.
        """
        ...

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """The bytes of each ``(start, end)`` range of the object, in order; only those are read (an
        object store fetches ranges less than about 1 MiB apart in one request, and several at once).

        Raises:
            FileNotFoundError: there is none.
            ValueError: a range is empty, or reaches past the object's end (it is cut short).
            StorageUnavailable, StorageRefused: the object store failed.
        """
        ...

    def stream(self, key: str, chunk_bytes: int = STREAM_CHUNK_BYTES) -> Download:
        """The object in chunks of about ``chunk_bytes``, never held whole (an HTTP response of it).

        Raises:
            FileNotFoundError: there is none.
            StorageUnavailable, StorageRefused: the object store failed.
        """
        ...

    def exists(self, key: str) -> bool: ...

    def exists_unsynced(self, key: str) -> bool:
        """Whether an object written with ``durable=False`` is there and can be trusted whole: on disk
        only if it was written since this machine last started (from before, a crash may have cut it
        short or left zeros in it); in a bucket whenever it exists (a PUT is durable)."""
        ...

    def write(self, key: str, data: Data, *, durable: bool = True, sync_folder: bool = True) -> None:
        """Write ``key`` atomically, replacing what is there; ``durable``: it survives a crash of the
        machine as soon as this returns (False: see :meth:`exists_unsynced`). ``sync_folder=False``
        (a folder on disk): its content is synced but its name only by the caller's next durable
        write in the same folder (an image, then its sidecar: one folder sync for both)."""
        ...

    def create(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        """Write ``key`` only if it does not exist (atomically, whole); False if it already did.
        ``durable=False``: not synced on disk (a crash of the machine may leave it cut short or
        zeroed: for data that checks itself and can be made again)."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; False if it was not there."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (a ``/``-ended key: a folder); how many."""
        ...

    def list(self, prefix: str) -> list[Entry]:
        """Every object under ``prefix`` (recursively), sorted by key."""
        ...

    def presign_get(self, key: str, expiry_s: float) -> str | None:
        """A URL that reads ``key`` without credentials for ``expiry_s``; None where there is none (local)."""
        ...


@dataclass(frozen=True)
class Blob:
    """One object (a file) of a storage: the handle a job's steps read and write."""

    storage: Storage
    key: str

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def location(self) -> str:
        return self.storage.location(self.key)

    @property
    def path(self) -> Path | None:
        """The local file (local storage only)."""
        return self.storage.local_path(self.key)

    def exists(self) -> bool:
        return self.storage.exists(self.key)

    def exists_unsynced(self) -> bool:
        return self.storage.exists_unsynced(self.key)

    def read_bytes(self) -> bytes:
        return self.storage.read(self.key)

    def read_text(self) -> str:
        return self.storage.read(self.key).decode("utf-8")

    def read_ranges(self, ranges: Sequence[ByteRange]) -> list[bytes]:
        return self.storage.read_ranges(self.key, ranges)

    def stream(self, chunk_bytes: int = STREAM_CHUNK_BYTES) -> Download:
        return self.storage.stream(self.key, chunk_bytes)

    def write(self, data: Data, *, durable: bool = True, sync_folder: bool = True) -> None:
        self.storage.write(self.key, data, durable=durable, sync_folder=sync_folder)

    def create(self, data: bytes, *, durable: bool = True) -> bool:
        return self.storage.create(self.key, data, durable=durable)

    def delete(self) -> bool:
        return self.storage.delete(self.key)

    def __str__(self) -> str:
        return self.location


def check_ranges(ranges: Sequence[ByteRange]) -> None:
    """Refuse an empty or negative range (:meth:`Storage.read_ranges`' contract, the same everywhere).

    Raises:
        ValueError: one is.
    """
    for start, end in ranges:
        if start < 0 or end <= start:
            raise ValueError(f"byte range {start}-{end} is empty or negative")


def is_s3_url(location: str | Path | None) -> bool:
    """Whether ``location`` names an object store (``s3://...``) rather than a local folder."""
    return isinstance(location, str) and location.lower().startswith(S3_SCHEME)


def parse_s3_url(url: str, *, field: str = "OUTPUT_URL") -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (the prefix may be empty).

    Raises:
        ConfigError: not such a URL, a bucket name S3 refuses, credentials or a query in it, or a
            prefix part that is empty, ``.``/``..`` or has odd characters.
    """
    example = "e.g. s3://my-bucket/sdpipe"
    if not is_s3_url(url):
        raise ConfigError(f"{field} must start with s3:// ({example})", field=field, expected=example)
    rest = url[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or "?" in rest or "#" in rest:
        # Never echo the value: a user:secret@ in it would end up in a message.
        raise ConfigError(
            f"{field} must not carry credentials or a query; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            field=field,
            expected=example,
        )
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{field} names an invalid bucket {bucket!r} (3-63 lower-case letters, digits, '.' or '-')",
            field=field,
            value=bucket,
            expected=example,
        )
    parts = prefix.strip("/").split("/") if prefix.strip("/") else []
    for part in parts:
        if part in (".", "..") or not _PREFIX_PART_RE.fullmatch(part):
            raise ConfigError(
                f"{field} has an invalid prefix {prefix!r} (letters, digits, '.', '_', '-' between single '/')",
                field=field,
                value=prefix,
                expected=example,
            )
    return bucket, "/".join(parts)


_cache: dict[tuple[object, ...], Storage] = {}
_cache_lock = threading.Lock()


def open_storage(location: str | Path, settings: Settings) -> Storage:
    """The storage at ``location`` (a folder, or ``s3://bucket/prefix`` with the credentials, endpoint and
    region of ``settings``). Opened once per process and location: an S3 client keeps its connections.

    Raises:
        ConfigError: a malformed ``s3://`` URL.
    """
    if is_s3_url(location):
        url = str(location)
        bucket, prefix = parse_s3_url(url)
        secrets = tuple(
            None if value is None else value.get_secret_value()
            for value in (settings.aws_access_key_id, settings.aws_secret_access_key, settings.aws_session_token)
        )
        cache_key: tuple[object, ...] = ("s3", bucket, prefix, settings.s3_endpoint_url, settings.aws_region, secrets)
        with _cache_lock:
            found = _cache.get(cache_key)
            if found is None:
                from pipeline.storage.s3 import S3Storage

                found = _cache[cache_key] = S3Storage(bucket, prefix, settings)
            return found
    from pipeline.storage.local import LocalStorage

    return LocalStorage(Path(location).expanduser().absolute())


def blob_at(location: str, settings: Settings | None = None) -> Blob:
    """The object at a location a record or sidecar holds (an absolute path, or ``s3://bucket/key``
    read with the credentials of ``settings``).

    Raises:
        ConfigError: an ``s3://`` location without ``settings``, or malformed.
    """
    if is_s3_url(location):
        bucket, _, key = location[len(S3_SCHEME) :].partition("/")
        if settings is None or not key:
            raise ConfigError(f"cannot open {location} here", field="OUTPUT_URL", value=location)
        return Blob(open_storage(f"{S3_SCHEME}{bucket}", settings), key)
    from pipeline.storage.local import LocalStorage

    path = Path(location).absolute()
    return Blob(LocalStorage(Path(path.anchor)), path.relative_to(path.anchor).as_posix())
