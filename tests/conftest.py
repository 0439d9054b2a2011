"""Shared fixtures: an isolated environment, settings on a temp folder, a private redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.settings import Settings
from tests.helpers import RedisServer, free_port

#: Environment variables sdpipe reads; tests never inherit the developer's values.
_SDPIPE_ENV = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's SD/Redis settings or their ``.env``."""
    for name in _SDPIPE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-mode settings writing under a temp folder, with fast retries."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        output_dir=tmp_path / "outputs",
        sd_api_url="mock://",
        retry_min_backoff_ms=10,
        retry_max_backoff_ms=50,
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server started for this test session only (never a server we did not start)."""
    server = RedisServer(port=free_port(), directory=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The private server's URL, flushed before and after the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()
