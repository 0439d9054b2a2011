"""The fast PNG encoder (pipeline.images.png) and the header-only probe built on its chunk walk."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cli.errors import render as render_error
from pipeline.errors import ImageError
from pipeline.images import png
from pipeline.images.codec import probe_image
from pipeline.sd.mock.render import render

LIMITS = {"max_pixels": 10**7, "max_bytes": 10**8}


def noise(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        found.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return found


@pytest.mark.parametrize("shape", [(37, 23), (37, 23, 3), (37, 23, 4), (1, 1, 3)])
def test_encode_png_pixels_decode_identically_in_pillow(shape: tuple[int, ...]) -> None:
    array = noise(shape)
    with Image.open(io.BytesIO(png.encode_png(array))) as im:
        im.load()
        assert np.array_equal(np.asarray(im), array)


def test_encode_png_bands_stitch_into_one_valid_zlib_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given bands of a few rows each (many threads' outputs stitched, one IDAT chunk per band)
    monkeypatch.setattr(png, "BAND_TARGET_BYTES", 200)
    array = noise((101, 50, 3))
    data = png.encode_png(array)
    # Then every chunk's CRC holds, the IDATs form one zlib stream (Adler-32 checked by zlib) of the
    # Up-filtered rows, and Pillow decodes the same pixels
    assert png.png_chunks_problem(data) is None
    idat = b"".join(body for kind, body in chunks(data) if kind == b"IDAT")
    assert len([kind for kind, _ in chunks(data) if kind == b"IDAT"]) == 101
    assert zlib.decompress(idat) == png.filter_up(array).tobytes()
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(np.asarray(im), array)


def test_filter_up_of_a_band_matches_the_whole_image_filtered() -> None:
    array = noise((40, 7, 4))
    assert np.array_equal(png.filter_up(array, 13, 29), png.filter_up(array)[13:29])


def test_adler32_combine_equals_the_checksum_of_the_concatenation() -> None:
    first, second = bytes(noise((5000,))), bytes(noise((70000,), seed=2))
    combined = png.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
    assert combined == zlib.adler32(first + second)
    assert png.adler32_combine(1, zlib.adler32(second), len(second)) == zlib.adler32(second)


def test_filter_up_subtracts_the_row_above_modulo_256() -> None:
    array = np.array([[10, 250], [5, 3]], dtype=np.uint8)
    assert png.filter_up(array).tolist() == [[2, 10, 250], [2, 251, 9]]


def test_encode_png_writes_text_before_image_data_as_pillow_does() -> None:
    data = png.encode_png(noise((8, 8, 3)), text={"parameters": "café, Steps: 20"})
    kinds = [kind for kind, _ in chunks(data)]
    assert kinds[:3] == [b"IHDR", b"tEXt", b"IDAT"] and kinds[-1] == b"IEND"
    wide = png.encode_png(noise((8, 8, 3)), text={"parameters": "猫 on a mat"})
    assert [kind for kind, _ in chunks(wide)][1] == b"iTXt"
    for encoded, text in ((data, "café, Steps: 20"), (wide, "猫 on a mat")):
        with Image.open(io.BytesIO(encoded)) as im:
            assert im.info["parameters"] == text


@pytest.mark.parametrize("prompt", ["a lighthouse at dusk, detailed", "a lighthouse at dusk", "a red fox in snow"])
def test_encode_png_output_is_smaller_than_sharps_default_on_sd_like_renders(prompt: str) -> None:
    # sharp's default PNG (the service sdpipe replaces): no filter (adaptiveFiltering false), zlib
    # level 6. Its image data is every row behind a 0 byte, deflated at level 6.
    array = np.asarray(render(prompt, 7, 512, 512))
    rows = array.reshape(array.shape[0], -1)
    sharps_data = zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows), 6)
    assert len(png.encode_png(array)) < len(sharps_data)


def test_encode_png_rejects_other_dtypes_and_shapes() -> None:
    for bad in (np.zeros((4, 4, 3), dtype=np.uint16), np.zeros((4, 4, 2), dtype=np.uint8), np.zeros((0, 4, 3))):
        with pytest.raises(ValueError, match="expected"):
            png.encode_png(bad)


def test_png_chunks_problem_finds_truncation_bad_crc_and_missing_iend() -> None:
    data = png.encode_png(noise((64, 64, 3)))
    assert png.png_chunks_problem(data) is None
    assert "truncated" in (png.png_chunks_problem(data[: len(data) // 2]) or "")
    assert "no IEND" in (png.png_chunks_problem(data[:-12]) or "")
    flipped = bytearray(data)
    flipped[60] ^= 0xFF
    assert "bad CRC" in (png.png_chunks_problem(bytes(flipped)) or "")


def test_probe_image_reads_the_header_without_decoding() -> None:
    data = png.encode_png(noise((30, 40, 3)))
    header = probe_image(data, **LIMITS)
    assert (header.format, header.width, header.height) == ("png", 40, 30)
    with pytest.raises(ImageError, match="truncated"):
        probe_image(data[: len(data) - 40], **LIMITS, what="cut.png")
    with pytest.raises(ImageError, match="MAX_PIXELS"):
        probe_image(data, max_pixels=100, max_bytes=10**8)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF"])
def test_probe_image_refuses_truncated_lossy_and_gif_files(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noise((64, 64, 3))).save(buffer, fmt)
    data = buffer.getvalue()
    assert probe_image(data, **LIMITS).width == 64
    with pytest.raises(ImageError) as caught:
        probe_image(data[: len(data) // 2], **LIMITS)
    assert "truncated" in render_error(caught.value)  # Pillow's own reason, or the CLI's hint
