"""The event log in the embedded store's SQLite file (embedded mode): table ``events``.

``seq`` (an autoincrement integer) is the event id; ``once_key`` is unique, so an ``INSERT OR IGNORE``
appends an event with a ``once`` key at most once. Every :data:`_TRIM_EVERY` appends, rows beyond
``max_len`` are deleted, oldest first. A blocked reader wakes as soon as this process appends (an
embedded ``generate`` ends when its last job does), and otherwise polls every :data:`_POLL_S` (another
process, e.g. a CLI running ``sdpipe watch``, may be the writer).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import StoreUnavailable
from pipeline.events.log import DEFAULT_READ_LIMIT, EventLog
from pipeline.events.model import Event, EventPage
from pipeline.store.sqlite_connections import ThreadConnections

__all__ = ["SqliteEventLog"]

#: Appends between two trims of the table to ``max_len`` rows.
_TRIM_EVERY = 500
#: How often a blocked reader looks for new rows, in seconds.
_POLL_S = 0.1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT,
    batch_id TEXT,
    body TEXT NOT NULL,
    once_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS events_batch ON events (batch_id, seq);
"""


class SqliteEventLog(EventLog):
    """Events in the SQLite file at ``path`` (the embedded status store's), one connection per thread."""

    def __init__(self, path: Path, *, max_len: int) -> None:
        self._path = Path(path)
        self._max_len = max_len
        self._connections = ThreadConnections(self._path)
        self._lock = threading.Lock()
        self._appends = 0
        #: Notified after each append of this process; ``_appended_count`` tells a reader one came.
        self._appended = threading.Condition(self._lock)
        with self._guard():
            self._connections.get().executescript(_SCHEMA)

    def publish(self, event: Event, *, once: str | None = None) -> Event | None:
        with self._guard():
            conn = self._connections.get()
            cursor = conn.execute(
                "INSERT OR IGNORE INTO events (job_id, batch_id, body, once_key) VALUES (?, ?, ?, ?)",
                (event.job_id, event.batch_id, event.body(), once),
            )
            if cursor.rowcount == 0:
                return None
            seq = cursor.lastrowid
            with self._appended:
                self._appends += 1
                trim = self._appends % _TRIM_EVERY == 0
                self._appended.notify_all()
            if trim:
                conn.execute("DELETE FROM events WHERE seq <= ?", (int(seq or 0) - self._max_len,))
        return event.model_copy(update={"id": str(seq)})

    def read(
        self,
        after: str | None,
        *,
        batch_id: str | None = None,
        job_id: str | None = None,
        limit: int = DEFAULT_READ_LIMIT,
        block_s: float = 0.0,
    ) -> EventPage:
        start = _seq(after)
        deadline = time.monotonic() + block_s
        conditions, params = ["seq > ?"], [start]
        if batch_id is not None:
            conditions.append("batch_id = ?")
            params.append(batch_id)  # type: ignore[arg-type]
        if job_id is not None:
            conditions.append("job_id = ?")
            params.append(job_id)  # type: ignore[arg-type]
        sql = f"SELECT seq, body FROM events WHERE {' AND '.join(conditions)} ORDER BY seq LIMIT ?"
        while True:
            with self._lock:
                seen = self._appends
            with self._guard():
                rows = self._connections.get().execute(sql, (*params, limit)).fetchall()
            left_s = deadline - time.monotonic()
            if rows or left_s <= 0:
                break
            with self._appended:
                if self._appends == seen:  # nothing appended here since the query: wait for it, or poll
                    self._appended.wait(min(_POLL_S, left_s))
        events = [Event.model_validate({**json.loads(body), "id": str(seq)}) for seq, body in rows]
        cursor = events[-1].id if events else str(start)
        return EventPage(events=events, cursor=cursor)

    def latest_id(self) -> str:
        with self._guard():
            row = self._connections.get().execute("SELECT MAX(seq) FROM events").fetchone()
        return str(row[0] or 0)

    def close(self) -> None:
        self._connections.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot use the event log in {self._path}: {exc}", field="OUTPUT_DIR") from exc


def _seq(event_id: str | None) -> int:
    """A SQLite event id; anything else (a Redis id, garbage) reads as "from the start"."""
    try:
        return max(int(event_id or 0), 0)
    except ValueError:
        return 0
