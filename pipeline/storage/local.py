"""A local folder as a :class:`~pipeline.storage.base.Storage` (``OUTPUT_DIR``, the default).

Every file goes through :func:`atomic_write_bytes` (temporary file in the same folder, fsync,
rename), so a crash leaves either the old file or the new one, never half of one. Exclusive
creation is a hard link of a complete temporary file: it either creates the name, whole, or fails
because the name exists (like ``O_EXCL``, also on NFS).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from pipeline.storage.base import STREAM_CHUNK_BYTES, ByteRange, Data, Download, Entry, check_ranges

__all__ = ["FILE_MODE", "LocalStorage", "atomic_write_bytes", "remove_stale_temps"]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of the files sdpipe writes: what ``open()`` would give under the process's umask (read once,
#: at import, while single-threaded). ``mkstemp`` alone would leave them 0600, unreadable to other
#: users of a shared OUTPUT_DIR and to servers that publish the images.
FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, data: Data) -> None:
    """Write ``data`` (bytes, or pieces written one after another) to ``path`` atomically: temp file
    in the same folder, fsync, rename."""
    fd, tmp = _temp_beside(path)
    try:
        _fill(fd, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files a killed writer of ``path`` left (SIGKILL skips :func:`atomic_write_bytes`'s
    cleanup). Call it only from the one delivery that now owns ``path``."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _temp_beside(path: Path) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:  # the first file of its folder
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _fill(fd: int, data: Data) -> None:
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        pieces: Sequence[bytes | bytearray | memoryview] = (
            (data,) if isinstance(data, bytes | bytearray | memoryview) else data
        )
        for piece in pieces:
            handle.write(piece)
        handle.flush()
        os.fsync(handle.fileno())


def _chunks(handle: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


class LocalStorage:
    """Files under one absolute folder; keys are paths relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def location(self, key: str) -> str:
        return str(self._path(key))

    def key_of(self, location: str) -> str | None:
        path = Path(location)
        if not path.is_absolute() or not path.is_relative_to(self.root):
            return None
        return path.relative_to(self.root).as_posix()

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        check_ranges(ranges)
        path = self._path(key)
        with path.open("rb", buffering=0) as handle:
            fd = handle.fileno()
            found = [os.pread(fd, end - start, start) for start, end in ranges]
        for (start, end), data in zip(ranges, found, strict=True):
            if len(data) != end - start:
                raise ValueError(f"{path} is cut short: bytes {start}-{end} asked, it ends at {start + len(data)}")
        return found

    def stream(self, key: str, chunk_bytes: int = STREAM_CHUNK_BYTES) -> Download:
        handle = self._path(key).open("rb")  # here, not in the generator: a missing file raises now
        return Download(os.fstat(handle.fileno()).st_size, _chunks(handle, chunk_bytes))

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def write(self, key: str, data: Data) -> None:
        atomic_write_bytes(self._path(key), data)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        fd, tmp = _temp_beside(path)
        try:
            _fill(fd, data)
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for path in folder.rglob("*") if not path.is_dir())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def list(self, prefix: str) -> list[Entry]:
        folder = self._path(prefix.rstrip("/"))
        found = []
        try:
            paths = list(folder.rglob("*"))
        except OSError:
            return []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:  # removed meanwhile
                continue
            if path.is_file():
                found.append(Entry(path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime))
        return sorted(found)

    def presign_get(self, key: str, expiry_s: float) -> None:
        return None
