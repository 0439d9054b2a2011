"""``API_TOKEN``: every ``/api`` route needs ``Authorization: Bearer <token>``; health and docs stay open."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import SecretStr
from starlette.types import Message, Scope

from cli.api.auth import TokenGateMiddleware
from cli.api.uploads import body_limit
from pipeline.settings import Settings
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


def test_auth_oversized_upload_without_token_is_401_not_413(start_api: StartApi) -> None:
    # The token is checked before the body is read (or its size judged)
    api = start_api(api_token=TOKEN, max_upload_bytes=1000)
    too_big = b"\x89PNG\r\n\x1a\n" + b"\0" * (body_limit(api.settings) + 1)
    response = api.client.post("/api/files", files={"file": ("a.png", too_big)})
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize(
    ("path", "root_path", "gated"),
    [("/api/files", "", True), ("/api", "", True), ("/sub/api/jobs", "/sub", True), ("/healthz", "", False),
     ("/apix", "", False)],
)  # fmt: skip
def test_auth_gate_refuses_before_reading_the_body(settings: Settings, path: str, root_path: str, gated: bool) -> None:
    # Given the gate in front of an app, and a request whose body must not be read
    reached: list[Scope] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: object, send: object) -> None:
        reached.append(scope)

    async def receive() -> Message:
        raise AssertionError("the body was read")

    async def send(message: Message) -> None:
        sent.append(message)

    gate = TokenGateMiddleware(app, settings=settings.model_copy(update={"api_token": SecretStr(TOKEN)}))
    scope: Scope = {"type": "http", "method": "POST", "path": path, "root_path": root_path, "headers": []}
    # When it comes without a token
    asyncio.run(gate(scope, receive, send))
    # Then an /api route is answered 401 at once; anything else goes through
    assert (sent[0]["status"] if sent else None) == (401 if gated else None)
    assert bool(reached) is not gated
