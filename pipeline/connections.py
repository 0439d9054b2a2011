"""The one place that builds Redis clients: the broker's, the status store's and the SD pool's.

Every client gets the same connection options from :class:`RedisSettings` (read from
:class:`~pipeline.settings.Settings`): a connect timeout, a reply timeout, a health check of idle
pooled connections, and retries of a command with a short backoff after a connection error. Give a
library a client built here (Dramatiq's ``RedisBroker(client=...)``), never a URL: redis-py
silently drops the connection options given beside a pool, and Dramatiq builds one from a URL.

:func:`outage_retry` is the longer wait used around an operation that must outlast an outage (a
worker's enqueue), as a redis-py :class:`~redis.retry.Retry` with a capped exponential backoff.

The Redis client is imported on first use: importing this module costs nothing (``sdpipe --help``
never loads redis-py). The library version each connection announces (``CLIENT SETINFO``) is
redis-py's own ``__version__``: left to itself, redis-py reads it from the installed distribution's
metadata for every connection it makes (~1-4 ms each, a file search of every ``sys.path`` folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.settings import (
    DEFAULT_REDIS_CONNECT_TIMEOUT_S,
    DEFAULT_REDIS_HEALTH_CHECK_INTERVAL_S,
    DEFAULT_REDIS_RETRIES,
    DEFAULT_REDIS_SOCKET_TIMEOUT_S,
    Settings,
    mask_url,
)

if TYPE_CHECKING:
    import redis
    from redis.retry import Retry

__all__ = [
    "OUTAGE_BACKOFF_BASE_S",
    "OUTAGE_BACKOFF_CAP_S",
    "RETRY_BACKOFF_BASE_S",
    "RETRY_BACKOFF_CAP_S",
    "RedisSettings",
    "create_client",
    "outage_retry",
    "outage_retries",
    "server_id",
]

#: Backoff between retries of one command: random, doubling from this base (seconds)...
RETRY_BACKOFF_BASE_S = 0.05
#: ...up to this cap (seconds). Short: a blip is over quickly, and an outage must be reported quickly.
RETRY_BACKOFF_CAP_S = 0.5
#: Pauses of :func:`outage_retry`: the first is twice this (0.1 s), each next one doubles...
OUTAGE_BACKOFF_BASE_S = 0.05
#: ...up to this (seconds), so a server back from an outage is noticed within seconds.
OUTAGE_BACKOFF_CAP_S = 5.0


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how every client connects to it (the Redis part of ``Settings``).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` (also ``rediss://``, ``unix://``); it
            holds the password, so it is left out of ``repr``. Options in its query string
            (``?socket_timeout=3``) win over the fields below.
        connect_timeout_s: a server that does not accept a TCP connection within this is unreachable.
        socket_timeout_s: the longest wait for a reply, beyond a blocking command's own wait.
        health_check_interval_s: an idle pooled connection is PINGed before reuse after this; 0: never.
        retries: how many times a command is retried after a connection error or a timeout.
    """

    url: str = field(repr=False)
    connect_timeout_s: float = DEFAULT_REDIS_CONNECT_TIMEOUT_S
    socket_timeout_s: float = DEFAULT_REDIS_SOCKET_TIMEOUT_S
    health_check_interval_s: int = DEFAULT_REDIS_HEALTH_CHECK_INTERVAL_S
    retries: int = DEFAULT_REDIS_RETRIES

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSettings:
        """The Redis settings of ``settings``.

        Raises:
            ConfigError: Redis is not configured (embedded mode).
        """
        return cls(
            url=settings.redis_dsn(),
            connect_timeout_s=settings.redis_connect_timeout_s,
            socket_timeout_s=settings.redis_socket_timeout_s,
            health_check_interval_s=settings.redis_health_check_interval_s,
            retries=settings.redis_retries,
        )

    @property
    def url_masked(self) -> str:
        """``url`` with its password masked, for messages and logs."""
        return mask_url(self.url)


def create_client(redis_settings: RedisSettings, *, blocking_s: float = 0.0) -> redis.Redis:
    """A Redis client for ``redis_settings``; it connects on its first command.

    Args:
        redis_settings: where Redis is and the connection options.
        blocking_s: the longest wait of a blocking command this client sends (``BLPOP``); it is
            added to the reply timeout, so such a wait is never mistaken for a hung server.

    Raises:
        ConfigError: the URL is not a Redis URL (the message shows it with its password masked).
    """
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    try:
        return redis.Redis.from_url(
            redis_settings.url,
            **_driver_info(redis.__version__),
            socket_connect_timeout=redis_settings.connect_timeout_s,
            socket_timeout=redis_settings.socket_timeout_s + blocking_s,
            health_check_interval=redis_settings.health_check_interval_s,
            retry=Retry(
                ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_S, cap=RETRY_BACKOFF_CAP_S),
                redis_settings.retries,
            ),
        )
    except ValueError as exc:
        # redis-py's reasons name the scheme or the query option at fault, never the password.
        raise ConfigError(
            f"{redis_settings.url_masked!r} is not a Redis URL: {exc}",
            field="REDIS_URL",
            expected="redis://[:password@]host:port/db",
        ) from exc


def _driver_info(version: str) -> dict[str, Any]:
    """``driver_info`` for redis-py (7.1 and later): the name and ``version`` CLIENT SETINFO announces,
    given, so that redis-py does not look its own version up in its metadata for each connection."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # an older redis-py: it announces its version as it always did
        return {}
    return {"driver_info": DriverInfo(lib_version=version)}


def outage_retries(patience_s: float) -> int:
    """How many retries :func:`outage_retry` makes: as many as its pauses fit in ``patience_s``."""
    retries, waited_s = 0, 0.0
    while True:
        pause_s = min(OUTAGE_BACKOFF_CAP_S, OUTAGE_BACKOFF_BASE_S * 2 ** (retries + 1))
        if waited_s + pause_s > patience_s:
            return retries
        retries, waited_s = retries + 1, waited_s + pause_s


def outage_retry(patience_s: float) -> Retry:
    """A redis-py ``Retry`` that waits out an outage of about ``patience_s`` seconds.

    It retries on connection errors and timeouts, pausing 0.1 s, 0.2 s, ... up to
    :data:`OUTAGE_BACKOFF_CAP_S` between attempts, for as many attempts as those pauses fit in
    ``patience_s`` (each attempt also takes its own time, connect timeout included). Use it as
    ``outage_retry(600).call_with_retry(do, fail)``.
    """
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return Retry(ExponentialBackoff(cap=OUTAGE_BACKOFF_CAP_S, base=OUTAGE_BACKOFF_BASE_S), outage_retries(patience_s))


def server_id(client: redis.Redis) -> str:
    """Which Redis server and database ``client`` talks to (clients of the same one are equal)."""
    kwargs: Mapping[str, Any] = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"{where}/{kwargs.get('db', 0)}"
