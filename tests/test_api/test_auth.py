"""``API_TOKEN``: every ``/api`` route needs ``Authorization: Bearer <token>``; health and docs stay open."""

from __future__ import annotations

import httpx
import pytest

from tests.test_api.conftest import StartApi, assert_error

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/jobs"), ("GET", "/api/jobs/abc"), ("POST", "/api/generate"), ("POST", "/api/files")],
)
def test_auth_missing_or_wrong_token_is_401(start_api: StartApi, method: str, path: str) -> None:
    api = start_api(api_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = api.client.request(method, path, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text


def test_auth_right_token_is_accepted(start_api: StartApi) -> None:
    api = start_api(api_token=TOKEN, headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.client.get("/api/jobs").status_code == 200
    response = api.client.post("/api/generate", json={"prompt": "x", "width": 64, "height": 64, "band_px": 4})
    assert response.status_code == 202, response.text


def test_auth_health_and_docs_need_no_token(start_api: StartApi) -> None:
    api = start_api(api_token=TOKEN)
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert api.client.get(path).status_code == 200, path
    schema = api.client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_auth_no_token_configured_means_open(start_api: StartApi) -> None:
    api = start_api()
    assert httpx.get(f"{api.url}/api/jobs").status_code == 200
