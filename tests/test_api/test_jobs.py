"""Generation, jobs, results, retry and cancel over HTTP (embedded mode, mock SD server)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from cli.api import deps
from pipeline.errors import StoreUnavailable
from pipeline.models import MAX_PROMPT_CHARS, JobRecord
from tests.helpers import wait_until
from tests.test_api.conftest import ApiServer, StartApi, assert_error

SMALL = {"width": 96, "height": 64, "band_px": 8}


def test_generate_returns_202_with_job_ids_and_status_urls(api: ApiServer) -> None:
    response = api.client.post("/api/generate", json={"prompt": "a lighthouse at dusk", "count": 2, **SMALL})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert len(accepted["job_ids"]) == 2
    assert all(url.endswith(job_id) for url, job_id in zip(accepted["status_urls"], accepted["job_ids"], strict=True))
    for url in accepted["status_urls"]:
        assert wait_until(lambda url=url: api.client.get(url).json()["state"] == "succeeded", timeout_s=30)


def test_generate_wait_answers_with_finished_jobs(api: ApiServer) -> None:
    response = api.client.post(
        "/api/generate", params={"wait": "true"}, json={"prompt": "a fox", "seed": 7, "count": 2, **SMALL}
    )
    assert response.status_code == 200, response.text
    done = response.json()
    assert [job["state"] for job in done["jobs"]] == ["succeeded", "succeeded"]
    assert [job["generation"]["seed"] for job in done["jobs"]] == [7, 8]
    assert all(job["batch_id"] == done["batch_id"] for job in done["jobs"])
    # the image is the merged one, at the size asked for
    image = api.client.get(done["jobs"][0]["result_url"])
    with Image.open(io.BytesIO(image.content)) as im:
        assert im.size == (96, 64)
        assert "Seam grid: 2x2" in im.info["parameters"]


def test_generate_wait_times_out_with_504_naming_the_job(start_api: StartApi) -> None:
    api = start_api(sd_api_url="mock://?latency_ms=1000", api_wait_timeout_s=0.3)
    response = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "slow", **SMALL})
    error = assert_error(response, 504, "timeout")
    assert len(error["job_id"]) == 32
    # Every unfinished job and the batch are named, so a client polls them instead of submitting again
    assert error["job_ids"] == [error["job_id"]] and len(error["batch_id"]) == 32


def _flaky_watch(monkeypatch: pytest.MonkeyPatch, outages: int | None) -> None:
    """The API's waits find the status store down ``outages`` times (None: for good), then up."""
    real = deps.watch_jobs
    failures = {"left": outages}

    def watch(*args: Any, **kwargs: Any) -> Iterator[list[JobRecord]]:
        if failures["left"] is None or failures["left"] > 0:
            if failures["left"] is not None:
                failures["left"] -= 1
            raise StoreUnavailable("cannot reach Redis (test)")
        yield from real(*args, **kwargs)

    monkeypatch.setattr(deps, "watch_jobs", watch)


def test_generate_wait_rides_out_a_short_store_outage(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _flaky_watch(monkeypatch, outages=3)
    response = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "x", "count": 2, **SMALL})
    assert response.status_code == 200, response.text
    assert [job["state"] for job in response.json()["jobs"]] == ["succeeded", "succeeded"]


def test_generate_wait_503_names_the_queued_jobs(start_api: StartApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api = start_api(api_wait_timeout_s=0.5)
    _flaky_watch(monkeypatch, outages=None)
    response = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "x", "count": 2, **SMALL})
    error = assert_error(response, 503, "store_unavailable")
    assert len(error["job_ids"]) == 2 and len(error["batch_id"]) == 32
    assert "do not submit them again" in error["hint"]


def test_generate_bad_request_is_422_in_the_error_shape(api: ApiServer) -> None:
    assert_error(api.client.post("/api/generate", json={"prompt": "  "}), 422, "invalid_input")
    assert_error(api.client.post("/api/generate", json={"prompt": "x", "width": 999_999}), 422, "invalid_input")
    assert_error(api.client.post("/api/generate", json={"prompt": "x", "grid": "0x2"}), 422, "invalid_input")
    grid = assert_error(api.client.post("/api/generate", json={"prompt": "x", "grid": "2by2"}), 422, "invalid_input")
    # The core's hint ("use e.g. --grid 2x2") is for the command line: not repeated over HTTP
    assert "not ROWSxCOLS" in grid["message"] and grid["hint"].startswith("the request format is in README")
    # Any A1111 field is accepted; a near miss of sdpipe's own keys is refused as a batch row's is
    error = assert_error(api.client.post("/api/generate", json={"prompt": "x", "sed": 1}), 422, "invalid_input")
    assert "unknown key 'sed' (did you mean 'seed'?)" in error["message"]


