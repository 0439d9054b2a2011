"""The upscale request: validation, the img2img body, the infotext keys, the defaults it takes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.errors import InputError
from pipeline.images.infotext import parse_infotext
from pipeline.models import GenerationParams
from pipeline.settings import Settings
from pipeline.upscale.params import UpscaleParams
from pipeline.upscale.planning import UpscaleRequest, build_upscale_params


def test_params_refuse_a_tile_not_a_multiple_of_8() -> None:
    with pytest.raises(ValidationError, match="multiple of 8"):
        UpscaleParams(tile_px=500)


def test_params_refuse_an_overlap_over_half_a_tile() -> None:
    with pytest.raises(ValidationError, match="half the tile"):
        UpscaleParams(tile_px=256, overlap_px=200)


def test_img2img_payload_sends_every_field_and_the_tile() -> None:
    params = UpscaleParams(prompt="a fox", seed=7, denoise=0.25, steps=12)

    body = params.img2img_payload("QUJD", 512, 448, task_id="sdpipe-j-t3")

    assert body["init_images"] == ["QUJD"]
    assert (body["width"], body["height"], body["denoising_strength"]) == (512, 448, 0.25)
    assert (body["prompt"], body["seed"], body["steps"], body["force_task_id"]) == ("a fox", 7, 12, "sdpipe-j-t3")
    assert body["batch_size"] == 1 and body["send_images"] is True and body["save_images"] is False


def test_infotext_params_name_every_upscale_setting() -> None:
    keys = UpscaleParams(scale=2, upscaler="R-ESRGAN 4x+").infotext_params()

    assert keys == {
        "Upscale": "2",
        "Upscaler": "R-ESRGAN 4x+",
        "Upscale tile": 512,
        "Upscale overlap": 64,
        "Denoising strength": 0.3,
        "Seam fix": "none",
    }


def test_build_takes_the_prompt_and_seed_of_the_image_infotext(settings: Settings) -> None:
    infotext = "a lighthouse\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 1234, Size: 512x512"

    params = build_upscale_params(settings, UpscaleRequest(scale=2), infotext=infotext)

    assert (params.prompt, params.negative_prompt, params.seed) == ("a lighthouse", "blurry", 1234)


def test_build_draws_one_seed_for_every_tile(settings: Settings) -> None:
    params = build_upscale_params(settings, UpscaleRequest(scale=2, seed=-1))

    assert params.seed >= 0


def test_build_names_the_bad_setting(settings: Settings) -> None:
    with pytest.raises(InputError, match="tile_px") as caught:
        build_upscale_params(settings, UpscaleRequest(scale=2, tile_px=100))

    assert caught.value.field == "tile_px"


def test_build_keeps_the_generation_checkpoint_for_every_tile(settings: Settings) -> None:
    generation = GenerationParams(
        prompt="a fox", seed=3, steps=20, cfg_scale=7, width=64, height=64, sampler_name="Euler a",
        scheduler="Automatic",
        override_settings={"sd_model_checkpoint": "b.safetensors", "CLIP_stop_at_last_layers": 2},
        alwayson_scripts={"ADetailer": {"args": []}},
    )  # fmt: skip

    params = build_upscale_params(settings, UpscaleRequest(scale=2), generation=generation)
    body = params.img2img_payload("QUJD", 64, 64, task_id="t")

    assert params.checkpoint == "b.safetensors"
    assert body["override_settings"] == {"sd_model_checkpoint": "b.safetensors", "CLIP_stop_at_last_layers": 2}
    assert "alwayson_scripts" not in body  # a txt2img unit is not meant for every tile


def test_build_model_and_scripts_of_the_request_go_to_every_tile(settings: Settings) -> None:
    request = UpscaleRequest(
        scale=2, model="c", override_settings={"CLIP_stop_at_last_layers": 2},
        alwayson_scripts={"controlnet": {"args": [{"module": "tile_resample"}]}},
    )  # fmt: skip

    body = build_upscale_params(settings, request).img2img_payload("QUJD", 64, 64, task_id="t")

    assert body["override_settings"] == {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "c"}
    assert body["alwayson_scripts"] == {"controlnet": {"args": [{"module": "tile_resample"}]}}


def test_build_narrows_the_default_overlap_for_a_small_tile(settings: Settings) -> None:
    small = build_upscale_params(settings, UpscaleRequest(scale=2, tile_px=64))
    given = UpscaleRequest(scale=2, tile_px=64, overlap_px=64)

    assert (small.tile_px, small.overlap_px) == (64, 16)
    with pytest.raises(InputError, match="half the tile"):  # an overlap the user gave is never changed
        build_upscale_params(settings, given)


def test_vary_seed_gives_render_i_seed_plus_i_and_says_so() -> None:
    same = UpscaleParams(seed=10)
    varied = UpscaleParams(seed=4294967290, vary_seed=True)

    seeds = [varied.img2img_payload("QUJD", 64, 64, task_id="t", index=i)["seed"] for i in range(6)]

    assert [same.img2img_payload("QUJD", 64, 64, task_id="t", index=i)["seed"] for i in range(3)] == [10, 10, 10]
    assert seeds == [4294967290, 4294967291, 4294967292, 4294967293, 4294967294, 0]  # wraps in A1111's range
    assert varied.infotext_params()["Upscale seeds"] == "per tile" and "Upscale seeds" not in same.infotext_params()


def test_output_infotext_is_the_tiles_settings_over_the_inputs_keys() -> None:
    base = (
        "a fox\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, "
        "Seed: 5, Size: 64x64, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: v1.10.1"
    )
    checkpoint = {"sd_model_checkpoint": "sdxl_base.safetensors [31e35c80fc]"}
    params = UpscaleParams(prompt="a lighthouse", sampler_name="DPM++ 2M", scheduler="Karras", steps=9,
                           cfg_scale=4.5, seed=3, override_settings=checkpoint)  # fmt: skip

    text = params.output_infotext(base, 128, 96)
    plain = parse_infotext(UpscaleParams(seed=1).output_infotext("a photo caption, no params", 128, 96))

    assert parse_infotext(text) | {"Upscaler": "-"} == {
        "Prompt": "a lighthouse", "Negative prompt": "", "Steps": "9", "Sampler": "DPM++ 2M",
        "Schedule type": "Karras", "CFG scale": "4.5", "Seed": "3", "Size-1": "128", "Size-2": "96",
        "Model hash": "31e35c80fc", "Model": "sdxl_base", "Clip skip": "2", "Version": "v1.10.1",
        "Upscale": "2", "Upscaler": "-", "Upscale tile": "512", "Upscale overlap": "64",
        "Denoising strength": "0.3", "Seam fix": "none",
    }  # fmt: skip
    assert text.endswith("Version: v1.10.1")  # A1111 keeps it last
    assert (plain["Prompt"], plain["Seed"], plain["Upscale"]) == ("", "1", "2")  # a caption is no params line


def test_output_infotext_names_no_checkpoint_when_the_tiles_named_none() -> None:
    # Given an input rendered with one checkpoint, upscaled without --model (each server renders its
    # tiles with the checkpoint it has loaded)
    base = "a fox\nSteps: 20, Sampler: Euler a, Seed: 5, Size: 64x64, Model hash: 6ce0161689, Model: v1-5, Version: v1"

    text = UpscaleParams(prompt="a fox", seed=5).output_infotext(base, 128, 128)

    # Then the output names no checkpoint rather than one its tiles may not have used; the rest stays
    parsed = parse_infotext(text)
    assert "Model" not in parsed and "Model hash" not in parsed
    assert (parsed["Prompt"], parsed["Version"], parsed["Upscale"]) == ("a fox", "v1", "2")


def test_output_infotext_of_a_checkpoint_named_without_hash_keeps_no_old_hash() -> None:
    base = "a fox\nSteps: 20, Sampler: Euler a, Seed: 5, Size: 64x64, Model hash: 6ce0161689, Model: v1-5, Version: v1"
    params = UpscaleParams(prompt="a fox", seed=5, override_settings={"sd_model_checkpoint": "other.safetensors"})

    parsed = parse_infotext(params.output_infotext(base, 128, 128))

    assert parsed["Model"] == "other" and "Model hash" not in parsed  # not the input's checkpoint's hash
