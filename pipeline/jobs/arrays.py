"""The arrays files the steps hand each other (``tiles.arrays``, ``upscale/enlarged.arrays``...): a JSON
header, then raw C-order bytes; no image re-encoding, no per-tile files. One atomic write each (a
temporary file and rename on disk, one PUT in a bucket).

Layout: :data:`ARRAYS_MAGIC`, the header's length (uint32, little-endian), the header (UTF-8 JSON:
``{"meta": ..., "arrays": [{"dtype", "shape"}, ...]}``), then each array's bytes, one after another.
A row of an image array is one contiguous run of bytes, so a region of it is one run per row, at
offsets the header gives: :func:`read_region` reads only those (a memory map on disk; ranged GETs
from a bucket, the rows of a region fetched together), so a tile of an 8192² image costs its band
of rows, not the image.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.storage.base import Blob
from pipeline.storage.local import LocalStorage, boot_time

# numpy is imported by the functions that use arrays: most callers of pipeline.jobs.files only name files.
if TYPE_CHECKING:
    import numpy as np

__all__ = ["ARRAYS_MAGIC", "atomic_save_arrays", "load_arrays", "map_arrays", "read_region"]

#: First bytes of an intermediate arrays file (:func:`atomic_save_arrays`).
ARRAYS_MAGIC = b"SDPIPE-ARRAYS-1\n"
#: Where the header starts: after the magic and its length.
_HEADER_AT = len(ARRAYS_MAGIC) + 4


@dataclass(frozen=True)
class _Slot:
    """Where one array of a file is: its dtype, shape and first byte."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def atomic_save_arrays(
    target: Path | Blob, meta: dict[str, Any], arrays: Sequence[np.ndarray], *, durable: bool = True
) -> None:
    """Save ``meta`` (JSON) and ``arrays`` in one file (or object), atomically (see the module's layout);
    ``durable=False`` for a file that can be made again (:meth:`~pipeline.storage.base.Storage.write`)."""
    import numpy as np

    contiguous = [np.ascontiguousarray(array) for array in arrays]
    header = {"meta": meta, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in contiguous]}
    header_bytes = json.dumps(header, ensure_ascii=False).encode()
    prefix = ARRAYS_MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes
    _as_blob(target).write([prefix, *(a.data.cast("B") for a in contiguous)], durable=durable)


