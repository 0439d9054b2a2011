"""The A1111 mock: over real HTTP (a server started per test), through ``mock://``, and its renderer."""

from __future__ import annotations

import base64
import functools
import io
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, SDAuthError, SDServerError
from pipeline.models import GenerationParams
from pipeline.sd.client import SDClient
from pipeline.sd.mock.http import MockSDServer, get_mock_server
from pipeline.sd.mock.render import encode_image, render
from pipeline.sd.mock.txt2img import OOM_MESSAGE
from pipeline.settings import Settings
from tests.helpers import wait_until

StartMock = Callable[..., tuple[MockSDServer, str]]


def make_settings(url: str, **overrides: Any) -> Settings:
    return Settings(_env_file=None, sd_api_url=url, **overrides)  # type: ignore[call-arg]


def params(**overrides: Any) -> GenerationParams:
    fields: dict[str, Any] = {
        "prompt": "a lighthouse at dusk",
        "seed": 5,
        "steps": 20,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler a",
        "scheduler": "Automatic",
    }
    return GenerationParams(**(fields | overrides))


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def post_in_thread(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(client.post(url, json=body)))
    thread.start()
    return thread, results


def has_tickets(mock: MockSDServer, count: int) -> bool:
    """Whether ``count`` requests have joined the FIFO (waiting, generating or done)."""
    stats = mock.stats()
    return bool(stats["queued"] + stats["active"] + stats["txt2img_completed"] == count)


# -- txt2img over HTTP --------------------------------------------------------------------------------
def test_mock_http_txt2img_returns_png_with_parameters_chunk_and_floored_size(start_mock: StartMock) -> None:
    # Given a size that is not a multiple of 8
    _, url = start_mock()
    with SDClient(make_settings(url)) as client:
        result = client.txt2img(params(width=500, height=300, seed=77), job_id="j1")
    # Then the image is floored to 496x296 while info and infotext keep the requested size
    image = Image.open(io.BytesIO(result.image_bytes))
    assert (result.format, image.size) == ("png", (496, 296))
    assert image.info["parameters"] == result.infotext
    assert result.infotext is not None
    assert result.infotext.startswith("a lighthouse at dusk\nSteps: 20, Sampler: Euler a, Schedule type: Automatic")
    assert "Seed: 77, Size: 500x300, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly" in result.infotext
    assert result.infotext.endswith("Version: v1.10.1")
    assert (result.info["width"], result.info["height"], result.seed) == (500, 300, 77)
    assert result.model_name == "v1-5-pruned-emaonly" and result.version == "v1.10.1"


def test_mock_http_generates_one_at_a_time(start_mock: StartMock) -> None:
    mock, url = start_mock(latency_ms=100)
    started = time.monotonic()
    with SDClient(make_settings(url)) as client, ThreadPoolExecutor(4) as pool:
        seeds = list(pool.map(lambda i: client.txt2img(params(seed=i), job_id=f"j{i}").seed, range(4)))
    assert sorted(seeds) == [0, 1, 2, 3]
    assert time.monotonic() - started >= 0.4
    stats = mock.stats()
    assert (stats["max_concurrent"], stats["txt2img_completed"], stats["active"], stats["queued"]) == (1, 4, 0, 0)


def test_mock_http_serves_waiting_requests_in_arrival_order(start_mock: StartMock, http: httpx.Client) -> None:
    # Given a running generation, three more requests arrive one after another
    mock, url = start_mock(latency_ms=150)
    threads = []
    for index, prompt in enumerate("ABCD"):
        thread, _ = post_in_thread(http, f"{url}/sdapi/v1/txt2img", {"prompt": prompt, "width": 64, "height": 64})
        threads.append(thread)
        assert wait_until(functools.partial(has_tickets, mock, index + 1), timeout_s=5)
    for thread in threads:
        thread.join(10)
    # Then they were served first come, first served
    assert mock.stats()["served"] == ["A", "B", "C", "D"]
    assert mock.stats()["max_concurrent"] == 1


