"""SDClient against respx routes at the transport: results, payload, every error class, no credential leaks."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from PIL import Image, PngImagePlugin

from cli.errors import hint_for
from pipeline.errors import (
    ConfigError,
    SDAuthError,
    SDBadImage,
    SDNotFound,
    SDPermanentError,
    SDRequestRejected,
    SDServerError,
    SDTimeout,
    SDUnavailable,
    SDWrongCheckpoint,
)
from pipeline.models import GenerationParams
from pipeline.sd.client import HEALTH_TIMEOUT_S, SDClient, request_body
from pipeline.sd.mock.faults import garbage_image_base64
from pipeline.settings import Settings
from tests.helpers import free_port

BASE = "http://sd.test:7860"
TXT2IMG = "/sdapi/v1/txt2img"
INFOTEXT = "a red fox\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 1234, Size: 64x48"
OOM = {
    "error": "OutOfMemoryError",
    "detail": "",
    "body": "",
    "errors": "CUDA out of memory. Tried to allocate 1.11 GiB",
}


def image_bytes(image_format: str = "PNG", *, parameters: str | None = None) -> bytes:
    image = Image.new("RGB", (64, 48), (200, 40, 40))
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    image.save(buffer, image_format, **({"pnginfo": info} if image_format == "PNG" else {}))
    return buffer.getvalue()


def ok_body(image: bytes | str | None = None, info: Any = "default") -> dict[str, Any]:
    if info == "default":
        info = json.dumps(
            {
                "seed": 1234,
                "all_seeds": [1234],
                "infotexts": [INFOTEXT],
                "sd_model_name": "v1-5-pruned-emaonly",
                "sd_model_hash": "6ce0161689",
                "version": "v1.10.1",
            }
        )
    data = image_bytes() if image is None else image
    encoded = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    return {"images": [encoded], "parameters": {}, "info": info}


def params(**overrides: Any) -> GenerationParams:
    fields: dict[str, Any] = {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "seed": -1,
        "steps": 20,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 48,
        "sampler_name": "Euler a",
        "scheduler": "Automatic",
    }
    return GenerationParams(**(fields | overrides))


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"sd_api_url": BASE, "sd_timeout_s": 30.0, "sd_connect_timeout_s": 2.0}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


@pytest.fixture
def sd_api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        yield router


@pytest.fixture
def client() -> Iterator[SDClient]:
    with SDClient(make_settings()) as sd:
        yield sd


# -- success ------------------------------------------------------------------------------------------
def test_txt2img_returns_image_seed_and_info_from_server(sd_api: respx.MockRouter, client: SDClient) -> None:
    # Given a server that picked seed 1234 for a seed=-1 request
    sd_api.post(TXT2IMG).respond(200, json=ok_body())
    # When
    result = client.txt2img(params(), job_id="job-1")
    # Then the result carries the server's seed, infotext, model and version
    assert result.format == "png"
    assert Image.open(io.BytesIO(result.image_bytes)).size == (64, 48)
    assert result.seed == 1234
    assert result.infotext == INFOTEXT
    assert (result.model_name, result.model_hash, result.version) == ("v1-5-pruned-emaonly", "6ce0161689", "v1.10.1")
    assert result.backend_url == BASE
    assert result.info["all_seeds"] == [1234]
    assert result.extra["width"] == 64 and result.extra["height"] == 48
    assert result.elapsed_s >= 0


@pytest.mark.parametrize("call", ["txt2img", "img2img"])
def test_txt2img_on_answer_comes_with_the_headers_before_the_body_is_read(
    sd_api: respx.MockRouter, client: SDClient, call: str
) -> None:
    """The server is free once it answers (A1111 releases its lock before sending the image): the
    pool's slot goes back while the body is still being read, and the answer is then read whole."""
    events: list[str] = []
    body = json.dumps(ok_body()).encode()

    def chunks() -> Iterator[bytes]:
        events.append("body read")
        yield body[:100]
        yield body[100:]

    path = TXT2IMG if call == "txt2img" else "/sdapi/v1/img2img"
    sd_api.post(path).mock(return_value=httpx.Response(200, content=chunks()))
    if call == "txt2img":
        result = client.txt2img(params(), job_id="job-1", on_answer=lambda: events.append("answered"))
    else:
        payload = {"init_images": ["x"], "width": 64, "height": 48}
        result = client.img2img(payload, job_id="job-1", seed=1, on_answer=lambda: events.append("answered"))
    assert events == ["answered", "body read"]
    assert result.seed == 1234 and Image.open(io.BytesIO(result.image_bytes)).size == (64, 48)


