"""The real A1111 client, ``webuiapi`` (mix1009/sdwebuiapi), driving the mock over HTTP.

If the mock answers what this widely used client sends and reads, scripts written against A1111 run
against ``sdpipe mock-sd`` unchanged: txt2img with hires fix, styles and ControlNet units, png-info, and
options (setting and reading the checkpoint).
"""

from __future__ import annotations

from typing import Any

import pytest
import webuiapi
from PIL import Image

from pipeline.sd.mock.http import MockSDServer
from tests.test_pipeline.test_sd.conftest import StartMock

MODELS = ("base.safetensors", "other.safetensors")


@pytest.fixture
def served(start_mock: StartMock) -> tuple[MockSDServer, webuiapi.WebUIApi]:
    mock, url = start_mock(models=MODELS, seed=7)
    host, port = url.removeprefix("http://").split(":")
    return mock, webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=4)


def small(**fields: Any) -> dict[str, Any]:
    return {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 5} | fields


def test_webuiapi_txt2img_with_hires_and_styles(served: tuple[MockSDServer, webuiapi.WebUIApi]) -> None:
    _, api = served
    result = api.txt2img(**small(enable_hr=True, hr_scale=2, denoising_strength=0.5, styles=["photo"]))
    assert result.image.size == (128, 128)
    assert result.info["prompt"] == "a lighthouse, photograph, 50mm, sharp focus"
    infotext = result.info["infotexts"][0]
    assert "Hires upscale: 2.0, Hires upscaler: Latent" in infotext and "Denoising strength: 0.5" in infotext
    assert result.image.info["parameters"] == infotext


def test_webuiapi_controlnet_unit_adds_a_detect_map(served: tuple[MockSDServer, webuiapi.WebUIApi]) -> None:
    mock, api = served
    unit = webuiapi.ControlNetUnit(
        image=Image.new("RGB", (64, 64), "white"), module="canny", model="control_v11p_sd15_canny [d14c016b]"
    )
    result = api.txt2img(**small(controlnet_units=[unit]))
    assert len(result.images) == 2 and len(result.info["infotexts"]) == 1
    assert 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b]' in result.info["infotexts"][0]
    sent = mock.stats()["requests"][-1]["body"]["alwayson_scripts"]
    assert sent["ControlNet"]["args"][0]["resize_mode"] == "Resize and Fill" and sent["ADetailer"] == {"args": [False]}


def test_webuiapi_png_info_reads_what_the_mock_wrote(served: tuple[MockSDServer, webuiapi.WebUIApi]) -> None:
    _, api = served
    image = api.txt2img(**small(negative_prompt="blurry")).image
    read = api.png_info(image)
    assert read.info == image.info["parameters"]
    assert (read.parameters["Prompt"], read.parameters["Negative prompt"], read.parameters["Seed"]) == (
        "a lighthouse",
        "blurry",
        "5",
    )


def test_webuiapi_sets_and_reads_the_model(served: tuple[MockSDServer, webuiapi.WebUIApi]) -> None:
    mock, api = served
    assert api.util_get_model_names() == [model["title"] for model in mock.models]
    api.util_set_model("other")
    assert api.util_get_current_model() == mock.models[1]["title"]
    assert api.get_options()["sd_checkpoint_hash"] == mock.models[1]["sha256"]
    result = api.txt2img(**small())
    assert result.info["sd_model_name"] == "other" and mock.stats()["model_loads"] == 1


def test_webuiapi_img2img_checks_scripts_and_samplers_like_txt2img(
    served: tuple[MockSDServer, webuiapi.WebUIApi],
) -> None:
    _, api = served
    init = Image.new("RGB", (64, 64), "teal")

    result = api.img2img(images=[init], denoising_strength=0.5, alwayson_scripts={}, **small())
    replaced = api.img2img(images=[init], sampler_name="nosuch", alwayson_scripts={}, **small())
    with pytest.raises(RuntimeError) as refused:
        api.img2img(images=[init], alwayson_scripts={"nosuch": {"args": []}}, **small())

    assert result.image.size == (64, 64) and result.info["sampler_name"] == "Euler a"
    assert replaced.info["sampler_name"] == "DPM++ 2M"
    assert refused.value.args[0] == 422 and "Script 'nosuch' not found" in refused.value.args[1]
