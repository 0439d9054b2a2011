"""Unit tests of pipeline.images.codec: sniffing, bounded decoding, mode conversion, encoding with infotext."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cli.errors import hint_for
from pipeline.errors import ImageError, InputError
from pipeline.images.codec import decode_image, encode_image, probe_image, read_image_file, sniff_format

LIMITS = {"max_pixels": 4096 * 4096, "max_bytes": 64 * 1024 * 1024}
INFOTEXT = "a cat, photo\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 64x48"
UNICODE_INFOTEXT = '日本の猫 — ñandú, “quoted”\nSteps: 20, Sampler: Euler a, Seed: 7, Lora hashes: "x: 1"'
SHAPES = {"L": (48, 64), "RGB": (48, 64, 3), "RGBA": (48, 64, 4)}


def smooth(mode: str) -> np.ndarray:
    """A smooth test picture (lossy codecs keep it within a few levels)."""
    y, x = np.mgrid[0:48, 0:64]
    layers = [(x * 3) % 256, (y * 5) % 256, (x + y) * 2 % 256, 255 - y * 2]
    stacked = np.stack(layers, axis=-1).astype(np.uint8)
    return stacked[..., 0] if mode == "L" else np.ascontiguousarray(stacked[..., : SHAPES[mode][2]])


def pil_bytes(im: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB pixels, with a tiny IDAT: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + idat + png_chunk(b"IEND", b"")


def user_comment_type(data: bytes) -> int:
    """The TIFF type code of the Exif IFD's UserComment, walking ``info["exif"]`` as piexif.load does."""
    exif = Image.open(io.BytesIO(data)).info["exif"]
    tiff = exif[6:] if exif.startswith(b"Exif\0\0") else exif
    order = ">" if tiff[:2] == b"MM" else "<"

    def entries(offset: int) -> dict[int, tuple[int, int, int]]:
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        found = {}
        for i in range(count):
            tag, kind, n, value = struct.unpack_from(order + "HHII", tiff, offset + 2 + 12 * i)
            found[tag] = (kind, n, value)
        return found

    ifd0 = entries(struct.unpack_from(order + "I", tiff, 4)[0])
    return entries(ifd0[0x8769][2])[0x9286][0]


def test_sniff_format_reads_magic_bytes() -> None:
    rgb = Image.new("RGB", (4, 4))
    assert sniff_format(pil_bytes(rgb, "PNG")) == "png"
    assert sniff_format(pil_bytes(rgb, "JPEG")) == "jpeg"
    assert sniff_format(pil_bytes(rgb, "WEBP")) == "webp"
    assert sniff_format(pil_bytes(rgb.convert("P"), "GIF")) == "gif"
    assert sniff_format(b"RIFF\0\0\0\0WAVEfmt ") is None
    assert sniff_format(b"hello") is None
    assert sniff_format(b"") is None


@pytest.mark.parametrize("mode", sorted(SHAPES))
@pytest.mark.parametrize("infotext", [INFOTEXT, UNICODE_INFOTEXT])
def test_encode_image_png_round_trips_pixels_and_infotext(mode: str, infotext: str) -> None:
    array = smooth(mode)
    decoded = decode_image(encode_image(array, format="png", infotext=infotext), **LIMITS)
    assert (decoded.format, decoded.mode, decoded.width, decoded.height) == ("png", mode, 64, 48)
    assert np.array_equal(decoded.array, array)
    assert decoded.infotext == infotext


def test_encode_image_png_uses_text_or_international_text_chunks() -> None:
    latin = encode_image(smooth("RGB"), format="png", infotext="café, Steps: 20")
    assert b"tEXtparameters\0caf\xe9" in latin
    wide = encode_image(smooth("RGB"), format="png", infotext=UNICODE_INFOTEXT)
    assert b"iTXtparameters\0" in wide and b"tEXtparameters" not in wide


def test_encode_image_png_without_infotext_has_no_parameters() -> None:
    data = encode_image(smooth("RGB"), format="png", infotext=None)
    assert b"parameters" not in data
    assert decode_image(data, **LIMITS).infotext is None


@pytest.mark.parametrize(
    ("fmt", "mode", "decoded_mode"),
    [
        ("jpeg", "L", "L"),
        ("jpeg", "RGB", "RGB"),
        ("jpeg", "RGBA", "RGB"),
        ("webp", "L", "RGB"),
        ("webp", "RGB", "RGB"),
        ("webp", "RGBA", "RGBA"),
    ],
)
@pytest.mark.parametrize("infotext", [INFOTEXT, UNICODE_INFOTEXT])
def test_encode_image_lossy_round_trips_infotext_in_exif(fmt: str, mode: str, decoded_mode: str, infotext: str) -> None:
    array = smooth(mode)
    data = encode_image(array, format=fmt, infotext=infotext)
    decoded = decode_image(data, **LIMITS)
    assert (decoded.format, decoded.mode, decoded.infotext) == (fmt, decoded_mode, infotext)
    expected = array[..., :3] if decoded_mode == "RGB" and mode == "RGBA" else array
    if decoded_mode == "RGB" and mode == "L":
        expected = np.repeat(array[..., None], 3, axis=2)
    assert np.abs(decoded.array.astype(int) - expected.astype(int)).mean() < 4


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_encode_image_writes_user_comment_as_a1111_reads_it(fmt: str) -> None:
    data = encode_image(smooth("RGB"), format=fmt, infotext=UNICODE_INFOTEXT)
    comment = Image.open(io.BytesIO(data)).getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\0" + UNICODE_INFOTEXT.encode("utf-16-be")
    # piexif only hands bytes to A1111 for type UNDEFINED (7); BYTE (1) would come back as ints
    assert user_comment_type(data) == 7


