"""``plan_process`` checks inputs from their header and container, without decoding pixels."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.errors import ImageError, InputError, InputsRejected
from pipeline.images.png import encode_png
from pipeline.jobs.planning import build_step_params, expand_image_paths, plan_process
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


def _animated(path: Path, frames: int = 3) -> Path:
    images = [Image.new("RGB", (64, 48), (60 * i, 0, 0)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


@pytest.mark.parametrize("name", ["anim.gif", "anim.webp", "anim.png"])
def test_plan_process_refuses_an_animation_naming_first_frame(settings: Settings, tmp_path: Path, name: str) -> None:
    params = build_step_params(settings, grid="2x2", band_px=4, sigma=1.0)
    path = _animated(tmp_path / name)
    with pytest.raises(ImageError, match=r"is an animated .* \(3 frames\): sdpipe processes still images") as info:
        plan_process(settings, [path], params, output_dir=tmp_path / "out", now=time.time())
    assert info.value.field == "first_frame" and info.value.value == 3
    # With first_frame the same file is planned
    (plan,) = plan_process(settings, [path], params, output_dir=tmp_path / "out", first_frame=True, now=time.time())
    assert plan.data == path.read_bytes()


def test_plan_process_says_a_16_bit_png_is_processed_in_8_bits(settings: Settings, tmp_path: Path) -> None:
    params = build_step_params(settings, grid="2x2", band_px=4, sigma=1.0)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)).save(deep)
    shallow = _png(tmp_path / "shallow.png", 48, 64)
    plans = plan_process(settings, [deep, shallow], params, output_dir=tmp_path / "out", now=time.time())
    assert [plan.notes for plan in plans] == [
        (f"{deep}: 16-bit PNG processed and written in 8 bits per channel",),
        (),
    ]


def test_plan_process_reports_every_bad_input_at_once(settings: Settings, tmp_path: Path) -> None:
    # Given one good image and three bad ones
    params = build_step_params(settings, grid="2x2", band_px=4, sigma=1.0)
    good = _png(tmp_path / "good.png", 64, 48)
    (tmp_path / "notes.png").write_text("not an image")
    tiny = _png(tmp_path / "tiny.png", 8, 8)
    missing = tmp_path / "missing.png"
    # When they are planned together
    with pytest.raises(InputsRejected) as info:
        plan_process(settings, [good, tmp_path / "notes.png", tiny, missing], params, output_dir=tmp_path, now=0.0)
    # Then every bad one is named, and the message counts them
    problems = info.value.problems
    assert len(problems) == 3
    assert any("notes.png" in p for p in problems) and any("tiny.png" in p for p in problems)
    assert any("missing.png" in p for p in problems)
    assert info.value.message == "3 of 4 inputs cannot be processed (nothing was queued)"


def test_plan_process_expands_a_folder_and_a_quoted_glob(settings: Settings, tmp_path: Path) -> None:
    params = build_step_params(settings, grid="2x2", band_px=4, sigma=1.0)
    shots = tmp_path / "shots"
    shots.mkdir()
    for name in ("b.png", "a.png", "c.PNG"):
        _png(shots / name, 48, 64)
    (shots / "readme.txt").write_text("not an image")
    (shots / ".hidden.png").write_bytes(b"")
    plans = plan_process(settings, [shots], params, output_dir=tmp_path / "out", now=0.0)
    assert [Path(plan.spec.source_name or "").name for plan in plans] == ["a.png", "b.png", "c.PNG"]
    plans = plan_process(settings, [shots / "[ab].png", shots / "a.png"], params, output_dir=tmp_path, now=0.0)
    assert [Path(plan.spec.source_name or "").name for plan in plans] == ["a.png", "b.png"]


def test_expand_image_paths_names_an_empty_folder_and_a_pattern_without_matches(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    files, problems = expand_image_paths([tmp_path / "empty", tmp_path / "*.jpg"])
    assert files == []
    assert problems == [
        f"{tmp_path / 'empty'}: the folder has no .png, .jpg, .jpeg, .webp, .gif files",
        f"{tmp_path / '*.jpg'}: no file matches this pattern",
    ]
