"""Unit tests of pipeline.images.seams: grid geometry, tiled seam blur against the whole-image oracle, merge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.errors import hint_for
from pipeline.errors import InputError
from pipeline.images import seams
from pipeline.images.seams import (
    TileBox,
    cut_positions,
    halo_px,
    merge,
    plan_tiles,
    seam_blur_reference,
    seam_blur_tile,
    split,
    validate_geometry,
)
from pipeline.models import StepParams

CHANNELS = {"L": (), "RGB": (3,), "RGBA": (4,)}


def noise(height: int, width: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, *CHANNELS[mode]), dtype=np.uint8)


def run_tiled(image: np.ndarray, params: StepParams) -> np.ndarray:
    height, width = image.shape[:2]
    blurred = [(box, seam_blur_tile(tile, box, width, height, params)) for box, tile in split(image, params)]
    return merge(blurred, width, height)


def far_from_cuts(height: int, width: int, params: StepParams) -> np.ndarray:
    """Pixels whose centre is band_px or more from every inner cut, computed from the definition."""
    band = params.band_px
    x_ok = np.ones(width, dtype=bool)
    for c in cut_positions(width, params.cols)[1:-1]:
        x_ok &= np.abs(np.arange(width) + 0.5 - c) >= band
    y_ok = np.ones(height, dtype=bool)
    for c in cut_positions(height, params.rows)[1:-1]:
        y_ok &= np.abs(np.arange(height) + 0.5 - c) >= band
    return y_ok[:, None] & x_ok[None, :]


@st.composite
def cases(draw: st.DrawFn, max_extra_px: int = 24) -> tuple[np.ndarray, StepParams]:
    """A random image and valid params: grids 1x2..4x4, odd sizes, band and sigma in range."""
    rows, cols = draw(st.sampled_from([(r, c) for r in range(1, 5) for c in range(1, 5) if r * c >= 2]))
    band = draw(st.integers(1, 4))
    sigma = draw(st.floats(0.2, 6.0, allow_nan=False))
    width = draw(st.integers(cols * 2 * band, cols * 2 * band + max_extra_px))
    height = draw(st.integers(rows * 2 * band, rows * 2 * band + max_extra_px))
    mode = draw(st.sampled_from(sorted(CHANNELS)))
    image = noise(height, width, mode, seed=draw(st.integers(0, 2**16)))
    return image, StepParams(rows=rows, cols=cols, band_px=band, sigma=sigma)


@st.composite
def alpha_cases(draw: st.DrawFn) -> tuple[np.ndarray, StepParams]:
    """An RGBA (or LA) case whose alpha varies the ways real cut-outs do: noise, hard 0/255 regions
    (fully transparent beside opaque), and soft ramps."""
    image, params = draw(cases())
    height, width = image.shape[:2]
    channels = draw(st.sampled_from([2, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    colour = rng.integers(0, 256, (height, width, channels - 1), dtype=np.uint8)
    kind = draw(st.sampled_from(["noise", "hard", "ramp", "sparse"]))
    if kind == "noise":
        alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
    elif kind == "hard":
        alpha = np.where(rng.random((height, width)) < 0.5, 0, 255).astype(np.uint8)
    elif kind == "ramp":
        alpha = np.broadcast_to(np.linspace(0, 255, width).astype(np.uint8), (height, width)).copy()
    else:
        alpha = np.where(rng.random((height, width)) < 0.9, 0, rng.integers(1, 256, (height, width))).astype(np.uint8)
    return np.dstack([colour, alpha]), params


def test_cut_positions_floor_for_odd_sizes() -> None:
    assert cut_positions(7, 2) == [0, 3, 7]
    assert cut_positions(1023, 4) == [0, 255, 511, 767, 1023]
    assert cut_positions(5, 3) == [0, 1, 3, 5]
    assert cut_positions(512, 1) == [0, 512]


@given(length=st.integers(1, 5000), parts=st.integers(1, 16))
def test_cut_positions_span_the_length_in_near_equal_parts(length: int, parts: int) -> None:
    cuts = cut_positions(length, parts)
    assert cuts[0] == 0 and cuts[-1] == length and len(cuts) == parts + 1
    assert {b - a for a, b in zip(cuts, cuts[1:], strict=False)} <= {length // parts, -(-length // parts)}


def test_halo_px_is_the_gaussian_radius() -> None:
    assert halo_px(16, 4.0) == 12
    assert halo_px(1, 0.1) == 1
    assert halo_px(40, 2.5) == 8


@settings(deadline=None, max_examples=40)
@given(case=cases())
def test_seam_blur_tiles_match_reference(case: tuple[np.ndarray, StepParams]) -> None:
    image, params = case
    reference = seam_blur_reference(image, params)
    tiled = run_tiled(image, params)
    assert tiled.shape == image.shape and tiled.dtype == np.uint8
    assert np.array_equal(tiled, reference)


@settings(deadline=None, max_examples=15)
@given(
    width=st.integers(100, 401),
    height=st.integers(100, 401),
    grid=st.sampled_from([(1, 2), (2, 1), (2, 2), (3, 3), (2, 3)]),
    mode=st.sampled_from(sorted(CHANNELS)),
    seed=st.integers(0, 2**16),
)
def test_seam_blur_tiles_match_reference_at_default_band_and_sigma(
    width: int, height: int, grid: tuple[int, int], mode: str, seed: int
) -> None:
    # The defaults users run (band 16, sigma 4) on realistic, often odd, sizes
    params = StepParams(rows=grid[0], cols=grid[1], band_px=16, sigma=4.0)
    image = noise(height, width, mode, seed=seed)
    tiled = run_tiled(image, params)
    assert np.array_equal(tiled, seam_blur_reference(image, params))
    far = far_from_cuts(height, width, params)
    assert np.array_equal(tiled[far], image[far])
    assert not np.array_equal(tiled[~far], image[~far])


@settings(deadline=None, max_examples=40)
@given(case=alpha_cases())
def test_seam_blur_tiles_match_reference_with_varying_alpha(case: tuple[np.ndarray, StepParams]) -> None:
    image, params = case
    assert np.array_equal(run_tiled(image, params), seam_blur_reference(image, params))


@settings(deadline=None, max_examples=40)
@given(case=alpha_cases(), seed=st.integers(0, 2**16))
def test_seam_blur_takes_no_colour_from_transparent_pixels(case: tuple[np.ndarray, StepParams], seed: int) -> None:
    # Given the same image twice, differing only in the colour of its fully transparent pixels
    image, params = case
    repainted = image.copy()
    clear = image[..., -1] == 0
    repainted[..., :-1][clear] = np.random.default_rng(seed).integers(0, 256, (int(clear.sum()), image.shape[2] - 1))
    first, second = run_tiled(image, params), run_tiled(repainted, params)
    # Then alpha is the same, and so is every colour that can be seen (alpha above 0)
    assert np.array_equal(first[..., -1], second[..., -1])
    visible = first[..., -1] > 0
    assert np.array_equal(first[visible], second[visible])


def test_seam_blur_leaves_no_fringe_between_transparent_white_and_opaque_red() -> None:
    # Given transparent white beside opaque red, cut on the boundary
    image = np.zeros((64, 64, 4), dtype=np.uint8)
    image[:, :32] = (255, 255, 255, 0)
    image[:, 32:] = (255, 0, 0, 255)
    params = StepParams(rows=1, cols=2, band_px=8, sigma=3.0)
    out = run_tiled(image, params)
    # Then the seam fades the alpha, and every pixel that shows stays pure red (before: 255,141,141)
    seam = out[:, 24:40]
    assert seam[..., 3].min() == 0 and seam[..., 3].max() == 255 and 0 < seam[0, 4:12, 3].min()
    assert np.array_equal(seam[seam[..., 3] > 0][:, :3], np.tile([255, 0, 0], (int((seam[..., 3] > 0).sum()), 1)))


def test_seam_blur_reference_matches_premultiplied_formula_with_alpha() -> None:
    # Given an RGBA image and a float64 evaluation of the premultiplied blend
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (13, 17, 4), dtype=np.uint8)
    image[..., 3][rng.random((13, 17)) < 0.3] = 0
    params = StepParams(rows=2, cols=3, band_px=2, sigma=1.3)
    radius = math.ceil(3 * params.sigma)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * params.sigma**2))
    kernel /= kernel.sum()
    values = image.astype(np.float64)
    premultiplied = np.dstack([values[..., :3] * values[..., 3:] / 255, values[..., 3]])
    padded = np.pad(premultiplied, [(radius, radius), (radius, radius), (0, 0)], mode="reflect")
    expected = values.copy()
    for y in range(13):
        for x in range(17):
            ds = [abs(x + 0.5 - c) for c in cut_positions(17, 3)[1:-1]]
            ds += [abs(y + 0.5 - c) for c in cut_positions(13, 2)[1:-1]]
            t = min(1.0, min(ds) / params.band_px)
            w = 1 - (3 * t * t - 2 * t**3)
            if w == 0:
                continue
            window = padded[y : y + 2 * radius + 1, x : x + 2 * radius + 1]
            mixed = (1 - w) * premultiplied[y, x] + w * np.einsum("i,j,ijc->c", kernel, kernel, window)
            expected[y, x, 3] = mixed[3]
            if mixed[3] > 0:
                expected[y, x, :3] = mixed[:3] * 255 / mixed[3]
    # Then the oracle agrees within 1 per channel where the pixel shows (and exactly in alpha's rounding)
    got = seam_blur_reference(image, params).astype(np.int16)
    shown = np.rint(expected[..., 3]) > 0
    assert np.abs(got[..., 3] - np.rint(expected[..., 3])).max() <= 1
    assert np.abs(got[shown] - np.rint(expected[shown])).max() <= 1


def test_seam_blur_tiles_match_reference_when_kernel_exceeds_image() -> None:
    # Given a radius (15 px) larger than the image, so borders reflect several times
    image = noise(6, 7, "RGB", seed=3)
    params = StepParams(rows=2, cols=3, band_px=1, sigma=5.0)
    # Then the tiled path still equals the oracle
    assert np.array_equal(run_tiled(image, params), seam_blur_reference(image, params))


@settings(deadline=None, max_examples=40)
@given(case=cases())
def test_seam_blur_keeps_pixels_far_from_cuts_byte_identical(case: tuple[np.ndarray, StepParams]) -> None:
    image, params = case
    far = far_from_cuts(*image.shape[:2], params)
    assert np.array_equal(seam_blur_reference(image, params)[far], image[far])
    assert np.array_equal(run_tiled(image, params)[far], image[far])


@settings(deadline=None, max_examples=40)
@given(case=cases())
def test_band_rects_hold_every_pixel_the_tile_blur_changes(case: tuple[np.ndarray, StepParams]) -> None:
    image, params = case
    height, width = image.shape[:2]
    for box, tile in split(image, params):
        blurred = seam_blur_tile(tile, box, width, height, params)
        # Put back only the bands into the tile as split: that is the blurred tile, pixel for pixel
        rebuilt = tile.copy()
        rects = seams.band_rects(box, width, height, params)
        covered = np.zeros(tile.shape[:2], dtype=np.int8)
        for y0, y1, x0, x1 in rects:
            rebuilt[y0:y1, x0:x1] = blurred[y0:y1, x0:x1]
            covered[y0:y1, x0:x1] += 1
        assert np.array_equal(rebuilt, blurred)
        assert covered.max(initial=0) <= 1  # disjoint
        assert covered[box.interior].sum() == covered.sum()  # inside the interior only


@settings(deadline=None, max_examples=40)
@given(case=cases())
def test_merge_of_split_restores_the_image(case: tuple[np.ndarray, StepParams]) -> None:
    image, params = case
    merged = merge(split(image, params), image.shape[1], image.shape[0])
    assert merged.shape == image.shape and np.array_equal(merged, image)


def test_seam_blur_reference_matches_direct_formula() -> None:
    # Given a small image and a straightforward float64 evaluation of the definition
    image = noise(13, 17, "RGB", seed=5)
    params = StepParams(rows=2, cols=3, band_px=2, sigma=1.3)
    radius = math.ceil(3 * params.sigma)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * params.sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image.astype(np.float64), [(radius, radius), (radius, radius), (0, 0)], mode="reflect")
    expected = image.astype(np.float64)
    for y in range(13):
        for x in range(17):
            ds = [abs(x + 0.5 - c) for c in cut_positions(17, 3)[1:-1]]
            ds += [abs(y + 0.5 - c) for c in cut_positions(13, 2)[1:-1]]
            t = min(1.0, min(ds) / params.band_px)
            w = 1 - (3 * t * t - 2 * t**3)
            window = padded[y : y + 2 * radius + 1, x : x + 2 * radius + 1]
            blurred = np.einsum("i,j,ijc->c", kernel, kernel, window)
            expected[y, x] = (1 - w) * expected[y, x] + w * blurred
    # Then the oracle agrees within 1 per channel
    got = seam_blur_reference(image, params).astype(np.int16)
    assert np.abs(got - np.rint(expected)).max() <= 1


def test_seam_blur_reference_keeps_a_flat_image_flat() -> None:
    image = np.full((40, 50, 4), 77, dtype=np.uint8)
    assert np.array_equal(seam_blur_reference(image, StepParams(band_px=8, sigma=3.0)), image)


@pytest.mark.parametrize("mode", sorted(CHANNELS))
def test_seam_blur_smooths_the_seams_of_a_noisy_image(mode: str) -> None:
    # Given a noisy image and the default 2x2 grid
    image = noise(128, 96, mode, seed=11)
    params = StepParams(rows=2, cols=2, band_px=8, sigma=2.0)
    # When blurred through tiles
    out = run_tiled(image, params)
    # Then the shape is kept, the columns next to the cut changed and lost most of their noise
    assert out.shape == image.shape
    seam = (slice(None), slice(47, 49))
    assert np.mean(out[seam] != image[seam]) > 0.9
    assert out[seam].astype(float).std() < 0.5 * image[seam].astype(float).std()


def test_seam_blur_tile_does_not_modify_its_input() -> None:
    image = noise(40, 40, "RGB")
    params = StepParams(band_px=4, sigma=1.5)
    box, tile = split(image, params)[0]
    before = tile.copy()
    out = seam_blur_tile(tile, box, 40, 40, params)
    assert np.array_equal(tile, before) and not np.array_equal(out, before)


def test_seam_blur_tile_computes_only_the_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a large tile and a narrow band, counting the pixels the Gaussian runs over
    computed: list[int] = []
    original = seams._blur_window

    def counting(window: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        computed.append(window.shape[0] * window.shape[1])
        return original(window, kernel)

    monkeypatch.setattr(seams, "_blur_window", counting)
    params = StepParams(rows=2, cols=2, band_px=4, sigma=1.0)
    image = noise(1000, 1000, "L")
    box, tile = split(image, params)[0]
    # When one 500x500 tile is blurred
    seam_blur_tile(tile, box, 1000, 1000, params)
    # Then the work is bounded by its two edges x (band + 2 radii), far below its area
    reach = params.band_px + 2 * halo_px(params.band_px, params.sigma)
    assert sum(computed) <= 2 * (500 + 2 * reach) * reach
    assert sum(computed) < 0.05 * 500 * 500


def test_plan_tiles_clips_halos_to_the_image() -> None:
    boxes = plan_tiles(101, 60, StepParams(rows=2, cols=3, band_px=4, sigma=2.0))
    assert [(b.row, b.col) for b in boxes] == [(r, c) for r in range(2) for c in range(3)]
    middle = boxes[1]
    assert (middle.x0, middle.x1, middle.hx0, middle.hx1) == (33, 67, 27, 73)
    assert (middle.y0, middle.y1, middle.hy0, middle.hy1) == (0, 30, 0, 36)
    assert boxes[-1].hx1 == 101 and boxes[-1].hy1 == 60


def test_tile_box_round_trips_through_json() -> None:
    box = plan_tiles(64, 64, StepParams(band_px=4, sigma=2.0))[3]
    assert TileBox.from_dict(json.loads(json.dumps(box.to_dict()))) == box


def test_tile_box_from_dict_rejects_bad_fields() -> None:
    data = plan_tiles(64, 64, StepParams(band_px=4, sigma=2.0))[0].to_dict()
    with pytest.raises(ValueError, match="x1"):
        TileBox.from_dict({**data, "x1": "32"})
    with pytest.raises(ValueError, match="inconsistent"):
        TileBox.from_dict({**data, "hx0": data["x0"] + 1})


def test_merge_rejects_a_missing_tile() -> None:
    tiles = split(noise(32, 32), StepParams(band_px=2, sigma=1.0))
    with pytest.raises(ValueError, match="missing"):
        merge(tiles[:-1], 32, 32)


def test_merge_rejects_overlapping_tiles() -> None:
    tiles = split(noise(32, 32), StepParams(band_px=2, sigma=1.0))
    with pytest.raises(ValueError, match="overlaps"):
        merge([*tiles, tiles[0]], 32, 32)


def test_merge_rejects_a_tile_of_the_wrong_shape() -> None:
    tiles = split(noise(32, 32), StepParams(band_px=2, sigma=1.0))
    box, tile = tiles[0]
    with pytest.raises(ValueError, match="shape"):
        merge([(box, tile[:-1]), *tiles[1:]], 32, 32)


def test_validate_geometry_rejects_a_band_wider_than_half_a_tile() -> None:
    with pytest.raises(InputError) as info:
        validate_geometry(128, 128, StepParams(rows=2, cols=2, band_px=40))
    assert info.value.message == "band_px 40 is larger than half a tile (tiles are 64x64 px)"
    assert hint_for(info.value) == "use --band-px 32 or less, or a coarser --grid"


def test_validate_geometry_checks_only_axes_with_cuts() -> None:
    # A 1x2 grid has no horizontal cut, so a short image is fine
    validate_geometry(200, 10, StepParams(rows=1, cols=2, band_px=16))
    with pytest.raises(InputError, match=r"tiles are 100x5 px"):
        validate_geometry(200, 10, StepParams(rows=2, cols=2, band_px=16))


def test_validate_geometry_rejects_more_tiles_than_pixels() -> None:
    with pytest.raises(InputError, match="more tiles than") as info:
        validate_geometry(3, 100, StepParams(rows=2, cols=4, band_px=1))
    assert hint_for(info.value) == "use a coarser --grid"


def test_validate_geometry_rejects_one_pixel_tiles() -> None:
    with pytest.raises(InputError, match="too fine"):
        validate_geometry(5, 5, StepParams(rows=4, cols=4, band_px=1))


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_validate_geometry_rejects_a_non_positive_sigma(sigma: float) -> None:
    params = StepParams.model_construct(rows=2, cols=2, band_px=4, sigma=sigma)
    with pytest.raises(InputError, match="sigma"):
        validate_geometry(64, 64, params)


def test_split_rejects_a_non_uint8_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        split(np.zeros((32, 32, 3), dtype=np.float32), StepParams(band_px=2))
