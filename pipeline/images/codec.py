"""Image bytes <-> numpy arrays: format sniffing, bounded decoding, fast encoding with A1111 metadata.

Decoding refuses oversized input before any pixel is decoded: the byte size first, then the
width x height from the header (Pillow opens lazily). sdpipe's own ``max_pixels`` replaces Pillow's
decompression-bomb guard, so importing this module sets ``PIL.Image.MAX_IMAGE_PIXELS = None``: Pillow
would otherwise warn (or raise) on its own fixed limit, from inside ``Image.open``, before our check.

EXIF orientation (tag 0x0112) is applied on decode (Pillow's ``ImageOps.exif_transpose``): a photo
stored 384x256 with Orientation=6 decodes, probes and is written as the 256x384 image it shows.

The infotext travels the way A1111 writes and reads it: a PNG ``parameters`` text chunk, or the EXIF
UserComment (tag 0x9286 in the Exif IFD) of JPEG and WebP as ``b"UNICODE\\0"`` + UTF-16-BE.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from pipeline.errors import ImageError, InputError
from pipeline.images.png import encode_png, png_chunks_problem

__all__ = [
    "JPEG_QUALITY",
    "WEBP_QUALITY",
    "DecodedImage",
    "ImageHeader",
    "decode_failure_reason",
    "decode_image",
    "probe_image",
    "encode_image",
    "read_image_bytes",
    "read_image_file",
    "sniff_format",
]

#: A Python object's default repr, which means nothing to a user reading an error.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")

logger = logging.getLogger(__name__)

# PNG output is written by :mod:`pipeline.images.png` (numpy Up filter, ISA-L deflate level 3 on parallel
# bands); README "Performance" has its speed and sizes against zlib level 1 (its previous compressor),
# Pillow and sharp.
#: JPEG quality of written files.
JPEG_QUALITY = 95
#: WebP (lossy) quality of written files.
WEBP_QUALITY = 95

#: EXIF tags: Orientation in IFD0, the Exif IFD pointer in IFD0, and UserComment inside it.
_ORIENTATION_TAG = 0x0112
_EXIF_IFD_TAG = 0x8769
_USER_COMMENT_TAG = 0x9286
#: The largest EXIF payload a JPEG APP1 segment holds, in bytes.
_JPEG_MAX_EXIF_BYTES = 65533

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}

# Our max_pixels check replaces Pillow's global guard (see the module docstring).
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: a uint8 array in mode L (H, W), RGB (H, W, 3) or RGBA (H, W, 4)."""

    array: NDArray[np.uint8]
    mode: str
    #: The sniffed container format: ``png``, ``jpeg``, ``webp`` or ``gif``.
    format: str
    width: int
    height: int
    #: A1111 generation parameters found in the file's metadata, or None.
    infotext: str | None
    #: The EXIF orientation the file had (1..8; 1: none), already applied to ``array``.
    orientation: int = 1
    #: Frames in the file (an animation has more than one; ``array`` is the first).
    frames: int = 1
    #: Bits per channel in the file (16 for a 16-bit PNG; ``array`` always has 8).
    bit_depth: int = 8


@dataclass(frozen=True)
class ImageHeader:
    """What :func:`probe_image` learns without decoding pixels."""

    #: The sniffed container format: ``png``, ``jpeg``, ``webp`` or ``gif``.
    format: str
    #: The size as shown, EXIF orientation applied (a rotated photo's sides swapped).
    width: int
    height: int
    #: The EXIF orientation (1..8; 1: none).
    orientation: int = 1
    #: Frames in the file: more than one for an animated GIF, WebP or PNG (APNG).
    frames: int = 1
    #: Bits per channel in the file: 16 for a 16-bit PNG, else 8.
    bit_depth: int = 8