def test_img2img_sends_a_body_encoded_before_the_call_as_is(sd_api: respx.MockRouter, client: SDClient) -> None:
    """A tile's body is serialised before its slot is taken: the call sends those bytes, as JSON,
    and they read back as the payload (what ``json=`` would have sent)."""
    route = sd_api.post("/sdapi/v1/img2img").respond(200, json=ok_body())
    payload = {"init_images": ["aGk="], "width": 64, "height": 48, "prompt": "a café", "force_task_id": "t-1"}
    encoded = request_body(payload)
    client.img2img(payload, job_id="job-1", seed=1, encoded=encoded)
    sent = route.calls.last.request
    assert sent.content == encoded
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == payload
    # Without one, the same bytes are encoded in the call
    client.img2img(payload, job_id="job-1", seed=1)
    assert route.calls.last.request.content == encoded


def test_txt2img_on_answer_not_called_for_an_error_status(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.post(TXT2IMG).respond(503, json={"detail": "busy"})
    answered: list[str] = []
    with pytest.raises(SDServerError):
        client.txt2img(params(), job_id="job-1", on_answer=lambda: answered.append("answered"))
    assert answered == []


def test_txt2img_sends_every_generation_field_with_batch_size_1(sd_api: respx.MockRouter, client: SDClient) -> None:
    route = sd_api.post(TXT2IMG).respond(200, json=ok_body())
    client.txt2img(params(seed=7, override_settings={"CLIP_stop_at_last_layers": 2}), job_id="job-1")
    sent = json.loads(route.calls.last.request.content)
    assert sent["prompt"] == "a red fox" and sent["negative_prompt"] == "blurry"
    assert (sent["seed"], sent["steps"], sent["cfg_scale"], sent["width"], sent["height"]) == (7, 20, 7.0, 64, 48)
    assert (sent["sampler_name"], sent["scheduler"]) == ("Euler a", "Automatic")
    assert (sent["batch_size"], sent["n_iter"], sent["send_images"], sent["save_images"]) == (1, 1, True, False)
    assert sent["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    timeout = route.calls.last.request.extensions["timeout"]
    assert (timeout["connect"], timeout["read"]) == (2.0, 30.0)


@pytest.mark.parametrize(("pil_format", "expected"), [("JPEG", "jpeg"), ("WEBP", "webp"), ("PNG", "png")])
def test_txt2img_sniffs_format_from_magic_bytes(
    sd_api: respx.MockRouter, client: SDClient, pil_format: str, expected: str
) -> None:
    sd_api.post(TXT2IMG).respond(200, json=ok_body(image_bytes(pil_format)))
    assert client.txt2img(params(), job_id="j").format == expected


def test_txt2img_tolerates_data_url_prefix(sd_api: respx.MockRouter, client: SDClient) -> None:
    encoded = "data:image/png;base64," + base64.b64encode(image_bytes()).decode()
    sd_api.post(TXT2IMG).respond(200, json=ok_body(encoded))
    assert client.txt2img(params(), job_id="j").format == "png"


def test_txt2img_accepts_info_as_dict(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.post(TXT2IMG).respond(200, json=ok_body(info={"seed": 99, "version": "f2.0.1"}))
    result = client.txt2img(params(), job_id="j")
    assert (result.seed, result.version) == (99, "f2.0.1")


def test_txt2img_ignores_malformed_info_with_a_warning(
    sd_api: respx.MockRouter, client: SDClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an info that is not JSON, and a PNG that carries its own infotext
    body = ok_body(image_bytes(parameters="from the png chunk"), info="{not json")
    sd_api.post(TXT2IMG).respond(200, json=body)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = client.txt2img(params(seed=55), job_id="job-9")
    # Then: empty info, the requested seed, the PNG's infotext, and a warning naming the job
    assert result.info == {}
    assert result.seed == 55
    assert result.infotext == "from the png chunk"
    assert "job-9" in caplog.text and "info" in caplog.text


def test_txt2img_skips_a_leading_grid(sd_api: respx.MockRouter, client: SDClient) -> None:
    # Given a server that put a grid first (save_images with several images)
    grid, image = base64.b64encode(image_bytes("JPEG")).decode(), base64.b64encode(image_bytes()).decode()
    info = {"all_seeds": [8, 9], "index_of_first_image": 1, "infotexts": ["the grid", "the image"]}
    sd_api.post(TXT2IMG).respond(200, json={"images": [grid, image], "info": json.dumps(info)})
    result = client.txt2img(params(), job_id="j")
    assert (result.format, result.infotext, result.seed) == ("png", "the image", 8)


def test_txt2img_logs_one_debug_line_with_job_id_and_nothing_at_info(
    sd_api: respx.MockRouter, client: SDClient, caplog: pytest.LogCaptureFixture
) -> None:
    # A successful call is routine: one line per image at INFO is noise when rendering thousands
    sd_api.post(TXT2IMG).respond(200, json=ok_body())
    with caplog.at_level(logging.DEBUG, logger="pipeline.sd.client"):
        client.txt2img(params(), job_id="job-42")
    records = [r for r in caplog.records if r.name == "pipeline.sd.client"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert records[0].getMessage().startswith("job job-42: POST /sdapi/v1/txt2img -> 200 in ")


# -- bad images ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (ok_body("!!!not base64!!!"), "not valid base64"),
        (ok_body(b"GIF89a" + b"\0" * 32), "not PNG, JPEG or WEBP"),
        (ok_body(image_bytes()[:60]), "does not decode"),
        (ok_body(image_bytes("JPEG")[:200]), "does not decode"),
        ({"images": [], "parameters": {}, "info": '{"seed": 1}'}, "no image"),
        ({"detail": "odd"}, "without an images list"),
    ],
    ids=["bad-base64", "unknown-format", "truncated-png", "truncated-jpeg", "empty-images", "no-images-key"],
)
def test_txt2img_raises_bad_image(sd_api: respx.MockRouter, client: SDClient, body: Any, words: str) -> None:
    sd_api.post(TXT2IMG).respond(200, json=body)
    with pytest.raises(SDBadImage, match=words) as caught:
        client.txt2img(params(), job_id="j")
    assert not caught.value.transient


def test_txt2img_undecodable_image_error_names_no_python_object(sd_api: respx.MockRouter, client: SDClient) -> None:
    # Pillow says "cannot identify image file <_io.BytesIO object at 0x7f…>": the repr means nothing to a user
    sd_api.post(TXT2IMG).respond(200, json=ok_body(garbage_image_base64()))  # the mock's "garbage" fault
    with pytest.raises(SDBadImage) as caught:
        client.txt2img(params(), job_id="j")
    assert "does not decode (png): cannot identify image file" in caught.value.message
    assert " object at 0x" not in str(caught.value)


def test_txt2img_non_json_200_is_bad_image(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.post(TXT2IMG).respond(200, text="<html>login</html>", headers={"content-type": "text/html"})
    with pytest.raises(SDBadImage, match="non-JSON body"):
        client.txt2img(params(), job_id="j")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_txt2img_reads_answers_only_the_json_module_accepts(
    sd_api: respx.MockRouter, client: SDClient, encoding: str
) -> None:
    # A NaN (Python's json writes it; orjson refuses it) in a body in another encoding than UTF-8.
    body = json.dumps(ok_body() | {"parameters": {"cfg_scale": float("nan")}})
    sd_api.post(TXT2IMG).respond(
        200, content=body.encode(encoding), headers={"content-type": f"application/json; charset={encoding}"}
    )

    result = client.txt2img(params(), job_id="j")

    assert result.image_bytes.startswith(b"\x89PNG")


# -- HTTP errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "server_message"),
    [
        (500, OOM, "OutOfMemoryError: CUDA out of memory. Tried to allocate 1.11 GiB"),
        (
            500,
            {
                "error": "NansException",
                "detail": "",
                "body": "",
                "errors": "A tensor with all NaNs was produced in VAE.",
            },
            "NansException: A tensor with all NaNs was produced in VAE.",
        ),
        (
            500,
            {"error": "RuntimeError", "detail": "", "body": "", "message": "There is no current event loop"},
            "RuntimeError: There is no current event loop",
        ),
        (
            500,
            {"error": "RuntimeError", "code": 500, "detail": "", "body": "", "errors": "sdnext failed"},
            "RuntimeError: sdnext failed",
        ),
        (503, "<html><body>503 Service Unavailable</body></html>", "<html><body>503 Service Unavailable</body></html>"),
        (429, {"detail": "Too many requests"}, "Too many requests"),
    ],
    ids=["a1111-oom", "a1111-nans", "forge-message", "sdnext-code", "proxy-503-html", "429"],
)
def test_txt2img_maps_5xx_and_429_to_server_error(
    sd_api: respx.MockRouter, client: SDClient, status: int, body: Any, server_message: str
) -> None:
    response = httpx.Response(status, text=body) if isinstance(body, str) else httpx.Response(status, json=body)
    sd_api.post(TXT2IMG).mock(return_value=response)
    with pytest.raises(SDServerError) as caught:
        client.txt2img(params(), job_id="j")
    error = caught.value
    assert error.transient
    assert error.status_code == status
    assert error.server_message == server_message
    assert server_message in str(error)
    assert error.url == BASE


def test_txt2img_maps_401_to_auth_error_with_hint(sd_api: respx.MockRouter, client: SDClient) -> None:
    body = {"error": "HTTPException", "detail": "Not authenticated", "body": "", "errors": ""}
    sd_api.post(TXT2IMG).respond(401, json=body)
    with pytest.raises(SDAuthError, match="Not authenticated") as caught:
        client.txt2img(params(), job_id="j")
    assert hint_for(caught.value) is not None and "SD_API_AUTH=user:pass" in hint_for(caught.value)
    assert not caught.value.transient


def test_txt2img_maps_404_not_found_to_api_hint(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.post(TXT2IMG).respond(404, json={"detail": "Not Found"})
    with pytest.raises(SDNotFound, match="has no /sdapi/v1/txt2img") as caught:
        client.txt2img(params(), job_id="j")
    assert hint_for(caught.value) is not None and "--api" in hint_for(caught.value) and "7861" in hint_for(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        {"error": "HTTPException", "detail": "Sampler not found", "body": "", "errors": ""},  # A1111 1.9
        {"detail": "Sampler not found"},  # Forge / SD.Next style
    ],
    ids=["a1111", "plain-detail"],
)
def test_txt2img_maps_404_sampler_not_found_to_sampler_hint(
    sd_api: respx.MockRouter, client: SDClient, body: dict[str, Any]
) -> None:
    sd_api.post(TXT2IMG).respond(404, json=body)
    with pytest.raises(SDNotFound, match="sampler 'DPM\\+\\+ 2M Karras'.*Sampler not found") as caught:
        client.txt2img(params(sampler_name="DPM++ 2M Karras"), job_id="j")
    hint = hint_for(caught.value) or ""
    assert "scheduler" in hint and "--api" not in hint


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "detail": [
                    {"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}
                ]
            },
            "steps: value is not a valid integer",
        ),
        (
            {
                "detail": [
                    {
                        "type": "int_parsing",
                        "loc": ["body", "steps"],
                        "msg": "Input should be a valid integer, unable to parse string as an integer",
                        "input": "abc",
                    }
                ]
            },
            "steps: Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            {"error": "HTTPException", "detail": "Script 'xyz' not found", "body": "", "errors": ""},
            "Script 'xyz' not found",
        ),
    ],
    ids=["pydantic-v1", "pydantic-v2-forge", "a1111-http-exception"],
)
def test_txt2img_maps_422_to_request_rejected_with_server_message(
    sd_api: respx.MockRouter, client: SDClient, body: dict[str, Any], expected: str
) -> None:
    sd_api.post(TXT2IMG).respond(422, json=body)
    with pytest.raises(SDRequestRejected) as caught:
        client.txt2img(params(), job_id="j")
    assert caught.value.server_message == expected
    assert expected in str(caught.value)
    assert isinstance(caught.value, SDPermanentError)


