"""The mock's img2img and extra-single-image over real HTTP, and the client's calls to them."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import SDNotFound, SDServerError
from pipeline.sd.client import SDClient
from pipeline.sd.mock.http import MockSDServer
from pipeline.settings import load_settings
from tests.procs import wait_until
from tests.test_pipeline.test_sd.conftest import StartMock


def png_b64(side: int = 64, value: int | None = None) -> str:
    pixels = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    if value is not None:
        pixels[:] = value
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels_of(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def body(**overrides: Any) -> dict[str, Any]:
    return {"init_images": [png_b64()], "prompt": "a fox", "seed": 7, "denoising_strength": 0.4,
            "width": 64, "height": 64} | overrides  # fmt: skip


def test_mock_img2img_without_init_images_is_404(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()

    answer = http.post(f"{url}/sdapi/v1/img2img", json={"prompt": "a fox"})

    assert answer.status_code == 404
    assert answer.json() == {"error": "HTTPException", "detail": "Init image not found", "body": "", "errors": ""}


def test_mock_img2img_bad_base64_is_500_invalid_encoded_image(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()

    answer = http.post(f"{url}/sdapi/v1/img2img", json=body(init_images=["not an image"]))

    assert answer.status_code == 500
    assert answer.json()["detail"] == "Invalid encoded image"


def test_mock_img2img_is_deterministic_and_changes_with_prompt_seed_and_denoise(
    start_mock: StartMock, http: httpx.Client
) -> None:
    _, url = start_mock()
    init = body()["init_images"][0]

    def render(**overrides: Any) -> np.ndarray:
        answer = http.post(f"{url}/sdapi/v1/img2img", json=body(init_images=[init], **overrides))
        assert answer.status_code == 200
        return pixels_of(answer.json()["images"][0])

    base = render()
    assert np.array_equal(base, render())
    assert not np.array_equal(base, render(prompt="a wolf"))
    assert not np.array_equal(base, render(seed=8))
    assert not np.array_equal(base, render(denoising_strength=0.8))
    assert np.array_equal(render(denoising_strength=0), pixels_of(init))  # denoise 0: the init image
    assert np.abs(base - pixels_of(init)).mean() > 2  # a visible change


def test_mock_img2img_answers_a1111_shape_with_infotext(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()

    answer = http.post(f"{url}/sdapi/v1/img2img", json=body(width=96, height=100)).json()

    info = json.loads(answer["info"])
    assert answer["parameters"]["init_images"] is None
    assert info["all_seeds"] == [7]
    assert "Denoising strength: 0.4" in info["infotexts"][0]
    assert Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).size == (96, 96)  # floored to 8


def test_mock_extra_single_image_enlarges_and_refuses_unknown_upscalers(
    start_mock: StartMock, http: httpx.Client
) -> None:
    mock, url = start_mock()
    payload = {"image": png_b64(), "upscaling_resize": 2, "upscaler_1": "R-ESRGAN 4x+"}

    answer = http.post(f"{url}/sdapi/v1/extra-single-image", json=payload)
    unknown = http.post(f"{url}/sdapi/v1/extra-single-image", json=payload | {"upscaler_1": "Nope"})

    assert Image.open(io.BytesIO(base64.b64decode(answer.json()["image"]))).size == (128, 128)
    assert unknown.status_code == 500 and "could not find upscaler named Nope" in unknown.json()["errors"]
    assert mock.stats()["extras"] == 2


def test_client_img2img_and_extras_map_errors_and_results(start_mock: StartMock) -> None:
    _, url = start_mock()
    with SDClient(load_settings(sd_api_url=url)) as client:
        result = client.img2img(body(), job_id="j1", seed=7)
        enlarged = client.extra_single_image(png_b64(), scale=2, upscaler="Lanczos", job_id="j1")
        with pytest.raises(SDNotFound):
            client.img2img({"prompt": "x"}, job_id="j1", seed=7)
        with pytest.raises(SDServerError, match="Invalid encoded image"):
            client.img2img(body(init_images=["bad"]), job_id="j1", seed=7)

    assert result.format == "png" and result.seed == 7 and result.extra["width"] == 64
    assert Image.open(io.BytesIO(enlarged)).size == (128, 128)


def test_mock_img2img_mask_changes_only_under_it(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    init = body()["init_images"][0]

    answer = http.post(
        f"{url}/sdapi/v1/img2img", json=body(init_images=[init], mask=base64.b64encode(buffer.getvalue()).decode())
    )
    bad = http.post(f"{url}/sdapi/v1/img2img", json=body(mask="not an image"))

    out, original = pixels_of(answer.json()["images"][0]), pixels_of(init)
    assert np.array_equal(out[:, :32], original[:, :32])
    assert not np.array_equal(out[:, 32:], original[:, 32:])
    assert bad.status_code == 500 and bad.json()["detail"] == "Invalid encoded image"


def test_mock_img2img_decodes_the_init_image_in_its_turn(start_mock: StartMock) -> None:
    """A1111 decodes ``init_images`` under its queue lock: a bad image queued behind a render is
    answered 500 only after that render, and a queued request's decoding is not hidden in the wait."""
    mock, url = start_mock(latency_ms=1000)
    answered: dict[str, float] = {}

    def post(name: str, payload: dict[str, Any]) -> None:
        with httpx.Client(timeout=30) as client:
            client.post(f"{url}/sdapi/v1/img2img", json=payload)
        answered[name] = time.monotonic()

    first = threading.Thread(target=post, args=("render", body(force_task_id="task-a")))
    first.start()
    assert wait_until(lambda: mock.stats()["active"] == 1, timeout_s=10)  # the render holds the turn
    holding = time.monotonic()
    post("bad", body(init_images=["not an image"], force_task_id="task-b"))
    first.join()

    # Answered once the render's second ended (at least half of it was left when it was seen), not at once.
    assert answered["bad"] - holding >= 0.5


