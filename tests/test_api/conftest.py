"""HTTP API fixtures: the real app on uvicorn, on a free port, in a background thread; httpx clients."""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from cli.api import create_app
from pipeline.settings import Settings
from tests.helpers import free_port, wait_until
from tests.test_e2e.conftest import e2e_env, spawn

__all__ = ["ApiServer", "StartApi", "e2e_env", "png_bytes", "spawn"]  # e2e fixtures, re-exported for test_redis


@dataclass
class ApiServer:
    """A running API: its base URL, a client on it, and the settings it was started with."""

    url: str
    client: httpx.Client
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


StartApi = Callable[..., ApiServer]


@pytest.fixture
def start_api(settings: Settings) -> Iterator[StartApi]:
    """Start the app on uvicorn with ``settings`` plus overrides (e.g. ``api_token="t"``); stopped at teardown."""
    servers: list[ApiServer] = []

    def start(
        *,
        headers: dict[str, str] | None = None,
        pool_threads: int | None = None,
        listen_port: int | None = None,
        **overrides: Any,
    ) -> ApiServer:
        """``pool_threads``: size of the server's thread pool (what sync routes and blocking calls run on);
        ``listen_port``: this port (a server started again where a stopped one was), else a free one."""
        merged = Settings(  # validated, like settings read from the environment
            _env_file=None,  # type: ignore[call-arg]
            **{**settings.model_dump(), "enable_documentation": True, **overrides},
        )
        app = create_app(merged)
        if pool_threads is not None:
            opened = app.router.lifespan_context

            @asynccontextmanager
            async def lifespan(app_: Any) -> AsyncIterator[Any]:
                anyio.to_thread.current_default_thread_limiter().total_tokens = pool_threads
                async with opened(app_) as state:
                    yield state

            app.router.lifespan_context = lifespan
        port = listen_port or free_port()
        config = uvicorn.Config(  # open event streams (a dashboard page) are cancelled a second into a stop
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        assert wait_until(lambda: server.started or not thread.is_alive(), timeout_s=30), "uvicorn did not start"
        assert server.started, "uvicorn stopped during startup"
        url = f"http://127.0.0.1:{port}"
        api = ApiServer(
            url=url,
            client=httpx.Client(base_url=url, timeout=60, headers=headers or {}),
            settings=merged,
            server=server,
            thread=thread,
        )
        servers.append(api)
        return api

    yield start
    for api in servers:
        api.stop()


@pytest.fixture
def api(start_api: StartApi) -> ApiServer:
    """The API in embedded mode on the mock SD server, no token."""
    return start_api()


def noise_image(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """A detailed RGB test image (noise: any blur shows)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray, format: str = "PNG") -> bytes:
    """``array`` encoded as an image file."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format)
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with the API's one error shape (and ``code``); returns ``error``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error.get("hint"), str) and error["hint"], error  # every error says how to go on
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    return error
