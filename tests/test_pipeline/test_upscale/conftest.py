"""Fixtures of the upscale tests: a detailed test image and the mock's img2img as a function."""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from pipeline.sd.mock.img2img import Img2ImgPlan

Pixels = NDArray[np.uint8]


def detailed_image(side: int, seed: int = 3) -> Pixels:
    """Fine texture everywhere (blurred, contrast-stretched noise): a seam cannot hide in a flat area."""
    noise = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    soft = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    return np.clip((soft - 128) * 3 + 128, 0, 255).astype(np.uint8)


def mock_img2img(tile: Pixels, *, prompt: str = "a detailed city", seed: int = 7, denoise: float = 0.3) -> Pixels:
    """What the mock server answers for ``tile`` (its render, without HTTP)."""
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="PNG")
    body = {
        "init_images": [base64.b64encode(buffer.getvalue()).decode()],
        "prompt": prompt,
        "seed": seed,
        "denoising_strength": denoise,
        "width": tile.shape[1],
        "height": tile.shape[0],
    }
    return Img2ImgPlan(body, None, random.Random(0)).render()


@pytest.fixture
def upscaled() -> Pixels:
    """A 1024² detailed image, as the first pass (Lanczos x2 of 512²) leaves it."""
    return np.asarray(Image.fromarray(detailed_image(512)).resize((1024, 1024), Image.Resampling.LANCZOS))


@pytest.fixture
def img2img() -> Callable[[Pixels], Pixels]:
    return mock_img2img
