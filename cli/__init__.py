"""sdpipe's command line: parses, calls ``pipeline`` and ``actors``, renders. No logic of its own.

``app`` and ``main`` are loaded on first use: the console script (:mod:`cli.entry`) pauses the garbage
collector before ``cli.main`` imports Typer, so importing this package must not import it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import cli.main

        return getattr(cli.main, name)
    raise AttributeError(f"module 'cli' has no attribute {name!r}")
