"""Deterministic, detailed images for the mock SD server, and their A1111-style encoding.

:func:`render` turns ``(prompt, seed, width, height)`` into pixels: a few octaves of smooth value noise
plus sinusoid interference, coloured through a palette derived from the prompt, plus fine per-pixel
grain. Neighbouring pixels always differ, so split/seam-blur/merge steps have something to measure;
the same inputs always give the same pixels. Work is done in strips of rows in float32, so a 4096²
image needs little more memory than its output array.

:func:`encode_image` stores an infotext the way A1111 does (a PNG text chunk, or the EXIF UserComment of
JPEG/WEBP) through :mod:`pipeline.images.codec`, the encoder sdpipe writes its own images with; the
infotext itself is written by :func:`pipeline.images.infotext.build_infotext`.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from pipeline.images import codec

__all__ = ["LOSSY_QUALITY", "encode_image", "render"]

#: Rows rendered per strip: bounds the float32 temporaries for very large images.
_STRIP_ROWS = 256
#: Cells across the longer side for each value-noise octave (coarse to fine).
_OCTAVE_CELLS = (3, 7, 16, 40, 110)
#: Weight of each octave, coarse to fine.
_OCTAVE_WEIGHTS = (1.0, 0.55, 0.3, 0.16, 0.08)
#: Number of plane waves in the interference pattern.
_WAVE_COUNT = 3
#: Weight of the interference pattern relative to the value noise.
_WAVE_WEIGHT = 0.35
#: Amplitude of the per-pixel grain, in 8-bit levels (±).
_GRAIN_LEVELS = 10
#: Colours in a prompt's palette.
_PALETTE_SIZE = 5
#: Every this many palette levels, a darker contour line: sharp edges that a blur visibly softens.
_CONTOUR_EVERY = 24
#: Brightness factor of the contour lines.
_CONTOUR_SHADE = 0.55
#: Quality of JPEG/WEBP output (A1111's ``jpeg_quality`` setting defaults to 80).
LOSSY_QUALITY = 80


def _seed_int(*parts: object) -> int:
    text = "\x00".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=16).digest(), "big")


def _palette_lut(prompt: str) -> NDArray[np.uint8]:
    """A 256-entry colour ramp through a few colours chosen by the prompt alone."""
    rng = np.random.default_rng(_seed_int("palette", prompt))
    hues = (rng.random() + np.arange(_PALETTE_SIZE) * rng.uniform(0.12, 0.3)) % 1.0
    sats = rng.uniform(0.35, 0.9, _PALETTE_SIZE)
    vals = np.sort(rng.uniform(0.15, 0.95, _PALETTE_SIZE))
    # HSV -> RGB, vectorised over the palette colours.
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hues[:, None] * 6.0) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    colours = vals[:, None] - vals[:, None] * sats[:, None] * ramp
    stops = np.linspace(0.0, 1.0, _PALETTE_SIZE)
    x = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(x, stops, colours[:, c]) for c in range(3)], axis=1)
    lut[::_CONTOUR_EVERY] *= _CONTOUR_SHADE
    return np.asarray(np.round(lut * 255.0), dtype=np.uint8)


def _axis_weights(size: int, cells: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """Grid indices on both sides of each pixel along one axis, and the smoothstep weight between them."""
    pos = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    low = np.minimum(pos.astype(np.intp), cells - 1)
    frac = pos - low
    return low, low + 1, (frac * frac * (3.0 - 2.0 * frac)).astype(np.float32)


def render(prompt: str, seed: int, width: int, height: int) -> NDArray[np.uint8]:
    """Render a deterministic, detailed RGB image.

    Args:
        prompt: picks the palette and, together with ``seed``, the pattern.
        seed: any integer; different seeds give different images.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        An ``(height, width, 3)`` uint8 array, identical for identical inputs.

    Raises:
        ValueError: ``width`` or ``height`` is below 1.
    """
    if width < 1 or height < 1:
        raise ValueError(f"cannot render a {width}x{height} image")
    rng = np.random.default_rng(_seed_int("image", prompt, seed))
    lut = _palette_lut(prompt)
    longer = max(width, height)
    octaves = []
    for cells, weight in zip(_OCTAVE_CELLS, _OCTAVE_WEIGHTS, strict=True):
        cells_x, cells_y = max(1, round(cells * width / longer)), max(1, round(cells * height / longer))
        grid = rng.uniform(-weight, weight, (cells_y + 1, cells_x + 1)).astype(np.float32)
        octaves.append((grid, _axis_weights(height, cells_y), _axis_weights(width, cells_x)))
    norm = np.float32(1.0 / (sum(_OCTAVE_WEIGHTS) * 0.6 + _WAVE_WEIGHT))
    angles = rng.uniform(0.0, np.pi, _WAVE_COUNT)
    periods_px = longer / rng.uniform(2.5, 14.0, _WAVE_COUNT)
    phases = rng.uniform(0.0, 2.0 * np.pi, _WAVE_COUNT)
    kx = (np.cos(angles) * 2.0 * np.pi / periods_px).astype(np.float32)
    ky = (np.sin(angles) * 2.0 * np.pi / periods_px).astype(np.float32)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    wave_x = [(np.sin(kx[i] * xs), np.cos(kx[i] * xs)) for i in range(_WAVE_COUNT)]
    wave_weight = np.float32(_WAVE_WEIGHT / _WAVE_COUNT)

    out = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, _STRIP_ROWS):
        rows = slice(top, min(top + _STRIP_ROWS, height))
        field = np.zeros((rows.stop - rows.start, width), dtype=np.float32)
        for grid, (y0, y1, ty), (x0, x1, tx) in octaves:
            t = ty[rows, None]
            # Interpolate the few grid rows first, then gather across the full width.
            line = grid[y0[rows]] * (1.0 - t) + grid[y1[rows]] * t
            field += line[:, x0] * (1.0 - tx) + line[:, x1] * tx
        for i, (sin_x, cos_x) in enumerate(wave_x):
            arg_y = ky[i] * ys[rows] + np.float32(phases[i])
            # sin(a + b) = sin a cos b + cos a sin b keeps every term an outer product.
            field += wave_weight * (np.outer(np.cos(arg_y), sin_x) + np.outer(np.sin(arg_y), cos_x))
        field *= norm * 127.5
        field += 128.0
        index = np.clip(field, 0.0, 255.0).astype(np.uint8)
        grain = rng.integers(-_GRAIN_LEVELS, _GRAIN_LEVELS + 1, size=index.shape, dtype=np.int16)
        strip = lut[index].astype(np.int16)
        strip += grain[..., None]
        out[rows] = np.clip(strip, 0, 255).astype(np.uint8)
    return out


def encode_image(pixels: NDArray[np.uint8], *, infotext: str | None, image_format: str = "png") -> bytes:
    """Encode pixels the way A1111's API does (``encode_pil_to_base64``), with the infotext as metadata.

    Args:
        pixels: an ``(H, W, 3)`` uint8 array.
        infotext: written as the PNG ``parameters`` text chunk (tEXt, or iTXt beyond Latin-1), or as the
            EXIF UserComment (``UNICODE`` + UTF-16-BE, as piexif writes it) of JPEG/WEBP; None writes none.
        image_format: A1111's ``samples_format``: ``png``, ``jpg``/``jpeg`` or ``webp``, any case.

    Raises:
        ValueError: an unknown ``image_format``.
    """
    fmt = image_format.lower()
    if fmt not in ("png", "jpg", "jpeg", "webp"):
        raise ValueError(f"unknown image format {image_format!r}")
    return codec.encode_image(pixels, format="jpeg" if fmt == "jpg" else fmt, infotext=infotext, quality=LOSSY_QUALITY)
