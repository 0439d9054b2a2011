"""sdpipe's command line: parses, calls ``pipeline`` and ``actors``, renders. No logic of its own."""

from __future__ import annotations

from cli.main import app, main

__all__ = ["app", "main"]