@pytest.mark.parametrize("status", [400, 403, 405, 409])
def test_txt2img_maps_other_4xx_to_request_rejected(sd_api: respx.MockRouter, client: SDClient, status: int) -> None:
    sd_api.post(TXT2IMG).respond(status, json={"detail": "nope"})
    with pytest.raises(SDRequestRejected, match=f"\\({status}\\): nope"):
        client.txt2img(params(), job_id="j")


# -- transport errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "words", "hint"),
    [
        (httpx.ReadTimeout("timed out"), "read timeout \\(30 s\\)", "SD_TIMEOUT_S"),
        (httpx.ConnectTimeout("timed out"), "connect timeout \\(2 s\\)", "SD_CONNECT_TIMEOUT_S"),
        (httpx.WriteTimeout("timed out"), "write timeout \\(30 s\\)", "stopped reading"),
    ],
    ids=["read", "connect", "write"],
)
def test_txt2img_maps_timeouts_naming_the_timeout(
    sd_api: respx.MockRouter, client: SDClient, exc: Exception, words: str, hint: str
) -> None:
    sd_api.post(TXT2IMG).mock(side_effect=exc)
    with pytest.raises(SDTimeout, match=words) as caught:
        client.txt2img(params(), job_id="j")
    assert hint in (hint_for(caught.value) or "")
    assert caught.value.transient and caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            "cannot reach the SD server at http://sd.test:7860: conn",
        ),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "unknown host"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "closed the connection"),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "while reading the answer"),
        (httpx.WriteError("[Errno 32] Broken pipe"), "while sending the request"),
    ],
    ids=["refused", "dns", "remote-protocol", "read", "write"],
)
def test_txt2img_maps_connection_errors_to_unavailable(
    sd_api: respx.MockRouter, client: SDClient, exc: Exception, words: str
) -> None:
    sd_api.post(TXT2IMG).mock(side_effect=exc)
    with pytest.raises(SDUnavailable, match=words) as caught:
        client.txt2img(params(), job_id="j")
    assert caught.value.transient


