"""The A1111 request flags of ``generate``, ``batch`` and ``schedule add``: one set of options, one check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.test_cli.conftest import Invoke

SMALL = ("--sd-url", "mock://", "--width", "64", "--height", "64")


def _generation(result: Any) -> dict[str, Any]:
    """The job's request as planned (whether the mock knows its scripts or not)."""
    assert result.exit_code in (0, 1), result.output
    (job,) = json.loads(result.stdout)
    generation: dict[str, Any] = job["spec"]["generation"]
    return generation


def test_generate_flags_become_a1111_fields(sdpipe: Invoke, tmp_path: Path) -> None:
    unit = {"args": [{"module": "canny", "model": "control_canny"}]}
    (tmp_path / "cn.json").write_text(json.dumps(unit))

    generation = _generation(
        sdpipe(
            "generate", "a fox", *SMALL, "--json",
            "--hires", "--hr-scale", "2", "--hr-upscaler", "Latent", "--hr-steps", "5", "--denoise", "0.4",
            "--styles", "cinematic", "--styles", "photo", "--refiner", "refiner.safetensors",
            "--refiner-switch-at", "0.8", "--clip-skip", "2", "--subseed", "9", "--subseed-strength", "0.25",
            "--param", "tiling=true", "--param", "hr_prompt=a detailed fox",
            "--script", f"ControlNet=@{tmp_path / 'cn.json'}", "--script", "ADetailer=[true, false]",
        )
    )  # fmt: skip

    assert {key: generation[key] for key in ("enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps")} == {
        "enable_hr": True,
        "hr_scale": 2.0,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 5,
    }
    assert generation["denoising_strength"] == 0.4 and generation["styles"] == ["cinematic", "photo"]
    assert (generation["refiner_checkpoint"], generation["refiner_switch_at"]) == ("refiner.safetensors", 0.8)
    assert (generation["subseed"], generation["subseed_strength"]) == (9, 0.25)
    assert generation["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert generation["tiling"] is True and generation["hr_prompt"] == "a detailed fox"
    assert generation["alwayson_scripts"] == {"ControlNet": unit, "ADetailer": {"args": [True, False]}}


def test_generate_request_file_is_the_body_and_flags_override_it(sdpipe: Invoke, tmp_path: Path) -> None:
    body = {
        "prompt": "from the file",
        "negative_prompt": "blurry",
        "steps": 9,
        "batch_size": 1,
        "n_iter": 1,
        "tiling": True,
        "override_settings": {"CLIP_stop_at_last_layers": 1},
    }
    (tmp_path / "body.json").write_text(json.dumps(body))

    generation = _generation(
        sdpipe("generate", *SMALL, "--json", "--request", str(tmp_path / "body.json"), "--negative", "ugly",
               "--clip-skip", "3")
    )  # fmt: skip

    assert (generation["prompt"], generation["negative_prompt"], generation["steps"]) == ("from the file", "ugly", 9)
    assert generation["tiling"] is True
    assert generation["override_settings"] == {"CLIP_stop_at_last_layers": 3}


def test_generate_batch_size_is_refused_for_count(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "x", *SMALL, "--param", "batch_size=4")

    assert result.exit_code == 2
    assert "batch_size: not allowed (a job is one image: use count for more images)" in result.stderr


def test_generate_malformed_param_and_script_exit_2(sdpipe: Invoke, tmp_path: Path) -> None:
    assert "is not KEY=JSON" in sdpipe("generate", "x", *SMALL, "--param", "tiling").stderr
    missing = sdpipe("generate", "x", *SMALL, "--script", f"ControlNet=@{tmp_path / 'nope.json'}")
    assert missing.exit_code == 2 and "cannot read --script file" in missing.stderr
    number = sdpipe("generate", "x", *SMALL, "--script", "ControlNet=3")
    assert number.exit_code == 2 and "expected an object" in number.stderr


def test_batch_request_flags_are_defaults_rows_override(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b", "styles": ["photo"]}) + "\n")

    result = sdpipe("batch", str(path), *SMALL, "--styles", "cinematic", "--hires", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    manifest = sdpipe("batch", str(path), *SMALL, "--styles", "cinematic", "--hires", "--json")
    rows = json.loads(manifest.stdout)["rows"]
    assert [(row["params"]["styles"], row["params"]["enable_hr"]) for row in rows] == [
        (["cinematic"], True),
        (["photo"], True),
    ]