def sniff_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"``, ``"webp"`` or ``"gif"`` from the magic bytes; None for anything else."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int, what: str = "image") -> DecodedImage:
    """Decode PNG/JPEG/WebP/GIF bytes (first frame) into an L, RGB or RGBA array, refusing bombs.

    EXIF orientation is applied: pixels are returned as the image is shown, and the size with them.

    Raises:
        ImageError: too many bytes, too many pixels (checked from the header, before decoding),
            an unknown format, truncated or corrupt data.
    """
    fmt = _checked_format(data, max_bytes=max_bytes, what=what)
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]]) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{what} is {width}x{height} px, more than MAX_PIXELS ({max_pixels:,})",
                    field="MAX_PIXELS",
                    value=width * height,
                    limit=max_pixels,
                )
            im.load()
            infotext = _read_infotext(im)
            orientation = _orientation(im)
            frames = _frames(im)
            shown = ImageOps.exif_transpose(im) if orientation != 1 else im
            array = _to_array(shown)
    except ImageError:
        raise
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise _undecodable(what, fmt, decode_failure_reason(exc)) from exc
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[2]]
    height, width = array.shape[:2]
    return DecodedImage(
        array=array,
        mode=mode,
        format=fmt,
        width=width,
        height=height,
        infotext=infotext,
        orientation=orientation,
        frames=frames,
        bit_depth=_bit_depth(data, fmt),
    )


def _frames(im: Image.Image) -> int:
    """Frames in ``im``: Pillow reads APNG's and WebP's count from the header; a GIF's frames are
    counted (skipping their pixel data) only once a second frame is known to exist."""
    return int(getattr(im, "n_frames", 1)) if getattr(im, "is_animated", False) else 1


def _bit_depth(data: bytes, fmt: str) -> int:
    """Bits per channel: a PNG's IHDR says (byte 24); JPEG, WebP and GIF as sdpipe reads them have 8."""
    return max(8, data[24]) if fmt == "png" and len(data) > 24 else 8


def _orientation(im: Image.Image, *, lazy: bool = False) -> int:
    """The EXIF orientation of ``im`` (1..8), 1 when absent, invalid or unreadable.

    ``lazy``: only EXIF already read with the header (a PNG's ``eXIf`` after its pixel data would
    otherwise make Pillow decode the whole image).
    """
    if lazy and im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as exc:  # a broken EXIF block must not make the pixels unreadable
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _checked_format(data: bytes, *, max_bytes: int, what: str) -> str:
    """The sniffed format of ``data``, once it is within ``max_bytes``.

    Raises:
        ImageError: too many bytes, or not a format sdpipe reads.
    """
    if len(data) > max_bytes:
        raise ImageError(
            f"{what} is {_size_text(len(data))}, more than the {_size_text(max_bytes)} limit",
            field="bytes",
            value=len(data),
            limit=max_bytes,
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(
            f"{what} is not a PNG, JPEG, WebP or GIF image", field="format", expected="PNG, JPEG, WebP or GIF"
        )
    return fmt


def probe_image(data: bytes, *, max_pixels: int, max_bytes: int, what: str = "image") -> ImageHeader:
    """Check image bytes as :func:`decode_image` would, from the header and container only, without decoding.

    The limits, the format and the size come from the header (Pillow opens lazily); the container
    must then be complete: a PNG's chunks are walked (CRC-32 of each, up to ``IEND``), a JPEG must end
    with its EOI marker, a WebP must hold the bytes its RIFF header announces, a GIF must end with its
    trailer. That catches truncated and corrupt files for a few milliseconds at 1024², against tens
    for a decode; damage inside compressed pixel data with intact checksums is found by the decode in
    the split step instead.

    Raises:
        ImageError: as :func:`decode_image`.
    """
    fmt = _checked_format(data, max_bytes=max_bytes, what=what)
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]]) as im:
            width, height = im.size
            orientation = _orientation(im, lazy=True)
            frames = _frames(im)
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise _undecodable(what, fmt, decode_failure_reason(exc)) from exc
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} px, more than MAX_PIXELS ({max_pixels:,})",
            field="MAX_PIXELS",
            value=width * height,
            limit=max_pixels,
        )
    problem = _container_problem(data, fmt)
    if problem is not None:
        raise _undecodable(what, fmt, problem)
    if orientation >= 5:  # 5..8 turn the image by a quarter: its sides swap
        width, height = height, width
    return ImageHeader(
        format=fmt,
        width=width,
        height=height,
        orientation=orientation,
        frames=frames,
        bit_depth=_bit_depth(data, fmt),
    )


def _undecodable(what: str, fmt: str, problem: str) -> ImageError:
    message = f"{what} cannot be decoded as {fmt.upper()}: {problem}"
    return ImageError(message, field="data", value=fmt)


