"""One JSON error shape for every failure; no stack trace ever reaches a client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_api.conftest import ApiServer, StartApi, assert_error


def test_errors_unknown_route_and_method_use_the_shape(api: ApiServer) -> None:
    assert_error(api.client.get("/api/nothing"), 404, "not_found")
    assert_error(api.client.delete("/api/jobs"), 405, "method_not_allowed")


def test_errors_unexpected_exception_is_500_without_details(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a store that fails in a way nobody planned for
    runtime = api.server.config.app.state.runtime  # type: ignore[union-attr]

    def explode(**kwargs: object) -> None:
        raise RuntimeError("secret internals at /srv/sdpipe")

    monkeypatch.setattr(runtime.store, "list_jobs", explode)
    # Then the client sees a 500 in the error shape and nothing of the exception
    response = api.client.get("/api/jobs")
    error = assert_error(response, 500, "internal")
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert error["message"] == "internal server error"


def test_errors_store_unavailable_is_503(start_api: StartApi, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import StoreUnavailable

    api = start_api()
    runtime = api.server.config.app.state.runtime  # type: ignore[union-attr]

    def down() -> None:
        raise StoreUnavailable("cannot reach Redis at redis://127.0.0.1:1")

    monkeypatch.setattr(runtime.store, "ping", down)
    assert_error(api.client.get("/readyz"), 503, "store_unavailable")
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_errors_readyz_is_503_when_no_sd_server_answers_naming_no_server(start_api: StartApi) -> None:
    # /readyz needs no token: it must not tell anyone where the SD servers are
    api = start_api(sd_api_url="http://127.0.0.1:9", sd_connect_timeout_s=0.5, api_token="t")
    response = api.client.get("/readyz")
    error = assert_error(response, 503, "not_ready")
    assert "1 SD server" in error["message"]
    assert "127.0.0.1" not in response.text


def test_errors_server_side_failures_name_no_server_internals(
    start_api: StartApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cli.api.deps
    from pipeline.errors import InputError, StoreUnavailable

    # Given a store that is down, and an OUTPUT_DIR that cannot be written
    api = start_api()
    runtime = api.server.config.app.state.runtime  # type: ignore[union-attr]

    def down(**kwargs: object) -> None:
        raise StoreUnavailable("cannot reach Redis at redis://db.internal:6379/0")

    monkeypatch.setattr(runtime.store, "list_jobs", down)
    response = api.client.get("/api/jobs")
    assert_error(response, 503, "store_unavailable")
    assert "db.internal" not in response.text

    def unwritable(path: object) -> None:
        raise InputError(f"OUTPUT_DIR {path} is not writable (read-only file system)")

    monkeypatch.setattr(cli.api.deps, "check_output_dir", unwritable)
    response = api.client.post("/api/generate", json={"prompt": "x", "width": 64, "height": 64, "band_px": 4})
    # Then each is a 503 in the error shape, without the Redis host or the server's path
    assert_error(response, 503, "storage_unavailable")
    assert str(api.settings.output_dir) not in response.text


def test_errors_docs_are_off_unless_enabled(start_api: StartApi) -> None:
    api = start_api(enable_documentation=False)
    assert_error(api.client.get("/docs"), 404)
    assert_error(api.client.get("/openapi.json"), 404)


def test_errors_hints_are_true_without_documentation(start_api: StartApi) -> None:
    """/docs is 404 unless ENABLE_DOCUMENTATION=true: a hint names the README section, and /docs only
    with the setting that serves it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    api = start_api(enable_documentation=False)
    assert_error(api.client.get("/docs"), 404)
    hints = [
        assert_error(api.client.get("/api/nothing"), 404)["hint"],
        assert_error(api.client.delete("/api/jobs"), 405)["hint"],
        assert_error(api.client.post("/api/generate", json={"prompt": "x", "grid": "2by2"}), 422)["hint"],
        assert_error(api.client.post("/api/generate", json={"prompt": "x", "width": [1]}), 422)["hint"],
    ]

    assert "\n## HTTP API\n" in readme
    for hint in hints:
        assert 'README "HTTP API"' in hint, hint
        assert "/docs" not in hint.replace("at /docs when the server sets ENABLE_DOCUMENTATION=true", ""), hint


def test_errors_status_for_maps_core_errors() -> None:
    from cli.api.errors import status_for
    from pipeline.batches.files import BatchFileError
    from pipeline.errors import ImageError, InputError, JobNotFound, SDAuthError, SDUnavailable, StoreUnavailable
    from pipeline.jobs.uploads import UploadProblem, UploadRejected

    assert status_for(JobNotFound("x")) == (404, "not_found")
    assert status_for(InputError("x")) == (422, "invalid_input")
    assert status_for(BatchFileError("f", [])) == (422, "invalid_batch")
    assert status_for(ImageError("x")) == (422, "invalid_image")
    assert status_for(StoreUnavailable("x")) == (503, "store_unavailable")
    assert status_for(SDAuthError("x")) == (502, "sd_rejected")
    assert status_for(SDUnavailable("x")) == (503, "sd_unavailable")
    assert status_for(UploadRejected(UploadProblem.UNSUPPORTED_TYPE, "x")) == (415, "unsupported_media_type")
    assert status_for(UploadRejected(UploadProblem.TOO_MANY_PIXELS, "x")) == (413, "too_many_pixels")


def test_errors_full_queue_is_429_and_nothing_is_queued(start_api: StartApi, redis_url: str) -> None:
    from cli.api.errors import QUEUE_FULL_RETRY_AFTER_S

    # Redis mode and no worker: jobs stay queued; MAX_QUEUE_DEPTH=2
    api = start_api(redis_url=redis_url, max_queue_depth=2)
    body = {"prompt": "a lighthouse", "width": 64, "height": 64}
    assert api.client.post("/api/generate", json={**body, "count": 2}).status_code == 202
    refused = api.client.post("/api/generate", json=body)
    error = assert_error(refused, 429, "queue_full")
    assert "MAX_QUEUE_DEPTH=2" in error["message"]
    assert refused.headers["Retry-After"] == str(QUEUE_FULL_RETRY_AFTER_S)  # when to come back
    assert len(api.client.get("/api/jobs").json()["jobs"]) == 2


def test_errors_idempotency_conflict_hint_says_to_send_a_new_key(api: ApiServer) -> None:
    headers = {"Idempotency-Key": "order-17"}
    size = {"width": 64, "height": 64}
    first = api.client.post("/api/generate", json={"prompt": "a lighthouse", **size}, headers=headers)
    assert first.status_code == 202, first.text
    other = api.client.post("/api/generate", json={"prompt": "a harbour", **size}, headers=headers)
    error = assert_error(other, 409, "idempotency_conflict")
    assert "new Idempotency-Key" in error["hint"], error


def test_errors_of_routing_have_a_hint(api: ApiServer) -> None:
    assert assert_error(api.client.get("/api/nothing"), 404, "not_found")["hint"].startswith("the routes are in README")
    assert "methods" in assert_error(api.client.delete("/api/jobs"), 405, "method_not_allowed")["hint"]


@pytest.mark.parametrize("body", [b'{"prompt": "x",}', b"not json", b"[1, 2"])
def test_errors_invalid_json_says_the_body_is_not_valid_json(api: ApiServer, body: bytes) -> None:
    response = api.client.post("/api/generate", content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "invalid_request")
    assert error["message"].startswith("the body is not valid JSON"), error
    assert "application/json" in error["hint"]
