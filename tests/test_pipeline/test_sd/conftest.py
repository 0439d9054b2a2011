"""Fixtures of the SD tests: mock A1111 servers over real HTTP, and an HTTP client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from pipeline.sd.mock.http import MockSDServer, serve
from tests.helpers import free_port

StartMock = Callable[..., tuple[MockSDServer, str]]


@pytest.fixture
def start_mock() -> Iterator[StartMock]:
    """Start mock servers (``MockSDServer(**config)``) over real HTTP on free ports; each returns
    ``(server, base_url)``. All are shut down after the test, ending any hang."""
    servers: list[ThreadingHTTPServer] = []

    def start(**config: Any) -> tuple[MockSDServer, str]:
        mock = MockSDServer(**config)
        httpd = serve(mock, "127.0.0.1", free_port())
        servers.append(httpd)
        return mock, f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        yield client