def test_mock_http_validation_errors_have_pydantic_v1_shapes(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    endpoint = f"{url}/sdapi/v1/txt2img"
    wrong_type = http.post(endpoint, json={"steps": "abc"})
    assert (wrong_type.status_code, wrong_type.json()) == (
        422,
        {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]},
    )
    no_body = http.post(endpoint)
    assert (no_body.status_code, no_body.json()) == (
        422,
        {"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]},
    )
    malformed = http.post(endpoint, content=b"{bad", headers={"content-type": "application/json"})
    detail = malformed.json()["detail"][0]
    assert malformed.status_code == 422
    assert (detail["loc"], detail["type"]) == (["body", 1], "value_error.jsondecode")
    assert detail["msg"].startswith("Expecting property name")


def test_mock_http_coerces_like_pydantic_v1_and_ignores_unknown_keys(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    body = {"steps": "20", "cfg_scale": 6, "width": 64, "height": 64, "hires_fix": True, "seed": "3"}
    answer = http.post(f"{url}/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200
    parameters = answer.json()["parameters"]
    assert (parameters["steps"], parameters["cfg_scale"], parameters["seed"]) == (20, 6.0, 3)
    assert "hires_fix" not in parameters


def test_mock_http_empty_body_uses_api_defaults(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    answer = http.post(f"{url}/sdapi/v1/txt2img", json={}).json()
    info = json.loads(answer["info"])
    assert (info["steps"], info["sampler_name"], info["cfg_scale"]) == (50, "Euler", 7.0)
    assert decode(answer["images"][0]).size == (512, 512)
    assert 0 <= info["seed"] < 4294967294 and answer["parameters"]["seed"] == -1
    # Euler has no schedule of its own: A1111 writes the base "Schedule type: Automatic" and no extra param.
    assert info["extra_generation_params"] == {} and "Schedule type: Automatic," in info["infotexts"][0]
    assert len(info["job_timestamp"]) == 14 and info["index_of_first_image"] == 0 and info["styles"] == []


def test_mock_http_batch_seeds_count_up(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    body = {"prompt": "x", "seed": 1000, "batch_size": 3, "width": 64, "height": 64}
    answer = http.post(f"{url}/sdapi/v1/txt2img", json=body).json()
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [1000, 1001, 1002] and info["seed"] == 1000
    assert len(answer["images"]) == 3 == len(info["infotexts"])
    for k, image in enumerate(answer["images"]):
        assert f"Seed: {1000 + k}," in decode(image).info["parameters"]
    assert answer["images"][0] != answer["images"][1]


def test_mock_http_auth_requires_basic_without_www_authenticate(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock(api_auth="user:pass")
    missing = http.get(f"{url}/sdapi/v1/progress")
    wrong = http.get(f"{url}/sdapi/v1/progress", auth=("user", "nope"))
    assert (missing.status_code, missing.json()["detail"]) == (401, "Not authenticated")
    assert missing.json()["error"] == "HTTPException" and "www-authenticate" not in missing.headers
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "Incorrect username or password")
    assert http.get(f"{url}/sdapi/v1/progress", auth=("user", "pass")).status_code == 200
    assert http.get(f"{url}/mock/stats").status_code == 200  # our own routes are not behind --api-auth
    with SDClient(make_settings(url, sd_api_auth="user:pass")) as client:
        assert client.check_ready().startswith("ready: 1 model")
    with SDClient(make_settings(url)) as client, pytest.raises(SDAuthError):
        client.txt2img(params(), job_id="j")


def test_mock_http_progress_is_zero_when_idle_and_partial_while_running(
    start_mock: StartMock, http: httpx.Client
) -> None:
    mock, url = start_mock(latency_ms=600)
    idle = http.get(f"{url}/sdapi/v1/progress").json()
    assert (idle["progress"], idle["state"]["job_count"], idle["eta_relative"]) == (0.0, 0, 0.0)
    thread, _ = post_in_thread(http, f"{url}/sdapi/v1/txt2img", {"steps": 10, "width": 64, "height": 64})
    assert wait_until(lambda: mock.stats()["active"] == 1, timeout_s=5)
    time.sleep(0.2)
    running = http.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
    thread.join(10)
    assert 0.01 < running["progress"] < 1.0
    assert (running["state"]["job_count"], running["state"]["sampling_steps"]) == (1, 10)
    assert running["current_image"] is None
    assert http.get(f"{url}/sdapi/v1/progress").json()["progress"] == 0.0


def test_mock_http_interrupt_returns_200_early_with_the_current_batch(
    start_mock: StartMock, http: httpx.Client
) -> None:
    mock, url = start_mock(latency_ms=3000)
    started = time.monotonic()
    thread, results = post_in_thread(http, f"{url}/sdapi/v1/txt2img", {"n_iter": 3, "width": 64, "height": 64})
    assert wait_until(lambda: mock.stats()["active"] == 1, timeout_s=5)
    assert http.post(f"{url}/sdapi/v1/interrupt").json() == {}
    thread.join(10)
    assert time.monotonic() - started < 2.0
    assert results[0].status_code == 200 and len(results[0].json()["images"]) == 1


def test_mock_interrupt_when_idle_does_not_cut_the_next_job(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock(latency_ms=20)
    http.post(f"{url}/sdapi/v1/interrupt")
    answer = http.post(f"{url}/sdapi/v1/txt2img", json={"n_iter": 2, "width": 64, "height": 64}).json()
    assert len(answer["images"]) == 2


def test_mock_http_fail_rate_one_answers_oom_500(start_mock: StartMock, http: httpx.Client) -> None:
    mock, url = start_mock(fail_rate=1.0)
    answer = http.post(f"{url}/sdapi/v1/txt2img", json={"width": 64, "height": 64})
    assert (answer.status_code, answer.json()) == (
        500,
        {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": OOM_MESSAGE},
    )
    with SDClient(make_settings(url)) as client, pytest.raises(SDServerError) as caught:
        client.txt2img(params(), job_id="j")
    assert (caught.value.server_message or "").startswith("OutOfMemoryError: CUDA out of memory")
    assert mock.stats()["failures"] == 2


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"prompt": None}, "AssertionError"),
        ({"width": 20000, "height": 20000}, "OutOfMemoryError"),
        ({"enable_hr": True, "width": 64, "height": 64}, "TypeError"),
        ({"steps": None}, "TypeError"),
    ],
    ids=["null-prompt", "absurd-size", "hires-without-denoising", "null-steps"],
)
def test_mock_http_crashes_answer_a1111_500_bodies(
    start_mock: StartMock, http: httpx.Client, body: dict[str, Any], error: str
) -> None:
    _, url = start_mock()
    answer = http.post(f"{url}/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 500
    assert answer.json()["error"] == error and set(answer.json()) == {"error", "detail", "body", "errors"}


def test_mock_http_unknown_path_and_wrong_method(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    assert (http.get(f"{url}/sdapi/v1/nope").status_code, http.get(f"{url}/x").json()) == (404, {"detail": "Not Found"})
    wrong = http.get(f"{url}/sdapi/v1/txt2img")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})


def test_mock_http_send_images_false_returns_info_only(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    answer = http.post(f"{url}/sdapi/v1/txt2img", json={"send_images": False, "width": 64, "height": 64}).json()
    assert answer["images"] == [] and len(json.loads(answer["info"])["infotexts"]) == 1


def test_mock_http_splits_combined_sampler_names_and_autocorrects(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    endpoint = f"{url}/sdapi/v1/txt2img"
    combined = json.loads(http.post(endpoint, json={"sampler_name": "DPM++ 2M Karras", "width": 64}).json()["info"])
    unknown = json.loads(http.post(endpoint, json={"sampler_name": "Nope", "width": 64}).json()["info"])
    assert (combined["sampler_name"], combined["extra_generation_params"]["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in combined["infotexts"][0]
    assert unknown["sampler_name"] == "DPM++ 2M"


def test_mock_http_lists_models_options_samplers_schedulers(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    (model,) = http.get(f"{url}/sdapi/v1/sd-models").json()
    assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert model["title"] == "v1-5-pruned-emaonly.safetensors [6ce0161689]"
    assert http.get(f"{url}/sdapi/v1/options").json()["sd_model_checkpoint"] == model["title"]
    assert "Euler a" in [s["name"] for s in http.get(f"{url}/sdapi/v1/samplers").json()]
    assert "Karras" in [s["label"] for s in http.get(f"{url}/sdapi/v1/schedulers").json()]
    unknown = http.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "nope.ckpt"})
    assert (unknown.status_code, unknown.json()["errors"]) == (500, "model 'nope.ckpt' not found")
    known = http.post(
        f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "v1-5-pruned-emaonly", "jpeg_quality": 90}
    )
    assert (known.status_code, known.json()) == (200, None)
    assert http.get(f"{url}/sdapi/v1/options").json()["jpeg_quality"] == 90
    # A1111's opts.set looks every key up: one it does not know is a 500 KeyError.
    no_setting = http.post(f"{url}/sdapi/v1/options", json={"x": 1})
    assert (no_setting.status_code, no_setting.json()["error"], no_setting.json()["errors"]) == (500, "KeyError", "'x'")


def test_mock_http_same_request_gives_identical_images(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    endpoint = f"{url}/sdapi/v1/txt2img"
    first, again, other = (
        http.post(endpoint, json={"prompt": "p", "seed": seed, "width": 96, "height": 64}).json()["images"][0]
        for seed in (5, 5, 6)
    )
    assert first == again
    assert first != other


def test_mock_http_image_is_detailed_not_flat(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    answer = http.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "p", "width": 256, "height": 256}).json()
    pixels = np.asarray(decode(answer["images"][0]).convert("RGB"), dtype=np.int16)
    across, down = np.diff(pixels, axis=1), np.diff(pixels, axis=0)
    assert across.std() > 4 and down.std() > 4  # neighbours differ: seams and blur are measurable
    assert np.abs(across).mean() > 3
    assert pixels.std() > 20  # and the picture has large-scale structure too


def test_mock_stats_and_reset(start_mock: StartMock, http: httpx.Client) -> None:
    _, url = start_mock()
    http.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "cat", "width": 64, "height": 64})
    http.post(f"{url}/sdapi/v1/txt2img", json={"steps": "x"})
    stats = http.get(f"{url}/mock/stats").json()
    assert (stats["txt2img_requests"], stats["txt2img_completed"], stats["prompts"]) == (2, 1, {"cat": 1})
    assert http.post(f"{url}/mock/reset").json() == {}
    assert http.get(f"{url}/mock/stats").json()["txt2img_requests"] == 0


# -- mock:// in-process -------------------------------------------------------------------------------
def test_mock_url_client_runs_in_process_through_the_same_code_path() -> None:
    with SDClient(make_settings("mock://in-process?latency_ms=30&seed=1")) as client:
        started = time.monotonic()
        result = client.txt2img(params(width=72, height=40), job_id="j")
        assert time.monotonic() - started >= 0.03
        assert client.url == "mock://in-process?latency_ms=30&seed=1"
        assert client.check_ready() == "ready: 1 model, checkpoint v1-5-pruned-emaonly.safetensors [6ce0161689], idle"
    assert Image.open(io.BytesIO(result.image_bytes)).size == (72, 40)
    assert result.backend_url == "mock://in-process?latency_ms=30&seed=1" and result.seed == 5


def test_mock_url_instances_are_shared_per_url() -> None:
    url = "mock://shared-test?fail_rate=0"
    mock = get_mock_server(url)
    mock.reset()
    for _ in range(2):
        with SDClient(make_settings(url)) as client:
            client.txt2img(params(), job_id="j")
    assert get_mock_server(url) is mock
    assert mock.stats()["txt2img_requests"] == 2
    assert get_mock_server("mock://another-name?fail_rate=0") is not mock


@pytest.mark.parametrize("url", ["mock://?latency=5", "mock://?latency_ms=fast", "http://not-a-mock"])
def test_get_mock_server_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        get_mock_server(url)


def test_mock_url_with_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown mock:// option"):
        SDClient(make_settings("mock://"), base_url="mock://?latency=5")


@pytest.mark.parametrize(("samples_format", "pil_format"), [("webp", "WEBP"), ("jpg", "JPEG")])
def test_mock_samples_format_option_gives_lossy_images_with_exif_infotext(samples_format: str, pil_format: str) -> None:
    url = f"mock://formats-{samples_format}"
    body = json.dumps({"samples_format": samples_format}).encode()
    assert get_mock_server(url).handle("POST", "/sdapi/v1/options", "", {}, body).status == 200
    with SDClient(make_settings(url)) as client:
        result = client.txt2img(params(), job_id="j")
    image = Image.open(io.BytesIO(result.image_bytes))
    assert image.format == pil_format and result.format == {"jpg": "jpeg"}.get(samples_format, samples_format)
    comment = image.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\0" + (result.infotext or "").encode("utf-16-be")


# -- rendering and encoding ---------------------------------------------------------------------------
def test_render_is_deterministic_and_seed_dependent() -> None:
    first = render("a red fox", 1, 120, 80)
    assert first.shape == (80, 120, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render("a red fox", 1, 120, 80))
    assert np.mean(first != render("a red fox", 2, 120, 80)) > 0.9
    assert np.mean(first != render("a blue fox", 1, 120, 80)) > 0.9


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 13), (300, 2)])
def test_render_handles_odd_sizes(width: int, height: int) -> None:
    assert render("p", 0, width, height).shape == (height, width, 3)


def test_render_large_sizes_are_detailed() -> None:
    # Speed is measured in bench/ (never as a timed test): here only that large renders work.
    assert render("speed", 3, 1024, 1024)[::128, ::128].std() > 10
    big = render("big", 3, 4096, 4096)
    assert big.shape == (4096, 4096, 3) and big[::512, ::512].std() > 10


def test_encode_image_writes_non_latin1_infotext_as_itxt() -> None:
    data = encode_image(render("p", 0, 16, 16), infotext="猫 on a mat\nSteps: 20", image_format="png")
    assert Image.open(io.BytesIO(data)).info["parameters"] == "猫 on a mat\nSteps: 20"
    assert b"iTXt" in data