def load_arrays(source: Path | Blob, *, unsynced: bool = False) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The ``meta`` and arrays saved by :func:`atomic_save_arrays`; the arrays are writable views of one
    buffer, filled in place (a file with one read, an object chunk by chunk: never two copies).
    ``unsynced``: it was saved with ``durable=False``, so a file from before this machine last
    started is refused (:meth:`~pipeline.storage.base.Storage.exists_unsynced`).

    Raises:
        ValueError: the file is not such a file, is cut short, or (``unsynced``) is not to be trusted.
        FileNotFoundError: there is none.
    """
    import numpy as np

    source = _as_blob(source)
    path = source.path
    if path is not None:
        found = path.stat()
        if unsynced and found.st_mtime <= boot_time():
            raise ValueError(f"{source} was written before this machine last started (maybe cut by a crash)")
        buffer = bytearray(found.st_size)
        with path.open("rb", buffering=0) as handle:
            filled = handle.readinto(buffer)
    else:
        download = source.stream()
        buffer = bytearray(download.size)
        filled = 0
        for chunk in download.chunks:
            buffer[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
    if filled != len(buffer):
        raise ValueError(f"{source} is cut short")
    if len(buffer) < _HEADER_AT or not buffer.startswith(ARRAYS_MAGIC):
        raise ValueError(f"{source} is not an sdpipe arrays file")
    (header_len,) = struct.unpack_from("<I", buffer, len(ARRAYS_MAGIC))
    meta, slots = _layout(source, buffer[_HEADER_AT : _HEADER_AT + header_len], len(buffer))
    arrays = [
        np.frombuffer(buffer, dtype=slot.dtype, count=math.prod(slot.shape), offset=slot.offset).reshape(slot.shape)
        for slot in slots
    ]
    return meta, arrays


def map_arrays(source: Path | Blob) -> tuple[dict[str, Any], list[np.ndarray]]:
    """:func:`load_arrays` without reading the pixels: read-only memory maps of a local file, so a
    caller that needs one region of a large image reads only that region's pages. (An object in a
    bucket is read whole: :func:`load_arrays`; for a region of one, :func:`read_region`.)

    Raises:
        ValueError: the file is not such a file, or is cut short.
    """
    import numpy as np

    source = _as_blob(source)
    path = source.path
    if path is None:
        return load_arrays(source)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(_HEADER_AT)
        if len(head) < _HEADER_AT or not head.startswith(ARRAYS_MAGIC):
            raise ValueError(f"{path} is not an sdpipe arrays file")
        (header_len,) = struct.unpack_from("<I", head, len(ARRAYS_MAGIC))
        meta, slots = _layout(source, handle.read(header_len), size)
    arrays: list[np.ndarray] = [
        np.memmap(path, dtype=slot.dtype, mode="r", offset=slot.offset, shape=slot.shape) for slot in slots
    ]
    return meta, arrays


def read_region(source: Path | Blob, rows: tuple[int, int], cols: tuple[int, int], *, index: int = 0) -> np.ndarray:
    """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of array ``index`` (an image: height,
    width, then channels), read alone: through the memory map on disk, by byte ranges (one per row,
    fetched together) from a bucket. A writable array of its own.

    Raises:
        ValueError: not an arrays file, cut short, no array ``index``, or a region outside it.
        FileNotFoundError: there is none.
    """
    import numpy as np

    source = _as_blob(source)
    (y0, y1), (x0, x1) = rows, cols
    if source.path is not None:
        _, arrays = map_arrays(source)
        slot_shape = arrays[index].shape if 0 <= index < len(arrays) else ()
        _check_region(source, slot_shape, index, rows, cols)
        return np.array(arrays[index][y0:y1, x0:x1])
    [prefix] = source.read_ranges([(0, _HEADER_AT)])
    if not prefix.startswith(ARRAYS_MAGIC):
        raise ValueError(f"{source} is not an sdpipe arrays file")
    (header_len,) = struct.unpack_from("<I", prefix, len(ARRAYS_MAGIC))
    [header] = source.read_ranges([(_HEADER_AT, _HEADER_AT + header_len)])
    _, slots = _layout(source, header, None)
    slot = slots[index] if 0 <= index < len(slots) else None
    _check_region(source, slot.shape if slot else (), index, rows, cols)
    assert slot is not None
    pixel_bytes = math.prod(slot.shape[2:]) * slot.dtype.itemsize
    row_bytes = slot.shape[1] * pixel_bytes
    first = slot.offset + y0 * row_bytes
    if (x0, x1) == (0, slot.shape[1]):  # whole rows: one run of bytes
        ranges = [(first, first + (y1 - y0) * row_bytes)]
    else:
        ranges = [
            (first + r * row_bytes + x0 * pixel_bytes, first + r * row_bytes + x1 * pixel_bytes) for r in range(y1 - y0)
        ]
    data = bytearray().join(source.read_ranges(ranges))
    return np.frombuffer(data, dtype=slot.dtype).reshape((y1 - y0, x1 - x0, *slot.shape[2:]))


def _check_region(
    source: Blob, shape: tuple[int, ...], index: int, rows: tuple[int, int], cols: tuple[int, int]
) -> None:
    if len(shape) < 2:
        raise ValueError(f"{source} has no image array {index}")
    if not (0 <= rows[0] < rows[1] <= shape[0] and 0 <= cols[0] < cols[1] <= shape[1]):
        raise ValueError(f"rows {rows} and columns {cols} are outside {source}'s {shape[1]}x{shape[0]} image")


def _layout(source: Blob, header_bytes: bytes | bytearray, size: int | None) -> tuple[dict[str, Any], list[_Slot]]:
    """The meta of a header and where each array is; checked against the file's ``size`` when known."""
    import numpy as np

    header = json.loads(header_bytes)
    offset = _HEADER_AT + len(header_bytes)
    slots = []
    for entry in header["arrays"]:
        slot = _Slot(np.dtype(entry["dtype"]), tuple(int(n) for n in entry["shape"]), offset)
        if size is not None and offset + slot.nbytes > size:
            raise ValueError(f"{source} is cut short")
        slots.append(slot)
        offset += slot.nbytes
    return header["meta"], slots


def _as_blob(target: Path | Blob) -> Blob:
    if isinstance(target, Blob):
        return target
    return Blob(LocalStorage(target.absolute().parent), target.name)
