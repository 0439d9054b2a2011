"""Test helpers that are not fixtures: private redis-server processes, free ports, waiting.

The process helpers live in :mod:`tests.procs` (shared with ``bench/``); this module adds the
tests' rule for a missing redis-server: skipped locally, a failure under ``CI=true``.
"""

from __future__ import annotations

import os

import pytest

from tests import procs
from tests.procs import free_port, port_open, wait_until

__all__ = ["RedisServer", "free_port", "port_open", "wait_until"]


class RedisServer(procs.RedisServer):
    """A redis-server this test session started itself, on a private port and folder."""

    def start(self) -> None:
        try:
            super().start()
        except procs.RedisUnavailable as exc:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"{exc}; CI must be able to start a private redis-server")
            pytest.skip(str(exc))