def test_encode_image_rejects_infotext_too_long_for_jpeg() -> None:
    with pytest.raises(ImageError, match="JPEG"):
        encode_image(smooth("RGB"), format="jpeg", infotext="x" * 40_000)
    assert decode_image(encode_image(smooth("RGB"), format="webp", infotext="x" * 40_000), **LIMITS).infotext


def test_encode_image_rejects_unknown_format_and_bad_arrays() -> None:
    with pytest.raises(ValueError, match="gif"):
        encode_image(smooth("RGB"), format="gif", infotext=None)
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((4, 4, 3), dtype=np.float32), format="png", infotext=None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"UNICODE\0" + b"\xff\xfe" + "Steps: 20, ü".encode("utf-16-le"), "Steps: 20, ü"),
        (b"UNICODE\0" + b"\xfe\xff" + "Steps: 20, ü".encode("utf-16-be"), "Steps: 20, ü"),
        (b"UNICODE\0" + "Steps: 20, ü".encode("utf-16-le"), "Steps: 20, ü"),
        (b"ASCII\0\0\0Steps: 20\0", "Steps: 20"),
    ],
)
def test_decode_image_reads_user_comment_encodings(body: bytes, expected: str) -> None:
    # Given a JPEG written by another tool (Pillow's own Exif) with this UserComment
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = body
    data = pil_bytes(Image.new("RGB", (8, 8)), "JPEG", exif=exif.tobytes())
    assert decode_image(data, **LIMITS).infotext == expected


def test_decode_image_reads_gif_comment() -> None:
    data = pil_bytes(Image.new("P", (8, 8)), "GIF", comment=b"Steps: 20, Seed: 1")
    decoded = decode_image(data, **LIMITS)
    assert (decoded.mode, decoded.infotext) == ("RGB", "Steps: 20, Seed: 1")


def test_decode_image_refuses_a_bomb_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a 100000x100000 header and pixel decoding that must never happen
    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageError, match="100000x100000 px") as info:
        decode_image(png_header_only(100_000, 100_000), max_pixels=10**8, max_bytes=10**6, what="upload.png")
    assert "upload.png" in info.value.message and hint_for(info.value)


def test_decode_image_enforces_its_own_limit_without_pillow_warnings() -> None:
    # 12000x12000 is above Pillow's warning threshold; ours refuses it (warnings are errors here)
    with pytest.raises(ImageError, match="MAX_PIXELS"):
        decode_image(png_header_only(12_000, 12_000), max_pixels=10**6, max_bytes=10**6)
    # and a real image above the limit is refused too
    with pytest.raises(ImageError, match="64x48 px"):
        decode_image(encode_image(smooth("RGB"), format="png", infotext=None), max_pixels=1000, max_bytes=10**6)


def test_decode_image_above_pillow_limit_is_ours_to_allow() -> None:
    # Pillow's own guard (~89 Mpx) would warn here; with our larger limit the header passes and the
    # missing pixel data is reported as a decode error instead.
    with pytest.raises(ImageError, match="cannot be decoded"):
        decode_image(png_header_only(10_000, 10_000), max_pixels=2 * 10**8, max_bytes=10**6)


