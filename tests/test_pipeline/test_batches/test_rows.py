"""Batch rows carry the whole A1111 txt2img request: pass-through fields, A1111 names, CSV cells as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.batches.files import BatchFileError, read_batch_file
from pipeline.batches.rows import check_row
from pipeline.settings import Settings

CONTROLNET = {"ControlNet": {"args": [{"module": "canny", "model": "control_canny", "weight": 0.8}]}}


def read(path: Path, settings: Settings) -> Any:
    return read_batch_file(path, settings, defaults={}, batch_id="b", now=0.0)


def test_jsonl_row_sends_a1111_fields_exactly_as_written(tmp_path: Path, settings: Settings) -> None:
    row = {
        "prompt": "a castle",
        "negative_prompt": "blurry",
        "cfg_scale": 6,
        "sampler_name": "Euler a",
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "denoising_strength": 0.5,
        "styles": ["cinematic"],
        "alwayson_scripts": CONTROLNET,
        "override_settings": {"CLIP_stop_at_last_layers": 2},
        "refiner_checkpoint": "sdxl_refiner",
        "refiner_switch_at": 0.8,
        "subseed": 42,
        "subseed_strength": 0.3,
        "width": 64,
        "height": 64,
    }
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")

    (planned,) = read(path, settings)

    generation = planned.specs[0].generation
    assert generation is not None
    payload = generation.to_payload()
    for key, value in row.items():
        assert payload[key] == value, key
    assert payload["batch_size"] == 1
    assert generation.output_size == (128, 128)


def test_csv_cells_of_pass_through_fields_are_json_where_they_parse(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        "prompt,steps,enable_hr,hr_upscaler,styles,alwayson_scripts\n"
        'a fox,12,true,Latent,"[""s1"",""s2""]","{""ADetailer"": {""args"": [true]}}"\n'
    )

    (planned,) = read(path, settings)

    payload = planned.specs[0].generation.to_payload()  # type: ignore[union-attr]
    assert payload["steps"] == 12
    assert payload["enable_hr"] is True
    assert payload["hr_upscaler"] == "Latent"
    assert payload["styles"] == ["s1", "s2"]
    assert payload["alwayson_scripts"] == {"ADetailer": {"args": [True]}}


def test_hires_row_without_denoise_sends_the_ui_default(tmp_path: Path, settings: Settings) -> None:
    # A1111's API has no default: enable_hr without denoising_strength is a 500 TypeError there.
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "enable_hr": True}) + "\n" + json.dumps({"prompt": "b"}) + "\n")

    hires, plain = (row.specs[0].generation.to_payload() for row in read(path, settings))  # type: ignore[union-attr]

    assert hires["denoising_strength"] == 0.7
    assert "denoising_strength" not in plain


def test_row_batch_size_and_n_iter_are_refused_for_count(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "batch_size": 4}) + "\n" + json.dumps({"prompt": "b", "n_iter": 2}))

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [str(problem) for problem in caught.value.problems] == [
        "line 1, batch_size: not allowed (a job is one image: use count for more images)",
        "line 2, n_iter: not allowed (a job is one image: use count for more images)",
    ]


def test_row_fingerprint_includes_pass_through_fields(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": "a", "seed": 1}, {"prompt": "a", "seed": 1, "styles": ["x"]}, {"prompt": "a", "seed": 1}]
    path.write_text("\n".join(json.dumps(row) for row in rows))

    first, styled, again = read(path, settings)

    assert first.specs[0].fingerprint == again.specs[0].fingerprint
    assert styled.specs[0].fingerprint != first.specs[0].fingerprint


def test_check_row_sdpipe_and_a1111_names_are_one_key() -> None:
    values, issues = check_row({"negative": "a", "negative_prompt": "b"}, text_values=False)

    assert issues == [("negative", "given twice (as 'negative' and as its A1111 name)", True)]
    assert values == {"negative": "a"}


def test_a_pasted_a1111_body_is_a_row_as_it_is(tmp_path: Path, settings: Settings) -> None:
    # What an API script sends A1111, pasted whole: the fields sdpipe sets itself are left to it
    body = {
        "prompt": "a harbour",
        "negative_prompt": "",
        "seed": 3,
        "sampler_name": "Euler a",
        "sampler_index": "Euler",
        "batch_size": 1,
        "n_iter": 1,
        "steps": 12,
        "cfg_scale": 7,
        "width": 64,
        "height": 64,
        "restore_faces": False,
        "send_images": True,
        "save_images": False,
        "force_task_id": "task(abc)",
        "script_args": [],
        "alwayson_scripts": {},
        "override_settings_restore_afterwards": False,
    }
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(body) + "\n")

    (planned,) = read(path, settings)

    payload = planned.specs[0].generation.to_payload()  # type: ignore[union-attr]
    assert {key: payload[key] for key in body if key != "force_task_id"} == {
        **{key: value for key, value in body.items() if key != "force_task_id"},
        "cfg_scale": 7.0,
    }
    assert "force_task_id" not in payload  # the client names the task after the job


def test_command_line_defaults_text_stays_text(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("a fox\n")

    (planned,) = read_batch_file(path, settings, defaults={"hr_prompt": "[1]", "steps": "12"}, batch_id="b", now=0.0)

    payload = planned.specs[0].generation.to_payload()  # type: ignore[union-attr]
    assert (payload["hr_prompt"], payload["steps"]) == ("[1]", 12)