def test_generate_prompt_longer_than_the_cap_is_422(api: ApiServer) -> None:
    body = {"prompt": "a" * (MAX_PROMPT_CHARS + 1), **SMALL}
    error = assert_error(api.client.post("/api/generate", json=body), 422)
    assert "prompt" in error["message"] and str(MAX_PROMPT_CHARS) in error["message"]


def test_jobs_get_list_and_filter(api: ApiServer) -> None:
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "a fox", **SMALL}).json()
    job_id = done["jobs"][0]["job_id"]
    # a unique prefix resolves
    assert api.client.get(f"/api/jobs/{job_id[:10]}").json()["job_id"] == job_id
    listed = api.client.get("/api/jobs", params={"state": "succeeded", "batch": done["batch_id"], "limit": 5})
    assert [job["job_id"] for job in listed.json()["jobs"]] == [job_id]
    assert api.client.get("/api/jobs", params={"state": "failed"}).json()["jobs"] == []
    assert_error(api.client.get("/api/jobs", params={"state": "bogus"}), 422, "invalid_request")
    assert_error(api.client.get("/api/jobs", params={"limit": 0}), 422, "invalid_request")


def test_jobs_list_pages_through_a_batch_with_next_offset(api: ApiServer) -> None:
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "a", "count": 5, **SMALL})
    batch_id, made = done.json()["batch_id"], {job["job_id"] for job in done.json()["jobs"]}
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = api.client.get("/api/jobs", params={"batch": batch_id, "limit": 2, "offset": offset}).json()
        seen += [job["job_id"] for job in page["jobs"]]
        offset = page["next_offset"]
    assert sorted(seen) == sorted(made) and len(seen) == 5  # every job once, over three pages


def test_jobs_unknown_id_is_404(api: ApiServer) -> None:
    assert_error(api.client.get("/api/jobs/ffffffff"), 404, "not_found")
    assert_error(api.client.get("/api/jobs/ffffffff/result"), 404, "not_found")
    assert_error(api.client.post("/api/jobs/ffffffff/retry"), 404, "not_found")
    assert_error(api.client.post("/api/jobs/ffffffff/cancel"), 404, "not_found")
    assert_error(api.client.get("/api/batches/ffffffff"), 404, "not_found")


def test_jobs_short_id_of_several_jobs_is_400_not_404(api: ApiServer) -> None:
    # Given 17 jobs: two of them start with the same hex digit
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "a", "count": 17, **SMALL})
    firsts = [job["job_id"][0] for job in done.json()["jobs"]]
    shared = next(digit for digit in firsts if firsts.count(digit) > 1)
    # Then that digit names no job for sure: a bad request (give more characters), not a missing job
    body = assert_error(api.client.get(f"/api/jobs/{shared}"), 400, "ambiguous_id")
    assert "matches several jobs" in body["message"]


def test_jobs_result_has_strong_etag_and_if_none_match_gives_304(api: ApiServer) -> None:
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "a fox", **SMALL}).json()
    url = done["jobs"][0]["result_url"]
    first = api.client.get(url)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert etag.strip('"') == done["jobs"][0]["result"]["sha256"]
    again = api.client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert api.client.get(url, headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304  # weak compare
    assert api.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_jobs_failed_job_has_no_result_409_and_retries(start_api: StartApi) -> None:
    # Given a job that fails at once (the SD server sends an image that does not decode)
    api = start_api(sd_api_url="mock://?faults=garbage:1")
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "x", **SMALL}).json()
    job = done["jobs"][0]
    assert job["state"] == "failed" and job["error"]["step"] == "generate"
    assert job["result_url"] is None
    # Then its result is a 409, and a retry requeues it from the step that failed
    error = assert_error(api.client.get(f"/api/jobs/{job['job_id']}/result"), 409, "no_result")
    assert "failed" in error["message"]
    retried = api.client.post(f"/api/jobs/{job['job_id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["from_step"] == "generate"
    assert wait_until(lambda: api.client.get(f"/api/jobs/{job['job_id']}").json()["state"] == "failed", timeout_s=30)
    assert api.client.get(f"/api/jobs/{job['job_id']}").json()["steps"]["generate"]["attempts"] == 2


def test_jobs_retry_of_succeeded_job_is_409(api: ApiServer) -> None:
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "a fox", **SMALL}).json()
    assert_error(api.client.post(f"/api/jobs/{done['jobs'][0]['job_id']}/retry"), 409, "not_retryable")