def test_client_connect_refused_on_a_closed_port_says_so() -> None:
    with SDClient(make_settings(sd_api_url=f"http://127.0.0.1:{free_port()}")) as sd:
        with pytest.raises(SDUnavailable, match="connection refused") as caught:
            sd.progress()
    assert "SD_API_URL" in (hint_for(caught.value) or "")


@pytest.mark.parametrize("url", ["http://sd.test:notaport", "ftp://sd.test/", "mock://?latency_ms=slow"])
def test_client_invalid_url_raises_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        SDClient(make_settings(), base_url=url)


def test_client_malformed_sd_api_auth_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="SD_API_AUTH"):
        SDClient(make_settings(sd_api_auth="no-colon-here"))


def test_client_uses_first_url_of_a_list(sd_api: respx.MockRouter) -> None:
    sd_api.get("/sdapi/v1/progress").respond(200, json={"progress": 0})
    with SDClient(make_settings(sd_api_url=f"{BASE}, http://other:7860")) as sd:
        assert sd.url == BASE
        sd.progress()


# -- credentials --------------------------------------------------------------------------------------
def test_client_url_credentials_never_leak(caplog: pytest.LogCaptureFixture) -> None:
    # Given credentials in the URL, and a server that echoes them in its error
    echo = {"error": "RuntimeError", "detail": "", "body": "", "errors": "bad user:s3cr3t-pw"}
    with respx.mock(base_url=BASE) as router, caplog.at_level(logging.DEBUG):
        route = router.post(TXT2IMG).respond(500, json=echo)
        router.get("/sdapi/v1/progress").mock(side_effect=httpx.ConnectError("refused"))
        with SDClient(make_settings(sd_api_url="http://user:s3cr3t-pw@sd.test:7860")) as sd:
            assert sd.url == BASE
            with pytest.raises(SDServerError) as server_error:
                sd.txt2img(params(), job_id="j")
            with pytest.raises(SDUnavailable) as unavailable:
                sd.progress()
    # Then the password is sent as Basic auth, and nowhere else
    sent = route.calls.last.request.headers["authorization"]
    assert sent == "Basic " + base64.b64encode(b"user:s3cr3t-pw").decode()
    for error in (server_error.value, unavailable.value):
        assert "s3cr3t" not in str(error) and "s3cr3t" not in (error.server_message or "")
        assert "s3cr3t" not in (error.url or "")
    assert "s3cr3t" not in caplog.text


