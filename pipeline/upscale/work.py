"""An upscale job's work folder and the pixel conversions its steps share.

Files in the job's work folder or prefix (``.sdpipe/work/<job id>/upscale/`` of ``OUTPUT_DIR`` or of
the ``OUTPUT_URL`` bucket)::

    enlarged.arrays  the enlarged image, raw (one write; each tile reads only its region: pages of
                     a memory map on disk, its rows' byte ranges from a bucket; and encodes it
                     itself, in parallel, before it takes an SD slot)
    alpha.arrays     an input with transparency: its alpha channel, enlarged with Lanczos (SD
                     renders colour only; the merge puts this alpha back on the output)
    tile-<i>.arrays  what the server answered for tile ``i``, decoded, checked and at the tile's size
                     (its presence: never paid again); past the tiles, the seam-fix bands. Decoded
                     by the tile's own worker once the server's slot is free, in parallel, so the
                     merge reads pixels instead of decoding every tile in turn, and an answer that
                     does not decode fails its tile, not the merge. (``tile-<i>.png``: the same,
                     as earlier versions saved it, still read.)
    merged.arrays    ``--seam-fix band``: the tiles blended (each band reads its region of it)
    plan.json        the tile plan and what the merge needs (written last: the first pass is done)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.images.codec import DecodedImage
from pipeline.jobs.files import JobFiles
from pipeline.storage.base import Blob
from pipeline.upscale.params import UpscaleParams

if TYPE_CHECKING:
    from pipeline.models import JobRecord

__all__ = ["UpscaleFiles", "alpha_of", "params_of", "resize", "rgb"]

_U8 = NDArray[np.uint8]


@dataclass(frozen=True)
class UpscaleFiles:
    """One job's upscale intermediates (in its work folder or prefix, ``upscale/``)."""

    files: JobFiles

    @classmethod
    def of(cls, files: JobFiles) -> UpscaleFiles:
        return cls(files)

    @property
    def plan(self) -> Blob:
        return self.files.work("upscale/plan.json")

    @property
    def enlarged(self) -> Blob:
        return self.files.work("upscale/enlarged.arrays")

    @property
    def alpha(self) -> Blob:
        """An input with transparency: its enlarged alpha channel."""
        return self.files.work("upscale/alpha.arrays")

    @property
    def merged(self) -> Blob:
        """``--seam-fix band``: the tiles blended, before the bands."""
        return self.files.work("upscale/merged.arrays")

    def tile(self, index: int) -> Blob:
        return self.files.work(f"upscale/tile-{index}.arrays")

    def legacy_tile(self, index: int) -> Blob:
        """Render ``index`` as earlier versions saved it: the server's PNG, as answered."""
        return self.files.work(f"upscale/tile-{index}.png")

    def saved(self, index: int) -> bool:
        """Whether render ``index`` is saved (so never requested again)."""
        return self.tile(index).exists() or self.legacy_tile(index).exists()


def params_of(record: JobRecord) -> UpscaleParams:
    """The job's upscale parameters.

    Raises:
        ConfigError: the job is not an upscale job.
    """
    if record.spec.upscale is None:
        raise ConfigError(f"job {record.job_id} is not an upscale job", field="upscale")
    return record.spec.upscale


def rgb(decoded: DecodedImage) -> _U8:
    """The decoded image as RGB (an L or RGBA image converted; the alpha left out)."""
    array = decoded.array
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    converted: _U8 = np.asarray(Image.fromarray(array).convert("RGB"), dtype=np.uint8)
    return converted


def alpha_of(decoded: DecodedImage) -> _U8 | None:
    """The alpha channel of an image with transparency (RGBA, LA, a palette with a transparent
    colour, all decoded as RGBA), or None when it is fully opaque (nothing to keep)."""
    array = decoded.array
    if array.ndim != 3 or array.shape[2] != 4:
        return None
    alpha = np.ascontiguousarray(array[:, :, 3])
    return None if bool((alpha == 255).all()) else alpha


def resize(pixels: _U8, width: int, height: int) -> _U8:
    """``pixels`` at ``width`` x ``height`` (Lanczos), or as they are when they have that size."""
    if pixels.shape[:2] == (height, width):
        return pixels
    resized: _U8 = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)
    return resized
