"""Tile planning, blend weights, the bounded merge and the seamlessness of its result."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.upscale.tiles import (
    TilePlan,
    UpscaleTile,
    apply_bands,
    axis_starts,
    axis_weights,
    blend_tiles,
    border_gradient_ratio,
    plan_bands,
    plan_upscale_tiles,
    seam_blur_lines,
)
from tests.test_pipeline.test_upscale.conftest import Pixels

#: The issue's bound: the gradient across a tile border within 10% of the gradient inside tiles.
SEAMLESS = 0.10


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(2048, 512, 64), (1000, 512, 64), (513, 512, 0), (4096, 768, 96)]
)
def test_axis_starts_cover_the_side_with_at_least_the_overlap(length: int, tile: int, overlap: int) -> None:
    starts = axis_starts(length, tile, overlap)

    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False))


def test_axis_starts_one_tile_for_a_short_side() -> None:
    assert axis_starts(300, 512, 64) == [0]


def test_plan_of_2048_square_has_25_tiles_of_512() -> None:
    plan = plan_upscale_tiles(2048, 2048, 512, 64)

    assert len(plan) == 25
    assert {(t.width, t.height) for t in plan.tiles} == {(512, 512)}
    assert [t.index for t in plan.tiles] == list(range(25))
    assert TilePlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(("length", "tile", "overlap"), [(2048, 512, 64), (1000, 256, 100), (512, 512, 64)])
def test_axis_weights_sum_to_one_everywhere(length: int, tile: int, overlap: int) -> None:
    starts = axis_starts(length, tile, overlap)
    size = min(tile, length)
    total = np.zeros(length)
    for start, weight in zip(starts, axis_weights(starts, size, length), strict=True):
        total[start : start + size] += weight

    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_axis_weights_fade_smoothly_without_a_hard_edge() -> None:
    starts = axis_starts(1024, 512, 64)
    weights = axis_weights(starts, 512, 1024)
    first, last = weights[0], weights[-1]
    overlap = starts[0] + 512 - starts[1]

    assert first[0] == 1.0 and first[-1] < 0.01  # fades out to (almost) nothing at its edge
    assert last[0] < 0.01 and last[-1] == 1.0
    assert max(np.abs(np.diff(w)).max() for w in weights) < 2.0 / overlap  # no jump: at most smoothstep's slope


def test_blend_of_untouched_tiles_gives_back_the_image(upscaled: Pixels) -> None:
    plan = plan_upscale_tiles(1024, 1024, 512, 64)

    merged = blend_tiles(plan, lambda t: upscaled[t.y0 : t.y1, t.x0 : t.x1])

    np.testing.assert_array_equal(merged, upscaled)


def test_blend_loads_each_tile_once_row_by_row(upscaled: Pixels) -> None:
    plan = plan_upscale_tiles(1024, 1000, 256, 32)
    loaded: list[int] = []

    def load(tile: UpscaleTile) -> Pixels:
        loaded.append(tile.index)
        return upscaled[tile.y0 : tile.y1, tile.x0 : tile.x1]

    blend_tiles(plan, load)

    assert loaded == list(range(len(plan)))  # one at a time, in order: never all decoded at once


def test_blend_refuses_a_tile_of_the_wrong_size(upscaled: Pixels) -> None:
    plan = plan_upscale_tiles(1024, 1024, 512, 64)

    with pytest.raises(ValueError, match="tile 0"):
        blend_tiles(plan, lambda t: upscaled[:8, :8])


def _borders(plan: TilePlan) -> tuple[list[int], list[int]]:
    """Every tile edge inside the image, and every overlap centre."""
    xs = {t.x0 for t in plan.tiles if t.x0 > 0} | {t.x1 for t in plan.tiles if t.x1 < plan.width}
    ys = {t.y0 for t in plan.tiles if t.y0 > 0} | {t.y1 for t in plan.tiles if t.y1 < plan.height}
    x_lines, y_lines = plan.seam_lines()
    return sorted(xs | set(x_lines)), sorted(ys | set(y_lines))


@pytest.mark.parametrize(("tile", "overlap"), [(512, 64), (256, 64)])
def test_blended_merge_is_seamless_where_a_naive_merge_is_not(
    upscaled: Pixels, img2img: Callable[[Pixels], Pixels], tile: int, overlap: int
) -> None:
    plan = plan_upscale_tiles(1024, 1024, tile, overlap)
    rendered = {t.index: img2img(np.ascontiguousarray(upscaled[t.y0 : t.y1, t.x0 : t.x1])) for t in plan.tiles}
    merged = blend_tiles(plan, lambda t: rendered[t.index])
    x_lines, y_lines = plan.seam_lines()
    seam_blur_lines(merged, x_lines, y_lines, 4, 0.8)
    naive = np.empty_like(upscaled)
    cuts = list(range(0, 1024, tile))
    for y in cuts:
        for x in cuts:
            naive[y : y + tile, x : x + tile] = img2img(np.ascontiguousarray(upscaled[y : y + tile, x : x + tile]))

    ours = border_gradient_ratio(merged, *_borders(plan), margin_px=8)
    theirs = border_gradient_ratio(naive, cuts[1:], cuts[1:], margin_px=8)

    assert abs(ours - 1) <= SEAMLESS
    assert theirs > 1 + SEAMLESS  # the mock's tiles drift apart: a naive merge shows its seams


def test_seam_blur_lines_touches_only_the_bands(upscaled: Pixels) -> None:
    image = upscaled.copy()

    seam_blur_lines(image, [500], [], 4, 0.8)

    changed = np.flatnonzero((image != upscaled).any(axis=(0, 2)))
    assert changed.size and changed.min() >= 496 and changed.max() < 504


def test_border_ratio_sees_a_step() -> None:
    image = np.full((64, 64, 3), 100, dtype=np.uint8)
    image[:, ::2] = 110  # a texture with a gradient of 10 everywhere
    image[:, 32:] += 40  # and a step at x=32

    assert border_gradient_ratio(image, [32], [], margin_px=4) > 1.5


def test_blend_memory_stays_below_the_tiles_decoded_at_once() -> None:
    plan = plan_upscale_tiles(2048, 2048, 256, 32)
    tile_bytes = plan.tile_w * plan.tile_h * 3
    source = np.random.default_rng(0).integers(0, 256, (plan.tile_h, plan.tile_w, 3), dtype=np.uint8)
    output_bytes = 2048 * 2048 * 3
    tracemalloc.start()
    try:
        blend_tiles(plan, lambda t: source.copy())  # a fresh decoded tile per load, as from disk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak - output_bytes < len(plan) * tile_bytes * 0.8  # never every tile decoded at once


def test_bands_cover_every_overlap_centre_line_along_its_whole_length() -> None:
    plan = plan_upscale_tiles(1024, 768, 512, 64)
    bands = plan_bands(plan, 64)
    x_lines, y_lines = plan.seam_lines()

    for line in x_lines:
        segments = [b for b in bands if b.vertical and b.line == line]
        assert {(b.x0, b.x1) for b in segments} == {(line - 64, line + 64)}
        assert min(b.y0 for b in segments) == 0 and max(b.y1 for b in segments) == 768
    assert {b.line for b in bands if not b.vertical} == set(y_lines)
    assert [b.index for b in bands] == list(range(len(bands)))
    assert all(b.width % 8 == 0 and b.height % 8 == 0 for b in bands)


def test_apply_bands_of_unchanged_bands_leaves_the_image(upscaled: Pixels) -> None:
    plan = plan_upscale_tiles(1024, 1024, 512, 64)
    bands = plan_bands(plan, 64)
    image = upscaled.copy()

    apply_bands(image, plan, bands, 64, lambda b: upscaled[b.y0 : b.y1, b.x0 : b.x1])

    np.testing.assert_array_equal(image, upscaled)


def test_band_seam_fix_stays_seamless(upscaled: Pixels, img2img: Callable[[Pixels], Pixels]) -> None:
    plan = plan_upscale_tiles(1024, 1024, 512, 64)
    rendered = {t.index: img2img(np.ascontiguousarray(upscaled[t.y0 : t.y1, t.x0 : t.x1])) for t in plan.tiles}
    merged = blend_tiles(plan, lambda t: rendered[t.index])
    blended = merged.copy()
    bands = plan_bands(plan, 64)

    apply_bands(merged, plan, bands, 64, lambda b: img2img(np.ascontiguousarray(blended[b.y0 : b.y1, b.x0 : b.x1])))

    assert not np.array_equal(merged, blended)  # the bands were re-rendered in
    assert abs(border_gradient_ratio(merged, *_borders(plan), margin_px=8) - 1) <= SEAMLESS