def test_client_sd_api_auth_from_environment_is_sent_and_hidden(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SD_API_AUTH", "admin:hunter2")
    monkeypatch.setenv("SD_API_URL", BASE)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with respx.mock(base_url=BASE) as router, caplog.at_level(logging.DEBUG):
        route = router.post(TXT2IMG).respond(401, json={"detail": "Incorrect username or password"})
        with SDClient(settings) as sd, pytest.raises(SDAuthError) as caught:
            sd.txt2img(params(), job_id="j")
    assert route.calls.last.request.headers["authorization"] == "Basic " + base64.b64encode(b"admin:hunter2").decode()
    assert "hunter2" not in str(caught.value) and "hunter2" not in caplog.text
    assert "hunter2" not in repr(sd) and "hunter2" not in sd.url


def test_client_invalid_url_error_hides_credentials() -> None:
    with pytest.raises(ConfigError) as caught:
        SDClient(make_settings(), base_url="ftp://user:s3cr3t@sd.test/")
    assert "s3cr3t" not in str(caught.value)


# -- health -------------------------------------------------------------------------------------------
def test_progress_skips_current_image_with_short_timeout(sd_api: respx.MockRouter, client: SDClient) -> None:
    route = sd_api.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).respond(
        200, json={"progress": 0.0, "state": {"job_count": 0}}
    )
    assert client.progress()["progress"] == 0.0
    assert route.calls.last.request.extensions["timeout"]["read"] == HEALTH_TIMEOUT_S


