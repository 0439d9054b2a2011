"""A private redis-server for a benchmark run (never a server the benchmark did not start)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.procs import RedisServer, RedisUnavailable, free_port


@contextmanager
def private_redis() -> Iterator[str]:
    """Start redis-server on a free port in a temp folder; yield its URL; stop it afterwards."""
    with tempfile.TemporaryDirectory(prefix="sdpipe-bench-redis-") as folder:
        server = RedisServer(port=free_port(), directory=Path(folder))
        try:
            server.start()
        except RedisUnavailable as exc:
            raise SystemExit(f"{exc} (apt-get install redis-server)") from None
        try:
            yield server.url
        finally:
            server.stop()
