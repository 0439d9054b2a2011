"""Redis connections: every client (broker, status store, SD pool) comes from one factory with the
options of Settings, read back here from live connections to a private redis-server."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from pydantic import SecretStr

from actors.broker import build_broker
from pipeline.connections import RedisSettings, create_client, outage_retries, outage_retry
from pipeline.errors import ConfigError
from pipeline.sd.pool.pool import open_pool_state
from pipeline.sd.pool.redis_state import RedisPoolState
from pipeline.settings import Settings
from pipeline.store import RedisStatusStore, open_store
from tests.helpers import free_port

#: Options unlike every default, so reading them back proves they were applied.
OPTIONS = {
    "redis_connect_timeout_s": 2.5,
    "redis_socket_timeout_s": 7.5,
    "redis_health_check_interval_s": 11,
    "redis_retries": 4,
}


def _broker_client(settings: Settings) -> tuple[redis.Redis, Callable[[], None]]:
    broker = build_broker(settings)

    def close() -> None:
        broker.close()
        dramatiq.set_broker(StubBroker())

    return broker.client, close  # type: ignore[attr-defined]


def _store_client(settings: Settings) -> tuple[redis.Redis, Callable[[], None]]:
    store = open_store(settings)
    assert isinstance(store, RedisStatusStore)
    return store.client, store.close


def _pool_client(settings: Settings) -> tuple[redis.Redis, Callable[[], None]]:
    state = open_pool_state(settings)
    assert isinstance(state, RedisPoolState)
    return state.client, state.close


CLIENTS = {"broker": _broker_client, "store": _store_client, "pool": _pool_client}


@pytest.fixture
def redis_settings(settings: Settings, redis_url: str) -> Settings:
    """Redis-mode settings on the private server, with OPTIONS."""
    return settings.model_copy(update={"redis_url": SecretStr(redis_url), **OPTIONS})


@pytest.fixture(params=sorted(CLIENTS))
def live_client(request: pytest.FixtureRequest, redis_settings: Settings) -> Iterator[tuple[str, redis.Redis]]:
    """Each sdpipe Redis client, built the way sdpipe builds it, after one command."""
    client, close = CLIENTS[request.param](redis_settings)
    assert client.ping()
    yield request.param, client
    close()


def test_every_client_connects_with_the_settings_options(live_client: tuple[str, redis.Redis]) -> None:
    name, client = live_client
    # The pool's client waits longer for a reply: a BLPOP may block for its own wait first.
    expected_socket_timeout_s = OPTIONS["redis_socket_timeout_s"] + (5.0 if name == "pool" else 0.0)

    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == OPTIONS["redis_connect_timeout_s"]
    assert kwargs["socket_timeout"] == expected_socket_timeout_s
    assert kwargs["health_check_interval"] == OPTIONS["redis_health_check_interval_s"]

    connection = client.connection_pool.get_connection()
    try:
        assert connection.health_check_interval == OPTIONS["redis_health_check_interval_s"]
        assert connection.socket_timeout == expected_socket_timeout_s
        assert connection.socket_connect_timeout == OPTIONS["redis_connect_timeout_s"]
        assert connection.retry.get_retries() == OPTIONS["redis_retries"]
        assert connection.next_health_check > 0  # a health check is scheduled: it was connected with them
    finally:
        client.connection_pool.release(connection)


def test_default_settings_give_the_former_store_options() -> None:
    settings = Settings(_env_file=None, redis_url=SecretStr("redis://127.0.0.1:6379/0"))  # type: ignore[call-arg]

    client = create_client(RedisSettings.from_settings(settings))

    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["health_check_interval"]) == (5.0, 30)
    assert kwargs["socket_timeout"] == 15.0
    assert kwargs["retry"].get_retries() == 2
    client.close()


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_malformed_url_raises_config_error_with_password_masked(settings: Settings, name: str) -> None:
    bad = settings.model_copy(update={"redis_url": SecretStr("http://:hunter2@localhost:6379/0")})

    with pytest.raises(ConfigError, match="is not a Redis URL") as caught:
        CLIENTS[name](bad)

    assert "***" in caught.value.message
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)
    dramatiq.set_broker(StubBroker())


def test_redis_settings_repr_hides_the_url() -> None:
    redis_settings = RedisSettings(url="redis://:hunter2@localhost:6379/0")

    assert "hunter2" not in repr(redis_settings)
    assert redis_settings.url_masked == "redis://***@localhost:6379/0"


def test_outage_retry_pauses_fit_the_patience() -> None:
    # Pauses 0.1, 0.2, 0.4, 0.8, 1.6 s (3.1 s) fit in 5 s; the next, 3.2 s, does not.
    assert outage_retries(5.0) == 5
    # Then 5 s pauses: 6.3 s for the first six, and 118 more fit in 600 s.
    assert outage_retries(600.0) == 124
    assert outage_retries(0.0) == 0
    assert outage_retry(5.0).get_retries() == 5


def test_broker_enqueue_retries_then_raises_when_redis_stays_down(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker on a port nothing listens on, patient for 0.65 s (pauses 0.1 + 0.2 s fit; 0.4 s more
    # does not; the 0.35 s left over absorbs slow attempts on a loaded machine, 0.2 s did not always)
    down = settings.model_copy(update={"redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")})
    broker = build_broker(down, enqueue_patience_s=0.65)
    actor = dramatiq.actor(lambda: None, actor_name="noop", broker=broker)
    caplog.set_level(logging.WARNING, logger="actors.redis_broker")
    try:
        # When a message is sent, Then it is tried three times, then the connection error is raised
        with pytest.raises(redis.ConnectionError):
            actor.send()
    finally:
        broker.close()
        dramatiq.set_broker(StubBroker())
    warnings = [record.getMessage() for record in caplog.records if "cannot enqueue" in record.getMessage()]
    assert [text.rsplit(";", 1)[1] for text in warnings] == [" retry 1 of 2", " retry 2 of 2"]


def test_broker_enqueue_stops_retrying_at_its_deadline_when_attempts_are_slow(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker patient for 600 s whose first failed attempt took longer than that (a clock jump)
    down = settings.model_copy(update={"redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")})
    broker = build_broker(down, enqueue_patience_s=600.0)
    actor = dramatiq.actor(lambda: None, actor_name="noop", broker=broker)
    clock = iter([0.0, 601.0])
    monkeypatch.setattr("actors.redis_broker.time", SimpleNamespace(monotonic=lambda: next(clock)))
    caplog.set_level(logging.WARNING, logger="actors.redis_broker")
    try:
        # When a message is sent, Then the error is raised after that one attempt, without a retry
        with pytest.raises(redis.ConnectionError):
            actor.send()
    finally:
        broker.close()
        dramatiq.set_broker(StubBroker())
    assert [record for record in caplog.records if "cannot enqueue" in record.getMessage()] == []


def test_importing_connections_does_not_import_redis() -> None:
    code = "import sys, pipeline.connections; sys.exit('redis' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_clients_announce_redis_py_version_without_reading_its_metadata(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given redis-py's metadata lookup of its own version made to fail
    import redis.utils

    def looked_up() -> str:
        raise AssertionError("redis-py looked its version up in its metadata")

    monkeypatch.setattr(redis.utils, "get_lib_version", looked_up)
    # When a client connects and sends a command
    client = create_client(RedisSettings.from_settings(redis_settings))
    try:
        assert client.ping()
        connection = client.connection_pool.get_connection()
        announced = connection.driver_info
        client.connection_pool.release(connection)
    finally:
        client.close()
    # Then its connection announces redis-py's name and version all the same (CLIENT SETINFO, Redis 7.2+)
    assert (announced.formatted_name, announced.lib_version) == ("redis-py", redis.__version__)
