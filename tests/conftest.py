"""Shared fixtures: an isolated environment, settings on a temp folder, a private redis-server, a
private S3-compatible server (moto) with a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.settings import Settings
from tests.helpers import RedisServer, free_port
from tests.procs import MotoServer, S3Unavailable
from tests.receiver import Receiver
from tests.wiretap import Wiretap

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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3-compatible server, started for this test session only on a free port (in memory).

    Skipped locally where ``moto_server`` is missing (``uv sync`` installs it); under ``CI=true`` a failure.
    """
    server = MotoServer(port=free_port(), log=tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.start()
    except S3Unavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{exc}; CI must be able to start the test S3 server")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def s3_wiretap(s3_server: MotoServer) -> Iterator[Wiretap]:
    """A relay in front of the test S3 server that counts the bytes it answers (what a client really
    fetched): point ``S3_ENDPOINT_URL`` at its ``url``."""
    tap = Wiretap(s3_server.port)
    yield tap
    tap.close()


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test S3 server, and how sdpipe reaches it."""

    name: str
    url: str
    endpoint_url: str
    access_key_id: str
    secret_access_key: str

    @property
    def env(self) -> dict[str, str]:
        """The settings of sdpipe processes that write into it (``OUTPUT_URL`` and credentials)."""
        return {
            "OUTPUT_URL": self.url,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": "us-east-1",
        }

    @property
    def overrides(self) -> dict[str, str]:
        """The same as :class:`Settings` keyword arguments."""
        return {name.lower(): value for name, value in self.env.items()}

    def settings(self, **overrides: object) -> Settings:
        return Settings(_env_file=None, **{**self.overrides, **overrides})  # type: ignore[call-arg, arg-type]


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> S3Bucket:
    """An empty bucket of its own for the test (``s3://<bucket>/sdpipe``)."""
    name = f"sdpipe-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return S3Bucket(
        name=name,
        url=f"s3://{name}/sdpipe",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    )


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    """Make webhook receivers (:class:`tests.receiver.Receiver`); all are closed at teardown."""
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()
