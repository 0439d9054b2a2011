"""Tiles of an upscale: where they sit, how their overlaps blend, and the merge in bounded memory.

Pure numpy, no I/O. Along each axis a side of ``length`` px is covered by ``n`` tiles of ``tile_px``
(the img2img size; the last tiles are spread evenly, so every overlap is at least ``overlap_px``).
Each tile's pixels get a weight ``w_x(x) * w_y(y)``: 1 inside, a smoothstep ramp down across each
overlap with a neighbour, normalised per axis so the weights of every pixel sum to exactly 1. No tile
edge is ever a hard edge in the output: a colour drift between two tiles is spread over the whole
overlap instead of standing as a step.

:func:`blend_tiles` assembles the output one tile row at a time: a float32 strip of one tile row,
plus the overlap carried to the next, and one decoded tile at a time, so an 8192² output never
holds its tiles decoded at once. :func:`seam_blur_lines` then blurs narrow bands along the
overlap centre lines (the existing seam blur's weights and arithmetic), band by band.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipeline.images import seams

__all__ = [
    "SeamBand",
    "TilePlan",
    "UpscaleTile",
    "axis_starts",
    "axis_weights",
    "apply_bands",
    "band_mask",
    "blend_rows",
    "blend_tiles",
    "border_gradient_ratio",
    "plan_bands",
    "plan_upscale_tiles",
    "seam_blur_lines",
]

_U8 = NDArray[np.uint8]
_F32 = NDArray[np.float32]


@dataclass(frozen=True)
class UpscaleTile:
    """One tile: its index, grid position and box in output pixels (``x1``/``y1`` exclusive)."""

    index: int
    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class TilePlan:
    """Every tile of a ``width`` x ``height`` output, row by row."""

    width: int
    height: int
    tile_px: int
    overlap_px: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @property
    def cols(self) -> int:
        return len(self.xs)

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def tile_w(self) -> int:
        return min(self.tile_px, self.width)

    @property
    def tile_h(self) -> int:
        return min(self.tile_px, self.height)

    @property
    def tiles(self) -> list[UpscaleTile]:
        return [
            UpscaleTile(r * self.cols + c, r, c, x, y, x + self.tile_w, y + self.tile_h)
            for r, y in enumerate(self.ys)
            for c, x in enumerate(self.xs)
        ]

    def __len__(self) -> int:
        return self.cols * self.rows

    def seam_lines(self) -> tuple[list[int], list[int]]:
        """The centre of every overlap (x positions, y positions): where two tiles weigh the same."""
        return _centres(self.xs, self.tile_w), _centres(self.ys, self.tile_h)

    def to_dict(self) -> dict[str, object]:
        return {
            "width": self.width,
            "height": self.height,
            "tile_px": self.tile_px,
            "overlap_px": self.overlap_px,
            "xs": list(self.xs),
            "ys": list(self.ys),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TilePlan:
        xs, ys = data["xs"], data["ys"]
        if not isinstance(xs, list) or not isinstance(ys, list):
            raise ValueError("tile plan without xs/ys lists")
        return cls(
            width=int(str(data["width"])),
            height=int(str(data["height"])),
            tile_px=int(str(data["tile_px"])),
            overlap_px=int(str(data["overlap_px"])),
            xs=tuple(int(x) for x in xs),
            ys=tuple(int(y) for y in ys),
        )


@dataclass(frozen=True)
class SeamBand:
    """One segment of a seam-fix band: a strip across an overlap's centre line, re-rendered masked.

    ``vertical``: the line is ``x = line`` and the strip runs down the image in segments that match
    the tile rows; else ``y = line`` and the segments match the tile columns. The region
    (``x1``/``y1`` exclusive) reaches ``width_px`` each side of the line: the mask's width, and as
    much context again.
    """

    index: int
    vertical: bool
    line: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def plan_bands(plan: TilePlan, width_px: int) -> list[SeamBand]:
    """The seam-fix band segments of ``plan``: every overlap centre line, cut like the tiles along it."""
    x_lines, y_lines = plan.seam_lines()
    bands: list[SeamBand] = []
    span_x, span_y = min(2 * width_px, plan.width), min(2 * width_px, plan.height)
    for line in x_lines:
        x0 = min(max(line - width_px, 0), plan.width - span_x)
        for y in plan.ys:
            bands.append(SeamBand(len(bands), True, line, x0, y, x0 + span_x, y + plan.tile_h))
    for line in y_lines:
        y0 = min(max(line - width_px, 0), plan.height - span_y)
        for x in plan.xs:
            bands.append(SeamBand(len(bands), False, line, x, y0, x + plan.tile_w, y0 + span_y))
    return bands


def band_mask(band: SeamBand, width_px: int) -> _F32:
    """The band's mask across its line (1-D, along x for a vertical band): 1 on the line, falling
    with smoothstep to 0 at ``width_px / 2`` from it."""
    start, size = (band.x0, band.width) if band.vertical else (band.y0, band.height)
    distance = np.abs(np.arange(start, start + size, dtype=np.float64) + 0.5 - band.line)
    t = np.clip(distance / (width_px / 2), 0.0, 1.0)
    mask: _F32 = (1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)
    return mask


def apply_bands(
    image: _U8, plan: TilePlan, bands: Sequence[SeamBand], width_px: int, load: Callable[[SeamBand], _U8]
) -> _U8:
    """Blend re-rendered bands into ``image`` in place (vertical lines first, then horizontal ones).

    Along a line the segments blend across their overlaps with the tiles' weights; across it, each
    pixel takes ``mask * band + (1 - mask) * image``. One line's strip is held at a time.
    """
    lines: dict[tuple[bool, int], list[SeamBand]] = {}
    for band in bands:
        lines.setdefault((band.vertical, band.line), []).append(band)
    for (vertical, _), segments in sorted(lines.items(), key=lambda item: not item[0][0]):
        first = segments[0]
        starts = [b.y0 for b in segments] if vertical else [b.x0 for b in segments]
        size, length = (first.height, plan.height) if vertical else (first.width, plan.width)
        weights = axis_weights(starts, size, length)
        region = (slice(None), slice(first.x0, first.x1)) if vertical else (slice(first.y0, first.y1), slice(None))
        strip: _F32 = np.zeros(image[region].shape, dtype=np.float32)
        for band, weight in zip(segments, weights, strict=True):
            pixels = load(band).astype(np.float32)
            if vertical:
                strip[band.y0 : band.y1] += pixels * weight[:, None, None]
            else:
                strip[:, band.x0 : band.x1] += pixels * weight[None, :, None]
        mask = band_mask(first, width_px)
        across = mask[None, :, None] if vertical else mask[:, None, None]
        mixed = image[region].astype(np.float32)  # in place from here: two float strips, no more
        mixed *= 1 - across
        strip *= across
        mixed += strip
        del strip
        np.rint(mixed, out=mixed)
        np.clip(mixed, 0, 255, out=mixed)
        image[region] = mixed
        del mixed
    return image


def axis_starts(length: int, tile_px: int, overlap_px: int) -> list[int]:
    """Start positions of the tiles covering ``length`` px: ``tile_px`` each, overlaps ≥ ``overlap_px``."""
    if length < 1 or tile_px < 1 or not 0 <= overlap_px < tile_px:
        raise ValueError(f"cannot tile {length} px with {tile_px} px tiles overlapping {overlap_px} px")
    if length <= tile_px:
        return [0]
    count = math.ceil((length - overlap_px) / (tile_px - overlap_px))
    return [round(k * (length - tile_px) / (count - 1)) for k in range(count)]


def plan_upscale_tiles(width: int, height: int, tile_px: int, overlap_px: int) -> TilePlan:
    """The tiles of a ``width`` x ``height`` output (a side shorter than a tile is one tile that wide)."""
    return TilePlan(
        width=width,
        height=height,
        tile_px=tile_px,
        overlap_px=overlap_px,
        xs=tuple(axis_starts(width, tile_px, overlap_px)),
        ys=tuple(axis_starts(height, tile_px, overlap_px)),
    )


def axis_weights(starts: Sequence[int], size: int, length: int) -> list[_F32]:
    """Per-tile weights along one axis (one array of ``size`` per start), summing to 1 at every position.

    Across the overlap of two neighbours the earlier tile fades out with ``1 - smoothstep`` and the
    later one in with ``smoothstep``; a tile weighs 1 where no other covers.
    """
    raw: list[NDArray[np.float64]] = []
    for k, start in enumerate(starts):
        centres = np.arange(start, start + size, dtype=np.float64) + 0.5
        weight = np.ones(size, dtype=np.float64)
        if k > 0 and starts[k - 1] + size > start:  # fade in across the overlap with the previous tile
            t = np.clip((centres - start) / (starts[k - 1] + size - start), 0.0, 1.0)
            weight *= t * t * (3.0 - 2.0 * t)
        if k + 1 < len(starts) and start + size > starts[k + 1]:  # fade out across the next one
            end = start + size
            t = np.clip((centres - starts[k + 1]) / (end - starts[k + 1]), 0.0, 1.0)
            weight *= 1.0 - t * t * (3.0 - 2.0 * t)
        raw.append(weight)
    total = np.zeros(length, dtype=np.float64)
    for start, weight in zip(starts, raw, strict=True):
        total[start : start + size] += weight
    return [
        (weight / total[start : start + size]).astype(np.float32) for start, weight in zip(starts, raw, strict=True)
    ]


def blend_tiles(plan: TilePlan, load: Callable[[UpscaleTile], _U8], channels: int = 3) -> _U8:
    """Assemble the output from its tiles (``load(tile)`` returns its (h, w, channels) pixels).

    Memory: the uint8 output, one float32 strip of a tile row plus its overlap with the next, and
    the one tile being added.

    Raises:
        ValueError: a tile's array does not have the tile's size or ``channels``.
    """
    width, height = plan.width, plan.height
    wx = axis_weights(plan.xs, plan.tile_w, width)
    wy = axis_weights(plan.ys, plan.tile_h, height)
    out: _U8 = np.empty((height, width, channels), dtype=np.uint8)
    carry: _F32 | None = None
    tiles = plan.tiles
    for r, y0 in enumerate(plan.ys):
        strip: _F32 = np.zeros((plan.tile_h, width, channels), dtype=np.float32)
        if carry is not None:
            strip[: carry.shape[0]] += carry
        for tile in tiles[r * plan.cols : (r + 1) * plan.cols]:
            pixels = load(tile)
            if pixels.shape != (tile.height, tile.width, channels):
                raise ValueError(f"tile {tile.index} is {pixels.shape}, expected {(tile.height, tile.width, channels)}")
            weighted = pixels.astype(np.float32)
            weighted *= wy[r][:, None, None]
            weighted *= wx[tile.col][None, :, None]
            strip[:, tile.x0 : tile.x1] += weighted
            del weighted, pixels
        final = (plan.ys[r + 1] - y0) if r + 1 < plan.rows else plan.tile_h
        done = strip[:final]
        np.rint(done, out=done)
        np.clip(done, 0, 255, out=done)
        out[y0 : y0 + final] = done  # in place, no float copy of the strip
        carry = strip[final:].copy() if final < plan.tile_h else None
        del strip, done
    return out


def blend_rows(
    plan: TilePlan, load: Callable[[UpscaleTile, int, int], _U8], y0: int, y1: int, channels: int = 3
) -> _U8:
    """Rows ``y0:y1`` of :func:`blend_tiles`' output, bit for bit, from the tiles that cover them only.

    Every pixel is the same float32 sum in the same order (zero, then each covering tile's weighted
    pixels in row-major tile order: what the strip and its carried overlap add up to), rounded the
    same way. ``load(tile, top, bottom)`` is called for the covering tiles only and gives the tile's
    rows ``top:bottom`` (tile coordinates) that fall in the range.

    Raises:
        ValueError: an empty range, or a tile's array does not have the tile's size or ``channels``.
    """
    if not 0 <= y0 < y1 <= plan.height:
        raise ValueError(f"rows {y0}:{y1} are not a range of a {plan.height}-row output")
    wx = axis_weights(plan.xs, plan.tile_w, plan.width)
    wy = axis_weights(plan.ys, plan.tile_h, plan.height)
    sums: _F32 = np.zeros((y1 - y0, plan.width, channels), dtype=np.float32)
    for tile in plan.tiles:
        top, bottom = max(tile.y0, y0), min(tile.y1, y1)
        if top >= bottom:
            continue
        pixels = load(tile, top - tile.y0, bottom - tile.y0)
        if pixels.shape != (bottom - top, tile.width, channels):
            raise ValueError(
                f"tile {tile.index} rows are {pixels.shape}, expected {(bottom - top, tile.width, channels)}"
            )
        weighted = pixels.astype(np.float32)
        weighted *= wy[tile.row][top - tile.y0 : bottom - tile.y0, None, None]
        weighted *= wx[tile.col][None, :, None]
        sums[top - y0 : bottom - y0, tile.x0 : tile.x1] += weighted
        del weighted, pixels
    np.rint(sums, out=sums)
    np.clip(sums, 0, 255, out=sums)
    out: _U8 = sums.astype(np.uint8)
    return out


def seam_blur_lines(image: _U8, x_lines: Sequence[int], y_lines: Sequence[int], band_px: int, sigma: float) -> _U8:
    """The seam blur along given lines, band by band, in place (returns ``image``).

    Each band rectangle (``band_px`` each side of a line, plus the kernel's reach) is blurred with
    the seam blur's Gaussian and blended with its weight ``1 - smoothstep(d / band_px)``; horizontal
    lines first, then vertical ones. ``band_px`` 0 leaves the image as it is.
    """
    if band_px < 1 or not (x_lines or y_lines):
        return image
    kernel = seams._gaussian_kernel(sigma)
    radius = len(kernel) // 2
    height, width = image.shape[:2]
    for axis, lines, length in ((0, y_lines, height), (1, x_lines, width)):
        for line in lines:
            lo, hi = max(0, line - band_px), min(length, line + band_px)
            index = seams._reflect_index(np.arange(lo - radius, hi + radius), length)
            if axis == 0:
                other = seams._reflect_index(np.arange(-radius, width + radius), width)
                window = image.take(index, axis=0).take(other, axis=1).astype(np.float32)
                weight = seams._line_weights(np.arange(lo, hi), [line], band_px)[:, None]
                region = (slice(lo, hi), slice(None))
            else:
                other = seams._reflect_index(np.arange(-radius, height + radius), height)
                # columns first: taking the padded rows first would copy the whole image per line
                window = image.take(index, axis=1).take(other, axis=0).astype(np.float32)
                weight = seams._line_weights(np.arange(lo, hi), [line], band_px)[None, :]
                region = (slice(None), slice(lo, hi))
            blurred = seams._blur_window(window, kernel)
            full = np.broadcast_to(weight, blurred.shape[:2]).astype(np.float32)
            image[region] = seams._blend(image[region], blurred, full)
    return image


def border_gradient_ratio(image: _U8, x_borders: Sequence[int], y_borders: Sequence[int], margin_px: int) -> float:
    """Mean absolute gradient across the given borders over the mean gradient inside the tiles.

    Across a vertical border at ``x``: ``|I[:, x] - I[:, x-1]|`` averaged over rows and channels
    (horizontal borders likewise). Inside: the same difference at every position at least
    ``margin_px`` from all borders. 1.0 means a border cannot be told from the inside of a tile; a
    step where tiles meet shows as a ratio above 1.
    """
    values = image.astype(np.float32)
    dx = np.abs(np.diff(values, axis=1)).mean(axis=(0, 2) if values.ndim == 3 else 0)  # dx[i]: between i, i+1
    dy = np.abs(np.diff(values, axis=0)).mean(axis=(1, 2) if values.ndim == 3 else 1)
    border = [float(dx[x - 1]) for x in x_borders] + [float(dy[y - 1]) for y in y_borders]
    if not border:
        return 1.0

    def inside(diffs: NDArray[np.float32], borders: Sequence[int]) -> list[float]:
        positions = np.arange(1, len(diffs) + 1)  # diffs[i - 1] is the gradient across position i
        keep = np.ones(len(diffs), dtype=bool)
        for b in borders:
            keep &= np.abs(positions - b) >= margin_px
        return [float(v) for v in diffs[keep]]

    reference = inside(dx, x_borders) + inside(dy, y_borders)
    return float(np.mean(border) / np.mean(reference)) if reference else 1.0


def _centres(starts: Sequence[int], size: int) -> list[int]:
    return [(starts[k + 1] + starts[k] + size) // 2 for k in range(len(starts) - 1)]
