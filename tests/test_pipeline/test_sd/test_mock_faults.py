"""Fault injection in the mock SD server, ``/internal/progress``, and the client's interrupt on time-out."""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.errors import ConfigError, SDBadImage, SDServerError, SDTimeout, SDUnavailable
from pipeline.models import GenerationParams
from pipeline.sd.client import SDClient
from pipeline.sd.mock.faults import FAULT_KINDS, REQUEST_HISTORY, FaultPlan
from pipeline.sd.mock.http import MockSDServer, get_mock_server, serve
from pipeline.settings import Settings
from tests.helpers import free_port, wait_until

StartMock = Callable[..., tuple[MockSDServer, str]]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = {"width": 64, "height": 64}


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


def outcomes(mock: MockSDServer) -> list[str]:
    return [str(record["outcome"]) for record in mock.stats()["requests"]]


def txt2img(mock: MockSDServer, **body: Any) -> Any:
    """One txt2img straight through the handler (no transport)."""
    import json

    return mock.handle("POST", "/sdapi/v1/txt2img", "", {}, json.dumps(SMALL | body).encode())


# -- the plan -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500:0.2,reset:0.1,hang:0.05,garbage:0.05", "500:0.2,reset:0.1,hang:0.05,garbage:0.05"),
        ("garbage:0.05; reset:0.1 ;500:0.2", "500:0.2,reset:0.1,garbage:0.05"),  # ';', spaces, any order
        ("hang:1.0", "hang:1"),
        ("reset:0.1,", "reset:0.1"),
        ("", "none"),
        ("none", "none"),
    ],
)
def test_fault_plan_parses_commas_semicolons_and_prints_canonically(text: str, expected: str) -> None:
    assert str(FaultPlan.parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("timeout:0.1", "unknown fault kind 'timeout'"),
        ("500:1.5", "outside \\[0, 1\\]"),
        ("reset:-0.1", "outside \\[0, 1\\]"),
        ("reset:nan", "outside \\[0, 1\\]"),
        ("reset:lots", "not a number"),
        ("reset", "not KIND:PROBABILITY"),
        ("reset:0.1,reset:0.2", "given twice"),
        ("500:0.6,reset:0.5", "add up to 1.1, over 1"),
    ],
)
def test_fault_plan_rejects_bad_plans(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FaultPlan.parse(text)


def test_fault_plan_draws_by_cumulative_ranges_and_sums_to_one_exactly() -> None:
    plan = FaultPlan.parse("500:0.2,reset:0.1,hang:0.7")
    assert math.isclose(plan.total, 1.0)
    draws = [plan.draw(u) for u in (0.0, 0.19, 0.2, 0.29, 0.31, 0.999, 1.0 - 1e-12)]
    assert draws == ["500", "500", "reset", "reset", "hang", "hang", "hang"]
    assert FaultPlan.parse("reset:0.1").draw(0.5) is None
    assert not FaultPlan.parse("reset:0") and FaultPlan.parse("reset:0.01")


def test_fail_rate_is_an_alias_for_500_and_combines_with_other_kinds() -> None:
    assert str(MockSDServer(fail_rate=0.2).faults) == "500:0.2"
    assert str(MockSDServer(fail_rate=0.2, faults="reset:0.1").faults) == "500:0.2,reset:0.1"
    with pytest.raises(ValueError, match="already has 500"):
        MockSDServer(fail_rate=0.2, faults="500:0.1")
    with pytest.raises(ValueError, match="over 1"):
        MockSDServer(fail_rate=0.8, faults="reset:0.3")


def test_seeded_plan_gives_repeatable_sequences_in_the_planned_proportions() -> None:
    plan = "500:0.2,reset:0.1,garbage:0.1"
    runs = []
    for seed in (11, 11, 12):
        mock = MockSDServer(faults=plan, seed=seed)
        for index in range(200):
            txt2img(mock, prompt=f"p{index}", width=8, height=8)
        runs.append(outcomes(mock))
    assert runs[0] == runs[1] and runs[0] != runs[2]
    shares = {kind: runs[0].count(kind) / 200 for kind in ("500", "reset", "garbage", "ok")}
    assert 0.12 < shares["500"] < 0.28 and 0.04 < shares["reset"] < 0.16 and 0.04 < shares["garbage"] < 0.16
    assert MockSDServer(faults=plan, seed=11).stats()["faults"] == dict.fromkeys(FAULT_KINDS, 0)


# -- each fault, over real HTTP -------------------------------------------------------------------------
def test_http_500_fault_is_a_server_error_with_the_oom_body(start_mock: StartMock) -> None:
    mock, url = start_mock(faults="500:1")
    with SDClient(make_settings(url)) as client, pytest.raises(SDServerError, match="OutOfMemoryError"):
        client.txt2img(params(), job_id="j")
    stats = mock.stats()
    assert (stats["faults"]["500"], stats["failures"], outcomes(mock)) == (1, 1, ["500"])


def test_http_reset_fault_drops_the_connection_without_an_answer(start_mock: StartMock, http: httpx.Client) -> None:
    mock, url = start_mock(faults="reset:1")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.post(f"{url}/sdapi/v1/txt2img", json=SMALL)
    with SDClient(make_settings(url)) as client, pytest.raises(SDUnavailable, match="lost the connection"):
        client.txt2img(params(), job_id="j")
    assert outcomes(mock) == ["reset", "reset"] and mock.stats()["txt2img_completed"] == 0
    assert http.get(f"{url}/sdapi/v1/progress").status_code == 200  # the server itself is fine


def test_http_garbage_fault_is_200_json_with_a_png_that_does_not_decode(
    start_mock: StartMock, http: httpx.Client
) -> None:
    mock, url = start_mock(faults="garbage:1")
    answer = http.post(f"{url}/sdapi/v1/txt2img", json=SMALL)
    assert answer.status_code == 200 and set(answer.json()) == {"images", "parameters", "info"}
    assert base64.b64decode(answer.json()["images"][0]).startswith(PNG_MAGIC)
    with SDClient(make_settings(url)) as client, pytest.raises(SDBadImage, match="does not decode"):
        client.txt2img(params(), job_id="j")
    assert mock.stats()["faults"]["garbage"] == 2 and outcomes(mock) == ["garbage", "garbage"]


def test_http_hang_times_out_then_the_client_interrupts_its_own_task(start_mock: StartMock) -> None:
    # Given a server where every txt2img hangs for a minute
    mock, url = start_mock(faults="hang:1.0")
    started = time.monotonic()
    with SDClient(make_settings(url, sd_timeout_s=0.5)) as client, pytest.raises(SDTimeout, match="read timeout"):
        client.txt2img(params(), job_id="j1")
    # Then the client gave up after its read timeout, saw the task active, and interrupted it
    assert time.monotonic() - started < 2.0
    stats = mock.stats()
    assert (stats["interrupts"], stats["hanging"], stats["faults"]["hang"]) == (1, 0, 1)
    (record,) = stats["requests"]
    assert (record["task_id"], record["outcome"], record["prompt"], record["seed"]) == (
        "sdpipe-j1",
        "interrupted",
        "a lighthouse at dusk",
        5,
    )


def test_http_hang_under_nowebui_is_not_interrupted_and_ends_at_shutdown(
    start_mock: StartMock, caplog: pytest.LogCaptureFixture
) -> None:
    mock, url = start_mock(faults="hang:1.0", nowebui=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.sd.client"):
        with SDClient(make_settings(url, sd_timeout_s=0.3)) as client, pytest.raises(SDTimeout):
            client.txt2img(params(), job_id="j2")
    assert "job j2: cannot tell whether" in caplog.text and "not interrupting" in caplog.text
    stats = mock.stats()
    assert (stats["interrupts"], stats["hanging"], outcomes(mock)) == (0, 1, ["hang"])
    mock.close()  # what shutting the HTTP server down does
    assert mock.stats()["hanging"] == 0 and outcomes(mock) == ["hang"]


def test_http_hang_shorter_than_the_timeout_is_just_a_slow_answer(start_mock: StartMock) -> None:
    mock, url = start_mock(faults="hang:1.0", hang_ms=150)
    started = time.monotonic()
    with SDClient(make_settings(url)) as client:
        result = client.txt2img(params(), job_id="j")
    assert time.monotonic() - started >= 0.15 and result.format == "png"
    assert outcomes(mock) == ["hang"] and mock.stats()["txt2img_completed"] == 1


def test_http_hang_does_not_take_the_generation_lock(start_mock: StartMock, http: httpx.Client) -> None:
    mock, url = start_mock(faults="hang:1.0")
    thread = threading.Thread(target=lambda: _swallow(lambda: http.post(f"{url}/sdapi/v1/txt2img", json=SMALL)))
    thread.start()
    assert wait_until(lambda: mock.stats()["hanging"] == 1, timeout_s=5)
    mock.faults = FaultPlan()  # the next request meets no fault
    assert http.post(f"{url}/sdapi/v1/txt2img", json=SMALL, timeout=5).status_code == 200
    assert http.post(f"{url}/sdapi/v1/interrupt").json() == {}
    thread.join(5)
    assert not thread.is_alive() and outcomes(mock) == ["interrupted", "ok"]


def test_http_shutdown_ends_a_hanging_request(http: httpx.Client) -> None:
    mock = MockSDServer(faults="hang:1.0")
    httpd = serve(mock, "127.0.0.1", free_port())
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _swallow(lambda: http.post(f"{url}/sdapi/v1/txt2img", json=SMALL), errors))
    thread.start()
    assert wait_until(lambda: mock.stats()["hanging"] == 1, timeout_s=5)
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1
    assert isinstance(errors[0], httpx.ReadError | httpx.RemoteProtocolError)


def _swallow(call: Callable[[], object], errors: list[BaseException] | None = None) -> None:
    try:
        call()
    except httpx.HTTPError as exc:
        if errors is not None:
            errors.append(exc)


# -- /internal/progress -------------------------------------------------------------------------------
def test_internal_progress_reports_active_queued_and_completed_tasks(start_mock: StartMock, http: httpx.Client) -> None:
    mock, url = start_mock(latency_ms=400)

    def ask(task: str) -> dict[str, Any]:
        body = {"id_task": task, "id_live_preview": -1}
        return dict(http.post(f"{url}/internal/progress", json=body).json())

    def in_fifo() -> int:
        stats = mock.stats()
        return int(stats["active"] + stats["queued"])

    threads = []
    for count, task in enumerate(("task-a", "task-b"), start=1):
        body = SMALL | {"force_task_id": task}
        threads.append(threading.Thread(target=lambda b=body: http.post(f"{url}/sdapi/v1/txt2img", json=b)))
        threads[-1].start()
        assert wait_until(lambda n=count: in_fifo() == n, timeout_s=5)
    running, waiting, unknown = ask("task-a"), ask("task-b"), ask("nope")
    for thread in threads:
        thread.join(10)
    assert (running["active"], running["queued"], running["completed"]) == (True, False, False)
    assert 0.0 < running["progress"] < 1.0 and running["id_live_preview"] == -1
    assert (waiting["active"], waiting["queued"], waiting["textinfo"]) == (False, True, "In queue: 1/1")
    assert (unknown["active"], unknown["queued"], unknown["completed"], unknown["textinfo"]) == (
        False,
        False,
        False,
        "Waiting...",
    )
    assert ask("task-a")["completed"] and ask("task-b")["completed"] and not ask("task-b")["active"]
    assert [r["task_id"] for r in mock.stats()["requests"]] == ["task-a", "task-b"]


def test_internal_routes_are_404_under_nowebui_and_outside_api_auth(start_mock: StartMock, http: httpx.Client) -> None:
    _, api_only = start_mock(nowebui=True)
    _, with_ui = start_mock(api_auth="user:pass")
    for path, method in (("/internal/progress", "POST"), ("/internal/ping", "GET")):
        assert http.request(method, f"{api_only}{path}", json={"id_task": "x"}).status_code == 404
        assert http.request(method, f"{with_ui}{path}", json={"id_task": "x"}).status_code == 200


# -- stats --------------------------------------------------------------------------------------------
def test_stats_requests_list_every_txt2img_with_its_outcome_bounded(start_mock: StartMock, http: httpx.Client) -> None:
    mock, url = start_mock()
    before = time.time()
    http.post(f"{url}/sdapi/v1/txt2img", json=SMALL | {"prompt": "cat", "seed": 3, "force_task_id": "t1"})
    http.post(f"{url}/sdapi/v1/txt2img", json={"prompt": None})  # a 500 the mock raises on its own
    http.post(f"{url}/sdapi/v1/txt2img", json={"steps": "x"})  # 422: rejected before it is a request
    stats = http.get(f"{url}/mock/stats").json()
    first, second = stats["requests"]
    assert (first["prompt"], first["seed"], first["task_id"], first["outcome"]) == ("cat", 3, "t1", "ok")
    assert before <= first["at"] <= second["at"] <= time.time()
    assert (second["outcome"], second["task_id"]) == ("error", "task(mock-1)")
    assert stats["txt2img_requests"] == 3 and stats["faults"] == dict.fromkeys(FAULT_KINDS, 0)
    assert mock._stats.log.maxlen == REQUEST_HISTORY == 10_000
    http.post(f"{url}/mock/reset")
    assert http.get(f"{url}/mock/stats").json()["requests"] == []


# -- mock:// in-process -------------------------------------------------------------------------------
def test_mock_url_takes_faults_hang_ms_and_nowebui() -> None:
    mock = get_mock_server("mock://opts?faults=500:0.2;reset:0.1&hang_ms=5&nowebui=1&seed=2")
    assert (str(mock.faults), mock.hang_ms, mock.nowebui) == ("500:0.2,reset:0.1", 5, True)
    assert str(get_mock_server("mock://enc?faults=500:0.2%2Creset:0.1").faults) == "500:0.2,reset:0.1"
    assert make_settings("mock://?faults=500:0.2;reset:0.1").sd_api_url == "mock://?faults=500:0.2;reset:0.1"
    with pytest.raises(ValueError, match="unknown fault kind"):
        get_mock_server("mock://?faults=lag:0.1")
    with pytest.raises(ValueError, match="nowebui='maybe'"):
        get_mock_server("mock://?nowebui=maybe")
    with pytest.raises(ConfigError, match="over 1"):
        SDClient(make_settings("mock://"), base_url="mock://?faults=500:0.7;reset:0.7")


def test_mock_url_reset_and_garbage_map_like_over_http() -> None:
    with SDClient(make_settings("mock://reset-only?faults=reset:1")) as client:
        with pytest.raises(SDUnavailable, match="while reading the answer"):
            client.txt2img(params(), job_id="j")
    with SDClient(make_settings("mock://garbage-only?faults=garbage:1")) as client:
        with pytest.raises(SDBadImage):
            client.txt2img(params(), job_id="j")


@pytest.mark.parametrize(("nowebui", "interrupts", "outcome"), [(False, 1, "interrupted"), (True, 0, "hang")])
def test_mock_url_hang_times_out_at_the_client_read_timeout(nowebui: bool, interrupts: int, outcome: str) -> None:
    url = f"mock://hang-{int(nowebui)}?faults=hang:1&nowebui={int(nowebui)}"
    mock = get_mock_server(url)
    mock.reset()
    started = time.monotonic()
    with SDClient(make_settings(url, sd_timeout_s=0.2)) as client, pytest.raises(SDTimeout):
        client.txt2img(params(), job_id="j")
    assert 0.2 <= time.monotonic() - started < 1.5
    assert (mock.stats()["interrupts"], outcomes(mock)) == (interrupts, [outcome])
    assert mock.stats()["hanging"] == (1 if nowebui else 0)  # the hang goes on without its caller
    mock.close()


# -- sdpipe mock-sd -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--faults", "lag:0.1"],
        ["--faults", "500:0.7,reset:0.5"],
        ["--faults", "reset:2"],
        ["--faults", "500:0.1", "--fail-rate", "0.2"],
    ],
    ids=["unknown-kind", "sum-over-1", "over-1", "500-twice"],
)
def test_cli_mock_sd_bad_faults_is_one_line_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["mock-sd", "--port", str(free_port()), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: invalid --faults")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_mock_sd_passes_the_plan_hang_and_nowebui(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("cli.worker.run_forever", lambda host, port, **kwargs: seen.update(kwargs))
    args = ["mock-sd", "--faults", "hang:0.05;500:0.2", "--fail-rate", "0", "--hang-ms", "250", "--nowebui"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (str(seen["faults"]), seen["hang_ms"], seen["nowebui"]) == ("500:0.2,hang:0.05", 250, True)
    CliRunner().invoke(app, ["mock-sd", "--fail-rate", "0.3"])
    assert (str(seen["faults"]), seen["hang_ms"], seen["nowebui"]) == ("500:0.3", 60_000, False)