def test_progress_read_timeout_hints_at_saturation(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.get("/sdapi/v1/progress").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(SDTimeout, match="read timeout \\(5 s\\)") as caught:
        client.progress()
    assert "saturated" in (hint_for(caught.value) or "")


def test_models_empty_list_raises_permanent_error(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.get("/sdapi/v1/sd-models").respond(200, json=[])
    with pytest.raises(SDPermanentError, match="no model loaded"):
        client.models()


def test_health_call_with_non_json_answer_raises_not_found(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.get("/sdapi/v1/sd-models").respond(200, text="<html>an SPA</html>")
    with pytest.raises(SDNotFound, match="not an A1111 list"):
        client.models()


def test_check_ready_describes_models_checkpoint_and_busy_state(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.get("/sdapi/v1/progress").respond(200, json={"progress": 0.3, "state": {"job_count": 1}})
    models = [{"title": "a.safetensors [1]", "model_name": "a"}, {"title": "b.safetensors [2]", "model_name": "b"}]
    sd_api.get("/sdapi/v1/sd-models").respond(200, json=models)
    sd_api.get("/sdapi/v1/options").respond(200, json={"sd_model_checkpoint": "b.safetensors [2]"})
    assert client.check_ready() == "ready: 2 models, checkpoint b.safetensors [2], busy (1 job running)"


def test_check_ready_raises_when_the_api_is_off(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.get("/sdapi/v1/progress").respond(404, json={"detail": "Not Found"})
    with pytest.raises(SDNotFound, match="has no /sdapi/v1/progress"):
        client.check_ready()


def test_check_ready_tolerates_missing_options(sd_api: respx.MockRouter, client: SDClient) -> None:
    sd_api.get("/sdapi/v1/progress").respond(200, json={"progress": 0, "state": {"job_count": 0}})
    sd_api.get("/sdapi/v1/sd-models").respond(200, json=[{"title": "a.safetensors [1]"}])
    sd_api.get("/sdapi/v1/options").respond(500, json=OOM)
    assert client.check_ready() == "ready: 1 model, checkpoint a.safetensors [1], idle"


def test_interrupt_posts_to_the_interrupt_route(sd_api: respx.MockRouter, client: SDClient) -> None:
    route = sd_api.post("/sdapi/v1/interrupt").respond(200, json={})
    client.interrupt()
    assert route.call_count == 1


# -- giving up on a request: interrupt it only when the server's current job is ours -------------------
PROGRESS = "/internal/progress"
INTERRUPT = "/sdapi/v1/interrupt"


def task_state(*, active: bool = False, queued: bool = False) -> dict[str, Any]:
    return {"active": active, "queued": queued, "completed": False, "progress": None, "eta": None}


@pytest.fixture
def loose_api() -> Iterator[respx.MockRouter]:
    """Like ``sd_api`` but routes may stay uncalled (to assert that they were not)."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def test_txt2img_names_its_task_after_the_job(sd_api: respx.MockRouter, client: SDClient) -> None:
    route = sd_api.post(TXT2IMG).respond(200, json=ok_body())
    client.txt2img(params(), job_id="job-7")
    assert json.loads(route.calls.last.request.content)["force_task_id"] == "sdpipe-job-7"


def test_read_timeout_interrupts_the_task_when_it_is_active(sd_api: respx.MockRouter, client: SDClient) -> None:
    # Given a txt2img that times out while the server still renders it
    sd_api.post(TXT2IMG).mock(side_effect=httpx.ReadTimeout("timed out"))
    progress = sd_api.post(PROGRESS).respond(200, json=task_state(active=True))
    interrupt = sd_api.post(INTERRUPT).respond(200, json={})
    # When / Then: the timeout is raised after asking about our task and interrupting it
    with pytest.raises(SDTimeout, match="read timeout"):
        client.txt2img(params(), job_id="job-1")
    asked = progress.calls.last.request
    assert json.loads(asked.content) == {"id_task": "sdpipe-job-1", "id_live_preview": -1, "live_preview": False}
    assert asked.extensions["timeout"]["read"] == HEALTH_TIMEOUT_S
    assert interrupt.call_count == 1
    assert interrupt.calls.last.request.extensions["timeout"]["read"] == HEALTH_TIMEOUT_S


@pytest.mark.parametrize(
    ("state", "log_words"),
    [
        (task_state(), "no longer running"),
        (task_state(queued=True), "still queued"),
    ],
    ids=["not-active", "queued"],
)
def test_read_timeout_does_not_interrupt_a_job_that_is_not_ours(
    loose_api: respx.MockRouter, caplog: pytest.LogCaptureFixture, state: dict[str, Any], log_words: str
) -> None:
    loose_api.post(TXT2IMG).mock(side_effect=httpx.ReadTimeout("timed out"))
    loose_api.post(PROGRESS).respond(200, json=state)
    interrupt = loose_api.post(INTERRUPT).respond(200, json={})
    with caplog.at_level(logging.INFO, logger="pipeline.sd.client"), SDClient(make_settings()) as sd:
        with pytest.raises(SDTimeout):
            sd.txt2img(params(), job_id="job-2")
    assert interrupt.call_count == 0
    assert f"job job-2: task sdpipe-job-2 is {log_words}" in caplog.text


def test_read_timeout_without_internal_progress_warns_and_does_not_interrupt(
    loose_api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an API-only server (--nowebui): /internal/progress is 404
    loose_api.post(TXT2IMG).mock(side_effect=httpx.ReadTimeout("timed out"))
    loose_api.post(PROGRESS).respond(404, json={"detail": "Not Found"})
    interrupt = loose_api.post(INTERRUPT).respond(200, json={})
    with caplog.at_level(logging.WARNING, logger="pipeline.sd.client"), SDClient(make_settings()) as sd:
        with pytest.raises(SDTimeout):
            sd.txt2img(params(), job_id="job-3")
    assert interrupt.call_count == 0
    warning = next(r for r in caplog.records if "cannot tell" in r.getMessage())
    assert warning.levelno == logging.WARNING
    assert "job job-3" in warning.getMessage() and "--nowebui" in warning.getMessage()


@pytest.mark.parametrize(
    ("progress_answer", "interrupt_answer"),
    [
        (httpx.ConnectError("refused"), None),
        (httpx.ReadTimeout("timed out"), None),
        (httpx.Response(200, text="<html>not json</html>"), None),
        (httpx.Response(200, json=["not", "an", "object"]), None),
        (httpx.Response(401, json={"detail": "Not authenticated"}), None),
        (httpx.Response(200, json=task_state(active=True)), httpx.Response(500, json=OOM)),
        (httpx.Response(200, json=task_state(active=True)), httpx.ReadError("reset")),
    ],
    ids=["progress-refused", "progress-timeout", "progress-html", "progress-list", "progress-401", "interrupt-500",
         "interrupt-reset"],
)  # fmt: skip
def test_failing_follow_up_never_masks_the_timeout(
    loose_api: respx.MockRouter, caplog: pytest.LogCaptureFixture, progress_answer: Any, interrupt_answer: Any
) -> None:
    loose_api.post(TXT2IMG).mock(side_effect=httpx.ReadTimeout("timed out"))
    for path, answer in ((PROGRESS, progress_answer), (INTERRUPT, interrupt_answer)):
        if isinstance(answer, Exception):
            loose_api.post(path).mock(side_effect=answer)
        elif answer is not None:
            loose_api.post(path).mock(return_value=answer)
    with caplog.at_level(logging.WARNING, logger="pipeline.sd.client"), SDClient(make_settings()) as sd:
        with pytest.raises(SDTimeout, match="txt2img within the read timeout"):
            sd.txt2img(params(), job_id="job-4")
    assert "job job-4: cannot tell whether" in caplog.text or "job job-4: could not interrupt" in caplog.text


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectTimeout("timed out"), httpx.WriteTimeout("timed out"), httpx.ReadError("reset")],
    ids=["connect-timeout", "write-timeout", "reset"],
)
def test_only_a_read_timeout_asks_about_the_task(loose_api: respx.MockRouter, exc: Exception) -> None:
    loose_api.post(TXT2IMG).mock(side_effect=exc)
    progress = loose_api.post(PROGRESS).respond(200, json=task_state(active=True))
    with SDClient(make_settings()) as sd, pytest.raises((SDTimeout, SDUnavailable)):
        sd.txt2img(params(), job_id="j")
    assert progress.call_count == 0


# -- 500s that are mistakes of the request ------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "server_message"),
    [
        ({"error": "KeyError", "detail": "", "body": "", "errors": "'sd_model_checkpointt'"}, "'sd_model_checkpointt'"),
        ({"error": "HTTPException", "detail": "Invalid image format", "body": "", "errors": ""}, "image format"),
        (
            {"error": "Exception", "detail": "", "body": "", "errors": "could not find upscaler named Lanczoz"},
            "could not find upscaler named Lanczoz",
        ),
        ({"error": "ValueError", "detail": "", "body": "", "message": "bad value for hr_scale"}, "bad value"),
        (
            {"error": "Exception", "detail": "", "body": "", "errors": "Could not find checkpoint with name refinr"},
            "Could not find checkpoint",
        ),
        (
            {"error": "TypeError", "detail": "", "body": "", "errors": "unsupported operand type(s) for *"},
            "unsupported operand",
        ),
    ],
    ids=[
        "unknown-override-key",
        "invalid-samples-format",
        "unknown-upscaler",
        "forge-value-error",
        "unknown-refiner",
        "hires-without-denoise",
    ],
)
def test_txt2img_maps_500_request_mistakes_to_permanent_rejection(
    sd_api: respx.MockRouter, client: SDClient, body: dict[str, Any], server_message: str
) -> None:
    route = sd_api.post(TXT2IMG).respond(500, json=body)
    with pytest.raises(SDRequestRejected) as caught:
        client.txt2img(params(), job_id="j")
    assert not caught.value.transient
    assert caught.value.status_code == 500
    assert server_message in str(caught.value)
    assert route.call_count == 1


def test_txt2img_no_image_and_no_info_is_transient(sd_api: respx.MockRouter, client: SDClient) -> None:
    # SD.Next while no model is loaded: 200, no image, empty info
    sd_api.post(TXT2IMG).respond(200, json={"images": [], "parameters": {}, "info": ""})
    with pytest.raises(SDServerError, match="no image and no info") as caught:
        client.txt2img(params(), job_id="j")
    assert caught.value.transient


# -- what the server really did -----------------------------------------------------------------------
def info_with(infotext: str, **fields: Any) -> str:
    return json.dumps({"seed": 7, "all_seeds": [7], "infotexts": [infotext], **fields})


SDXL_TITLE = "sdxl_base.safetensors [31e35c80fc]"


def test_txt2img_other_checkpoint_than_asked_fails_permanently(sd_api: respx.MockRouter, client: SDClient) -> None:
    # A1111 ignores an sd_model_checkpoint it cannot load and renders with the loaded model
    infotext = "p\nSteps: 20, Sampler: Euler a, Seed: 7, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly"
    sd_api.post(TXT2IMG).respond(200, json=ok_body(info=info_with(infotext)))

    with pytest.raises(SDWrongCheckpoint) as caught:
        client.txt2img(params(override_settings={"sd_model_checkpoint": SDXL_TITLE}), job_id="j")

    assert not caught.value.transient
    assert "v1-5-pruned-emaonly [6ce0161689]" in str(caught.value) and SDXL_TITLE in str(caught.value)


def test_txt2img_checkpoint_asked_and_used_passes(sd_api: respx.MockRouter, client: SDClient) -> None:
    infotext = "p\nSteps: 20, Sampler: Euler a, Seed: 7, Model hash: 31e35c80fc, Model: sdxl_base"
    sd_api.post(TXT2IMG).respond(200, json=ok_body(info=info_with(infotext)))

    result = client.txt2img(params(override_settings={"sd_model_checkpoint": SDXL_TITLE}), job_id="j")

    assert (result.model_name, result.model_hash, result.warnings) == ("sdxl_base", "31e35c80fc", [])


def test_txt2img_replaced_sampler_is_a_warning(sd_api: respx.MockRouter, client: SDClient) -> None:
    infotext = "p\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, Seed: 7, Model: v1-5"
    sd_api.post(TXT2IMG).respond(200, json=ok_body(info=info_with(infotext)))

    result = client.txt2img(params(sampler_name="Eulr a"), job_id="j")

    assert result.sampler == "DPM++ 2M"
    assert result.warnings == [
        "the SD server used sampler 'DPM++ 2M', not 'Eulr a' (A1111 replaces a sampler it does not know)"
    ]


def test_txt2img_takes_the_first_real_image_past_grid_and_detect_maps(
    sd_api: respx.MockRouter, client: SDClient
) -> None:
    grid = base64.b64encode(image_bytes()).decode()
    real = base64.b64encode(sized_png_bytes(96, 64)).decode()
    detect_map = base64.b64encode(image_bytes()).decode()
    info = json.dumps(
        {
            "all_seeds": [11],
            "all_subseeds": [99],
            "subseed_strength": 0.3,
            "index_of_first_image": 1,
            "infotexts": ["grid", "real\nSteps: 20, Sampler: Euler a, Seed: 11, Variation seed: 99", "map"],
        }
    )
    sd_api.post(TXT2IMG).respond(200, json={"images": [grid, real, detect_map], "parameters": {}, "info": info})

    result = client.txt2img(params(), job_id="j")

    assert (result.extra["width"], result.extra["height"]) == (96, 64)
    assert result.infotext is not None and result.infotext.startswith("real")
    assert (result.seed, result.subseed, result.all_seeds, result.all_subseeds) == (11, 99, [11], [99])


def sized_png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_client_plain_http_server_reached_through_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain-http server's client (built with a TLS context without the CA bundle) still honours
    HTTP_PROXY, as every httpx client does: a client given a transport of its own would not."""
    lines: list[str] = []
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(1)
    proxy.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = proxy.accept()
        except OSError:  # no request came (the client went elsewhere): the assertion below says so
            return
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            lines.append(head.split(b"\r\n", 1)[0].decode())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
    try:
        with SDClient(make_settings()) as sd:
            assert sd.get_json("/sdapi/v1/samplers") == []
    finally:
        thread.join(timeout=10)
        proxy.close()
    assert lines == [f"GET {BASE}/sdapi/v1/samplers HTTP/1.1"]