def test_jobs_cancel_stops_queued_jobs(start_api: StartApi) -> None:
    # Given slow renders with one worker thread: the last jobs wait in the queue
    api = start_api(sd_api_url="mock://?latency_ms=1000", worker_threads=1)
    accepted = api.client.post("/api/generate", json={"prompt": "x", "count": 3, **SMALL}).json()
    last = accepted["job_ids"][-1]
    # When the last is cancelled
    response = api.client.post(f"/api/jobs/{last}/cancel")
    assert response.status_code == 200, response.text
    assert response.json() == {"job_id": last, "cancelled": True, "state": "cancelled"}
    # Then cancelling again changes nothing, and its result is a 409
    assert api.client.post(f"/api/jobs/{last}/cancel").json()["cancelled"] is False
    assert_error(api.client.get(f"/api/jobs/{last}/result"), 409, "no_result")


def test_jobs_results_of_two_jobs_of_the_same_name_are_both_kept(api: ApiServer) -> None:
    # Given two batches whose rows write the same output name, the second after the first
    body = {"rows": [{"prompt": "a fox", "name": "same"}], "defaults": SMALL}
    ids = []
    for _ in range(2):
        accepted = api.client.post("/api/batches", json=body).json()
        ids.append(accepted["job_ids"][0])
        assert wait_until(lambda: api.client.get(f"/api/jobs/{ids[-1]}").json()["state"] == "succeeded", timeout_s=30)
    # Then each job still serves its own image (the second was written as same-0001, not over the first)
    for job_id in ids:
        result = api.client.get(f"/api/jobs/{job_id}/result")
        assert result.status_code == 200
        assert result.headers["etag"].strip('"') == api.client.get(f"/api/jobs/{job_id}").json()["result"]["sha256"]
    assert (api.settings.output_dir / "same.png").is_file() and (api.settings.output_dir / "same-0001.png").is_file()


def test_generate_and_batches_take_a_name_template_and_overwrite(api: ApiServer) -> None:
    # Given a generate body and a batch body naming their outputs with a template
    done = api.client.post(
        "/api/generate", params={"wait": "true"}, json={"prompt": "a fox", "name_template": "api/{seed}", **SMALL}
    )
    assert done.status_code == 200, done.text
    seed = done.json()["jobs"][0]["sd_info"]["seed"]  # a random seed: the one the server used
    body = {"rows": ["a fox"], "defaults": SMALL, "name_template": "api/b-{row}", "overwrite": True}
    for _ in range(2):
        job_id = api.client.post("/api/batches", json=body).json()["job_ids"][0]
        url = f"/api/jobs/{job_id}"
        assert wait_until(lambda url=url: api.client.get(url).json()["state"] == "succeeded", timeout_s=30)
    # Then the files are where the templates say, and --overwrite kept one file for the two batches
    names = sorted(path.name for path in (api.settings.output_dir / "api").glob("*.png"))
    assert names == sorted([f"{seed}.png", "b-1.png"])


def test_generate_waits_hold_no_pool_thread(start_api: StartApi) -> None:
    # Given a server with 2 pool threads and SD renders of 3 s
    api = start_api(sd_api_url="mock://?latency_ms=3000", pool_threads=2)
    body = {"prompt": "slow", **SMALL}
    with ThreadPoolExecutor(3) as pool:
        # When 3 clients wait for their generation
        waits = [
            pool.submit(httpx.post, f"{api.url}/api/generate", params={"wait": "true"}, json=body, timeout=60)
            for _ in range(3)
        ]
        # Then a route that needs a pool thread still answers while all of them wait
        assert wait_until(lambda: len(api.client.get("/api/jobs").json()["jobs"]) == 3, timeout_s=30)
        assert not any(wait.done() for wait in waits), "a route waited for a wait to end"
        assert [wait.result().status_code for wait in waits] == [200, 200, 200]


def test_generate_wait_ends_when_the_client_disconnects(start_api: StartApi, caplog: pytest.LogCaptureFixture) -> None:
    # Given a wait on a slow render
    api = start_api(sd_api_url="mock://?latency_ms=5000")
    caplog.set_level(logging.INFO, logger="cli.api.deps")
    # When the client gives up and closes its connection
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{api.url}/api/generate", params={"wait": "true"}, json={"prompt": "x", **SMALL}, timeout=0.5)
    # Then the server stops waiting for it (the job keeps running)
    assert wait_until(lambda: "the client disconnected" in caplog.text, timeout_s=30)


def test_generate_quality_sets_the_webp_quality(api: ApiServer) -> None:
    sizes = []
    for quality in (20, 95):
        body = {"prompt": "a fox", "seed": 7, "format": "webp", "quality": quality, **SMALL}
        response = api.client.post("/api/generate", params={"wait": "true"}, json=body)
        assert response.status_code == 200, response.text
        sizes.append(len(api.client.get(response.json()["jobs"][0]["result_url"]).content))
    assert sizes[0] < sizes[1]
    assert api.client.post("/api/generate", json={"prompt": "a fox", "quality": 0}).status_code == 422