def _container_problem(data: bytes, fmt: str) -> str | None:
    """Why the container of ``data`` is incomplete or damaged, or None (see :func:`probe_image`)."""
    if fmt == "png":
        return png_chunks_problem(data)
    if fmt == "jpeg":
        return None if data.rstrip(b"\0").endswith(b"\xff\xd9") else "no end-of-image marker (truncated)"
    if fmt == "webp":
        announced = struct.unpack("<I", data[4:8])[0] + 8
        return None if len(data) >= announced else f"{len(data)} of {announced} bytes (truncated)"
    return None if data.rstrip(b"\0").endswith(b"\x3b") else "no GIF trailer (truncated)"


def read_image_bytes(path: Path, *, max_bytes: int) -> bytes:
    """Read an image file's bytes, checking its size on disk before reading it.

    Raises:
        InputError: the file is missing, a directory, or unreadable.
        ImageError: the file is larger than ``max_bytes``.
    """
    try:
        if path.is_dir():
            raise InputError(f"{path} is a directory", field="path", value=str(path), expected="an image file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(
                f"{path} is {_size_text(size)}, more than the {_size_text(max_bytes)} limit",
                field="bytes",
                value=size,
                limit=max_bytes,
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"no such file: {path}", field="path", value=str(path)) from exc
    except PermissionError as exc:
        raise InputError(f"cannot read {path}: permission denied", field="permissions", value=str(path)) from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}", field="path", value=str(path)) from exc


def read_image_file(path: Path, *, max_pixels: int, max_bytes: int) -> DecodedImage:
    """Read and decode an image file (see :func:`read_image_bytes` and :func:`decode_image`)."""
    data = read_image_bytes(path, max_bytes=max_bytes)
    return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes, what=str(path))


def encode_image(array: NDArray[np.uint8], *, format: str, infotext: str | None, quality: int | None = None) -> bytes:
    """Encode an L/RGB/RGBA array as ``png``, ``jpeg`` or ``webp``, embedding ``infotext`` A1111-style.

    JPEG drops the alpha channel; WebP stores L as RGB. ``quality`` (1..100) is JPEG's and WebP's
    (None: :data:`JPEG_QUALITY`, :data:`WEBP_QUALITY`); PNG is lossless and ignores it.

    Raises:
        ValueError: an unknown format or an array that is not uint8 L/RGB/RGBA.
        ImageError: the infotext does not fit in a JPEG's EXIF segment.
    """
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"expected a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got {array.dtype} {array.shape}")
    if format == "png":
        # tEXt if Latin-1, else iTXt (UTF-8), before the image data: as Pillow writes it, A1111 reads it.
        return encode_png(array, text={"parameters": infotext} if infotext else None)
    im = Image.fromarray(np.ascontiguousarray(array))
    buffer = io.BytesIO()
    options: dict[str, Any] = {}
    if format == "jpeg":
        if infotext:
            exif = _exif_with_user_comment(infotext)
            if len(exif) > _JPEG_MAX_EXIF_BYTES:
                raise ImageError(
                    f"the infotext ({len(infotext)} characters) does not fit in a JPEG's EXIF segment",
                    field="format",
                    value="jpeg",
                    expected="png or webp",
                )
            options["exif"] = exif
        im = im.convert("RGB") if im.mode == "RGBA" else im
        im.save(buffer, "JPEG", quality=JPEG_QUALITY if quality is None else quality, **options)
    elif format == "webp":
        if infotext:
            options["exif"] = _exif_with_user_comment(infotext)
        im.save(buffer, "WEBP", quality=WEBP_QUALITY if quality is None else quality, **options)
    else:
        raise ValueError(f"cannot encode {format!r}: use png, jpeg or webp")
    return buffer.getvalue()


def _exif_with_user_comment(text: str) -> bytes:
    """A minimal big-endian EXIF block: IFD0 -> Exif IFD -> UserComment (type UNDEFINED).

    Built by hand because Pillow's ``Image.Exif`` writes unknown bytes tags as BYTE (type 1), which
    piexif, and so A1111, reads back as a tuple of ints instead of the comment.
    """
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    ifd0_at = 8
    exif_ifd_at = ifd0_at + 2 + 12 + 4
    data_at = exif_ifd_at + 2 + 12 + 4
    return b"".join(
        (
            b"Exif\0\0MM\0\x2a",
            struct.pack(">I", ifd0_at),
            struct.pack(">HHHII", 1, _EXIF_IFD_TAG, 4, 1, exif_ifd_at) + struct.pack(">I", 0),  # LONG
            struct.pack(">HHHII", 1, _USER_COMMENT_TAG, 7, len(comment), data_at) + struct.pack(">I", 0),
            comment,
        )
    )


