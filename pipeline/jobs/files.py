"""Files on disk: atomic writes, output naming, and each job's work folder.

Every file sdpipe writes goes through :func:`atomic_write_bytes` (temporary file in the same folder,
fsync, rename), so a crash leaves either the old file or the new one, never half of one.

Layout under ``OUTPUT_DIR``::

    <name>.png / .webp / .jpg      final image (<name> from OUTPUT_NAME; may hold folders: 20261207/fox-7)
    <name>.json                    its sidecar (first written as the claim of <name>: see claim_output_name)
    .sdpipe/status.sqlite3         embedded-mode status store
    .sdpipe/work/<job id>/         intermediates, removed when the job succeeds (kept on failure)
        sd.json                    what the SD server said (written before source.img)
        output_name                the output name this job claimed (fixed once)
        source.img                 the image as received or ingested (its presence = step done)
        tiles.arrays               split output: the manifest (size, mode, infotext, tile boxes)
                                   and every tile's raw pixels with halos, in one file
        blurred.arrays             seam-blur output, the same way

Each step writes one intermediate file (one atomic write, one fsync), whose presence means the step
is done: :func:`atomic_save_arrays` / :func:`load_arrays` (a JSON header, then raw C-order bytes:
no image re-encoding, no per-tile files).

Workers on several machines must see the same ``OUTPUT_DIR`` (a shared filesystem such as NFS):
each step reads the previous step's files from the job's work folder.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError
from pipeline.jobs.naming import check_output_name, is_name_char, slugify

# numpy is imported by the functions that use arrays: most callers (the CLI's readers) only name files.
if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "JobFiles",
    "atomic_save_arrays",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_dir",
    "claim_output_name",
    "default_output_name",
    "iso_time",
    "load_arrays",
    "map_arrays",
    "read_json",
    "remove_stale_temps",
    "safe_output_stem",
    "slugify",
]

#: Folder under OUTPUT_DIR for sdpipe's own files (status database, work folders).
STATE_DIR_NAME = ".sdpipe"
#: First bytes of an intermediate arrays file (:func:`atomic_save_arrays`).
ARRAYS_MAGIC = b"SDPIPE-ARRAYS-1\n"
#: Extension of each output format.
FORMAT_EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of the files sdpipe writes: what ``open()`` would give under the process's umask (read once,
#: at import, while single-threaded). ``mkstemp`` alone would leave them 0600, unreadable to other
#: users of a shared OUTPUT_DIR and to servers that publish the images.
FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, data: bytes | Sequence[bytes | memoryview]) -> None:
    """Write ``data`` (bytes, or pieces written one after another) to ``path`` atomically: temp file
    in the same folder, fsync, rename."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:  # the first file of its folder
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            for piece in (data,) if isinstance(data, bytes) else data:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
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


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode())


def iso_time(ts: float) -> str:
    """Epoch seconds as sdpipe writes moments (sidecars, ``--json``): ISO 8601, UTC, milliseconds,
    e.g. ``2026-12-07T13:20:01.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    return json.loads(path.read_bytes())


def atomic_save_arrays(path: Path, meta: dict[str, Any], arrays: Sequence[np.ndarray]) -> None:
    """Save ``meta`` (JSON) and ``arrays`` in one file, atomically: see :func:`load_arrays`.

    Layout: :data:`ARRAYS_MAGIC`, the header's length (uint32, little-endian), the header (UTF-8 JSON:
    ``{"meta": ..., "arrays": [{"dtype", "shape"}, ...]}``), then each array's raw C-order bytes.
    """
    import numpy as np

    contiguous = [np.ascontiguousarray(array) for array in arrays]
    header = {"meta": meta, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in contiguous]}
    header_bytes = json.dumps(header, ensure_ascii=False).encode()
    prefix = ARRAYS_MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes
    atomic_write_bytes(path, [prefix, *(a.data.cast("B") for a in contiguous)])


def load_arrays(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The ``meta`` and arrays saved by :func:`atomic_save_arrays`; the arrays are writable views of one buffer.

    Raises:
        ValueError: the file is not such a file, or is cut short.
    """
    import numpy as np

    buffer = bytearray(path.stat().st_size)
    with path.open("rb", buffering=0) as handle:
        read = handle.readinto(buffer)
    start = len(ARRAYS_MAGIC) + 4
    if read != len(buffer) or len(buffer) < start or not buffer.startswith(ARRAYS_MAGIC):
        raise ValueError(f"{path} is not an sdpipe arrays file")
    (header_len,) = struct.unpack_from("<I", buffer, len(ARRAYS_MAGIC))
    header = json.loads(buffer[start : start + header_len])
    offset = start + header_len
    arrays = []
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(n) for n in entry["shape"])
        count = math.prod(shape)
        if offset + count * dtype.itemsize > len(buffer):
            raise ValueError(f"{path} is cut short")
        arrays.append(np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape))
        offset += count * dtype.itemsize
    return header["meta"], arrays


