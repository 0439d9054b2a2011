"""A small shared key-value store next to the status store: idempotency keys, webhook deliveries, pause.

Values are text (JSON), optionally expiring; sets ("indexes") list members, e.g. the deliveries of
a job. Redis mode: keys ``sdpipe:kv:<key>`` and ``sdpipe:kv-set:<index>``; embedded mode: two
tables of the status store's SQLite file (``kv``, ``kv_members``), expiry checked on read.
``put_if_absent`` is atomic across processes in both: what makes an idempotency key claimable once.
"""

from __future__ import annotations

import abc
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pipeline.errors import StoreUnavailable
from pipeline.store.sqlite_connections import ThreadConnections

if TYPE_CHECKING:
    import redis

    from pipeline.settings import Settings

__all__ = ["KeyValue", "RedisKeyValue", "SqliteKeyValue", "open_keyvalue"]


class KeyValue(abc.ABC):
    """Text values by key (optionally expiring) and sets of members, shared by every process."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, value: str, *, ttl_s: float | None = None) -> str | None:
        """Store ``value`` unless ``key`` holds one; returns the value already there (None: stored now)."""

    @abc.abstractmethod
    def put(self, key: str, value: str, *, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any."""

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` (None where absent or expired), in one round trip."""

    def get(self, key: str) -> str | None:
        return self.get_many([key])[0]

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; False if it held nothing."""

    @abc.abstractmethod
    def add_member(self, index: str, member: str) -> None:
        """Add ``member`` to the set ``index``."""

    @abc.abstractmethod
    def remove_member(self, index: str, member: str) -> None:
        """Remove ``member`` from the set ``index``."""

    @abc.abstractmethod
    def members(self, index: str) -> list[str]:
        """The members of the set ``index``, sorted."""

    def get_with_member(self, key: str, index: str, member: str) -> tuple[str | None, bool]:
        """The value of ``key`` (as :meth:`get`) and whether ``member`` is in the set ``index``, read
        together: one round trip where the store has them (a check made before every SD call)."""
        return self.get(key), member in self.members(index)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class RedisKeyValue(KeyValue):
    """The key-value store in Redis (Redis mode)."""

    def __init__(self, client: redis.Redis, *, where: str = "Redis") -> None:
        self._client = client
        self._where = where

    def put_if_absent(self, key: str, value: str, *, ttl_s: float | None = None) -> str | None:
        pipe = self._client.pipeline(transaction=True)
        pipe.set(_k(key), value, nx=True, px=_ms(ttl_s))
        pipe.get(_k(key))
        with self._guard():
            stored, current = pipe.execute()
        return None if stored else _text(current)

    def put(self, key: str, value: str, *, ttl_s: float | None = None) -> None:
        with self._guard():
            self._client.set(_k(key), value, px=_ms(ttl_s))

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        if not keys:
            return []
        with self._guard():
            values = cast(list[Any], self._client.mget([_k(key) for key in keys]))
        return [_text(value) for value in values]

    def delete(self, key: str) -> bool:
        with self._guard():
            return bool(self._client.delete(_k(key)))

    def add_member(self, index: str, member: str) -> None:
        with self._guard():
            self._client.sadd(_s(index), member)

    def remove_member(self, index: str, member: str) -> None:
        with self._guard():
            self._client.srem(_s(index), member)

    def members(self, index: str) -> list[str]:
        with self._guard():
            found = cast(set[Any], self._client.smembers(_s(index)))
        return sorted(str(_text(member)) for member in found)

    def get_with_member(self, key: str, index: str, member: str) -> tuple[str | None, bool]:
        pipe = self._client.pipeline(transaction=False)
        pipe.get(_k(key))
        pipe.sismember(_s(index), member)
        with self._guard():
            value, found = pipe.execute()
        return _text(value), bool(found)

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis at {self._where}: {exc}", field="REDIS_URL") from exc


_KV_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS kv_members (idx TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (idx, member))
    WITHOUT ROWID;
"""


class SqliteKeyValue(KeyValue):
    """The key-value store in the embedded store's SQLite file, one connection per thread."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._connections = ThreadConnections(self._path)
        try:
            self._connections.get().executescript(_KV_SCHEMA)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot use {self._path}: {exc}", field="OUTPUT_DIR") from exc

    def put_if_absent(self, key: str, value: str, *, ttl_s: float | None = None) -> str | None:
        now = time.time()
        with self._tx(write=True) as conn:
            row = conn.execute("SELECT value, expires_at FROM kv WHERE key = ?", (key,)).fetchone()
            if row is not None and (row[1] is None or row[1] > now):
                return str(row[0])
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, _expiry(now, ttl_s)))
        return None

    def put(self, key: str, value: str, *, ttl_s: float | None = None) -> None:
        with self._tx(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, _expiry(time.time(), ttl_s)))

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        now = time.time()
        with self._tx() as conn:
            rows = [conn.execute("SELECT value, expires_at FROM kv WHERE key = ?", (key,)).fetchone() for key in keys]
        return [str(row[0]) if row is not None and (row[1] is None or row[1] > now) else None for row in rows]

    def delete(self, key: str) -> bool:
        with self._tx(write=True) as conn:
            return conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0

    def add_member(self, index: str, member: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute("INSERT OR IGNORE INTO kv_members VALUES (?, ?)", (index, member))

    def remove_member(self, index: str, member: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute("DELETE FROM kv_members WHERE idx = ? AND member = ?", (index, member))

    def members(self, index: str) -> list[str]:
        with self._tx() as conn:
            rows = conn.execute("SELECT member FROM kv_members WHERE idx = ? ORDER BY member", (index,)).fetchall()
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        self._connections.close()

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            with self._connections.transaction(write=write) as conn:
                yield conn
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot use {self._path}: {exc}", field="OUTPUT_DIR") from exc


def open_keyvalue(settings: Settings) -> KeyValue:
    """Redis mode: the shared Redis; embedded: the status store's SQLite file under OUTPUT_DIR.

    Raises:
        ConfigError: the Redis URL is malformed.
    """
    if settings.redis_mode:
        from pipeline.connections import RedisSettings, create_client

        redis_settings = RedisSettings.from_settings(settings)
        return RedisKeyValue(create_client(redis_settings), where=redis_settings.url_masked)
    from pipeline.store import EMBEDDED_STORE_PATH

    path = settings.output_dir / EMBEDDED_STORE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteKeyValue(path)


def _k(key: str) -> str:
    return f"sdpipe:kv:{key}"


def _s(index: str) -> str:
    return f"sdpipe:kv-set:{index}"


def _ms(ttl_s: float | None) -> int | None:
    return None if ttl_s is None else max(int(ttl_s * 1000), 1)


def _expiry(now: float, ttl_s: float | None) -> float | None:
    return None if ttl_s is None else now + ttl_s


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
