"""The mock's checkpoints: listing, switching (per request or through ``/options``), load time and counts.

A1111 v1.10's rules (``process_images``): an override is undone after the request unless
``override_settings_restore_afterwards`` is false, but the overriding model stays loaded until the next
request reloads the selected one; an unknown checkpoint in ``override_settings`` is ignored silently.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from pipeline.sd.mock.http import MockSDServer
from tests.helpers import wait_until
from tests.test_pipeline.test_sd.conftest import StartMock

SMALL = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 1}
MODELS = ("base.safetensors", "other.safetensors", "sd_xl_refiner_1.0.safetensors")


def txt2img(mock: MockSDServer, **fields: Any) -> dict[str, Any]:
    answer = mock.handle("POST", "/sdapi/v1/txt2img", "", {}, json.dumps(SMALL | fields).encode())
    assert answer.status == 200, answer.body
    return dict(json.loads(answer.json()["info"]))


def loaded_in(info: dict[str, Any]) -> tuple[str, str]:
    """The checkpoint as ``info`` and the infotext name it: (sd_model_name, the ``Model`` key)."""
    model = info["infotexts"][0].split("Model: ", 1)[1].split(",", 1)[0]
    return info["sd_model_name"], model


@pytest.fixture
def mock() -> MockSDServer:
    return MockSDServer(seed=1, models=MODELS)


def test_sd_models_lists_every_checkpoint_like_a1111(mock: MockSDServer) -> None:
    models = mock.handle("GET", "/sdapi/v1/sd-models", "", {}, b"").json()
    assert [m["model_name"] for m in models] == ["base", "other", "sd_xl_refiner_1.0"]
    refiner = models[2]
    assert (
        refiner["title"] == "sd_xl_refiner_1.0.safetensors [7440042bbd]" and refiner["hash"] == refiner["sha256"][:10]
    )
    assert refiner["filename"].endswith("/models/Stable-diffusion/sd_xl_refiner_1.0.safetensors")


def test_an_override_switches_for_one_request_and_the_next_one_reloads(mock: MockSDServer) -> None:
    info = txt2img(mock, override_settings={"sd_model_checkpoint": "other"})
    assert loaded_in(info) == ("other", "other") and info["sd_model_hash"] == mock.models[1]["hash"]
    assert mock.options["sd_model_checkpoint"] == mock.models[0]["title"]  # restored afterwards
    assert loaded_in(txt2img(mock)) == ("base", "base")
    stats = mock.stats()
    assert stats["model_loads"] == 2 and [r["model_loads"] for r in stats["requests"]] == [1, 1]
    assert [load["model"] for load in stats["model_load_log"]] == [mock.models[1]["title"], mock.models[0]["title"]]


@pytest.mark.parametrize("restore", [False, None])  # A1111 tests it for truth: null keeps the override too
def test_an_override_without_restore_stays_in_force(mock: MockSDServer, restore: bool | None) -> None:
    txt2img(mock, override_settings={"sd_model_checkpoint": "other"}, override_settings_restore_afterwards=restore)
    assert loaded_in(txt2img(mock)) == ("other", "other")
    assert mock.options["sd_model_checkpoint"] == mock.models[1]["title"] and mock.stats()["model_loads"] == 1


def test_an_unknown_checkpoint_override_is_ignored_silently(mock: MockSDServer) -> None:
    info = txt2img(mock, override_settings={"sd_model_checkpoint": "nope.safetensors"})
    assert loaded_in(info) == ("base", "base") and mock.stats()["model_loads"] == 0


def test_the_same_checkpoint_twice_loads_once(mock: MockSDServer) -> None:
    for _ in range(2):
        txt2img(mock, override_settings={"sd_model_checkpoint": "other"}, override_settings_restore_afterwards=False)
    assert mock.stats()["model_loads"] == 1


def test_a_refiner_loads_during_the_batch_and_the_main_model_comes_back(mock: MockSDServer) -> None:
    info = txt2img(mock, n_iter=2, refiner_checkpoint="sd_xl_refiner_1.0", refiner_switch_at=0.8)
    assert loaded_in(info) == ("base", "base")
    # refiner in batch 1, base again for batch 2, refiner again: three loads, the refiner left loaded
    assert mock.stats()["model_loads"] == 3 and mock.stats()["loaded_model"] == mock.models[2]["title"]
    assert mock.options["sd_model_checkpoint"] == mock.models[0]["title"]  # refiner loads skip the config


def test_post_options_loads_the_checkpoint_once(start_mock: StartMock, http: httpx.Client) -> None:
    mock, url = start_mock(models=MODELS, model_load_ms=1)
    assert http.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "other"}).json() is None
    options = http.get(f"{url}/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == mock.models[1]["title"] and options["sd_checkpoint_hash"]
    http.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": mock.models[1]["title"]})
    info = json.loads(http.post(f"{url}/sdapi/v1/txt2img", json=SMALL).json()["info"])
    assert loaded_in(info) == ("other", "other") and mock.stats()["model_loads"] == 1


def test_a_load_through_options_waits_for_the_generation_in_progress(start_mock: StartMock, http: httpx.Client) -> None:
    # Given a generation in progress
    mock, url = start_mock(models=MODELS, latency_ms=300)
    generation = threading.Thread(target=lambda: http.post(f"{url}/sdapi/v1/txt2img", json=SMALL))
    generation.start()
    assert wait_until(lambda: mock.stats()["active"] == 1, timeout_s=10)
    # When a checkpoint is set meanwhile
    http.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "other"})
    generation.join()
    # Then the generation ran on the old model: the load queued behind it
    request = mock.stats()["requests"][0]
    assert (request["model"], request["model_loads"]) == (mock.models[0]["title"], 0)
    assert mock.stats()["loaded_model"] == mock.models[1]["title"]
