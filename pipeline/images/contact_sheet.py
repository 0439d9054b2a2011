"""The contact sheet of a sweep batch: its images on an X/Y grid, labelled with the swept values.

Like A1111's X/Y plot: the first sweep is the X axis (columns), the second the Y axis (rows; one row
with a single sweep). Where more jobs share an (x, y) (a third sweep, template expansions, ``count``),
the cell shows the first of them; the sidecar names the job each cell shows. A cell whose job failed
reads "missing". The labels use the font Pillow ships (no download).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline.jobs.files import atomic_write_json
from pipeline.storage.base import Blob, Storage
from pipeline.storage.local import LocalStorage

__all__ = ["CONTACT_SHEET_SUFFIX", "build_contact_sheet", "write_contact_sheet"]

logger = logging.getLogger(__name__)

#: The sheet's file name is ``<batch id><suffix>.png`` beside the batch's manifest.
CONTACT_SHEET_SUFFIX = "-contact-sheet"
#: Longest side of one cell, in pixels (images are scaled down to fit).
_CELL_PX = 256
_FONT_PX = 18
_PAD_PX = 8


def _label(key: str, value: Any) -> str:
    return f"{key}: {value}"


def _thumbnails(cells: Mapping[tuple[Any, Any], Path | Blob]) -> dict[tuple[Any, Any], Image.Image]:
    thumbs = {}
    for where, source in cells.items():
        try:
            data = source.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
        with Image.open(io.BytesIO(data)) as image:
            thumb = image.convert("RGB")
        thumb.thumbnail((_CELL_PX, _CELL_PX))
        thumbs[where] = thumb
    return thumbs


def build_contact_sheet(
    cells: Mapping[tuple[Any, Any], Path | Blob],
    *,
    x_key: str,
    x_values: list[Any],
    y_key: str | None,
    y_values: list[Any],
) -> Image.Image:
    """The sheet: one column per X value, one row per Y value, axis labels on the top and the left.

    Images are scaled down to fit :data:`_CELL_PX`, never up; a column is at least as wide as its label.
    """
    font = ImageFont.load_default(size=_FONT_PX)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width_of(text: str) -> int:
        left, _, right, _ = probe.textbbox((0, 0), text, font=font)
        return int(right - left)

    thumbs = _thumbnails(cells)
    x_labels = [_label(x_key, v) for v in x_values]
    y_labels = [_label(y_key, v) if y_key else "" for v in y_values]
    cell_w = max([t.width for t in thumbs.values()] + [width_of(t) + _PAD_PX for t in x_labels] + [64])
    cell_h = max([t.height for t in thumbs.values()] + [_FONT_PX + 2 * _PAD_PX, 64])
    left_px = max((width_of(t) for t in y_labels), default=0) + 2 * _PAD_PX if y_key else _PAD_PX
    top_px = _FONT_PX + 3 * _PAD_PX
    size = (left_px + len(x_values) * (cell_w + _PAD_PX), top_px + len(y_values) * (cell_h + _PAD_PX))
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    for column, text in enumerate(x_labels):
        x0 = left_px + column * (cell_w + _PAD_PX)
        draw.text((x0 + (cell_w - width_of(text)) // 2, _PAD_PX), text, fill="black", font=font)
    for row, y in enumerate(y_values):
        y0 = top_px + row * (cell_h + _PAD_PX)
        if y_key:
            draw.text((_PAD_PX, y0 + cell_h // 2 - _FONT_PX // 2), y_labels[row], fill="black", font=font)
        for column, x in enumerate(x_values):
            x0 = left_px + column * (cell_w + _PAD_PX)
            thumb = thumbs.get((x, y))
            if thumb is None:
                draw.rectangle((x0, y0, x0 + cell_w - 1, y0 + cell_h - 1), outline="gray")
                draw.text((x0 + _PAD_PX, y0 + cell_h // 2 - _FONT_PX // 2), "missing", fill="gray", font=font)
                continue
            sheet.paste(thumb, (x0 + (cell_w - thumb.width) // 2, y0 + (cell_h - thumb.height) // 2))
    return sheet


def write_contact_sheet(manifest: Mapping[str, Any], output: Storage | Path) -> str | None:
    """Write the contact sheet of a finished sweep batch (and its sidecar) once, atomically, into
    ``output`` (OUTPUT_DIR or OUTPUT_URL); its location.

    None when the batch has no sweep. An existing sheet is kept: writing is safe to repeat, and two
    workers finishing the batch's last jobs at once publish one sheet (an exclusive create).
    """
    rows = [row for row in manifest["rows"] if row["params"].get("sweep")]
    if not rows:
        return None
    storage = LocalStorage(output.absolute()) if isinstance(output, Path) else output
    sheet_blob = Blob(storage, f"batches/{manifest['batch_id']}{CONTACT_SHEET_SUFFIX}.png")
    if sheet_blob.exists():
        return sheet_blob.location
    keys = list(rows[0]["params"]["sweep"])
    x_key, y_key = keys[0], (keys[1] if len(keys) > 1 else None)
    x_values: list[Any] = []
    y_values: list[Any] = []
    cells: dict[tuple[Any, Any], Path | Blob] = {}
    sources = []
    for row in rows:
        sweep = row["params"]["sweep"]
        x, y = sweep[x_key], (sweep[y_key] if y_key else "")
        x_values += [x] if x not in x_values else []
        y_values += [y] if y not in y_values else []
        done = [job for job in row["jobs"] if job.get("output")]
        if done and (x, y) not in cells:
            key = storage.key_of(done[0]["output"])
            cells[(x, y)] = Blob(storage, key) if key is not None else Path(done[0]["output"])
            sources.append({"x": x, "y": y, "job_id": done[0]["job_id"], "image": done[0]["output"]})
    sheet = build_contact_sheet(cells, x_key=x_key, x_values=x_values, y_key=y_key, y_values=y_values)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    # The sidecar first: a sheet on disk always has its sidecar.
    atomic_write_json(
        Blob(storage, sheet_blob.key.removesuffix(".png") + ".json"),
        {
            "batch_id": manifest["batch_id"],
            "kind": "contact_sheet",
            "x": {"field": x_key, "values": x_values},
            "y": {"field": y_key, "values": y_values} if y_key else None,
            "cells": sources,
            "image": sheet_blob.location,
        },
    )
    # The first complete sheet stays (a hard link on disk, a conditional PUT in a bucket).
    sheet_blob.create(buffer.getvalue())
    logger.info("batch %s: contact sheet %s", manifest["batch_id"], sheet_blob.location)
    return sheet_blob.location