def test_decode_image_rejects_truncated_png() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode_image(pixels, format="png", infotext=None)
    with pytest.raises(ImageError, match="image cannot be decoded as PNG") as info:
        decode_image(data[: len(data) // 2], **LIMITS)
    assert hint_for(info.value) == "the file may be truncated or corrupt"


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all",
        b"",
        b"data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_decode_image_rejects_non_image_bytes(data: bytes) -> None:
    with pytest.raises(ImageError, match="photo is not a PNG, JPEG, WebP or GIF image"):
        decode_image(data, what="photo", **LIMITS)


def test_decode_image_rejects_more_bytes_than_allowed() -> None:
    data = encode_image(smooth("RGB"), format="png", infotext=None)
    with pytest.raises(ImageError, match="more than the 100 bytes limit"):
        decode_image(data, max_pixels=10**6, max_bytes=100)


def test_decode_image_converts_palette_and_grey_alpha_modes() -> None:
    palette = Image.new("RGB", (8, 8), (10, 200, 30)).convert("P")
    assert decode_image(pil_bytes(palette, "PNG"), **LIMITS).mode == "RGB"
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    decoded = decode_image(pil_bytes(transparent, "PNG", transparency=0), **LIMITS)
    assert decoded.mode == "RGBA" and decoded.array.shape == (8, 8, 4)
    grey_alpha = decode_image(pil_bytes(Image.new("LA", (8, 8), (100, 50)), "PNG"), **LIMITS)
    assert grey_alpha.mode == "RGBA" and tuple(grey_alpha.array[0, 0]) == (100, 100, 100, 50)


def test_decode_image_scales_16_bit_grey_to_8_bit() -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    decoded = decode_image(pil_bytes(im, "PNG"), **LIMITS)
    assert decoded.mode == "L" and decoded.array.tolist() == [[0, 100, 255]]


def test_decode_image_converts_bilevel_and_cmyk() -> None:
    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    decoded = decode_image(pil_bytes(bilevel, "PNG"), **LIMITS)
    assert decoded.mode == "L" and decoded.array.tolist() == [[0, 255]]
    cmyk = decode_image(pil_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), **LIMITS)
    assert cmyk.mode == "RGB" and cmyk.array.shape == (8, 8, 3)


def test_read_image_file_decodes_a_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encode_image(smooth("RGBA"), format="png", infotext=INFOTEXT))
    decoded = read_image_file(path, **LIMITS)
    assert decoded.mode == "RGBA" and decoded.infotext == INFOTEXT


def test_read_image_file_reports_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file: photo.png") as info:
        read_image_file(Path("photo.png"), **LIMITS)
    assert hint_for(info.value)
    (tmp_path / "shots").mkdir()
    with pytest.raises(InputError, match="shots is a directory"):
        read_image_file(Path("shots"), **LIMITS)


def test_read_image_file_checks_size_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 5000)

    def no_read(self: Path) -> bytes:
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_bytes", no_read)
    with pytest.raises(ImageError, match="more than the 1000 bytes limit"):
        read_image_file(path, max_pixels=10**6, max_bytes=1000)


def test_read_image_file_names_the_file_when_it_does_not_decode(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.png is not a PNG"):
        read_image_file(path, **LIMITS)


def rotated_jpeg(orientation: int) -> bytes:
    """A photo stored 384x256 (red top-left corner) whose EXIF says how to turn it for display."""
    pixels = np.zeros((256, 384, 3), dtype=np.uint8)
    pixels[:32, :32] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def test_decode_image_applies_exif_orientation() -> None:
    # Given a photo stored 384x256 with Orientation=6 (turn 90 degrees clockwise to show)
    decoded = decode_image(rotated_jpeg(6), max_pixels=10**7, max_bytes=10**7)
    # Then it decodes as shown: 256 wide, 384 high, the stored top-left corner now top-right
    assert (decoded.width, decoded.height, decoded.array.shape) == (256, 384, (384, 256, 3))
    assert decoded.orientation == 6
    assert decoded.array[5, -5, 0] > 200 and decoded.array[5, 5, 0] < 50


def test_probe_image_reports_the_shown_size_of_a_rotated_photo() -> None:
    header = probe_image(rotated_jpeg(8), max_pixels=10**7, max_bytes=10**7)
    assert (header.width, header.height, header.orientation) == (256, 384, 8)
    assert probe_image(rotated_jpeg(3), max_pixels=10**7, max_bytes=10**7).width == 384


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_probe_and_decode_count_the_frames_of_an_animation(fmt: str) -> None:
    frames = [Image.new("RGB", (32, 32), (60 * i, 0, 0)) for i in range(3)]
    data = pil_bytes(frames[0], fmt, save_all=True, append_images=frames[1:])
    assert probe_image(data, max_pixels=10**6, max_bytes=10**6).frames == 3
    assert decode_image(data, max_pixels=10**6, max_bytes=10**6).frames == 3
    assert probe_image(pil_bytes(frames[0], fmt), max_pixels=10**6, max_bytes=10**6).frames == 1


def test_probe_image_reports_a_16_bit_png() -> None:
    data = pil_bytes(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)), "PNG")
    assert probe_image(data, max_pixels=10**6, max_bytes=10**6).bit_depth == 16
    assert decode_image(data, max_pixels=10**6, max_bytes=10**6).bit_depth == 16
    assert probe_image(pil_bytes(Image.new("RGB", (8, 8)), "PNG"), max_pixels=10**6, max_bytes=10**6).bit_depth == 8


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_encode_image_lossy_quality_is_settable(fmt: str) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    low = encode_image(pixels, format=fmt, infotext=None, quality=20)
    default = encode_image(pixels, format=fmt, infotext=None)
    assert len(low) < len(default) / 2
    assert low == pil_bytes(Image.fromarray(pixels), fmt.upper(), quality=20)
