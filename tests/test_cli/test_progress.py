"""The batch bar as a person sees it in an 80-column terminal."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

import cli.progress
from pipeline.models import JobState
from pipeline.store.base import empty_counts


class _EndedBatch:
    """A status store whose batch of 10,000 jobs has just ended, 37 of them failed."""

    def count_by_state(self, *, batch_id: str | None = None) -> dict[JobState, int]:
        counts = empty_counts()
        counts[JobState.SUCCEEDED], counts[JobState.FAILED] = 9_963, 37
        return counts


def test_batch_bar_fits_80_columns_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, width=80, force_terminal=True, color_system=None, legacy_windows=False)
    monkeypatch.setattr(cli.progress, "err_console", terminal)
    counts, _ = cli.progress.watch_batch(_EndedBatch(), "3f2a9c1b" * 4, 10_000, live=True)  # type: ignore[arg-type]
    assert counts[JobState.FAILED] == 37
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    line = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if "batch 3f2a9c1b" in line][-1]
    assert len(line) <= 80
    assert "…" not in line  # nothing cut
    assert "10000/10000" in line and "failed 37" in line and "ETA" in line, line
