"""An S3-compatible bucket as a :class:`~pipeline.storage.base.Storage` (``OUTPUT_URL=s3://bucket/prefix``).

Any S3-compatible service: AWS S3, MinIO, Cloudflare R2, GCS's S3 API (``S3_ENDPOINT_URL`` for all
but AWS). The client is obstore (chosen by measurement: ``python -m bench.s3_clients``), imported
only here, and this module only when an ``s3://`` location is opened.

- A PUT is atomic: an object is visible whole or not at all, so :meth:`S3Storage.write` needs no
  temporary object.
- :meth:`S3Storage.create` is a conditional PUT (``If-None-Match: *``): the service answers 412 when
  the key exists, so two workers never both take a name.
- Credentials come from :class:`~pipeline.settings.Settings` (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``); without them the client uses the machine's own
  (instance role, container or web identity credentials), as AWS's SDKs do. Errors are reworded
  here from the service's status and error code only: its message bodies can echo the access key,
  so none reaches a log, a record or a client.
- The client's runtime starts with its first request and does not survive ``fork()``: a process
  that forks workers must make no request first (``sdpipe worker`` probes the bucket in a child).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from pipeline.errors import StorageRefused, StorageUnavailable
from pipeline.storage.base import S3_SCHEME, STREAM_CHUNK_BYTES, ByteRange, Data, Download, Entry, check_ranges

if TYPE_CHECKING:
    from obstore import BytesStream

    from pipeline.settings import Settings

__all__ = ["DEFAULT_S3_REGION", "S3Storage"]

logger = logging.getLogger(__name__)

#: The region signed for when none is set (AWS's default; MinIO and moto accept any).
DEFAULT_S3_REGION = "us-east-1"
#: A request that gets no answer within this is a failure (then retried, at most ``_RETRIES`` times).
_TIMEOUT_S = 60
_CONNECT_TIMEOUT_S = 5
_RETRIES = 3
#: Keys per bulk DELETE (S3 takes at most 1000).
_DELETE_CHUNK = 1000
_STATUS_RE = re.compile(r"status code: (\d{3})")
_CODE_RE = re.compile(r"<Code>(\w+)</Code>")


class S3Storage:
    """Objects under ``s3://bucket/prefix``; keys are relative to the prefix."""

    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"{S3_SCHEME}{bucket}" + (f"/{prefix}" if prefix else "")
        self.settings = settings
        endpoint = settings.s3_endpoint_url
        config: dict[str, Any] = {"region": settings.aws_region or DEFAULT_S3_REGION}
        if endpoint:
            config["endpoint"] = endpoint
        for name, value in (
            ("access_key_id", settings.aws_access_key_id),
            ("secret_access_key", settings.aws_secret_access_key),
            ("session_token", settings.aws_session_token),
        ):
            if value is not None:
                config[name] = value.get_secret_value()
        #: Values that must never appear in a message (scrubbed from anything reworded here).
        self._secrets = [v for k, v in config.items() if k != "region" and k != "endpoint" and v]
        self._store = S3Store(
            bucket,
            prefix=prefix or None,
            config=config,  # type: ignore[arg-type]  # a dict of S3Config keys
            client_options={
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                "timeout": timedelta(seconds=_TIMEOUT_S),
                "connect_timeout": timedelta(seconds=_CONNECT_TIMEOUT_S),
            },
            retry_config={"max_retries": _RETRIES, "retry_timeout": timedelta(seconds=_TIMEOUT_S)},
        )

    def location(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    def key_of(self, location: str) -> str | None:
        return location[len(self.url) + 1 :] if location.startswith(self.url + "/") else None

    def local_path(self, key: str) -> None:
        return None

    def read(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"no object {self.location(key)}") from None
        except Exception as exc:
            raise self._error("read", key, exc) from None

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        check_ranges(ranges)
        if not ranges:
            return []
        try:
            # obstore joins ranges less than 1 MiB apart into one GET (rows of a region: one request
            # for its band of rows) and sends up to 10 at once.
            found = obstore.get_ranges(
                self._store, key, starts=[start for start, _ in ranges], ends=[end for _, end in ranges]
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"no object {self.location(key)}") from None
        except Exception as exc:
            if "InvalidRange" in str(exc) or "416" in _STATUS_RE.findall(str(exc)):
                raise ValueError(f"{self.location(key)} is cut short: a range starts past its end") from None
            raise self._error("read", key, exc) from None
        for (start, end), data in zip(ranges, found, strict=True):
            if len(data) != end - start:  # S3 answers a range past the end with what there is
                raise ValueError(f"{self.location(key)} is cut short: bytes {start}-{end} asked")
        return [bytes(data) for data in found]

    def stream(self, key: str, chunk_bytes: int = STREAM_CHUNK_BYTES) -> Download:
        try:
            result = obstore.get(self._store, key)
        except FileNotFoundError:
            raise FileNotFoundError(f"no object {self.location(key)}") from None
        except Exception as exc:
            raise self._error("read", key, exc) from None
        return Download(int(result.meta["size"]), self._chunks(key, result.stream(min_chunk_size=chunk_bytes)))

    def _chunks(self, key: str, stream: BytesStream) -> Iterator[bytes]:
        try:
            yield from stream
        except Exception as exc:
            raise self._error("read", key, exc) from None

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self._error("check", key, exc) from None
        return True

    def exists_unsynced(self, key: str) -> bool:
        return self.exists(key)  # a PUT that returned is durable

    def write(self, key: str, data: Data, *, durable: bool = True, sync_folder: bool = True) -> None:
        body = data if isinstance(data, bytes) else _join(data)
        try:
            obstore.put(self._store, key, body)
        except Exception as exc:
            raise self._error("write", key, exc) from None

    def create(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        try:  # a PUT is durable either way
            obstore.put(self._store, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as exc:
            raise self._error("write", key, exc) from None
        return True

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        try:
            obstore.delete(self._store, key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self._error("remove", key, exc) from None
        return True

    def delete_prefix(self, prefix: str) -> int:
        keys = [entry.key for entry in self.list(prefix)]
        for start in range(0, len(keys), _DELETE_CHUNK):
            try:
                obstore.delete(self._store, keys[start : start + _DELETE_CHUNK])
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise self._error("remove", prefix, exc) from None
        return len(keys)

    def list(self, prefix: str) -> list[Entry]:
        found = []
        try:
            for chunk in obstore.list(self._store, prefix=prefix.rstrip("/") or None):
                for meta in chunk:
                    found.append(Entry(str(meta["path"]), int(meta["size"]), meta["last_modified"].timestamp()))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._error("list", prefix, exc) from None
        return sorted(found)

    def presign_get(self, key: str, expiry_s: float) -> str:
        try:
            return obstore.sign(self._store, "GET", key, timedelta(seconds=expiry_s))
        except Exception as exc:
            raise self._error("sign a URL for", key, exc) from None

    def _error(self, doing: str, key: str, exc: Exception) -> StorageRefused | StorageUnavailable:
        """The service's failure as our error: its status and S3 error code, never its message body."""
        text = str(exc)
        status = _STATUS_RE.search(text)
        code = _CODE_RE.search(text)
        detail = " ".join(
            part for part in (status.group(1) if status else None, code.group(1) if code else None) if part
        )
        where = self.location(key)
        if isinstance(exc, UnauthenticatedError | PermissionDeniedError) or (code and code.group(1) in _REFUSALS):
            message = f"object store refused to {doing} {where}: {detail or type(exc).__name__}"
            field = "OUTPUT_URL" if code and code.group(1) == "NoSuchBucket" else "AWS_ACCESS_KEY_ID"
            return StorageRefused(self._scrub(message), field=field, value=self.url)
        if isinstance(exc, FileNotFoundError):  # a write into a bucket that does not exist
            return StorageRefused(
                self._scrub(f"object store refused to {doing} {where}: the bucket does not exist"),
                field="OUTPUT_URL",
                value=self.url,
            )
        reason = detail or _first_reason(text)
        return StorageUnavailable(
            self._scrub(f"object store failed to {doing} {where}: {reason}"), field="S3_ENDPOINT_URL", value=self.url
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


#: S3 error codes that retrying cannot fix.
_REFUSALS = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidToken",
    }
)


_CAUSES = ("connection refused", "timed out", "timeout", "dns error", "connection reset", "error sending request")


def _first_reason(text: str) -> str:
    """A short cause from the client's message (connection refused, timed out), without URLs or bodies."""
    lowered = text.lower()
    for cause in _CAUSES:
        if cause in lowered:
            return cause
    return "request failed"


def _join(pieces: Data) -> bytes:
    if isinstance(pieces, bytearray | memoryview):
        return bytes(pieces)
    return b"".join(pieces)  # type: ignore[arg-type]
