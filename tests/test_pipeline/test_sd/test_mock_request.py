"""The mock answers the whole A1111 v1.10 txt2img request as A1111 does (in-process, through ``handle``).

Hires fix, styles, samplers, refiner, variations, scripts, settings overrides, grids and ``/png-info``.
Checkpoint switching has its own file (``test_mock_checkpoints.py``); real HTTP and the real client
``webuiapi`` are in ``test_mock_webuiapi.py``.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image

from pipeline.images.infotext import parse_infotext
from pipeline.sd.mock.http import MockSDServer, get_mock_server, parse_mock_url
from pipeline.sd.mock.request import FIELDS

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4, "seed": 11}


def call(mock: MockSDServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    answer = mock.handle(method, path, "", {"content-type": "application/json"}, raw)
    return answer.status, answer.json()


def txt2img(mock: MockSDServer, **fields: Any) -> tuple[dict[str, Any], list[Image.Image]]:
    status, answer = call(mock, "POST", "/sdapi/v1/txt2img", SMALL | fields)
    assert status == 200, answer
    images = [Image.open(io.BytesIO(base64.b64decode(b64))) for b64 in answer["images"]]
    return json.loads(answer["info"]), images


def params(info: dict[str, Any], index: int = 0) -> dict[str, str]:
    return parse_infotext(info["infotexts"][index])


@pytest.fixture
def mock() -> MockSDServer:
    return MockSDServer(seed=3, models=("base.safetensors", "other.safetensors", "refiner.safetensors"))


# -- the request model --------------------------------------------------------------------------------
def test_openapi_publishes_the_txt2img_request_schema_without_auth() -> None:
    mock = MockSDServer(api_auth="u:p")
    status, document = call(mock, "GET", "/openapi.json")
    schema = document["components"]["schemas"]["StableDiffusionProcessingTxt2Img"]
    assert status == 200 and set(schema["properties"]) == set(FIELDS)
    for name in ("enable_hr", "hr_scale", "hr_upscaler", "styles", "refiner_switch_at", "alwayson_scripts"):
        assert name in schema["properties"]
    assert schema["properties"]["hr_scale"] == {"title": "Hr Scale", "type": "number", "default": 2.0}
    txt2img_body = document["paths"]["/sdapi/v1/txt2img"]["post"]["requestBody"]
    assert txt2img_body["content"]["application/json"]["schema"]["$ref"].endswith("/StableDiffusionProcessingTxt2Img")


def test_wrong_types_of_new_fields_are_pydantic_v1_422s(mock: MockSDServer) -> None:
    body = {"enable_hr": "maybe", "styles": "cinematic", "alwayson_scripts": [], "hr_scale": "big", "tiling": {}}
    status, answer = call(mock, "POST", "/sdapi/v1/txt2img", body)
    assert status == 422
    assert {tuple(error["loc"]): error["type"] for error in answer["detail"]} == {
        ("body", "styles"): "type_error.list",
        ("body", "tiling"): "type_error.bool",
        ("body", "enable_hr"): "type_error.bool",
        ("body", "hr_scale"): "type_error.float",
        ("body", "alwayson_scripts"): "type_error.dict",
    }


def test_request_log_keeps_the_body_exactly_as_received(mock: MockSDServer) -> None:
    body = SMALL | {"hr_scale": 2, "styles": ["photo"], "some_forge_field": {"x": [1]}}
    txt2img(mock, **body)
    assert mock.stats()["requests"][-1]["body"] == body


def test_request_log_summarises_long_strings_such_as_images(mock: MockSDServer) -> None:
    image = "A" * 10_000
    txt2img(mock, alwayson_scripts={"ControlNet": {"args": [{"module": "none", "image": image}]}})
    logged = mock.stats()["requests"][-1]["body"]["alwayson_scripts"]["ControlNet"]["args"][0]
    assert logged["module"] == "none" and logged["image"].startswith("<10000 chars, sha256 ")


# -- hires fix ----------------------------------------------------------------------------------------
def test_hires_scale_doubles_the_image_and_writes_the_hires_keys(mock: MockSDServer) -> None:
    info, (image,) = txt2img(mock, enable_hr=True, hr_scale=2, denoising_strength=0.5, hr_upscaler="Latent")
    assert image.size == (128, 128) and (info["width"], info["height"]) == (64, 64)
    written = params(info)
    assert (written["Size-1"], written["Hires upscale"], written["Hires upscaler"]) == ("64", "2.0", "Latent")
    assert written["Denoising strength"] == "0.5" and "Hires steps" not in written
    assert info["infotexts"][0].index("Denoising strength") < info["infotexts"][0].index("Hires upscale")


def test_without_enable_hr_there_is_no_hires_key_even_with_denoising(mock: MockSDServer) -> None:
    info, (image,) = txt2img(mock, denoising_strength=0.7, hr_scale=2, hr_upscaler="Lanczos")
    assert image.size == (64, 64)
    assert not {key for key in params(info) if key.startswith("Hires") or key == "Denoising strength"}
    assert info["denoising_strength"] == 0.7  # info echoes the field, as Processed does


@pytest.mark.parametrize(
    ("resize", "size", "written"),
    [
        ({"hr_resize_x": 160}, (160, 160), "160x0"),
        ({"hr_resize_y": 96}, (96, 96), "0x96"),
        ({"hr_resize_x": 128, "hr_resize_y": 96}, (128, 96), "128x96"),  # upscaled to 128², then cropped
    ],
)
def test_hires_resize_follows_a1111_rounding_and_crop(
    mock: MockSDServer, resize: dict[str, int], size: tuple[int, int], written: str
) -> None:
    fields = {"enable_hr": True, "denoising_strength": 0.4, "hr_second_pass_steps": 3, **resize}
    info, (image,) = txt2img(mock, **fields)
    assert image.size == size
    assert (params(info)["Hires resize-1"], params(info)["Hires steps"]) == (written.split("x")[0], "3")


def test_hires_sampler_checkpoint_and_prompt_keys(mock: MockSDServer) -> None:
    info, _ = txt2img(
        mock,
        enable_hr=True,
        denoising_strength=0.4,
        sampler_name="Euler a",
        hr_sampler_name="DPM++ 2M",
        hr_checkpoint_name="other",
        hr_prompt="a lighthouse, detailed",
    )
    written = params(info)
    assert written["Hires sampler"] == "DPM++ 2M" and written["Hires checkpoint"].startswith("other [")
    assert written["Hires prompt"] == "a lighthouse, detailed" and written["Hires schedule type"] == "Karras"
    assert "Hires negative prompt" not in written


def test_unknown_hires_upscaler_is_a1111s_500(mock: MockSDServer) -> None:
    status, answer = call(mock, "POST", "/sdapi/v1/txt2img", SMALL | {"enable_hr": True, "hr_upscaler": "4x-Nope"})
    assert (status, answer) == (
        500,
        {"error": "Exception", "detail": "", "body": "", "errors": "could not find upscaler named 4x-Nope"},
    )


def test_upscalers_and_latent_modes_are_listed(mock: MockSDServer) -> None:
    upscalers = call(mock, "GET", "/sdapi/v1/upscalers")[1]
    assert {"None", "Lanczos", "R-ESRGAN 4x+"} <= {u["name"] for u in upscalers}
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert "Latent" in [mode["name"] for mode in call(mock, "GET", "/sdapi/v1/latent-upscale-modes")[1]]


# -- styles -------------------------------------------------------------------------------------------
def test_styles_apply_to_both_prompts_with_the_placeholder_and_write_no_key(mock: MockSDServer) -> None:
    styles = call(mock, "GET", "/sdapi/v1/prompt-styles")[1]
    assert {"cinematic", "photo"} <= {style["name"] for style in styles}
    info, _ = txt2img(mock, negative_prompt="ugly", styles=["cinematic", "photo", "no-such-style"])
    cinematic = "cinematic still a lighthouse, shallow depth of field, film grain"
    assert info["prompt"] == f"{cinematic}, photograph, 50mm, sharp focus"
    assert info["negative_prompt"] == "ugly, cartoon, painting, blurry, lowres"
    assert info["styles"] == ["cinematic", "photo", "no-such-style"]
    written = params(info)
    assert written["Prompt"] == info["prompt"] and not [key for key in written if "tyle" in key]


# -- samplers -----------------------------------------------------------------------------------------
def test_samplers_and_schedulers_carry_a1111_aliases_and_options(mock: MockSDServer) -> None:
    samplers = {s["name"]: s for s in call(mock, "GET", "/sdapi/v1/samplers")[1]}
    assert samplers["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert list(samplers)[0] == "DPM++ 2M" and "DDIM CFG++" in samplers
    schedulers = {s["label"]: s for s in call(mock, "GET", "/sdapi/v1/schedulers")[1]}
    assert schedulers["SGM Uniform"]["aliases"] == ["SGMUniform"] and schedulers["Karras"]["default_rho"] == 7.0


def test_an_unknown_sampler_is_replaced_and_the_infotext_says_which(mock: MockSDServer) -> None:
    info, _ = txt2img(mock, sampler_name="k_euler_a")  # an alias is not a name for txt2img in v1.10
    assert info["sampler_name"] == "DPM++ 2M"
    assert params(info)["Sampler"] == "DPM++ 2M" and params(info)["Schedule type"] == "Karras"


# -- refiner, variations, faces, clip skip, seed resize, tiling ---------------------------------------
def test_refiner_variation_faces_clip_skip_seed_resize_and_tiling_keys(mock: MockSDServer) -> None:
    info, _ = txt2img(
        mock,
        batch_size=2,
        refiner_checkpoint="refiner",
        refiner_switch_at=0.8,
        subseed=100,
        subseed_strength=0.25,
        restore_faces=True,
        seed_resize_from_w=32,
        seed_resize_from_h=48,
        tiling=True,
        override_settings={"CLIP_stop_at_last_layers": 2},
    )
    assert info["all_seeds"] == [11, 11] and info["all_subseeds"] == [100, 101]
    first, second = params(info, 0), params(info, 1)
    assert (first["Variation seed"], second["Variation seed"], first["Variation seed strength"]) == (
        "100",
        "101",
        "0.25",
    )
    assert first["Refiner"].startswith("refiner [") and first["Refiner switch at"] == "0.8"
    assert first["Face restoration"] == "CodeFormer" and info["face_restoration_model"] == "CodeFormer"
    assert (first["Seed resize from-1"], first["Seed resize from-2"]) == ("32", "48")
    assert (first["Clip skip"], first["Tiling"], info["clip_skip"]) == ("2", "True", 2)


def test_unknown_refiner_is_a1111s_500(mock: MockSDServer) -> None:
    status, answer = call(mock, "POST", "/sdapi/v1/txt2img", SMALL | {"refiner_checkpoint": "nope"})
    assert (status, answer["error"], answer["errors"]) == (500, "Exception", "Could not find checkpoint with name nope")


# -- scripts ------------------------------------------------------------------------------------------
def test_scripts_are_listed_and_unknown_ones_are_a1111s_422(mock: MockSDServer) -> None:
    assert {"controlnet", "adetailer", "x/y/z plot"} <= set(call(mock, "GET", "/sdapi/v1/scripts")[1]["txt2img"])
    unknown = {"error": "HTTPException", "detail": "Script 'Dynamic Prompts' not found", "body": "", "errors": ""}
    assert call(mock, "POST", "/sdapi/v1/txt2img", {"alwayson_scripts": {"Dynamic Prompts": {"args": []}}}) == (
        422,
        unknown,
    )
    assert call(mock, "POST", "/sdapi/v1/txt2img", {"script_name": "Dynamic Prompts"}) == (422, unknown)
    status, answer = call(mock, "POST", "/sdapi/v1/txt2img", {"alwayson_scripts": {"x/y/z plot": {"args": []}}})
    assert (status, answer["detail"]) == (422, "Cannot have a selectable script in the always on scripts params")
    assert txt2img(mock, script_name="x/y/z plot", script_args=[])[0]["infotexts"]  # runs as a plain generation


def test_resource_routes_answer_in_a1111_shapes(mock: MockSDServer) -> None:
    info = {script["name"]: script for script in call(mock, "GET", "/sdapi/v1/script-info")[1]}
    assert info["controlnet"]["is_alwayson"] and not info["x/y/z plot"]["is_alwayson"]
    assert {ext["name"] for ext in call(mock, "GET", "/sdapi/v1/extensions")[1]} == {"sd-webui-controlnet", "adetailer"}
    assert [r["name"] for r in call(mock, "GET", "/sdapi/v1/face-restorers")[1]] == ["CodeFormer", "GFPGAN"]
    assert call(mock, "GET", "/sdapi/v1/sd-vae") == (200, [])
    assert call(mock, "GET", "/sdapi/v1/embeddings") == (200, {"loaded": {}, "skipped": {}})


def test_controlnet_units_write_their_keys_and_append_detect_maps(mock: MockSDServer) -> None:
    unit = {"module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "image": "", "control_mode": 0}
    off = {"module": "depth", "model": "control_depth", "enabled": False}
    info, images = txt2img(mock, alwayson_scripts={"ControlNet": {"args": [unit, off]}})
    assert len(images) == 2 and len(info["infotexts"]) == 1 and info["index_of_first_image"] == 0
    assert "parameters" in images[0].info and "parameters" not in images[1].info  # the map has no infotext
    written = params(info)["ControlNet 0"]
    assert written.startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, ")
    assert "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0" in written  # canny's own defaults
    assert "Control Mode: Balanced" in written and "ControlNet 1" not in params(info)


def test_adetailer_writes_its_keys_only_when_enabled(mock: MockSDServer) -> None:
    tab = {"ad_model": "face_yolov8n.pt", "ad_prompt": "detailed face"}
    info, images = txt2img(mock, alwayson_scripts={"ADetailer": {"args": [True, False, tab]}})
    written = params(info)
    assert (written["ADetailer model"], written["ADetailer prompt"]) == ("face_yolov8n.pt", "detailed face")
    assert "ADetailer version" in written and len(images) == 1
    disabled, _ = txt2img(mock, alwayson_scripts={"ADetailer": {"args": [False]}})
    assert not [key for key in params(disabled) if key.startswith("ADetailer")]


# -- settings, formats, grid --------------------------------------------------------------------------
def test_unknown_override_key_is_a1111s_500_keyerror_and_changes_nothing(mock: MockSDServer) -> None:
    body = SMALL | {"override_settings": {"CLIP_stop_at_last_layers": 3, "clip_skip": 2}}
    assert call(mock, "POST", "/sdapi/v1/txt2img", body) == (
        500,
        {"error": "KeyError", "detail": "", "body": "", "errors": "'clip_skip'"},
    )
    assert mock.options["CLIP_stop_at_last_layers"] == 1  # restored afterwards


def test_unknown_samples_format_fails_after_the_generation_unless_the_override_is_undone(mock: MockSDServer) -> None:
    bmp = {"override_settings": {"samples_format": "bmp"}}
    # A1111 encodes after restoring the settings: the overridden format never reaches the encoder...
    info, (image,) = txt2img(mock, **bmp)
    assert image.format == "PNG"
    # ...unless the override stays, and then every answer with images fails.
    kept = SMALL | bmp | {"override_settings_restore_afterwards": False}
    invalid = {"error": "HTTPException", "detail": "Invalid image format", "body": "", "errors": ""}
    assert call(mock, "POST", "/sdapi/v1/txt2img", kept) == (500, invalid)
    assert call(mock, "POST", "/sdapi/v1/txt2img", SMALL) == (500, invalid)
    assert call(mock, "POST", "/sdapi/v1/txt2img", SMALL | {"send_images": False})[0] == 200


def test_save_images_with_a_batch_puts_the_grid_first(mock: MockSDServer) -> None:
    info, images = txt2img(mock, batch_size=2, n_iter=2, save_images=True)
    assert [image.size for image in images] == [(128, 128), (64, 64), (64, 64), (64, 64), (64, 64)]
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 5
    assert info["infotexts"][0] == info["infotexts"][1]  # the grid is described by the first image
    assert len(txt2img(mock, batch_size=2)[1]) == 2  # no grid without save_images


def test_a_garbage_fault_corrupts_the_first_real_image_not_the_grid() -> None:
    mock = MockSDServer(seed=1, faults="garbage:1")
    status, answer = call(mock, "POST", "/sdapi/v1/txt2img", SMALL | {"batch_size": 2, "save_images": True})
    grid, first, second = (base64.b64decode(b64) for b64 in answer["images"])
    assert status == 200 and json.loads(answer["info"])["index_of_first_image"] == 1
    assert Image.open(io.BytesIO(grid)).size == (128, 64) and Image.open(io.BytesIO(second)).size == (64, 64)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(first)).load()


@pytest.mark.parametrize("samples_format", ["jpg", "webp"])
def test_lossy_formats_carry_the_infotext_in_exif_that_png_info_reads(mock: MockSDServer, samples_format: str) -> None:
    assert call(mock, "POST", "/sdapi/v1/options", {"samples_format": samples_format}) == (200, None)
    status, answer = call(mock, "POST", "/sdapi/v1/txt2img", SMALL)
    info = json.loads(answer["info"])
    status, read = call(mock, "POST", "/sdapi/v1/png-info", {"image": answer["images"][0]})
    assert status == 200 and read["info"] == info["infotexts"][0]


# -- png-info -----------------------------------------------------------------------------------------
def test_png_info_parses_like_a1111_with_styles_and_controlnet_fields(mock: MockSDServer) -> None:
    unit = {"module": "canny", "model": "control_canny", "image": ""}
    status, answer = call(
        mock,
        "POST",
        "/sdapi/v1/txt2img",
        SMALL | {"styles": ["photo"], "alwayson_scripts": {"ControlNet": {"args": [unit]}}},
    )
    image = "data:image/png;base64," + answer["images"][0]
    status, read = call(mock, "POST", "/sdapi/v1/png-info", {"image": image})
    parsed = read["parameters"]
    assert status == 200 and read["info"] == json.loads(answer["info"])["infotexts"][0] and read["items"] == {}
    assert (parsed["Styles array"], parsed["Prompt"], parsed["Negative prompt"]) == (["photo"], "a lighthouse", "")
    assert (parsed["Steps"], parsed["Size-1"], parsed["Clip skip"], parsed["Hires sampler"]) == (
        "4",
        "64",
        "1",
        "Use same sampler",
    )
    assert (parsed["ControlNet 0 module"], parsed["ControlNet 0 weight"]) == ("canny", 1.0)


def test_png_info_of_garbage_is_a1111s_500(mock: MockSDServer) -> None:
    invalid = {"error": "HTTPException", "detail": "Invalid encoded image", "body": "", "errors": ""}
    assert call(mock, "POST", "/sdapi/v1/png-info", {"image": "bm90IGFuIGltYWdl"}) == (500, invalid)


# -- mock:// ------------------------------------------------------------------------------------------
def test_mock_url_takes_models_and_load_time() -> None:
    url = "mock://ckpts?models=a.safetensors;b&model_load_ms=0"
    assert parse_mock_url(url)[1]["models"] == ("a.safetensors", "b")
    titles = [model["title"].split(" ")[0] for model in call(get_mock_server(url), "GET", "/sdapi/v1/sd-models")[1]]
    assert titles == ["a.safetensors", "b.safetensors"]
    with pytest.raises(ValueError, match="models"):
        parse_mock_url("mock://?models=;")
