"""Where the tiles of the seam blur sit, and which grids an image allows: plain integers, no numpy.

Planning checks every job's geometry before anything is enqueued (:func:`validate_geometry`), and a
command that only plans (``generate --no-wait`` in Redis mode) should not pay for numpy to do it. The
pixel work on these boxes is :mod:`pipeline.images.seams`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from pipeline.errors import InputError
from pipeline.models import StepParams

__all__ = [
    "GAUSSIAN_TRUNCATE_SIGMAS",
    "TileBox",
    "cut_positions",
    "gaussian_radius_px",
    "halo_px",
    "pairs",
    "plan_tiles",
    "validate_geometry",
]

#: The Gaussian kernel reaches ``ceil(GAUSSIAN_TRUNCATE_SIGMAS * sigma)`` pixels from its centre.
GAUSSIAN_TRUNCATE_SIGMAS = 3.0


@dataclass(frozen=True)
class TileBox:
    """Where one tile sits: its interior and its halo-extended box, in image pixel coordinates.

    ``x1``/``y1`` and ``hx1``/``hy1`` are exclusive. The halo box is clipped to the image, so on a
    side that touches the image border it equals the interior.
    """

    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int
    hx0: int
    hy0: int
    hx1: int
    hy1: int

    def __post_init__(self) -> None:
        if not (0 <= self.hx0 <= self.x0 < self.x1 <= self.hx1 and 0 <= self.hy0 <= self.y0 < self.y1 <= self.hy1):
            raise ValueError(f"inconsistent tile box {self}")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the halo-extended tile array."""
        return self.hy1 - self.hy0, self.hx1 - self.hx0

    @property
    def interior(self) -> tuple[slice, slice]:
        """Slices selecting the interior within the halo-extended tile array."""
        return slice(self.y0 - self.hy0, self.y1 - self.hy0), slice(self.x0 - self.hx0, self.x1 - self.hx0)

    def to_dict(self) -> dict[str, int]:
        """A JSON-able dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TileBox:
        """Rebuild a box from :meth:`to_dict` output.

        Raises:
            ValueError: a field is missing, not an int, or the box is inconsistent.
        """
        values: dict[str, int] = {}
        for f in fields(cls):
            value = data.get(f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"tile box field {f.name!r} must be an int, got {value!r}")
            values[f.name] = value
        return cls(**values)


def cut_positions(length: int, parts: int) -> list[int]:
    """Cut positions ``floor(length * k / parts)`` for ``k = 0..parts`` (0 and ``length`` included)."""
    if length < 0 or parts < 1:
        raise ValueError(f"cannot cut {length} px into {parts} parts")
    return [length * k // parts for k in range(parts + 1)]


def gaussian_radius_px(sigma: float) -> int:
    """How far the truncated Gaussian kernel reaches from its centre, in pixels."""
    return math.ceil(GAUSSIAN_TRUNCATE_SIGMAS * sigma)


def halo_px(band_px: int, sigma: float) -> int:
    """Pixels of context a tile needs beyond each inner edge to blur its bands exactly.

    A band pixel's blurred value reads the image up to the Gaussian radius away in both directions
    (separable passes: a square of that radius), and band pixels reach the tile edge, so the halo is
    exactly the radius. ``band_px`` does not matter: the band on the far side of a cut belongs to the
    neighbouring tile, which blurs it itself. Mirroring at the image border needs no extra halo.
    """
    del band_px  # the band lies inside the interior; only the kernel reaches beyond the edge
    return gaussian_radius_px(sigma)


def validate_geometry(width: int, height: int, params: StepParams) -> None:
    """Check that ``params`` can split and blur a ``width`` x ``height`` image.

    Each tile must be at least ``2 * band_px`` pixels across every axis that has inner cuts, so the
    bands of a tile's two opposite edges never overlap.

    Raises:
        InputError: empty image, non-positive sigma or band, a grid finer than the image, or a band
            wider than half a tile.
    """
    rows, cols, band, sigma = params.rows, params.cols, params.band_px, params.sigma
    if width < 1 or height < 1:
        raise InputError(f"image is {width}x{height} px", field="image", value=f"{width}x{height}", limit=1)
    if not sigma > 0 or not math.isfinite(sigma):
        raise InputError(f"sigma {sigma} is not a positive number", field="sigma", value=sigma, limit=0)
    if band < 1:
        raise InputError(f"band_px {band} is below 1", field="band_px", value=band, limit=1)
    if rows < 1 or cols < 1 or cols > width or rows > height:
        raise InputError(
            f"grid {rows}x{cols} has more tiles than the {width}x{height} px image has pixels",
            field="grid",
            value=f"{rows}x{cols}",
        )
    tile_w = min(b - a for a, b in pairs(cut_positions(width, cols)))
    tile_h = min(b - a for a, b in pairs(cut_positions(height, rows)))
    limits = ([tile_w // 2] if cols > 1 else []) + ([tile_h // 2] if rows > 1 else [])
    max_band = min(limits, default=band)
    if max_band < 1:
        raise InputError(
            f"grid {rows}x{cols} is too fine for a {width}x{height} px image (tiles are {tile_w}x{tile_h} px)",
            field="grid",
            value=f"{rows}x{cols}",
        )
    if band > max_band:
        raise InputError(
            f"band_px {band} is larger than half a tile (tiles are {tile_w}x{tile_h} px)",
            field="band_px",
            value=band,
            limit=max_band,
        )


def plan_tiles(width: int, height: int, params: StepParams) -> list[TileBox]:
    """The tiles of a ``width`` x ``height`` image, row by row, each with its clipped halo box.

    Raises:
        InputError: see :func:`validate_geometry`.
    """
    validate_geometry(width, height, params)
    halo = halo_px(params.band_px, params.sigma)
    xs, ys = cut_positions(width, params.cols), cut_positions(height, params.rows)
    return [
        TileBox(
            row=r,
            col=c,
            x0=x0,
            y0=y0,
            x1=x1,
            y1=y1,
            hx0=max(0, x0 - halo),
            hy0=max(0, y0 - halo),
            hx1=min(width, x1 + halo),
            hy1=min(height, y1 + halo),
        )
        for r, (y0, y1) in enumerate(pairs(ys))
        for c, (x0, x1) in enumerate(pairs(xs))
    ]


def pairs(cuts: list[int]) -> list[tuple[int, int]]:
    """Each tile's (start, end) along one axis, from the cut positions."""
    return list(zip(cuts[:-1], cuts[1:], strict=True))
