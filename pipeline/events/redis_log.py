"""The event log as a Redis Stream (Redis mode): ``sdpipe:events``, bounded with ``XADD MAXLEN ~``.

Entries hold one field, ``e``: the event's JSON without its id (the stream id is the event id).
``once`` keys are ``sdpipe:events:once:<key>`` (``SET NX``, kept :data:`~pipeline.events.log.ONCE_TTL_S`),
set in the same script as the ``XADD``: a key is used exactly when its event is appended. Readers
filter by batch or job on their side (a stream has no secondary index): a reader of one batch reads
the whole stream once, then only what is new.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis

from pipeline.connections import RedisSettings, create_client, server_id
from pipeline.errors import StoreUnavailable
from pipeline.events.log import DEFAULT_READ_LIMIT, ONCE_TTL_S, EventLog
from pipeline.events.model import Event, EventPage

__all__ = ["EVENTS_KEY", "RedisEventLog"]

#: The stream's key.
EVENTS_KEY = "sdpipe:events"
#: Longest single blocking XREAD, in seconds (the client's reply timeout is extended by it).
_LONGEST_BLOCK_S = 5.0

# KEYS: stream; ARGV: max length, event JSON, once key ('' none), once ttl s
_PUBLISH = """
if ARGV[3] ~= '' then
  if not redis.call('SET', ARGV[3], '1', 'NX', 'EX', ARGV[4]) then return false end
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
"""


class RedisEventLog(EventLog):
    """Events in a Redis Stream shared by every process."""

    def __init__(self, client: redis.Redis, *, max_len: int, key: str = EVENTS_KEY, where: str = "Redis") -> None:
        self._client = client
        self._key = key
        self._max_len = max_len
        self._where = where
        self._publish = client.register_script(_PUBLISH)

    @classmethod
    def open(cls, redis_settings: RedisSettings, *, max_len: int) -> RedisEventLog:
        """Connect lazily with a client whose reply timeout outlasts a blocking read.

        Raises:
            ConfigError: the URL is not a Redis URL.
        """
        client = create_client(redis_settings, blocking_s=_LONGEST_BLOCK_S)
        return cls(client, max_len=max_len, where=redis_settings.url_masked)

    def publish(self, event: Event, *, once: str | None = None) -> Event | None:
        once_key = f"{self._key}:once:{once}" if once else ""
        with self._guard():
            reply = self._publish(keys=[self._key], args=[self._max_len, event.body(), once_key, ONCE_TTL_S])
        if reply is None:
            return None
        return event.model_copy(update={"id": _text(reply)})

    def read(
        self,
        after: str | None,
        *,
        batch_id: str | None = None,
        job_id: str | None = None,
        limit: int = DEFAULT_READ_LIMIT,
        block_s: float = 0.0,
    ) -> EventPage:
        cursor = after or "0-0"
        with self._guard():
            entries = cast(list[Any], self._client.xrange(self._key, f"({cursor}", "+", count=limit))
            if not entries and block_s > 0:
                ms = max(int(min(block_s, _LONGEST_BLOCK_S) * 1000), 1)
                reply = cast(list[Any], self._client.xread({self._key: cursor}, count=limit, block=ms) or [])
                entries = reply[0][1] if reply else []
        events = []
        for raw_id, fields in entries:
            cursor = _text(raw_id)
            body = fields.get(b"e") or fields.get("e")
            if body is None:
                continue
            data = json.loads(body)
            if (batch_id is None or data.get("batch_id") == batch_id) and (
                job_id is None or data.get("job_id") == job_id
            ):
                events.append(Event.model_validate({**data, "id": cursor}))
        return EventPage(events=events, cursor=cursor)

    def latest_id(self) -> str:
        with self._guard():
            newest = cast(list[Any], self._client.xrevrange(self._key, "+", "-", count=1))
        return _text(newest[0][0]) if newest else "0-0"

    def inline_stream(self) -> tuple[str, str, int] | None:
        return server_id(self._client), self._key, self._max_len

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis at {self._where} for events: {exc}", field="REDIS_URL") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