def map_arrays(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """:func:`load_arrays` without reading the pixels: read-only memory maps of the file, so a caller
    that needs one region of a large image reads only that region's pages.

    Raises:
        ValueError: the file is not such a file, or is cut short.
    """
    import numpy as np

    size = path.stat().st_size
    start = len(ARRAYS_MAGIC) + 4
    with path.open("rb") as handle:
        head = handle.read(start)
        if len(head) < start or not head.startswith(ARRAYS_MAGIC):
            raise ValueError(f"{path} is not an sdpipe arrays file")
        (header_len,) = struct.unpack_from("<I", head, len(ARRAYS_MAGIC))
        header = json.loads(handle.read(header_len))
    offset = start + header_len
    arrays: list[np.ndarray] = []
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(n) for n in entry["shape"])
        length = math.prod(shape) * dtype.itemsize
        if offset + length > size:
            raise ValueError(f"{path} is cut short")
        arrays.append(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape))
        offset += length
    return header["meta"], arrays


def default_output_name(created_at: float, job_id: str, label: str) -> str:
    """``<YYYYmmdd-HHMMSS>-<job id prefix>-<slug of label>``, from the job's creation time (local, as A1111)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created_at))
    return f"{stamp}-{job_id[:8]}-{slugify(label)}"


def safe_output_stem(name: str) -> str:
    """Check a user-given output name stays a plain file name inside OUTPUT_DIR.

    Raises:
        InputError: the name is empty, absolute, has a path separator or ``..``, or odd characters.
    """
    stem = name.strip()
    for ext in FORMAT_EXTENSIONS.values():
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    if not stem or stem in (".", "..") or stem.startswith(".") or "/" in stem or "\\" in stem:
        raise InputError(
            f"output name {name!r} would leave OUTPUT_DIR",
            field="name",
            value=name,
            expected="a plain file name without / or ..",
        )
    if not all(is_name_char(char) for char in stem) or len(stem) > 200:
        raise InputError(
            f"output name {name!r} has characters that are not allowed",
            field="name",
            value=name,
            limit=200,
            expected="letters, digits, spaces, '.', '_' and '-' (at most 200)",
        )
    return stem


def check_output_dir(output_dir: Path) -> Path:
    """Create OUTPUT_DIR if needed and prove it is writable; return its absolute path.

    Raises:
        InputError: it is a file, or cannot be created or written.
    """
    path = output_dir.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(
            f"OUTPUT_DIR {path} is a file, not a folder", field="OUTPUT_DIR", value=str(path), expected="a folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".sdpipe-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise InputError(
            f"OUTPUT_DIR {path} is not writable ({exc.strerror or exc})",
            field="OUTPUT_DIR",
            value=str(path),
            expected="a writable folder",
        ) from exc
    return path


class JobFiles:
    """Paths of one job's files; every path derives from OUTPUT_DIR and the job id only."""

    def __init__(self, output_dir: Path, job_id: str) -> None:
        self.output_dir = output_dir
        self.job_id = job_id
        self.work_dir = output_dir / STATE_DIR_NAME / "work" / job_id

    @property
    def sd_info(self) -> Path:
        return self.work_dir / "sd.json"

    @property
    def source(self) -> Path:
        return self.work_dir / "source.img"

    @property
    def tiles(self) -> Path:
        """The split step's output (manifest and tiles, :func:`atomic_save_arrays`)."""
        return self.work_dir / "tiles.arrays"

    @property
    def blurred(self) -> Path:
        """The seam-blur step's output (manifest and blurred tiles)."""
        return self.work_dir / "blurred.arrays"

    @property
    def claimed_name(self) -> Path:
        """The output name this job claimed (:func:`claim_output_name`), once it has."""
        return self.work_dir / "output_name"

    def image(self, output_name: str, output_format: str) -> Path:
        return self.output_dir / (output_name + FORMAT_EXTENSIONS[output_format])

    def sidecar(self, output_name: str) -> Path:
        return self.output_dir / (output_name + ".json")

    def remove_work_dir(self) -> None:
        """Delete the intermediates (after success)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


#: Digits of the counter that keeps outputs apart: ``same.png``, ``same-0001.png``, ``same-0002.png``.
COUNTER_DIGITS = 4


def claim_output_name(files: JobFiles, name: str, output_format: str, *, overwrite: bool = False) -> str:
    """The output name (without extension) this job writes: ``name``, or ``name-0001``, ``name-0002``...
    when an earlier file has it, never another job's or a file sdpipe did not write (A1111's rule).

    Fixed once per job: the first call records the name in the job's work folder and every later
    delivery or retry of the job reads it back, so a re-run never makes a second file. A name is
    claimed by creating its sidecar exclusively (a hard link of a complete file) with the job's id,
    so two jobs merging at once cannot take the same one; the claim is replaced by the full sidecar
    on merge. With ``overwrite`` the name is used as it is, replacing what is there.

    Raises:
        InputError: the name would leave OUTPUT_DIR (through ``..``, an absolute path or a symlink).
    """
    try:
        return files.claimed_name.read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    check_output_name(name)
    root = files.output_dir.resolve()
    if not (files.output_dir / name).parent.resolve().is_relative_to(root):
        raise InputError(
            f"output name {name!r} leads outside OUTPUT_DIR (through a symlinked folder)",
            field="--name-template",
            value=name,
            expected="folders inside OUTPUT_DIR",
        )
    chosen = name
    if not overwrite:
        for counter in itertools.count():
            chosen = name if counter == 0 else f"{name}-{counter:0{COUNTER_DIGITS}d}"
            if _take_name(files, chosen, output_format):
                break
    atomic_write_bytes(files.claimed_name, chosen.encode())
    return chosen


def _take_name(files: JobFiles, name: str, output_format: str) -> bool:
    """Whether ``name`` is (now) this job's: its sidecar names the job, or it was free and is claimed."""
    sidecar = files.sidecar(name)
    if sidecar.exists():
        return _sidecar_owner(sidecar) == files.job_id
    if files.image(name, output_format).exists():
        return False  # a file sdpipe did not write (or whose sidecar is gone): never replaced unasked
    claim = {"job_id": files.job_id, "claimed": True, "note": "reserved for this job; replaced when it succeeds"}
    # Written whole to a temporary file, then hard-linked to the name: the link either creates the
    # sidecar, complete, or fails because it exists (exclusive like O_EXCL, also on NFS), so a
    # worker killed meanwhile never leaves an empty claim that would hold the name for nobody.
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{sidecar.name}.", suffix=".tmp", dir=sidecar.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write((json.dumps(claim) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, sidecar)
    except FileExistsError:  # another job claimed it between the check and here
        return _sidecar_owner(sidecar) == files.job_id
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def _sidecar_owner(sidecar: Path) -> str | None:
    try:
        owner = read_json(sidecar).get("job_id")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable, half-written by its claimant, or not ours: taken
    return owner if isinstance(owner, str) else None
