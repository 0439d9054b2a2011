"""The event log interface, and :func:`open_event_log` (Redis Stream in Redis mode, SQLite embedded).

A log is append-only and bounded (``EVENTS_MAX_LEN``, oldest dropped first). Readers resume from an
event id (``Last-Event-ID``), filter by batch or job, and may block for new events. ``publish`` with
``once`` appends an event only the first time that key is used: how a job's end is announced exactly
once in the log even when a step is delivered twice.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from pipeline.events.model import Event, EventPage

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["DEFAULT_READ_LIMIT", "ONCE_TTL_S", "EventLog", "open_event_log"]

#: Most events one read returns.
DEFAULT_READ_LIMIT = 500
#: How long a ``once`` key is remembered (far longer than any redelivery).
ONCE_TTL_S = 7 * 24 * 3600


class EventLog(abc.ABC):
    """An append-only, bounded, resumable log of :class:`Event`."""

    @abc.abstractmethod
    def publish(self, event: Event, *, once: str | None = None) -> Event | None:
        """Append ``event``; returns it with its id, or None when ``once`` was used before (nothing appended).

        Raises:
            StoreUnavailable: the log cannot be reached.
        """

    @abc.abstractmethod
    def read(
        self,
        after: str | None,
        *,
        batch_id: str | None = None,
        job_id: str | None = None,
        limit: int = DEFAULT_READ_LIMIT,
        block_s: float = 0.0,
    ) -> EventPage:
        """Events after id ``after`` (None: from the oldest kept), oldest first, of one batch and/or job.

        ``block_s``: when none is there yet, wait up to that long for one. The page's ``cursor`` is
        where the next read starts (past events the filter skipped).
        """

    @abc.abstractmethod
    def latest_id(self) -> str:
        """The id of the newest event (a reader starting here sees only new ones)."""

    def inline_stream(self) -> tuple[str, str, int] | None:
        """Where a status store's script can append this log's events itself (server, stream key,
        max length: :class:`~pipeline.store.base.InlineEvent`); None: only :meth:`publish` can."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_event_log(settings: Settings) -> EventLog:
    """The log ``settings`` describe: a Redis Stream in Redis mode, else a table of the embedded store's file.

    Raises:
        ConfigError: the Redis URL is malformed.
        StoreUnavailable: the SQLite file cannot be opened.
    """
    if settings.redis_mode:
        from pipeline.connections import RedisSettings
        from pipeline.events.redis_log import RedisEventLog

        return RedisEventLog.open(RedisSettings.from_settings(settings), max_len=settings.events_max_len)
    from pipeline.events.sqlite_log import SqliteEventLog
    from pipeline.store import EMBEDDED_STORE_PATH

    path = settings.output_dir / EMBEDDED_STORE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteEventLog(path, max_len=settings.events_max_len)
