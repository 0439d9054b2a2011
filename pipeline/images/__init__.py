"""Pixels: decoding and encoding images, A1111's infotext, and the seam blur.

- :mod:`~pipeline.images.codec`: bytes <-> arrays, bounded decoding, encoding with A1111 metadata.
- :mod:`~pipeline.images.png`: a fast multi-threaded PNG encoder.
- :mod:`~pipeline.images.infotext`: the ``parameters`` text A1111 writes into its images.
- :mod:`~pipeline.images.contact_sheet`: a sweep batch's images on a labelled X/Y grid.
- :mod:`~pipeline.images.geometry`: where the tiles sit and which grids an image allows (no numpy).
- :mod:`~pipeline.images.seams`: split into tiles, blur across the inner cuts, merge back; pure numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.images.codec import (
        DecodedImage,
        ImageHeader,
        decode_image,
        encode_image,
        probe_image,
        read_image_bytes,
        read_image_file,
        read_infotext,
        sniff_format,
    )
    from pipeline.images.contact_sheet import build_contact_sheet, write_contact_sheet
    from pipeline.images.geometry import TileBox, cut_positions, plan_tiles, validate_geometry
    from pipeline.images.infotext import (
        build_infotext,
        format_value,
        insert_params,
        parse_infotext,
    )
    from pipeline.images.png import (
        encode_png,
    )
    from pipeline.images.seams import merge, seam_blur_reference, seam_blur_tile, split

__all__ = [
    "DecodedImage",
    "ImageHeader",
    "decode_image",
    "encode_image",
    "probe_image",
    "read_image_bytes",
    "read_image_file",
    "read_infotext",
    "sniff_format",
    "encode_png",
    "build_contact_sheet",
    "write_contact_sheet",
    "build_infotext",
    "format_value",
    "insert_params",
    "parse_infotext",
    "TileBox",
    "cut_positions",
    "merge",
    "plan_tiles",
    "seam_blur_reference",
    "seam_blur_tile",
    "split",
    "validate_geometry",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".codec": [
            "DecodedImage",
            "ImageHeader",
            "decode_image",
            "encode_image",
            "probe_image",
            "read_image_bytes",
            "read_image_file",
            "read_infotext",
            "sniff_format",
        ],
        ".png": ["encode_png"],
        ".contact_sheet": ["build_contact_sheet", "write_contact_sheet"],
        ".infotext": ["build_infotext", "format_value", "insert_params", "parse_infotext"],
        ".geometry": ["TileBox", "cut_positions", "plan_tiles", "validate_geometry"],
        ".seams": ["merge", "seam_blur_reference", "seam_blur_tile", "split"],
    },
)