def test_generate_passes_a1111_fields_through_and_schema_allows_them(api: ApiServer) -> None:
    scripts = {"ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt"}]}}
    body = {"prompt": "a fox", **SMALL, "styles": ["s1"], "alwayson_scripts": scripts, "tiling": False, "count": 1}
    accepted = api.client.post("/api/generate", json=body)
    assert accepted.status_code == 202, accepted.text

    job = api.client.get(f"/api/jobs/{accepted.json()['job_ids'][0]}").json()

    assert job["generation"]["alwayson_scripts"] == scripts
    assert job["generation"]["styles"] == ["s1"]
    assert job["generation"]["tiling"] is False
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["GenerateBody"]["additionalProperties"] is True
    assert schema["GenerateBody"]["properties"]["steps"]["anyOf"][0]["type"] == "integer"
    row = schema["BatchBody"]["properties"]["rows"]["items"]["anyOf"][0]  # a batch row is typed the same way
    assert row["additionalProperties"] is True and row["properties"]["model"]["anyOf"][0]["type"] == "string"


def test_generate_with_upscale_renders_tiles_and_shows_them(api: ApiServer) -> None:
    body = {"prompt": "a fox", "seed": 7, "width": 96, "height": 64, "upscale": 2, "upscale_denoise": 0.2}

    response = api.client.post("/api/generate", params={"wait": "true"}, json=body)

    assert response.status_code == 200, response.text
    [job] = response.json()["jobs"]
    assert job["state"] == "succeeded"
    assert (job["result"]["width"], job["result"]["height"]) == (192, 128)
    assert job["upscale"]["denoise"] == 0.2 and job["upscale"]["seed"] == 7
    shown = api.client.get(job["status_url"]).json()
    assert shown["tiles"]["done"] == shown["tiles"]["total"] >= 1
    # the wait's answer and the job list show the renders too, as the job's own view does
    assert job["tiles"] == shown["tiles"]
    [listed] = api.client.get("/api/jobs").json()["jobs"]
    assert listed["tiles"] == shown["tiles"]


def test_generate_with_a_bad_upscale_is_422(api: ApiServer) -> None:
    response = api.client.post("/api/generate", json={"prompt": "a fox", "upscale": 20})
    bad_tile = api.client.post("/api/generate", json={"prompt": "a fox", "upscale_tile": 100})

    assert response.status_code == 422, response.text
    assert bad_tile.status_code == 422, bad_tile.text
    assert "upscale_tile: 100 px is not a multiple of 8" in bad_tile.json()["error"]["message"]


def test_generate_takes_every_upscale_setting(api: ApiServer) -> None:
    body = {"prompt": "a fox", "width": 64, "height": 64, "upscale_tile": 64, "upscale_overlap": 16,
            "upscale_seam_fix": "band", "upscaler": "Lanczos"}  # fmt: skip

    response = api.client.post("/api/generate", params={"wait": "true"}, json=body)

    assert response.status_code == 200, response.text
    [job] = response.json()["jobs"]
    assert job["state"] == "succeeded"
    assert (job["upscale"]["scale"], job["upscale"]["tile_px"], job["upscale"]["overlap_px"]) == (2.0, 64, 16)
    assert job["upscale"]["seam_fix"] == "band"
    properties = api.client.get("/openapi.json").json()["components"]["schemas"]["GenerateBody"]["properties"]
    assert {"upscale", "upscaler", "upscale_denoise", "upscale_tile", "upscale_overlap", "upscale_seam_fix"} <= set(
        properties
    )


def test_generate_upscale_over_max_pixels_is_422_naming_the_key(start_api: StartApi) -> None:
    api = start_api(max_pixels=500_000)

    response = api.client.post("/api/generate", json={"prompt": "a fox", "width": 256, "height": 256, "upscale": 4})
    batch = api.client.post("/api/batches", json={"rows": [{"prompt": "a", "width": 256, "height": 256, "upscale": 4}]})

    error = assert_error(response, 422, "invalid_input")
    assert "gives 1024x1024 px, 1,048,576 pixels, over MAX_PIXELS (500,000)" in error["message"]
    assert error["hint"] == "send a smaller upscale or a smaller image"
    problems = assert_error(batch, 422, "invalid_batch")["problems"]
    assert [(p["line"], p["field"]) for p in problems] == [(1, "upscale")]
    assert "over MAX_PIXELS (500,000)" in problems[0]["message"]
    assert api.client.get("/api/jobs").json()["jobs"] == []
