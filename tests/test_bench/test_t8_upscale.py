"""Bench target 8's statistics (no servers: the pure helpers)."""

from __future__ import annotations

from typing import Any

from bench.t8_upscale import _median_run


def _run(wall_s: float, first_pass_s: float) -> dict[str, Any]:
    return {"wall_s": wall_s, "sidecar": {"timings": {"split": {"duration_s": first_pass_s}}}}


def test_t8_median_run_is_the_median_of_the_judged_figure_not_of_the_wall() -> None:
    # Given three runs whose walls and first passes do not rank alike (judged: wall minus first pass)
    runs = [_run(2.50, 0.30), _run(2.60, 0.20), _run(2.70, 0.60)]  # judged 2.20, 2.40, 2.10
    # When the median run is taken
    median = _median_run(runs)
    # Then it is the one whose judged figure is the median (2.20), not the median wall's (2.60 -> 2.40)
    assert median is runs[0]
