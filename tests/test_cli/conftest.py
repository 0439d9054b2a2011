"""CLI fixtures: a runner that invokes ``sdpipe`` in-process with a clean environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app

Invoke = Callable[..., Any]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def sdpipe(monkeypatch: pytest.MonkeyPatch, out_dir: Path) -> Invoke:
    """Run ``sdpipe ARGS`` in-process, embedded, writing to ``out_dir``, with fast retries."""
    monkeypatch.setenv("OUTPUT_DIR", str(out_dir))
    monkeypatch.setenv("RETRY_MIN_BACKOFF_MS", "10")
    monkeypatch.setenv("RETRY_MAX_BACKOFF_MS", "50")
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    return invoke