@pytest.mark.parametrize("restore", [True, False])
def test_mock_img2img_bad_init_image_fails_before_its_override_settings_apply(restore: bool) -> None:
    """A1111 decodes ``init_images`` first thing under its queue lock, before ``process_images``
    applies ``override_settings``: an init image that does not decode loads no checkpoint and
    leaves the options as they were, even with ``override_settings_restore_afterwards`` false."""
    mock = MockSDServer(seed=1, models=("base.safetensors", "other.safetensors"))
    selected = mock.options["sd_model_checkpoint"]
    request = body(
        init_images=["not an image"],
        override_settings={"sd_model_checkpoint": "other"},
        override_settings_restore_afterwards=restore,
    )

    answer = mock.handle("POST", "/sdapi/v1/img2img", "", {}, json.dumps(request).encode())

    assert answer.status == 500 and answer.json()["detail"] == "Invalid encoded image"
    assert mock.stats()["model_loads"] == 0 and mock.options["sd_model_checkpoint"] == selected
    assert mock.stats()["active"] == 0  # its turn was handed on


def test_mock_img2img_unknown_scripts_are_a1111s_422_like_txt2img(start_mock: StartMock, http: httpx.Client) -> None:
    """``img2imgapi`` checks ``script_name`` and ``alwayson_scripts`` as ``text2imgapi`` does."""
    _, url = start_mock()

    def post(**overrides: Any) -> httpx.Response:
        return http.post(f"{url}/sdapi/v1/img2img", json=body(**overrides))

    unknown = post(alwayson_scripts={"nosuch": {"args": []}})
    selectable = post(script_name="nosuch")
    misplaced = post(alwayson_scripts={"X/Y/Z plot": {"args": []}})
    wrong_type = post(alwayson_scripts=["ControlNet"])
    tab_script = post(script_name="SD upscale", alwayson_scripts={"ControlNet": {"args": [{"module": "tile"}]}})

    assert (unknown.status_code, unknown.json()) == (
        422,
        {"error": "HTTPException", "detail": "Script 'nosuch' not found", "body": "", "errors": ""},
    )
    assert (selectable.status_code, selectable.json()["detail"]) == (422, "Script 'nosuch' not found")
    assert (misplaced.status_code, misplaced.json()["detail"]) == (
        422,
        "Cannot have a selectable script in the always on scripts params",
    )
    assert wrong_type.status_code == 422
    assert tab_script.status_code == 200  # an img2img-only script, and a known always-on one


def test_mock_img2img_unknown_sampler_is_replaced_like_txt2img(start_mock: StartMock, http: httpx.Client) -> None:
    """An unknown sampler becomes A1111's first one (a warning only), as for txt2img; a combined name is
    split into sampler and schedule; without ``sampler_name``, ``sampler_index`` (default Euler) is used."""
    _, url = start_mock()

    def info(**overrides: Any) -> dict[str, Any]:
        answer = http.post(f"{url}/sdapi/v1/img2img", json=body(**overrides))
        assert answer.status_code == 200, answer.text
        return dict(json.loads(answer.json()["info"]))

    unknown, combined = info(sampler_name="nosuch"), info(sampler_name="DPM++ 2M Karras")
    by_index, default = info(sampler_index="Euler a"), info()

    assert unknown["sampler_name"] == "DPM++ 2M"
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in unknown["infotexts"][0]
    assert combined["sampler_name"] == "DPM++ 2M" and "Schedule type: Karras" in combined["infotexts"][0]
    assert (by_index["sampler_name"], default["sampler_name"]) == ("Euler a", "Euler")
