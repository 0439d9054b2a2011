"""A local folder as a :class:`~pipeline.storage.base.Storage` (``OUTPUT_DIR``, the default).

Every file goes through :func:`atomic_write_bytes` (temporary file in the same folder, rename), so a
crash leaves either the old file or the new one, never half of one. A durable write (the default)
also fsyncs the file before the rename and its folder after it, so the file survives a crash of
the machine; an intermediate that can be made again is written without (``durable=False``: it is
usually removed before the kernel would write it out at all), and a reader trusts such a file only
if it was written since the machine last started (:meth:`LocalStorage.exists_unsynced`). Exclusive
creation is a hard link of a complete temporary file: it either creates the name, whole, or fails
because the name exists (like ``O_EXCL``, also on NFS).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from pipeline.storage.base import STREAM_CHUNK_BYTES, ByteRange, Data, Download, Entry, check_ranges

__all__ = ["FILE_MODE", "LocalStorage", "atomic_write_bytes", "boot_time", "remove_stale_temps"]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of the files sdpipe writes: what ``open()`` would give under the process's umask (read once,
#: at import, while single-threaded). ``mkstemp`` alone would leave them 0600, unreadable to other
#: users of a shared OUTPUT_DIR and to servers that publish the images.
FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, data: Data, *, durable: bool = True, sync_folder: bool = True) -> None:
    """Write ``data`` (bytes, or pieces written one after another) to ``path`` atomically: temp file
    in the same folder, rename; ``durable``: the file fsynced before the rename, and (unless
    ``sync_folder`` is False: the caller's next durable write in the same folder does it) the folder
    after."""
    fd, tmp = _temp_beside(path, durable=durable)
    try:
        _fill(fd, data, durable=durable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable and sync_folder:
        _sync_folder(path.parent)


_boot_time: float | None = None


def boot_time() -> float:
    """When this machine last started (epoch seconds; read once per process): Linux's ``btime``, or
    elsewhere the clock minus the monotonic clock (which, not counting sleep, errs late: safe here)."""
    global _boot_time
    if _boot_time is None:
        found = None
        with contextlib.suppress(OSError, ValueError):
            with open("/proc/stat", "rb") as handle:
                for line in handle:
                    if line.startswith(b"btime "):
                        found = float(line.split()[1])
                        break
        _boot_time = found if found is not None else time.time() - time.monotonic()
    return _boot_time


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files a killed writer of ``path`` left (SIGKILL skips :func:`atomic_write_bytes`'s
    cleanup). Call it only from the one delivery that now owns ``path``."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _temp_beside(path: Path, *, durable: bool) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:  # the first file of its folder
        _make_folders(path.parent, durable=durable)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _make_folders(folder: Path, *, durable: bool) -> None:
    """Create ``folder`` and its missing parents; ``durable``: each new entry synced in its parent."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        if durable:
            _sync_folder(new.parent)


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so the names created or renamed in it survive a crash (where a folder can be
    opened: not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot sync folders
        pass
    finally:
        os.close(fd)


def _fill(fd: int, data: Data, *, durable: bool = True) -> None:
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        pieces: Sequence[bytes | bytearray | memoryview] = (
            (data,) if isinstance(data, bytes | bytearray | memoryview) else data
        )
        for piece in pieces:
            handle.write(piece)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def _remove_tree(folder: str) -> int:
    """Remove a folder and everything in it, ignoring what vanishes or resists meanwhile (as
    ``shutil.rmtree(ignore_errors=True)``, in one pass over it); how many files it held."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:  # gone, or not a folder
        return 0
    count = 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                count += _remove_tree(entry.path)
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        count += 1
    with contextlib.suppress(OSError):
        os.rmdir(folder)
    return count


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

    def exists_unsynced(self, key: str) -> bool:
        # A file written since this machine started cannot have been cut by its crash; one from
        # before may be (an unsynced file's data can be lost while its name survives).
        try:
            modified_at = os.stat(self._path(key)).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return False
        return modified_at > boot_time()

    def write(self, key: str, data: Data, *, durable: bool = True, sync_folder: bool = True) -> None:
        atomic_write_bytes(self._path(key), data, durable=durable, sync_folder=sync_folder)

    def create(self, key: str, data: bytes, *, durable: bool = True) -> bool:
        path = self._path(key)
        fd, tmp = _temp_beside(path, durable=durable)
        try:
            _fill(fd, data, durable=durable)
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        # The folder is not synced: a name claimed and lost to a crash is simply free again, for
        # this job's next delivery as for any other job (the claim's content is synced: never torn).
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
        return _remove_tree(self.location(prefix.rstrip("/")))

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
