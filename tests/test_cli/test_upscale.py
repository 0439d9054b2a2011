"""``sdpipe upscale`` and ``generate --upscale`` in-process, embedded, on the in-process mock."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from actors import Runtime
from cli.output import jobs_table
from pipeline.errors import QueueFull, StoreUnavailable
from pipeline.images.infotext import parse_infotext
from pipeline.models import JobSpec, JobState
from pipeline.sd.mock.pnginfo import png_info
from pipeline.settings import load_settings
from pipeline.storage import open_storage
from pipeline.store import open_store
from pipeline.upscale.tiles import plan_upscale_tiles
from tests.conftest import S3Bucket
from tests.test_cli.conftest import Invoke


def test_upscale_of_a_job_id_upscales_that_job_result(sdpipe: Invoke) -> None:
    generated = sdpipe("generate", "a lighthouse", "--seed", "7", "--width", "96", "--height", "64",
                       "--sd-url", "mock://", "--json")  # fmt: skip
    [job] = json.loads(generated.stdout)

    result = sdpipe("upscale", job["job_id"][:8], "--scale", "2", "--tile", "64", "--overlap", "16",
                    "--sd-url", "mock://", "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    [upscaled] = json.loads(result.stdout)
    assert upscaled["spec"]["kind"] == "upscale"
    with Image.open(upscaled["result"]["image"]) as image:
        assert image.size == (192, 128)
        parsed = parse_infotext(image.info["parameters"])
    assert (parsed["Prompt"], parsed["Seed"], parsed["Upscale"]) == ("a lighthouse", "7", "2")
    assert upscaled["spec"]["upscale"]["seed"] == 7  # the image's own seed, for every tile


def test_generate_upscale_flag_upscales_each_image(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "a fox", "--width", "64", "--height", "64", "--upscale", "2",
                    "--upscale-denoise", "0.2", "--sd-url", "mock://", "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)
    assert (job["result"]["width"], job["result"]["height"]) == (128, 128)
    assert job["spec"]["upscale"]["denoise"] == 0.2


def test_upscale_bad_input_is_one_line_exit_2(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(photo)

    missing = sdpipe("upscale", str(tmp_path / "nope.png"), "--sd-url", "mock://")
    bad_tile = sdpipe("upscale", str(photo), "--tile", "100", "--sd-url", "mock://")

    assert missing.exit_code == 2 and "neither an image file nor a job id" in missing.output
    assert bad_tile.exit_code == 2 and "multiple of 8" in bad_tile.output
    assert len(bad_tile.output.strip().splitlines()) == 1
    assert not list(out_dir.glob("*.png"))


def test_generate_takes_every_upscale_flag(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "a fox", "--width", "64", "--height", "64", "--upscale", "2",
                    "--upscale-tile", "64", "--upscale-overlap", "16", "--upscale-seam-fix", "band",
                    "--sd-url", "mock://", "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)
    up = job["spec"]["upscale"]
    assert (up["tile_px"], up["overlap_px"], up["seam_fix"]) == (64, 16, "band")
    with Image.open(job["result"]["image"]) as image:
        parsed = parse_infotext(image.info["parameters"])
    assert (parsed["Upscale tile"], parsed["Upscale overlap"], parsed["Seam fix"]) == ("64", "16", "band")
    assert (parsed["Upscale"], parsed["Upscaler"], parsed["Denoising strength"]) == ("2", "Lanczos", "0.3")
    sidecar = json.loads(Path(job["result"]["sidecar"]).read_text())["upscale"]
    assert {key: sidecar[key] for key in ("scale", "upscaler", "tile_px", "overlap_px", "denoise", "seam_fix")} == {
        "scale": 2.0, "upscaler": "Lanczos", "tile_px": 64, "overlap_px": 16, "denoise": 0.3, "seam_fix": "band"
    }  # fmt: skip


def test_schedule_add_upscale_flags_upscale_every_run(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "nightly.txt"
    path.write_text("a lighthouse at dusk\n")

    added = sdpipe("schedule", "add", "nightly", str(path), "--cron", "0 2 * * *", "--width", "64",
                   "--height", "64", "--upscale", "2", "--upscale-tile", "64", "--upscale-overlap", "16",
                   "--upscale-denoise", "0.2")  # fmt: skip
    refused = sdpipe("schedule", "add", "bad", str(path), "--cron", "0 2 * * *", "--upscale-tile", "100")

    assert added.exit_code == 0, added.output
    [listed] = json.loads(sdpipe("schedule", "list", "--json").stdout)
    assert listed["options"] == {"width": 64, "height": 64, "upscale": 2.0, "upscale_tile": 64,
                                 "upscale_overlap": 16, "upscale_denoise": 0.2}  # fmt: skip
    ran = sdpipe("schedule", "run", "nightly", env={"SD_API_URL": "mock://"})
    assert ran.exit_code == 0, ran.output
    shown = json.loads(sdpipe("schedule", "show", "nightly", "--json").stdout)
    batch = json.loads(sdpipe("status", "--batch", shown["runs"][0]["batch_id"], "--json").stdout)
    [job] = batch["rows"][0]["jobs"]
    status = json.loads(sdpipe("status", job["job_id"], "--json").stdout)
    assert (status["result"]["width"], status["result"]["height"]) == (128, 128)
    assert (status["spec"]["upscale"]["tile_px"], status["spec"]["upscale"]["denoise"]) == (64, 0.2)
    assert refused.exit_code == 2 and "upscale_tile" in refused.stderr and "multiple of 8" in refused.stderr


def test_upscale_keeps_the_alpha_channel_of_an_rgba_input(sdpipe: Invoke, tmp_path: Path) -> None:
    pixels = np.zeros((64, 96, 4), dtype=np.uint8)
    pixels[..., :3] = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    pixels[:, :48, 3] = 255  # left half opaque, right half transparent
    source = tmp_path / "cutout.png"
    Image.fromarray(pixels, "RGBA").save(source)

    result = sdpipe("upscale", str(source), "--scale", "2", "--tile", "64", "--overlap", "16", "--prompt", "a fox",
                    "--sd-url", "mock://", "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)
    with Image.open(job["result"]["image"]) as image:
        assert (image.mode, image.size) == ("RGBA", (192, 128))
        out = np.asarray(image)
    assert (out[:, :90, 3] == 255).all() and (out[:, 102:, 3] == 0).all()  # Lanczos rings only near the edge
    colour = np.asarray(Image.fromarray(pixels[..., :3]).resize((192, 128), Image.Resampling.LANCZOS))
    assert np.abs(out[:, :90, :3].astype(int) - colour[:, :90]).mean() > 2  # the colour was re-rendered
    assert json.loads(Path(job["result"]["sidecar"]).read_text())["upscale"]["alpha"] is True


def test_status_and_the_wait_show_an_upscale_jobs_tiles(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(photo)
    done = sdpipe("upscale", str(photo), "--scale", "2", "--tile", "64", "--overlap", "16", "--prompt", "a fox",
                  "--sd-url", "mock://", "--json")  # fmt: skip
    [job] = json.loads(done.stdout)
    store = open_store(load_settings(output_dir=out_dir))
    try:
        record = store.get(job["job_id"])
        running = record.model_copy(update={"state": JobState.SPLITTING, "result": None})
    finally:
        store.close()

    shown = sdpipe("status", job["job_id"][:8])
    console = Console(width=140, record=True)
    console.print(jobs_table([running], tiles={record.job_id: (4, 9)}, width=140))

    tiles = len(plan_upscale_tiles(192, 128, 64, 16))
    assert f"tiles    {tiles}/{tiles} done" in shown.stdout
    assert "tiles 4/9" in console.export_text()  # the live wait, while the tiles render


def test_generate_sweep_varies_an_upscale_setting(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "a fox", "--width", "64", "--height", "64", "--upscale-tile", "64",
                    "--sweep", "upscale_denoise=0.2,0.4", "--sd-url", "mock://", "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    jobs = json.loads(result.stdout)
    assert sorted(job["spec"]["upscale"]["denoise"] for job in jobs) == [0.2, 0.4]
    assert {job["spec"]["upscale"]["overlap_px"] for job in jobs} == {16}  # the default, narrowed to the tile


def test_upscale_into_a_bucket_keeps_alpha_and_removes_its_intermediates(
    sdpipe: Invoke, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    pixels = np.zeros((64, 96, 4), dtype=np.uint8)
    pixels[..., :3] = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    pixels[:, :48, 3] = 255
    source = tmp_path / "cutout.png"
    Image.fromarray(pixels, "RGBA").save(source)

    result = sdpipe("upscale", str(source), "--tile", "64", "--overlap", "16", "--seam-fix", "band",
                    "--prompt", "a fox", "--sd-url", "mock://", "--json", env=s3_bucket.env)  # fmt: skip

    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    keys = [entry.key for entry in storage.list("")]
    assert sorted(keys) == sorted(storage.key_of(job["result"][kind]) for kind in ("image", "sidecar"))
    with Image.open(io.BytesIO(storage.read(str(storage.key_of(job["result"]["image"]))))) as image:
        assert (image.mode, image.size) == ("RGBA", (192, 128))
        assert np.asarray(image)[:, 102:, 3].max() == 0


def test_upscale_of_a_job_whose_image_is_in_a_bucket_fetches_it(sdpipe: Invoke, s3_bucket: S3Bucket) -> None:
    # Given a job whose result went to OUTPUT_URL's bucket
    generated = sdpipe("generate", "a fox", "--width", "64", "--height", "64", "--sd-url", "mock://", "--json",
                       env=s3_bucket.env)  # fmt: skip
    [job] = json.loads(generated.stdout)
    # When that job is upscaled by its id
    result = sdpipe("upscale", job["job_id"][:8], "--tile", "64", "--overlap", "16", "--sd-url", "mock://",
                    "--json", env=s3_bucket.env)  # fmt: skip
    # Then its image is fetched from the bucket and upscaled there too, keeping its prompt
    assert result.exit_code == 0, result.output
    [upscaled] = json.loads(result.stdout)
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    with Image.open(io.BytesIO(storage.read(str(storage.key_of(upscaled["result"]["image"]))))) as image:
        assert image.size == (128, 128)
        assert parse_infotext(image.info["parameters"])["Prompt"] == "a fox"
    # And once that object is gone, upscaling the job says so (nothing queued)
    storage.delete(str(storage.key_of(job["result"]["image"])))
    gone = sdpipe("upscale", job["job_id"][:8], "--sd-url", "mock://", env=s3_bucket.env)
    assert gone.exit_code == 2 and f"the image of job {job['job_id'][:8]} is gone" in gone.output


def _job_count(out_dir: Path) -> int:
    store = open_store(load_settings(output_dir=out_dir))
    try:
        return sum(store.count_by_state().values())
    finally:
        store.close()


def test_upscale_unknown_upscaler_exits_2_before_any_job(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(photo)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a fox", "upscaler": "Nope"}\n')

    upscaled = sdpipe("upscale", str(photo), "--upscaler", "R-ESRGAN 4x", "--sd-url", "mock://")
    generated = sdpipe("generate", "a fox", "--upscaler", "Foo", "--sd-url", "mock://")  # no txt2img paid
    planned = sdpipe("batch", str(rows), "--dry-run", env={"SD_API_URL": "mock://"})

    assert upscaled.exit_code == 2 and len(upscaled.output.strip().splitlines()) == 1
    assert "has no upscaler 'R-ESRGAN 4x'; closest: R-ESRGAN 4x+" in upscaled.output
    assert generated.exit_code == 2 and "has no upscaler 'Foo'" in generated.output
    assert planned.exit_code == 2 and "upscaler: the SD server at mock:// has no upscaler 'Nope'" in planned.output
    assert _job_count(out_dir) == 0
    # A1111 looks upscalers up by their exact name: another case is sent as the server writes it.
    fixed = sdpipe("upscale", str(photo), "--upscaler", "r-esrgan 4x+", "--tile", "64", "--overlap", "16",
                   "--sd-url", "mock://", "--json")  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)[0]["spec"]["upscale"]["upscaler"] == "R-ESRGAN 4x+"


def test_upscale_sampler_and_scheduler_are_checked_and_the_infotext_says_what_the_tiles_used(
    sdpipe: Invoke,
) -> None:
    generated = sdpipe("generate", "a lighthouse", "--seed", "7", "--width", "64", "--height", "64",
                       "--sd-url", "mock://", "--json")  # fmt: skip
    [source] = json.loads(generated.stdout)
    image = source["result"]["image"]

    unknown = sdpipe("upscale", image, "--sampler", "nope", "--sd-url", "mock://")
    unknown_scheduler = sdpipe("upscale", image, "--scheduler", "nope", "--sd-url", "mock://")
    result = sdpipe("upscale", image, "--tile", "64", "--overlap", "16", "--prompt", "a fox, at dusk",
                    "-n", "blurry", "--sampler", "euler", "--scheduler", "karras", "--steps", "9", "--cfg", "4.5",
                    "--sd-url", "mock://", "--json")  # fmt: skip

    assert unknown.exit_code == 2 and "has no sampler 'nope'; closest:" in unknown.output
    assert unknown_scheduler.exit_code == 2 and "has no scheduler 'nope'; closest:" in unknown_scheduler.output
    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)
    with Image.open(job["result"]["image"]) as output:
        parsed = parse_infotext(output.info["parameters"])
    shown = {key: parsed[key] for key in ("Prompt", "Negative prompt", "Sampler", "Schedule type", "Steps")}
    assert shown == {"Prompt": "a fox, at dusk", "Negative prompt": "blurry", "Sampler": "Euler",
                     "Schedule type": "Karras", "Steps": "9"}  # fmt: skip
    assert (parsed["CFG scale"], parsed["Seed"], parsed["Size-1"], parsed["Size-2"]) == ("4.5", "7", "128", "128")
    assert parsed["Version"] and parsed["Upscale"] == "2"  # the input's other keys kept
    assert "Model" not in parsed  # no --model: the tiles rendered with whatever each server had loaded
    img2img = json.loads(Path(job["result"]["sidecar"]).read_text())["upscale"]["img2img"]
    assert (img2img["sampler_name"], img2img["scheduler"], img2img["prompt"]) == ("Euler", "Karras", "a fox, at dusk")


def test_upscale_of_an_image_without_infotext_writes_the_tiles_infotext(sdpipe: Invoke, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)

    result = sdpipe("upscale", str(photo), "--tile", "64", "--overlap", "16", "--seed", "3",
                    "--sd-url", "mock://", "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)
    with Image.open(job["result"]["image"]) as output:
        text = output.info["parameters"]
    encoded = base64.b64encode(Path(job["result"]["image"]).read_bytes()).decode()
    read = png_info(json.dumps({"image": encoded}).encode())
    parsed = read["parameters"]  # as A1111's png-info reads it
    assert read["info"] == text and parse_infotext(text)["Upscale tile"] == "64"
    assert (parsed["Prompt"], parsed["Seed"], parsed["Sampler"], parsed["Upscale"], parsed["Upscaler"]) == (
        "", "3", "Euler a", "2", "Lanczos"
    )  # fmt: skip
    assert (parsed["Size-1"], parsed["Denoising strength"], parsed["Seam fix"]) == ("128", "0.3", "none")


def _work_files(out_dir: Path) -> list[Path]:
    return [path for path in (out_dir / ".sdpipe" / "work").rglob("*") if path.is_file()]


def test_upscale_small_image_skips_the_split_grid(sdpipe: Invoke, tmp_path: Path) -> None:
    # 300x20: the grid of `process` (2x2, 16 px bands) does not fit it, and an upscale cuts no grid
    thin = tmp_path / "thin.png"
    Image.new("RGB", (300, 20), (90, 20, 30)).save(thin)

    result = sdpipe("upscale", str(thin), "--sd-url", "mock://", "--json")

    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)
    assert (job["result"]["width"], job["result"]["height"]) == (600, 40)


def test_upscale_too_small_output_is_refused_before_any_job(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(dot)

    refused = sdpipe("upscale", str(dot), "--sd-url", "mock://")
    enough = sdpipe("upscale", str(dot), "--scale", "8", "--sd-url", "mock://", "--json")

    assert refused.exit_code == 2
    assert refused.output.strip() == (
        "error: dot.png: upscaling 1x1 by 2 gives 2x2 px: SD renders at least 8 px a side "
        "(use a larger --scale or a larger image)"
    )
    assert enough.exit_code == 0, enough.output
    [job] = json.loads(enough.stdout)
    assert (job["result"]["width"], job["result"]["height"]) == (8, 8)
    assert len(json.loads(sdpipe("jobs", "--json").stdout)) == 1  # the refused one made no job


def test_upscale_over_max_pixels_is_refused_before_any_job(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (200, 100)).save(photo)

    result = sdpipe("upscale", str(photo), "--scale", "4", "--sd-url", "mock://", env={"MAX_PIXELS": "100000"})

    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: photo.png: upscaling 200x100 by 4 gives 800x400 px, 320,000 pixels, over MAX_PIXELS (100,000) "
        "(use a smaller --scale or raise MAX_PIXELS)"
    )
    assert not out_dir.exists() or not _work_files(out_dir)


def test_generate_upscale_over_max_pixels_is_refused_naming_the_flag(sdpipe: Invoke, out_dir: Path) -> None:
    result = sdpipe("generate", "a fox", "--width", "256", "--height", "256", "--upscale", "4",
                    "--sd-url", "mock://", env={"MAX_PIXELS": "500000"})  # fmt: skip

    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: upscaling 256x256 by 4 gives 1024x1024 px, 1,048,576 pixels, over MAX_PIXELS (500,000) "
        "(use a smaller --upscale or raise MAX_PIXELS)"
    )
    assert not list(out_dir.glob("*.png"))


def test_generate_bad_upscale_flag_names_the_flag(sdpipe: Invoke) -> None:
    overlap = sdpipe("generate", "a fox", "--upscale", "2", "--upscale-overlap", "999", "--sd-url", "mock://")
    scale = sdpipe("generate", "a fox", "--upscale", "9", "--sd-url", "mock://")

    assert overlap.exit_code == 2 and "invalid upscale setting --upscale-overlap:" in overlap.output
    assert scale.exit_code == 2
    assert "invalid upscale setting --upscale: must be a number above 1 and at most 8 (got 9.0)" in scale.output


def test_upscale_scale_nan_says_the_range(sdpipe: Invoke, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)

    result = sdpipe("upscale", str(photo), "--scale", "nan", "--sd-url", "mock://")

    assert result.exit_code == 2
    assert (
        result.output.strip()
        == "error: invalid upscale setting --scale: must be a number above 1 and at most 8 (got nan)"
    )


def test_upscale_refused_submission_leaves_no_work_folder(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)

    result = sdpipe("upscale", str(photo), "--sd-url", "http://127.0.0.1:1")

    assert result.exit_code == 3, result.output
    assert "cannot reach the SD server" in result.output
    assert not out_dir.exists() or not _work_files(out_dir)


def test_process_refused_submission_leaves_no_work_folder(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    no_redis = sdpipe("process", str(photo), env={"REDIS_URL": "redis://127.0.0.1:1/0"})

    def full(self: Runtime, specs: object, **options: object) -> None:
        raise QueueFull("the queue is full", field="MAX_QUEUE_DEPTH", value=1, limit=0)

    monkeypatch.setattr(Runtime, "submit", full)
    queue_full = sdpipe("process", str(photo))

    assert no_redis.exit_code == 3, no_redis.output
    assert queue_full.exit_code != 0 and "the queue is full" in queue_full.output
    assert not _work_files(out_dir)


def test_upscale_lists_every_bad_input_of_a_folder(sdpipe: Invoke, tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "a.png").write_text("not an image")
    (shots / "b.png").write_text("nor this")

    result = sdpipe("upscale", str(shots), "--sd-url", "mock://")

    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines[:2]] == [str(shots / "a.png"), str(shots / "b.png")]
    assert lines[2].startswith("error: 2 of 2 inputs cannot be processed")


def test_upscale_of_a_failed_job_says_retry_it_first(sdpipe: Invoke) -> None:
    failed = sdpipe("generate", "a fox", "--width", "64", "--height", "64", "--sd-url", "mock://?fail_rate=1",
                    "--json", env={"MAX_RETRIES": "0"})  # fmt: skip
    [job] = json.loads(failed.stdout)
    short = job["job_id"][:8]

    result = sdpipe("upscale", short, "--sd-url", "mock://")

    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: job {short} has no image to upscale (its state: failed) "
        f"(`sdpipe retry {short}` first, then upscale it)"
    )


def test_upscale_of_a_job_whose_image_is_gone_says_so(sdpipe: Invoke) -> None:
    generated = sdpipe("generate", "a fox", "--width", "64", "--height", "64", "--sd-url", "mock://", "--json")
    [job] = json.loads(generated.stdout)
    Path(job["result"]["image"]).unlink()
    short = job["job_id"][:8]

    result = sdpipe("upscale", short, "--sd-url", "mock://")

    assert result.exit_code == 2
    output = result.output.strip()
    assert output.startswith(f"error: the image of job {short} is gone: {job['result']['image']} was removed")
    assert f"render job {short} again" in output and "no such file" not in output


def test_process_submission_failing_after_the_records_keeps_their_inputs(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    submit = Runtime.submit

    def recorded_then_lost(self: Runtime, specs: list[JobSpec], **options: Any) -> None:
        self.store.create_jobs(specs)  # the jobs are recorded: their inputs are theirs now
        raise StoreUnavailable("Redis went away", field="REDIS_URL")

    monkeypatch.setattr(Runtime, "submit", recorded_then_lost)
    result = sdpipe("process", str(photo), "--grid", "1x2")
    monkeypatch.setattr(Runtime, "submit", submit)

    assert result.exit_code == 3, result.output
    [source] = _work_files(out_dir)
    assert source.name == "source.img"
