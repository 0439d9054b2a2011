"""``POST /api/files`` and ``/api/files/async`` over HTTP: the merged image, and every bad upload as a 4xx."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipeline.images.infotext import parse_infotext
from pipeline.images.seams import cut_positions
from pipeline.jobs.uploads import STALE_UPLOAD_AGE_S
from pipeline.settings import Settings
from tests.helpers import wait_until
from tests.test_api.conftest import ApiServer, StartApi, assert_error, noise_image, png_bytes

WIDTH, HEIGHT, BAND_PX = 160, 120, 10


def far_from_cuts(width: int, height: int, rows: int, cols: int, band_px: int) -> np.ndarray:
    """True where a pixel is ``band_px`` or more from every inner cut."""
    mask = np.ones((height, width), dtype=bool)
    for c in cut_positions(width, cols)[1:-1]:
        mask[:, max(0, c - band_px) : c + band_px] = False
    for c in cut_positions(height, rows)[1:-1]:
        mask[max(0, c - band_px) : c + band_px, :] = False
    return mask


def test_files_returns_merged_image_equal_to_upload_away_from_seams(api: ApiServer) -> None:
    # Given a detailed PNG
    source = noise_image(WIDTH, HEIGHT, seed=3)
    # When it is uploaded with a 2x3 grid
    response = api.client.post(
        "/api/files",
        files={"file": ("photo.png", png_bytes(source), "image/png")},
        data={"grid": "2x3", "band_px": str(BAND_PX), "sigma": "3"},
    )
    # Then the answer is the merged PNG, the same size, with an ETag
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"].startswith('"')
    with Image.open(io.BytesIO(response.content)) as image:
        merged = np.asarray(image.convert("RGB"))
    assert merged.shape == source.shape
    # and pixels away from the seams equal the upload's, while the seams are blurred
    far = far_from_cuts(WIDTH, HEIGHT, 2, 3, BAND_PX)
    assert np.array_equal(merged[far], source[far])
    assert not np.array_equal(merged[~far], source[~far])


def test_files_answers_json_with_result_url_when_asked(api: ApiServer) -> None:
    # When the client accepts JSON
    response = api.client.post(
        "/api/files",
        files={"file": ("photo.jpg", png_bytes(noise_image(64, 64), "JPEG"), "image/jpeg")},
        data={"format": "webp"},
        headers={"Accept": "application/json"},
    )
    # Then it gets the job with a URL to its image
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded" and job["kind"] == "process"
    assert job["output_format"] == "webp"
    assert "image" not in job["result"]  # no server paths
    image = api.client.get(job["result_url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/webp"


def test_files_async_returns_202_and_the_job_completes(api: ApiServer) -> None:
    response = api.client.post("/api/files/async", files={"file": ("a.png", png_bytes(noise_image(96, 80)))})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] == "queued"
    assert wait_until(lambda: api.client.get(accepted["status_url"]).json()["state"] == "succeeded", timeout_s=30)


def test_files_upload_over_max_upload_bytes_is_413(start_api: StartApi) -> None:
    api = start_api(max_upload_bytes=10_000)
    big = png_bytes(noise_image(100, 100))  # ~30 kB of noise
    assert len(big) > 10_000
    error = assert_error(api.client.post("/api/files", files={"file": ("big.png", big)}), 413, "upload_too_large")
    assert "MAX_UPLOAD_BYTES" in error["message"]


def test_files_chunked_body_over_limit_is_413_without_content_length(start_api: StartApi) -> None:
    # Given a body sent chunked (no Content-Length to trust) far over the limit
    api = start_api(max_upload_bytes=10_000)
    boundary = b"sdpipe-test"
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'

    def body() -> Iterator[bytes]:
        yield head + b"\x89PNG\r\n\x1a\n"
        for _ in range(200):
            yield b"\0" * 1024

    response = api.client.post(
        "/api/files", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    )
    # Then the server stops reading and answers 413
    assert_error(response, 413, "upload_too_large")


def test_files_non_image_with_lying_content_type_is_415(api: ApiServer) -> None:
    response = api.client.post("/api/files", files={"file": ("cat.png", b"<html>not an image</html>", "image/png")})
    error = assert_error(response, 415, "unsupported_media_type")
    assert "PNG, JPEG, WebP or GIF" in error["message"]


def test_files_takes_a_still_gif_as_process_does(api: ApiServer) -> None:
    gif = png_bytes(noise_image(96, 80), "GIF")
    response = api.client.post("/api/files", files={"file": ("a.gif", gif, "image/gif")})
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (96, 80)


def test_files_refuses_an_animated_gif_unless_first_frame(api: ApiServer) -> None:
    # Given an animated GIF
    frames = [Image.new("RGB", (96, 80), (60 * i, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    upload = {"file": ("anim.gif", buffer.getvalue(), "image/gif")}
    # Then it is refused with the same rule as sdpipe process, naming the way out
    error = assert_error(api.client.post("/api/files", files=upload), 422, "invalid_image")
    assert error["message"].startswith("anim.gif is an animated GIF (3 frames)")
    assert error["hint"] == "send first_frame=true to process its first frame" and ".sdpipe" not in error["message"]
    # and processed when the first frame is asked for
    response = api.client.post("/api/files", files=upload, data={"first_frame": "true"})
    assert response.status_code == 200, response.text


def test_files_applies_exif_orientation(api: ApiServer) -> None:
    # Given a photo stored 384x256 with Orientation=6 (shown 256x384)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(noise_image(384, 256)).save(buffer, "JPEG", exif=exif)
    response = api.client.post("/api/files", files={"file": ("photo.jpg", buffer.getvalue(), "image/jpeg")})
    # Then the merged image stands as shown
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (256, 384)


def test_files_too_many_pixels_is_413_before_decoding(start_api: StartApi) -> None:
    api = start_api(max_pixels=50 * 50)
    response = api.client.post("/api/files", files={"file": ("a.png", png_bytes(noise_image(64, 64)))})
    error = assert_error(response, 413, "too_many_pixels")
    assert "64x64" in error["message"]


def test_files_truncated_image_is_422(api: ApiServer) -> None:
    data = png_bytes(noise_image(64, 64))
    response = api.client.post("/api/files", files={"file": ("a.png", data[: len(data) // 2])})
    assert_error(response, 422, "invalid_image")


def test_files_empty_upload_is_422(api: ApiServer) -> None:
    assert_error(api.client.post("/api/files", files={"file": ("a.png", b"")}), 422, "empty_upload")


def test_files_bad_grid_is_422_naming_the_grid(api: ApiServer) -> None:
    response = api.client.post(
        "/api/files", files={"file": ("a.png", png_bytes(noise_image(64, 64)))}, data={"grid": "3"}
    )
    error = assert_error(response, 422, "invalid_input")
    assert "grid" in error["message"]


def test_files_grid_too_fine_for_the_image_is_422_naming_the_client_file(api: ApiServer) -> None:
    response = api.client.post(
        "/api/files", files={"file": ("mine.png", png_bytes(noise_image(16, 16)))}, data={"grid": "8x8"}
    )
    error = assert_error(response, 422, "invalid_input")
    assert error["message"].startswith("mine.png: ")
    assert ".sdpipe" not in error["message"]


def test_files_missing_file_field_is_422(api: ApiServer) -> None:
    error = assert_error(api.client.post("/api/files", data={"grid": "2x2"}), 422, "invalid_request")
    assert "file" in error["message"]


def _staged(api: ApiServer) -> list[str]:
    uploads = api.settings.output_dir / ".sdpipe" / "uploads"
    return sorted(path.name for path in uploads.iterdir()) if uploads.exists() else []


@pytest.mark.parametrize(
    ("size", "data", "status"),
    [(64, {}, 200), (16, {"grid": "8x8"}, 422), (64, {"band_px": "0"}, 422)],
    ids=["succeeded", "refused-after-staging", "refused-before-staging"],
)
def test_files_upload_is_not_left_in_the_uploads_folder(
    api: ApiServer, size: int, data: dict[str, str], status: int
) -> None:
    response = api.client.post("/api/files", files={"file": ("a.png", png_bytes(noise_image(size, size)))}, data=data)
    assert response.status_code == status, response.text
    assert _staged(api) == []


def test_files_full_queue_is_429_and_leaves_nothing_on_disk(start_api: StartApi, redis_url: str) -> None:
    # Given Redis mode with no worker (jobs stay queued) and MAX_QUEUE_DEPTH=1, already reached
    api = start_api(redis_url=redis_url, max_queue_depth=1)
    image = png_bytes(noise_image(64, 64))
    first = api.client.post("/api/files/async", files={"file": ("a.png", image)})
    assert first.status_code == 202, first.text
    # When another upload comes
    error = assert_error(api.client.post("/api/files/async", files={"file": ("b.png", image)}), 429, "queue_full")
    # Then it is refused, and neither its staged file nor a work folder stays behind
    assert "--wait-for-room" not in error.get("hint", "")
    work = api.settings.output_dir / ".sdpipe" / "work"
    assert [path.name for path in work.iterdir()] == [first.json()["job_id"]]
    assert _staged(api) == []


def test_files_stale_staged_uploads_are_removed_at_startup(start_api: StartApi, settings: Settings) -> None:
    # Given staged uploads a killed server left, one old and one that a live server may be using
    uploads = settings.output_dir / ".sdpipe" / "uploads"
    uploads.mkdir(parents=True)
    old, fresh = uploads / "old.png", uploads / "fresh.png"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    stamp = old.stat().st_mtime - STALE_UPLOAD_AGE_S - 60
    os.utime(old, (stamp, stamp))
    # When the server starts
    start_api()
    # Then the old one is gone and the fresh one kept
    assert sorted(path.name for path in uploads.iterdir()) == ["fresh.png"]


def test_files_quality_field_sets_the_jpeg_quality(api: ApiServer) -> None:
    upload = {"file": ("a.png", png_bytes(noise_image(96, 80)))}
    low = api.client.post("/api/files", files=upload, data={"format": "jpeg", "quality": "20"})
    high = api.client.post("/api/files", files=upload, data={"format": "jpeg", "quality": "95"})
    assert low.status_code == high.status_code == 200, low.text
    assert len(low.content) < len(high.content) / 2
    error = assert_error(api.client.post("/api/files", files=upload, data={"quality": "0"}), 422, "invalid_input")
    assert "quality" in error["message"]


@pytest.mark.parametrize("route", ["/api/files", "/api/files/async"])
def test_files_unknown_form_field_is_400_naming_it(api: ApiServer, route: str) -> None:
    response = api.client.post(
        route, files={"file": ("a.png", png_bytes(noise_image(64, 64)))}, data={"sigmaa": "9", "grid": "2x2"}
    )
    error = assert_error(response, 400, "unknown_field")
    assert error["message"] == "unknown form field 'sigmaa'"
    assert "sigma" in error["hint"]


def test_files_second_file_part_is_400(api: ApiServer) -> None:
    image = png_bytes(noise_image(64, 64))
    response = api.client.post("/api/files", files=[("file", ("a.png", image)), ("file", ("b.png", image))])
    error = assert_error(response, 400, "duplicate_field")
    assert "'file'" in error["message"]


def test_files_upscale_fields_upscale_the_upload(api: ApiServer) -> None:
    source = noise_image(96, 64, seed=5)

    response = api.client.post(
        "/api/files",
        files={"file": ("photo.png", png_bytes(source), "image/png")},
        data={"upscale": "2", "upscale_tile": "64", "upscale_overlap": "16", "prompt": "a fox", "seed": "3"},
        headers={"Accept": "application/json"},
    )

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["kind"] == "upscale" and (job["result"]["width"], job["result"]["height"]) == (192, 128)
    up = job["upscale"]
    assert (up["scale"], up["tile_px"], up["overlap_px"], up["prompt"], up["seed"]) == (2.0, 64, 16, "a fox", 3)
    assert job["tiles"]["done"] == job["tiles"]["total"] == 12


def test_files_bad_upscale_field_is_422_and_a_prompt_alone_is_400(api: ApiServer) -> None:
    upload = {"file": ("photo.png", png_bytes(noise_image(64, 64)), "image/png")}

    bad = api.client.post("/api/files/async", files=upload, data={"upscale_tile": "100"})
    prompt_only = api.client.post("/api/files/async", files=upload, data={"prompt": "a fox"})

    assert "upscale_tile: 100 px is not a multiple of 8" in assert_error(bad, 422, "invalid_input")["message"]
    assert "upscale" in assert_error(prompt_only, 400, "unknown_field")["hint"]
    assert api.client.get("/api/jobs").json()["jobs"] == []


def test_files_unknown_upscaler_is_422_before_any_job(api: ApiServer) -> None:
    upload = {"file": ("photo.png", png_bytes(noise_image(64, 64)), "image/png")}

    uploaded = api.client.post("/api/files/async", files=upload, data={"upscaler": "Foo"})
    generated = api.client.post("/api/generate", json={"prompt": "a fox", "upscaler": "Foo"})

    for response in (uploaded, generated):
        assert "has no upscaler 'Foo'; closest:" in assert_error(response, 422, "invalid_input")["message"]
    assert api.client.get("/api/jobs").json()["jobs"] == []


def test_files_upscale_prompt_is_the_output_infotexts_prompt(api: ApiServer) -> None:
    buffer = io.BytesIO()
    text = PngInfo()
    text.add_text("parameters", "a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 5, Size: 64x64")
    Image.fromarray(noise_image(64, 64)).save(buffer, "PNG", pnginfo=text)

    response = api.client.post(
        "/api/files",
        files={"file": ("fox.png", buffer.getvalue(), "image/png")},
        data={"upscale": "2", "upscale_tile": "64", "upscale_overlap": "16", "prompt": "a lighthouse"},
    )

    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as output:
        parsed = parse_infotext(output.info["parameters"])
    assert (parsed["Prompt"], parsed["Seed"], parsed["Size-1"], parsed["Upscale"]) == ("a lighthouse", "5", "128", "2")


def test_files_upscale_over_max_pixels_or_too_small_is_422_before_any_job(start_api: StartApi) -> None:
    api = start_api(max_pixels=100_000)
    big = {"file": ("photo.png", png_bytes(noise_image(200, 100)), "image/png")}
    dot = {"file": ("dot.png", png_bytes(noise_image(1, 1)), "image/png")}

    over = assert_error(api.client.post("/api/files/async", files=big, data={"upscale": "4"}), 422, "invalid_input")
    under = assert_error(api.client.post("/api/files/async", files=dot, data={"upscale": "2"}), 422, "invalid_input")

    assert over["message"] == (
        "photo.png: upscaling 200x100 by 4 gives 800x400 px, 320,000 pixels, over MAX_PIXELS (100,000)"
    )
    assert over["hint"] == "send a smaller upscale or a smaller image"
    assert "gives 2x2 px: SD renders at least 8 px a side" in under["message"]
    assert under["hint"] == "send a larger upscale or a larger image"
    assert api.client.get("/api/jobs").json()["jobs"] == []
