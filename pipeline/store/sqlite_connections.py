"""One SQLite connection per thread to one file: what every embedded-mode table (jobs, kv, events) uses.

A ``sqlite3.Connection`` must not be shared by threads that use it at once, so each thread opens its
own, in autocommit mode (transactions are explicit), WAL journal (a reader never blocks the writer)
and NORMAL sync (safe in WAL: a power cut may lose the last transactions, never corrupt the file).
:meth:`ThreadConnections.close` closes all of them; a thread that uses the file afterwards opens a
new one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "ThreadConnections"]

#: How long a connection waits for another one's write lock before failing with "database is locked".
DEFAULT_BUSY_TIMEOUT_S = 10.0


class ThreadConnections:
    """Per-thread connections to the SQLite file ``path``; ``rows``: rows as :class:`sqlite3.Row`."""

    def __init__(self, path: Path, *, timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, rows: bool = False) -> None:
        self.path = Path(path)
        self._timeout_s = timeout_s
        self._rows = rows
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        #: Bumped by :meth:`close`, so threads holding an old connection open a new one.
        self._generation = 0

    def get(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use).

        Raises:
            sqlite3.OperationalError: the file cannot be opened.
        """
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "generation", -1) != self._generation:
            # check_same_thread=False only so close() can close every thread's connection.
            conn = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False)
            with self._lock:
                self._connections.append(conn)
                self._local.generation = self._generation
            self._local.conn = conn
            if self._rows:
                conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction on this thread's connection; ``write`` takes the write lock up front, so a
        check-then-update inside it is atomic across threads and processes.

        Raises:
            sqlite3.OperationalError: the file cannot be used (locked past the timeout, read-only, gone).
        """
        conn = self.get()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        for conn in connections:
            conn.close()
