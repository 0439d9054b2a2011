"""Files on disk: atomic writes, output naming, and each job's work folder.

Every file sdpipe writes goes through :func:`atomic_write_bytes` (temporary file in the same folder,
fsync, rename), so a crash leaves either the old file or the new one, never half of one.

Layout under ``OUTPUT_DIR``::

    <name>.png / .webp / .jpg      final image
    <name>.json                    its sidecar
    .sdpipe/status.sqlite3         embedded-mode status store
    .sdpipe/work/<job id>/         intermediates, removed when the job succeeds (kept on failure)
        sd.json                    what the SD server said (written before source.img)
        source.img                 the image as received or ingested (its presence = step done)
        tiles/r<row>c<col>.npy     split output: raw arrays with halos
        tiles/manifest.json        split done marker: size, mode, infotext, tile boxes
        blurred/r<row>c<col>.npy   seam-blur output
        blurred/manifest.json      seam-blur done marker

Workers on several machines must see the same ``OUTPUT_DIR`` (a shared filesystem such as NFS):
each step reads the previous step's files from the job's work folder.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "JobFiles",
    "atomic_save_array",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_dir",
    "default_output_name",
    "load_array",
    "read_json",
    "remove_stale_temps",
    "safe_output_stem",
    "slugify",
]

#: Folder under OUTPUT_DIR for sdpipe's own files (status database, work folders).
STATE_DIR_NAME = ".sdpipe"
#: Longest prompt slug in a default output name, in characters.
SLUG_MAX_CHARS = 48
#: Extension of each output format.
FORMAT_EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}

_SLUG_STRIP = re.compile(r"[^a-z0-9]+")
_STEM_OK = re.compile(r"^[A-Za-z0-9._ -]+$")


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of the files sdpipe writes: what ``open()`` would give under the process's umask (read once,
#: at import, while single-threaded). ``mkstemp`` alone would leave them 0600, unreadable to other
#: users of a shared OUTPUT_DIR and to servers that publish the images.
FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    return json.loads(path.read_bytes())


def atomic_save_array(path: Path, array: np.ndarray) -> None:
    """Save a raw ``.npy`` array atomically (cheap intermediates: no image re-encoding)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def load_array(path: Path) -> np.ndarray:
    """Load an array saved by :func:`atomic_save_array`."""
    return np.load(path, allow_pickle=False)  # type: ignore[no-any-return]


def slugify(text: str, max_chars: int = SLUG_MAX_CHARS) -> str:
    """A lowercase ASCII slug of ``text`` for file names (``"A lighthouse, dusk!"`` -> ``a-lighthouse-dusk``)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    slug = _SLUG_STRIP.sub("-", ascii_text).strip("-")
    return slug[:max_chars].rstrip("-") or "image"


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
        raise InputError(f"output name {name!r} would leave OUTPUT_DIR", hint="use a plain file name without / or ..")
    if not _STEM_OK.match(stem) or len(stem) > 200:
        raise InputError(
            f"output name {name!r} has characters that are not allowed",
            hint="use letters, digits, spaces, '.', '_' and '-' (at most 200)",
        )
    return stem


def check_output_dir(output_dir: Path) -> Path:
    """Create OUTPUT_DIR if needed and prove it is writable; return its absolute path.

    Raises:
        InputError: it is a file, or cannot be created or written.
    """
    path = output_dir.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"OUTPUT_DIR {path} is a file, not a folder", hint="set OUTPUT_DIR or --out to a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".sdpipe-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise InputError(
            f"OUTPUT_DIR {path} is not writable ({exc.strerror or exc})",
            hint="choose another folder with --out or OUTPUT_DIR, or fix its permissions",
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
    def tiles_dir(self) -> Path:
        return self.work_dir / "tiles"

    @property
    def blurred_dir(self) -> Path:
        return self.work_dir / "blurred"

    @staticmethod
    def tile_name(row: int, col: int) -> str:
        return f"r{row}c{col}.npy"

    def image(self, output_name: str, output_format: str) -> Path:
        return self.output_dir / (output_name + FORMAT_EXTENSIONS[output_format])

    def sidecar(self, output_name: str) -> Path:
        return self.output_dir / (output_name + ".json")

    def remove_work_dir(self) -> None:
        """Delete the intermediates (after success)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)
