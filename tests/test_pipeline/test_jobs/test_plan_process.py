"""``plan_process`` checks inputs from their header and container, without decoding pixels."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.errors import ImageError, InputError
from pipeline.images.png import encode_png
from pipeline.jobs.planning import build_step_params, plan_process
from pipeline.settings import Settings


def _png(path: Path, height: int, width: int) -> Path:
    pixels = np.random.default_rng(3).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.write_bytes(encode_png(pixels, text={"parameters": "a fox, Steps: 20"}))
    return path


def test_plan_process_validates_without_decoding_pixels(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given that any pixel decode would fail
    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("plan_process decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    params = build_step_params(settings, grid="2x2", band_px=4, sigma=1.0)
    # When a valid image is planned, its bytes are kept for ingest
    path = _png(tmp_path / "in.png", 64, 48)
    (plan,) = plan_process(settings, [path], params, output_dir=tmp_path / "out", now=time.time())
    assert plan.data == path.read_bytes()
    # And a grid that does not fit is refused from the header's size
    tiny = _png(tmp_path / "tiny.png", 8, 8)
    with pytest.raises(InputError, match="tiny.png"):
        plan_process(settings, [tiny], params, output_dir=tmp_path / "out", now=time.time())


def test_plan_process_refuses_truncated_and_oversized_inputs(settings: Settings, tmp_path: Path) -> None:
    params = build_step_params(settings, grid="2x2", band_px=4, sigma=1.0)
    path = _png(tmp_path / "in.png", 64, 48)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ImageError, match="cut.png cannot be decoded as PNG"):
        plan_process(settings, [cut], params, output_dir=tmp_path / "out", now=time.time())
    small = settings.model_copy(update={"max_pixels": 1000})
    with pytest.raises(ImageError, match="MAX_PIXELS"):
        plan_process(small, [path], params, output_dir=tmp_path / "out", now=time.time())
    with Image.open(path) as im:  # the file itself is fine
        im.load()
