"""The mock's test controls over HTTP and from Python: request log, queued answers, live fault plan, reset.

The ``sd_server`` and ``sd_server_factory`` fixtures come from sdpipe's own pytest plugin (entry point
``pytest11``), as in any project that installs sdpipe.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image, UnidentifiedImageError

from pipeline.sd.mock.control import CONTROL_API_VERSION, QueuedAnswer
from pipeline.sd.mock.http import mock_transport
from pipeline.sd.mock.kit import MockSD
from pipeline.sd.mock.server import MockSDServer

TXT2IMG = "/sdapi/v1/txt2img"
SMALL = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 1}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        yield client


def txt2img(http: httpx.Client, server: MockSD, **fields: object) -> httpx.Response:
    return http.post(f"{server.url}{TXT2IMG}", json=SMALL | fields)


def test_request_log_lists_each_request_with_route_body_time_and_answer(sd_server: MockSD, http: httpx.Client) -> None:
    assert http.get(f"{sd_server.url}/sdapi/v1/options").status_code == 200
    assert txt2img(http, sd_server).status_code == 200
    options, generated = sd_server.requests
    assert (options.method, options.route, options.body, options.answer.status) == (
        "GET",
        "/sdapi/v1/options",
        None,
        200,
    )
    assert (generated.route, generated.body, generated.answer.fault) == (TXT2IMG, SMALL, None)
    assert generated.answer.body["images"][0].startswith("<") and "chars, sha256" in generated.answer.body["images"][0]
    assert json.loads(generated.answer.body["info"])["seed"] == 1
    assert options.seq < generated.seq and options.time <= generated.time


def test_queued_500_answers_the_next_request_then_the_plan_resumes(sd_server: MockSD, http: httpx.Client) -> None:
    sd_server.faults("500")
    failed, retried = txt2img(http, sd_server), txt2img(http, sd_server)
    assert failed.status_code == 500 and failed.json()["error"] == "OutOfMemoryError"
    assert retried.status_code == 200
    first, second = sd_server.calls(prompt="a cat")
    assert (first.answer.status, first.answer.fault, first.answer.queued) == (500, "500", True)
    assert (second.answer.status, second.answer.fault, second.answer.queued) == (200, None, False)


def test_queued_answers_are_taken_in_order_per_route(sd_server: MockSD, http: httpx.Client) -> None:
    sd_server.faults("503", {"status": 418, "body": {"detail": "teapot"}})
    sd_server.faults("422", route="/sdapi/v1/options")
    assert http.get(f"{sd_server.url}/sdapi/v1/options").json()["detail"][0]["msg"] == "mock: queued 422"
    busy = txt2img(http, sd_server)
    assert (busy.status_code, busy.json()["detail"]) == (503, "mock: queued 503")
    assert (txt2img(http, sd_server).status_code, txt2img(http, sd_server).status_code) == (418, 200)


def test_queued_ok_overrides_a_plan_that_always_fails(sd_server_factory: type[MockSD], http: httpx.Client) -> None:
    server = sd_server_factory(faults="500:1")
    server.faults("ok")
    assert [txt2img(http, server).status_code for _ in range(2)] == [200, 500]


def test_queued_reset_drops_the_connection_and_is_logged_without_answer(sd_server: MockSD) -> None:
    sd_server.faults("reset")
    with httpx.Client(timeout=20, transport=httpx.HTTPTransport(retries=0)) as client:
        with pytest.raises(httpx.TransportError):
            client.post(f"{sd_server.url}{TXT2IMG}", json=SMALL)
    (dropped,) = sd_server.requests
    assert (dropped.answer.status, dropped.answer.fault, dropped.answer.body) == (None, "reset", None)


def test_queued_garbage_sends_an_image_that_does_not_decode(sd_server: MockSD, http: httpx.Client) -> None:
    sd_server.faults("garbage")
    answer = txt2img(http, sd_server)
    assert answer.status_code == 200 and sd_server.requests[0].answer.fault == "garbage"
    with pytest.raises((UnidentifiedImageError, OSError, SyntaxError)):
        Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).load()


def test_queued_hang_holds_the_request_for_hang_ms(sd_server_factory: type[MockSD], http: httpx.Client) -> None:
    server = sd_server_factory(hang_ms=300)
    server.faults("hang", route="/sdapi/v1/sd-models")
    assert http.get(f"{server.url}/sdapi/v1/sd-models").status_code == 200
    (held,) = server.requests
    assert held.answer.fault == "hang" and held.answer.duration_s >= 0.3


def test_unknown_answers_are_refused_and_nothing_is_queued(sd_server: MockSD) -> None:
    with pytest.raises(ValueError, match="unknown answer 'boom'"):
        sd_server.faults("500", "boom")
    with pytest.raises(ValueError, match="400-599"):
        QueuedAnswer.parse(200)
    with pytest.raises(ValueError, match="not a mock SD route"):
        sd_server.faults("500", route="/mock/stats")
    assert sd_server.server.control.faults_state()["queued"] == []


def test_assert_called_counts_matching_bodies_and_lists_what_came(sd_server: MockSD, http: httpx.Client) -> None:
    txt2img(http, sd_server)
    txt2img(http, sd_server, prompt="a dog")
    assert len(sd_server.assert_called(prompt="a cat", times=1)) == 1
    sd_server.assert_called()  # at least once
    sd_server.assert_not_called(prompt="a bird")
    with pytest.raises(AssertionError) as raised:
        sd_server.assert_called(prompt="a cat", times=2)
    message = str(raised.value)
    assert "expected /sdapi/v1/txt2img with prompt='a cat' 2 times, got 1" in message
    assert "POST /sdapi/v1/txt2img prompt='a dog', seed=1 -> 200" in message


def test_reset_forgets_requests_and_queued_answers_and_restores_the_plan(
    sd_server_factory: type[MockSD], http: httpx.Client
) -> None:
    server = sd_server_factory(faults="garbage:0.5", seed=3)
    server.faults("500", "500", plan="reset:1")
    txt2img(http, server)
    server.reset()
    assert server.requests == [] and server.stats()["txt2img_requests"] == 0
    assert server.server.control.faults_state() == {"mock_api": 1, "plan": "garbage:0.5", "queued": []}


def test_set_model_loads_a_checkpoint_the_mock_did_not_list(sd_server: MockSD, http: httpx.Client) -> None:
    sd_server.set_model("sdxl_base.safetensors")
    assert http.get(f"{sd_server.url}/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("sdxl_base")
    listed = http.get(f"{sd_server.url}/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in listed] == ["v1-5-pruned-emaonly", "sdxl_base"]
    info = json.loads(txt2img(http, sd_server).json()["info"])
    assert info["sd_model_name"] == "sdxl_base"


def test_set_model_is_a_counted_load_and_reset_forgets_it(sd_server_factory: type[MockSD], http: httpx.Client) -> None:
    server = sd_server_factory(models=("base.safetensors", "refiner.safetensors"), model_load_ms=50)
    server.set_model("refiner")
    assert server.stats()["model_loads"] == 1 and server.stats()["loaded_model"].startswith("refiner.safetensors")
    assert server.requests == []  # not a request of the client's
    server.reset()
    assert server.stats()["model_loads"] == 0 and server.stats()["loaded_model"].startswith("base.safetensors")
    info = json.loads(txt2img(http, server).json()["info"])
    assert info["sd_model_name"] == "base" and server.stats()["model_loads"] == 0


def test_reset_restores_the_checkpoints_and_options(sd_server: MockSD, http: httpx.Client) -> None:
    before = http.get(f"{sd_server.url}/sdapi/v1/options").json()
    sd_server.set_model("sdxl_base.safetensors")
    http.post(f"{sd_server.url}/sdapi/v1/options", json={"samples_format": "jpg"})
    sd_server.reset()
    assert http.get(f"{sd_server.url}/sdapi/v1/options").json() == before
    assert len(http.get(f"{sd_server.url}/sdapi/v1/sd-models").json()) == 1


# -- the HTTP control API (docs/mock-control-api.md) ---------------------------------------------------
def test_http_faults_route_queues_answers_and_changes_the_plan(sd_server: MockSD, http: httpx.Client) -> None:
    posted = http.post(f"{sd_server.url}/mock/faults", json={"next": ["500", "reset"], "plan": "hang:0.1"})
    assert posted.status_code == 200 and posted.headers["x-sdpipe-mock-api"] == str(CONTROL_API_VERSION)
    queued = [{"route": TXT2IMG, "answer": "500"}, {"route": TXT2IMG, "answer": "reset"}]
    assert posted.json() == {"mock_api": 1, "plan": "hang:0.1", "queued": queued}
    assert http.get(f"{sd_server.url}/mock/faults").json() == posted.json()
    custom = {"next": [{"status": 503, "body": {}}], "route": "/sdapi/v1/options", "clear": True}
    http.post(f"{sd_server.url}/mock/faults", json=custom)
    queued = [{"route": "/sdapi/v1/options", "answer": {"status": 503, "body": {}}}]
    assert http.get(f"{sd_server.url}/mock/faults").json()["queued"] == queued
    cleared = http.delete(f"{sd_server.url}/mock/faults").json()
    assert cleared == {"mock_api": 1, "plan": "none", "queued": []}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"next": ["boom"]}, "unknown answer 'boom'"),
        ({"plan": "fire:0.5"}, "unknown fault kind 'fire'"),
        ({"next": "500"}, '"next" must be a list'),
        ({"nxt": []}, "JSON object with"),
    ],
)
def test_http_faults_route_refuses_bad_bodies_with_one_line(
    sd_server: MockSD, http: httpx.Client, body: dict[str, object], detail: str
) -> None:
    refused = http.post(f"{sd_server.url}/mock/faults", json=body)
    assert refused.status_code == 422 and detail in refused.json()["detail"]
    assert http.get(f"{sd_server.url}/mock/faults").json() == {"mock_api": 1, "plan": "none", "queued": []}


def test_http_requests_route_filters_by_route_and_seq(sd_server: MockSD, http: httpx.Client) -> None:
    http.get(f"{sd_server.url}/sdapi/v1/sd-models")
    txt2img(http, sd_server)
    txt2img(http, sd_server, prompt="a dog")
    everything = http.get(f"{sd_server.url}/mock/requests").json()
    assert everything["mock_api"] == 1
    assert [r["route"] for r in everything["requests"]] == ["/sdapi/v1/sd-models", TXT2IMG, TXT2IMG]
    first_seq = everything["requests"][1]["seq"]
    later = http.get(f"{sd_server.url}/mock/requests", params={"route": TXT2IMG, "since": first_seq}).json()
    assert [r["body"]["prompt"] for r in later["requests"]] == ["a dog"]
    assert http.get(f"{sd_server.url}/mock/requests", params={"since": "x"}).status_code == 422


def test_http_reset_route_empties_the_log_and_the_queue(sd_server: MockSD, http: httpx.Client) -> None:
    txt2img(http, sd_server)
    http.post(f"{sd_server.url}/mock/faults", json={"next": ["500"]})
    assert http.post(f"{sd_server.url}/mock/reset").json() == {}
    assert http.get(f"{sd_server.url}/mock/requests").json()["requests"] == []
    assert http.get(f"{sd_server.url}/mock/faults").json()["queued"] == []
    assert txt2img(http, sd_server).status_code == 200


def test_control_routes_need_no_auth_and_are_not_logged(sd_server_factory: type[MockSD], http: httpx.Client) -> None:
    server = sd_server_factory(api_auth="user:secret")
    assert http.get(f"{server.url}/mock/requests").status_code == 200
    assert http.post(f"{server.url}{TXT2IMG}", json=SMALL).status_code == 401
    assert [(r.route, r.answer.status) for r in server.requests] == [(TXT2IMG, 401)]


def test_queued_answers_reach_in_process_callers_as_transport_errors() -> None:
    server = MockSDServer(hang_ms=5000)
    server.control.queue(["reset", "hang"], route="/sdapi/v1/options")
    with httpx.Client(
        transport=mock_transport(server), base_url="http://mock", timeout=httpx.Timeout(5, read=0.1)
    ) as c:
        with pytest.raises(httpx.ReadError):
            c.get("/sdapi/v1/options")
        with pytest.raises(httpx.ReadTimeout):
            c.get("/sdapi/v1/options")
        assert c.get("/sdapi/v1/options").status_code == 200
    assert [(r["answer"]["status"], r["answer"]["fault"]) for r in server.control.requests()] == [
        (None, "reset"),
        (None, "hang"),
        (200, None),
    ]
