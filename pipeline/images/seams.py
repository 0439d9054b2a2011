"""Split an image into a grid of tiles, blur across the inner cuts, and merge the tiles back.

Pure numpy, no I/O. The seam blur is defined on the whole image (:func:`seam_blur_reference`):
for each inner cut line, a pixel whose centre lies at distance ``d`` from the line gets the weight
``1 - smoothstep(clip(d / band_px, 0, 1))``; at a crossing the largest weight wins. The output is
``(1 - w) * image + w * gaussian_sigma(image)``, rounded to uint8, and every pixel with ``w == 0``
is copied unchanged. The Gaussian is separable, truncated at ``ceil(3 * sigma)`` pixels, computed in
float32, with the image borders mirrored (``numpy.pad(mode="reflect")``).

An image with alpha (LA or RGBA: the last channel) is blended premultiplied: colour times alpha
and alpha are mixed as above, then the colour is divided by the new alpha. A transparent pixel
therefore lends no colour to its neighbours (transparent white beside opaque red stays red, with
falling alpha, instead of turning pink); where the new alpha is 0 the original colour is kept.

Where the tiles sit (:class:`TileBox`, :func:`plan_tiles`, :func:`validate_geometry`) is
:mod:`pipeline.images.geometry`, which needs no numpy; this module re-exports it.

The tiled path (:func:`split` -> :func:`seam_blur_tile` per tile -> :func:`merge`) reproduces the
reference bit for bit: each tile carries a halo of :func:`halo_px` pixels of its neighbours, and both
paths share the same float32 arithmetic element by element. A tile computes only its seam bands.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from pipeline.images.geometry import (
    GAUSSIAN_TRUNCATE_SIGMAS,
    TileBox,
    cut_positions,
    gaussian_radius_px,
    halo_px,
    plan_tiles,
    validate_geometry,
)
from pipeline.models import StepParams

__all__ = [
    "GAUSSIAN_TRUNCATE_SIGMAS",
    "TileBox",
    "band_rects",
    "cut_positions",
    "halo_px",
    "merge",
    "plan_tiles",
    "seam_blur_reference",
    "seam_blur_tile",
    "split",
    "validate_geometry",
]

_U8 = NDArray[np.uint8]
_F32 = NDArray[np.float32]


def split(image: _U8, params: StepParams) -> list[tuple[TileBox, _U8]]:
    """Cut ``image`` into its tiles; each array is a C-contiguous copy of the halo-extended box.

    Raises:
        InputError: see :func:`validate_geometry`.
        ValueError: ``image`` is not a uint8 (H, W) or (H, W, C) array.
    """
    _check_image(image)
    height, width = image.shape[:2]
    return [
        (box, image[box.hy0 : box.hy1, box.hx0 : box.hx1].copy(order="C")) for box in plan_tiles(width, height, params)
    ]


def seam_blur_tile(tile: _U8, box: TileBox, width: int, height: int, params: StepParams) -> _U8:
    """Blur the seam bands of one tile's interior, exactly as :func:`seam_blur_reference` would.

    Only the band rectangles are computed, so the cost scales with perimeter x (band + radius), not
    with the tile's area. The halo and all other pixels are returned unchanged; ``tile`` itself is
    not modified.

    Raises:
        InputError: see :func:`validate_geometry`.
        ValueError: ``tile`` does not have the shape of ``box``, or the halo is too small.
    """
    _check_image(tile)
    if tile.shape[:2] != box.shape or box.hx1 > width or box.hy1 > height:
        raise ValueError(f"tile of shape {tile.shape} does not fit box {box} of a {width}x{height} image")
    validate_geometry(width, height, params)
    kernel = _gaussian_kernel(params.sigma)
    radius = len(kernel) // 2
    wy, wx, rects = _bands(box, width, height, params)

    out = tile.copy()
    for ry0, ry1, rx0, rx1 in rects:  # offsets within the interior
        ys = _reflect_index(np.arange(box.y0 + ry0 - radius, box.y0 + ry1 + radius), height) - box.hy0
        xs = _reflect_index(np.arange(box.x0 + rx0 - radius, box.x0 + rx1 + radius), width) - box.hx0
        if ys.min() < 0 or ys.max() >= tile.shape[0] or xs.min() < 0 or xs.max() >= tile.shape[1]:
            raise ValueError(f"the halo of tile {box} is smaller than the Gaussian radius {radius} px")
        window = _premultiplied(tile.take(ys, axis=0).take(xs, axis=1).astype(np.float32))
        blurred = _blur_window(window, kernel)
        weight = np.maximum(wy[ry0:ry1, None], wx[None, rx0:rx1])
        top, left = box.y0 - box.hy0, box.x0 - box.hx0
        local = (slice(top + ry0, top + ry1), slice(left + rx0, left + rx1))
        out[local] = _blend(tile[local], blurred, weight)
    return out


def band_rects(box: TileBox, width: int, height: int, params: StepParams) -> list[tuple[int, int, int, int]]:
    """The rectangles ``(y0, y1, x0, x1)`` of a tile's array (halo included) that :func:`seam_blur_tile`
    changes: disjoint, covering exactly its interior pixels with a weight above 0. Every other pixel of
    the tile comes out as it went in, so these are all a step after the blur needs of it."""
    top, left = box.y0 - box.hy0, box.x0 - box.hx0
    return [(top + y0, top + y1, left + x0, left + x1) for y0, y1, x0, x1 in _bands(box, width, height, params)[2]]


def _bands(
    box: TileBox, width: int, height: int, params: StepParams
) -> tuple[_F32, _F32, list[tuple[int, int, int, int]]]:
    """The weights along the tile's interior rows and columns, and the rectangles (offsets within the
    interior) covering exactly its pixels with ``w > 0``: full-width strips along the horizontal cuts,
    then the vertical strips between them."""
    x_cuts = cut_positions(width, params.cols)[1:-1]
    y_cuts = cut_positions(height, params.rows)[1:-1]
    wy = _line_weights(np.arange(box.y0, box.y1), y_cuts, params.band_px)
    wx = _line_weights(np.arange(box.x0, box.x1), x_cuts, params.band_px)
    col_runs = _runs(wx > 0)
    rects = [(a, b, 0, box.x1 - box.x0) for a, b in _runs(wy > 0)]
    rects += [(a, b, c, d) for a, b in _runs(wy == 0) for c, d in col_runs]
    return wy, wx, rects


def merge(tiles: Sequence[tuple[TileBox, _U8]], width: int, height: int) -> _U8:
    """Crop each tile's halo and assemble a ``width`` x ``height`` image.

    Raises:
        ValueError: no tiles, a tile whose shape/dtype/channels disagree with its box or the others,
            a tile outside the image, overlapping tiles, or pixels no tile covers.
    """
    if not tiles:
        raise ValueError("no tiles to merge")
    first = tiles[0][1]
    out: _U8 = np.empty((height, width, *first.shape[2:]), dtype=np.uint8)
    covered = np.zeros((height, width), dtype=bool)
    for box, array in tiles:
        _check_image(array)
        if array.shape[:2] != box.shape or array.shape[2:] != first.shape[2:]:
            raise ValueError(f"tile r{box.row}c{box.col} has shape {array.shape}, expected {box.shape}")
        if box.hx1 > width or box.hy1 > height:
            raise ValueError(f"tile r{box.row}c{box.col} lies outside the {width}x{height} image")
        region = covered[box.y0 : box.y1, box.x0 : box.x1]
        if region.any():
            raise ValueError(f"tile r{box.row}c{box.col} overlaps another tile")
        region[...] = True
        out[box.y0 : box.y1, box.x0 : box.x1] = array[box.interior]
    if not covered.all():
        y, x = np.argwhere(~covered)[0]
        raise ValueError(f"the tiles do not cover the image: pixel x={x}, y={y} is missing")
    return out


def seam_blur_reference(image: _U8, params: StepParams) -> _U8:
    """The seam blur in one pass over the whole image: the oracle the tiled path must match.

    Raises:
        InputError: see :func:`validate_geometry`.
        ValueError: ``image`` is not a uint8 (H, W) or (H, W, C) array.
    """
    _check_image(image)
    height, width = image.shape[:2]
    validate_geometry(width, height, params)
    kernel = _gaussian_kernel(params.sigma)
    radius = len(kernel) // 2
    padding = [(radius, radius), (radius, radius)] + [(0, 0)] * (image.ndim - 2)
    blurred = _blur_window(_premultiplied(np.pad(image, padding, mode="reflect").astype(np.float32)), kernel)
    wy = _line_weights(np.arange(height), cut_positions(height, params.rows)[1:-1], params.band_px)
    wx = _line_weights(np.arange(width), cut_positions(width, params.cols)[1:-1], params.band_px)
    return _blend(image, blurred, np.maximum(wy[:, None], wx[None, :]))


# -- shared arithmetic: both paths must run exactly these float32 operations per element ----------


def _gaussian_kernel(sigma: float) -> _F32:
    radius = gaussian_radius_px(sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    normalised: _F32 = (kernel / kernel.sum()).astype(np.float32)
    return normalised


def _blur_window(window: _F32, kernel: _F32) -> _F32:
    """Separable Gaussian of ``window``, which has ``radius`` extra pixels on each side; returns the inside."""
    radius = len(kernel) // 2
    height, width = window.shape[0] - 2 * radius, window.shape[1] - 2 * radius
    rows: _F32 = kernel[0] * window[:, 0:width]
    for j in range(1, len(kernel)):
        rows += kernel[j] * window[:, j : j + width]
    out: _F32 = kernel[0] * rows[0:height]
    for j in range(1, len(kernel)):
        out += kernel[j] * rows[j : j + height]
    return out


def _line_weights(positions: NDArray[np.int_], cuts: Sequence[int], band_px: int) -> _F32:
    """Per-position weight along one axis: the max over ``cuts`` of ``1 - smoothstep(d)``."""
    weight = np.zeros(positions.shape, dtype=np.float64)
    centres = positions + 0.5
    for cut in cuts:
        t = np.clip(np.abs(centres - cut) / band_px, 0.0, 1.0)
        weight = np.maximum(weight, 1.0 - t * t * (3.0 - 2.0 * t))
    return weight.astype(np.float32)


def _has_alpha(array: np.ndarray) -> bool:
    """LA and RGBA arrays: the last channel is alpha."""
    return array.ndim == 3 and array.shape[2] in (2, 4)


def _premultiplied(values: _F32) -> _F32:
    """Colour channels times alpha / 255 for arrays with alpha; others unchanged (the same array)."""
    if not _has_alpha(values):
        return values
    out = values.copy()
    out[..., :-1] *= values[..., -1:] / np.float32(255)
    return out


def _blend(original: _U8, blurred: _F32, weight: _F32) -> _U8:
    """``(1 - w) * original + w * blurred``; with alpha, ``blurred`` is premultiplied and so is the mix."""
    w = weight if original.ndim == 2 else weight[..., None]
    source = original.astype(np.float32)
    mixed = (1 - w) * _premultiplied(source) + w * blurred
    if _has_alpha(original):
        alpha = mixed[..., -1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            colour = mixed[..., :-1] * (np.float32(255) / alpha)
        # No alpha left: no colour to recover; keep the pixel's own (it is invisible either way).
        mixed[..., :-1] = np.where(alpha > 0, colour, source[..., :-1])
    result = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    # Pixels outside every band are copied, never recomputed.
    return np.where(w > 0, result, original)


def _reflect_index(index: NDArray[np.int_], length: int) -> NDArray[np.int_]:
    """Map coordinates outside ``[0, length)`` the way ``numpy.pad(mode="reflect")`` does."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.mod(index, period)
    return np.where(folded >= length, period - folded, folded)


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` runs of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _check_image(array: np.ndarray) -> None:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 1..4) array, got {array.dtype} {array.shape}")