def read_infotext(data: bytes) -> str | None:
    """The A1111 infotext of encoded image bytes, read from the metadata without decoding pixels
    (None: none, or not an image Pillow opens)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _read_infotext(im)
    except Exception:  # an unreadable file has no infotext; decoding it reports the real problem
        return None


def _read_infotext(im: Image.Image) -> str | None:
    """A1111's order: the ``parameters`` text chunk, overridden by a non-empty EXIF UserComment; GIF comment."""
    text = im.info.get("parameters")
    infotext = str(text) if isinstance(text, str) else None
    try:
        comment = _decode_user_comment(im.getexif().get_ifd(_EXIF_IFD_TAG).get(_USER_COMMENT_TAG))
    except Exception as exc:  # a broken EXIF block must not make the pixels unreadable
        logger.debug("ignoring unreadable EXIF: %s", exc)
        comment = None
    if comment:
        return comment
    gif_comment = im.info.get("comment")
    if infotext is None and isinstance(gif_comment, bytes):
        infotext = gif_comment.decode("utf-8", errors="ignore") or None
    return infotext


def _decode_user_comment(value: object) -> str | None:
    if isinstance(value, tuple):  # written as BYTE (type 1) by some tools, e.g. Pillow's own Exif()
        value = bytes(value)
    if isinstance(value, str):
        return value.strip("\0") or None
    if not isinstance(value, bytes):
        return None
    prefix, body = value[:8], value[8:]
    if prefix == b"UNICODE\0":
        text = _decode_utf16(body)
    elif prefix == b"ASCII\0\0\0":
        text = body.decode("ascii", errors="replace")
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", errors="replace")
    else:  # undefined prefix: A1111 falls back to UTF-8 of the whole value
        text = value.decode("utf-8", errors="ignore")
    return text.strip("\0") or None


def _decode_utf16(body: bytes) -> str:
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    # No BOM: the EXIF standard says the byte order of the file, piexif/A1111 write big-endian. ASCII
    # text has its zero bytes first in UTF-16-BE and second in UTF-16-LE; pick the likelier one.
    even_zeros, odd_zeros = body[0::2].count(0), body[1::2].count(0)
    return body.decode("utf-16-le" if odd_zeros > even_zeros else "utf-16-be", errors="replace")


def _to_array(im: Image.Image) -> NDArray[np.uint8]:
    mode = im.mode
    if mode in ("L", "RGB", "RGBA"):
        converted = im
    elif mode == "1":
        converted = im.convert("L")
    elif mode in ("P", "PA"):
        converted = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "RGBa"):
        converted = im.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        return _high_depth_to_l(np.asarray(im))
    else:  # CMYK, YCbCr, LAB, HSV, RGBX
        converted = im.convert("RGB")
    return np.array(converted, dtype=np.uint8, order="C")


def _high_depth_to_l(values: NDArray[Any]) -> NDArray[np.uint8]:
    """16/32-bit integer grey is scaled from 0..65535, float grey from 0..1 (or clipped if larger)."""
    if values.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 1.0
        scaled = np.nan_to_num(values.astype(np.float64)) * scale
    else:
        scaled = np.clip(values.astype(np.float64), 0, 65535) / 257.0
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _size_text(size_bytes: int) -> str:
    if size_bytes < 1024 * 1024:
        return f"{size_bytes} bytes"
    return f"{size_bytes / (1024 * 1024):.1f} MiB"


def decode_failure_reason(exc: Exception) -> str:
    """Pillow's reason for not decoding, in one line of at most 200 characters, without the Python
    object reprs it puts in some ("cannot identify image file <_io.BytesIO object at 0x7f…>")."""
    text = " ".join(_OBJECT_REPR.sub("", str(exc)).split()) or type(exc).__name__
    return text[:200]
