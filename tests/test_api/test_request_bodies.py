"""One request, two entry points: ``POST /api/generate`` and a ``POST /api/batches`` row send the same body."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.procs import Proc
from tests.test_api.conftest import StartApi
from tests.test_e2e.conftest import mock_stats, start_mock

pytestmark = pytest.mark.e2e

REQUEST: dict[str, Any] = {
    "prompt": "a harbour at night",
    "negative_prompt": "blurry",
    "seed": 5,
    "steps": 12,
    "cfg_scale": 6.5,
    "width": 64,
    "height": 64,
    "sampler_name": "euler a",  # resolved to the server's "Euler a" on both paths
    "enable_hr": True,
    "hr_scale": 1.5,
    "hr_upscaler": "Latent",
    "denoising_strength": 0.4,
    "styles": ["photo"],
    "alwayson_scripts": {"ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt"}]}},
    "override_settings": {"CLIP_stop_at_last_layers": 2},
}


def test_api_generate_and_a_batch_row_send_identical_bodies(
    start_api: StartApi, spawn: Callable[..., Proc], e2e_env: dict[str, str]
) -> None:
    mock = start_mock(spawn, e2e_env)
    api = start_api(sd_api_url=mock)

    generated = api.client.post("/api/generate", params={"wait": "true"}, json=REQUEST)
    assert generated.status_code == 200, generated.text
    batched = api.client.post("/api/batches", json={"rows": [REQUEST]})
    assert batched.status_code == 202, batched.text
    assert wait_until(lambda: mock_stats(mock)["txt2img_completed"] == 2, timeout_s=60)

    first, second = (dict(record["body"]) for record in mock_stats(mock)["requests"])  # type: ignore[attr-defined]
    assert first.pop("force_task_id") != second.pop("force_task_id")  # each names its own job
    assert first == second
    assert first["sampler_name"] == "Euler a"
    for key in ("enable_hr", "hr_scale", "hr_upscaler", "styles", "alwayson_scripts", "override_settings"):
        assert first[key] == REQUEST[key], key
