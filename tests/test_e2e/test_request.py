"""The whole A1111 request end to end: Redis mode, 2 worker processes, ``sdpipe mock-sd`` over HTTP.

The mock's request log (``/mock/stats`` ``requests[].body``) shows what the server received.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.images.infotext import parse_infotext
from tests.test_e2e.conftest import Proc, mock_stats, run_sdpipe, start_mock, start_worker

pytestmark = pytest.mark.e2e

MODELS = "base.safetensors,other.safetensors,refiner.safetensors"
CONTROLNET_UNIT = {"module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "weight": 0.8}
ADETAILER_TAB = {"ad_model": "face_yolov8n.pt", "ad_prompt": "detailed face"}
HIRES_ROW: dict[str, Any] = {
    "prompt": "a castle on a hill",
    "seed": 11,
    "width": 64,
    "height": 64,
    "enable_hr": True,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 5,
    "denoising_strength": 0.5,
    "model": "base",
}
SCRIPTS_ROW: dict[str, Any] = {
    "prompt": "a lighthouse",
    "negative_prompt": "blurry",
    "seed": 12,
    "width": 64,
    "height": 64,
    "styles": ["cinematic"],
    "alwayson_scripts": {
        "ControlNet": {"args": [CONTROLNET_UNIT]},
        "ADetailer": {"args": [True, False, ADETAILER_TAB]},
    },
    "refiner_checkpoint": "refiner.safetensors",
    "refiner_switch_at": 0.8,
    "subseed": 7,
    "subseed_strength": 0.3,
    "override_settings": {"CLIP_stop_at_last_layers": 2},
    "model": "other.safetensors",
}


def _bodies(url: str) -> dict[str, dict[str, Any]]:
    """The txt2img bodies the mock received, by prompt."""
    return {record["body"]["prompt"]: record["body"] for record in mock_stats(url)["requests"]}  # type: ignore[attr-defined]


def _infotext(path: Path) -> str:
    with Image.open(path) as image:
        return str(image.info["parameters"])


def test_jsonl_batch_with_hires_scripts_styles_refiner_variation_and_two_checkpoints(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    mock = start_mock(spawn, e2e_env, "--models", MODELS)
    env = {**e2e_env, "SD_API_URL": mock}
    workers = start_worker(spawn, env)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(HIRES_ROW) + "\n" + json.dumps(SCRIPTS_ROW) + "\n")

    result = run_sdpipe("batch", str(path), "--grid", "1x2", env=env, timeout_s=300)

    assert result.returncode == 0, result.stdout + result.stderr + workers.output()
    manifest = json.loads(Path(result.stdout.strip().splitlines()[-1].split(" ", 1)[1]).read_text())
    assert manifest["counts"] == {"succeeded": 2}
    # The server received every field exactly as written; `model` as the checkpoint's title
    bodies = _bodies(mock)
    for row in (HIRES_ROW, SCRIPTS_ROW):
        body = bodies[row["prompt"]]
        for key, value in row.items():
            if key not in ("model", "override_settings"):
                assert body[key] == value, key
        overrides = body["override_settings"]
        assert {k: v for k, v in overrides.items() if k != "sd_model_checkpoint"} == row.get("override_settings", {})
        stem = str(row["model"]).split(".")[0]
        assert overrides["sd_model_checkpoint"].startswith(f"{stem}.safetensors [")
        assert body["batch_size"] == 1 and body["n_iter"] == 1
    # Each image is the size asked (hires: 2x) and its infotext says what was asked
    hires_job, scripts_job = (row["jobs"][0] for row in manifest["rows"])
    with Image.open(hires_job["output"]) as image:
        assert image.size == (128, 128)
    hires = parse_infotext(_infotext(Path(hires_job["output"])))
    assert (hires["Hires upscale"], hires["Hires upscaler"], hires["Denoising strength"]) == ("2.0", "Latent", "0.5")
    assert (hires["Model"], hires["Seam grid-1"], hires["Seam grid-2"]) == ("base", "1", "2")
    with Image.open(scripts_job["output"]) as image:
        assert image.size == (64, 64)
    text = _infotext(Path(scripts_job["output"]))
    scripted = parse_infotext(text)
    assert text.startswith(
        "cinematic still a lighthouse, shallow depth of field, film grain"
    )  # A1111 writes no style key
    assert scripted["Model"] == "other" and scripted["ADetailer model"] == "face_yolov8n.pt"
    assert scripted["ControlNet 0"].startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8")
    assert (scripted["Variation seed"], scripted["Variation seed strength"]) == ("7", "0.3")
    assert "Hires upscale" not in scripted
    sidecar = json.loads(Path(scripts_job["sidecar"]).read_text())
    assert (sidecar["seed"], sidecar["subseed"], sidecar["all_subseeds"]) == (12, 7, [7])
    assert sidecar["parameters"]["alwayson_scripts"] == SCRIPTS_ROW["alwayson_scripts"]
    assert sidecar["sd_warnings"] == []


@pytest.mark.parametrize(
    ("flags", "closest"),
    [
        (["--model", "othr"], "closest: other.safetensors ["),
        (["--sampler", "eulr a"], "closest: Euler a"),
    ],
    ids=["model", "sampler"],
)
def test_generate_unknown_model_or_sampler_exits_2_before_enqueue_naming_the_closest(
    e2e_env: dict[str, str], spawn: Callable[..., Proc], flags: list[str], closest: str
) -> None:
    mock = start_mock(spawn, e2e_env, "--models", MODELS)

    result = run_sdpipe("generate", "x", *flags, "--no-wait", env={**e2e_env, "SD_API_URL": mock})

    assert result.returncode == 2, result.stdout + result.stderr
    assert closest in result.stderr
    assert "job " not in result.stdout  # nothing enqueued
    assert mock_stats(mock)["txt2img_requests"] == 0


def test_unknown_override_key_fails_after_one_call_and_the_server_is_not_benched(
    e2e_env: dict[str, str], spawn: Callable[..., Proc]
) -> None:
    mock = start_mock(spawn, e2e_env)
    env = {**e2e_env, "SD_API_URL": mock, "WIDTH": "64", "HEIGHT": "64"}
    workers = start_worker(spawn, env)

    failed = run_sdpipe("generate", "x", "--override", "no_such_option=1", "--json", env=env)

    assert failed.returncode != 0, failed.stdout + failed.stderr
    (job,) = json.loads(failed.stdout)
    assert job["state"] == "failed" and "KeyError" in job["error"]["message"], job
    assert mock_stats(mock)["txt2img_requests"] == 1  # permanent: not retried
    backends = json.loads(run_sdpipe("backends", "--json", env=env).stdout)
    assert [backend["healthy"] for backend in backends] == [True], backends
    assert "benched" not in workers.output()
    ok = run_sdpipe("generate", "y", env=env)
    assert ok.returncode == 0, ok.stderr
