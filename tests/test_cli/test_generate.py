"""``sdpipe generate`` and ``sdpipe process`` through the CLI: results, exit codes, one-line errors."""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.store import RedisStatusStore
from tests.test_cli.conftest import Invoke

TINY = ("--width", "64", "--height", "64")


def test_generate_mock_embedded_prints_job_ids_then_paths(sdpipe: Invoke, out_dir: Path) -> None:
    result = sdpipe("generate", "a lighthouse at dusk", "--sd-url", "mock://", "--count", "2", "--seed", "7")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["job", "job"]
    images = [Path(line) for line in lines[2:]]
    assert len(images) == 2
    for image in images:
        assert image.parent == out_dir.absolute()
        assert image.name.endswith("-a-lighthouse-at-dusk.png")
        assert image.with_suffix(".json").exists()
    seeds = sorted(json.loads(p.with_suffix(".json").read_text())["seed"] for p in images)
    assert seeds == [7, 8]


def test_generate_json_output_lists_succeeded_jobs(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "a cat", "--sd-url", "mock://", "--json", "--width", "64", "--height", "64")
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.stdout)
    assert job["state"] == "succeeded"
    assert Path(job["result"]["image"]).exists()


def test_generate_no_wait_json_lists_the_queued_jobs_with_their_batch(sdpipe: Invoke, redis_url: str) -> None:
    # Redis mode with no worker: the jobs stay queued, and the JSON says which batch they form
    env = {"REDIS_URL": redis_url, "SD_API_URL": "mock://"}
    size = ("--width", "64", "--height", "64")
    result = sdpipe("generate", "a cat", "--count", "2", *size, "--no-wait", "--json", env=env)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["state"] for row in rows] == ["queued", "queued"]
    assert rows[0]["batch_id"] and rows[0]["batch_id"] == rows[1]["batch_id"]
    store = RedisStatusStore.from_url(redis_url)
    try:
        assert {job.job_id for job in store.list_jobs(batch_id=rows[0]["batch_id"])} == {r["job_id"] for r in rows}
    finally:
        store.close()


def test_generate_webp_format_writes_webp(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "a cat", "--sd-url", "mock://", "--format", "webp", "--json")
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.stdout)
    with Image.open(job["result"]["image"]) as image:
        assert image.format == "WEBP"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["generate", "   "], "prompt is empty"),
        (["generate", "x", "--width", "0"], "width must be at least 8"),
        (["generate", "x", "--height", "-64"], "height must be at least 8"),
        (["generate", "x", "--width", "100000", "--height", "100000"], "MAX_PIXELS"),
        (["generate", "x", "--grid", "0x2"], "grid"),
        (["generate", "x", "--grid", "abc"], "ROWSxCOLS"),
        (["generate", "x", "--grid", "2x2", "--band-px", "200"], "band_px"),
        (["generate", "x", "--sigma", "0"], "sigma"),
        (["generate", "x", "--count", "0"], "count"),
        (["generate", "a" * 20_001], "at most 20000 characters"),
        (["generate", "x", "--no-wait"], "--no-wait needs Redis"),
        (["generate", "x", "--sd-url", "gpu-box:7860"], "SD_API_URL"),
        (["process", "missing.png"], "missing.png"),
        (["worker"], "needs Redis"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    sdpipe: Invoke, out_dir: Path, args: list[str], fragment: str
) -> None:
    result = sdpipe(*args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out_dir.exists()


def test_generate_when_the_sd_server_refuses_connections_says_so_at_once_exit_3(sdpipe: Invoke) -> None:
    # Given an SD server nobody listens on (and the default retries)
    result = sdpipe("generate", "x", "--sd-url", "http://127.0.0.1:9", "--width", "64", "--height", "64")
    # Then the CLI says so before submitting anything, in one line: exit 3 (unreachable)
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    (error_line,) = result.stderr.strip().splitlines()
    assert error_line.startswith("error: cannot reach the SD server at http://127.0.0.1:9: connection refused")
    assert "Traceback" not in result.output
    assert json.loads(sdpipe("jobs", "--json").stdout) == []


def test_generate_when_every_server_of_the_pool_refuses_connections_names_how_many(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "x", "--sd-url", "http://127.0.0.1:9,http://127.0.0.1:7", "--width", "64")
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: none of the 2 SD servers accepts a connection; cannot reach")


def test_generate_with_one_server_of_the_pool_up_runs(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "x", "--sd-url", "http://127.0.0.1:9,mock://", "--width", "64", "--height", "64")
    assert result.exit_code == 0, result.output


def test_generate_job_failure_exit_1(sdpipe: Invoke) -> None:
    # A 500 on every call is not "unreachable": the job failed, exit 1
    result = sdpipe("generate", "x", "--sd-url", "mock://?fail_rate=1.0", env={"MAX_RETRIES": "0"})
    assert result.exit_code == 1, result.output
    assert "OutOfMemoryError" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_generate_prints_batch_id_for_several_jobs(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "x", "--sd-url", "mock://", "--count", "2", "--width", "64", "--height", "64")
    assert result.exit_code == 0, result.output
    (batch_line,) = [line for line in result.stderr.splitlines() if line.startswith("batch ")]
    batch_id = batch_line.split()[1]
    listed = json.loads(sdpipe("jobs", "--batch", batch_id, "--json").stdout)
    assert len(listed) == 2
    assert {job["batch_id"] for job in listed} == {batch_id}


def test_process_images_merges_and_keeps_size(sdpipe: Invoke, tmp_path: Path) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, size=(101, 77, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.fromarray(pixels).save(tmp_path / "other.jpg", quality=95)
    result = sdpipe("process", str(tmp_path / "photo.png"), str(tmp_path / "other.jpg"), "--band-px", "6")
    assert result.exit_code == 0, result.output
    outputs = [Path(line) for line in result.stdout.strip().splitlines() if not line.startswith("job ")]
    assert len(outputs) == 2
    for output in outputs:
        with Image.open(output) as image:
            assert image.size == (77, 101)


def test_process_not_an_image_is_refused(sdpipe: Invoke, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    result = sdpipe("process", str(tmp_path / "notes.png"))
    assert result.exit_code == 2
    assert "notes.png" in result.stderr or "image" in result.stderr
    assert "Traceback" not in result.output


def test_process_folder_without_images_is_refused(sdpipe: Invoke, tmp_path: Path) -> None:
    result = sdpipe("process", str(tmp_path))
    assert result.exit_code == 2
    assert "the folder has no .png" in result.stderr


def _outputs(result: Any) -> list[Path]:
    return [Path(line) for line in result.stdout.strip().splitlines() if not line.startswith("job ")]


def test_process_applies_exif_orientation_and_records_it(sdpipe: Invoke, tmp_path: Path) -> None:
    # Given a photo stored 384x256 whose EXIF says to turn it (Orientation=6: shown 256x384)
    pixels = np.zeros((256, 384, 3), dtype=np.uint8)
    pixels[:32, :32] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    # When it is processed
    result = sdpipe("process", str(tmp_path / "photo.jpg"))
    assert result.exit_code == 0, result.output
    (output,) = _outputs(result)
    # Then the output stands upright, and the sidecar says the orientation was applied
    with Image.open(output) as image:
        assert image.size == (256, 384)
        assert image.convert("RGB").getpixel((250, 5))[0] > 200
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["input_image"]["exif_orientation"] == 6 and sidecar["input_image"]["orientation_applied"]


def test_process_reports_every_bad_input_then_exits_2(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "good.png")
    (tmp_path / "a.png").write_text("not an image")
    (tmp_path / "b.png").write_text("nor this")
    result = sdpipe("process", str(tmp_path / "good.png"), str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert result.exit_code == 2
    assert "a.png" in result.stderr and "b.png" in result.stderr
    assert "2 of 3 inputs cannot be processed" in result.stderr
    assert not out_dir.exists() or not any(out_dir.glob("*.png"))


def test_process_takes_a_folder_and_a_quoted_glob(sdpipe: Invoke, tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    for name in ("a.png", "b.png", "c.jpg"):
        Image.new("RGB", (64, 64), (9, 9, 9)).save(shots / name)
    result = sdpipe("process", str(shots))
    assert result.exit_code == 0, result.output
    assert len(_outputs(result)) == 3
    result = sdpipe("process", str(shots / "*.png"))
    assert result.exit_code == 0, result.output
    assert len(_outputs(result)) == 2


def test_process_refuses_an_animated_gif_unless_first_frame(sdpipe: Invoke, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (64, 64), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    refused = sdpipe("process", str(tmp_path / "anim.gif"))
    assert refused.exit_code == 2
    assert "animated GIF (3 frames)" in refused.stderr and "--first-frame" in refused.stderr
    result = sdpipe("process", str(tmp_path / "anim.gif"), "--first-frame")
    assert result.exit_code == 0, result.output
    sidecar = json.loads(_outputs(result)[0].with_suffix(".json").read_text())
    assert sidecar["input_image"]["frames"] == 3 and sidecar["input_image"]["first_frame_only"]


def test_process_warns_that_a_16_bit_png_is_reduced(sdpipe: Invoke, tmp_path: Path) -> None:
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    result = sdpipe("process", str(tmp_path / "deep.png"))
    assert result.exit_code == 0, result.output
    assert "16-bit PNG processed and written in 8 bits per channel" in result.stderr
    sidecar = json.loads(_outputs(result)[0].with_suffix(".json").read_text())
    assert sidecar["input_image"]["bit_depth"] == 16 and sidecar["input_image"]["reduced_to_8_bit"]


def test_generate_override_settings_reach_the_server(sdpipe: Invoke) -> None:
    result = sdpipe(
        "generate", "a cat", "--sd-url", "mock://", "--json", "--override", "CLIP_stop_at_last_layers=2",
        "--width", "64", "--height", "64",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.stdout)
    sidecar = json.loads(Path(job["result"]["sidecar"]).read_text())
    assert sidecar["parameters"]["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    # the mock honours it like A1111: Clip skip appears in the infotext
    assert "Clip skip: 2" in sidecar["infotext"]


def test_generate_sidecar_names_the_sdpipe_version_of_pyproject(sdpipe: Invoke) -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    result = sdpipe("generate", "a cat", "--sd-url", "mock://", "--json", "--width", "64", "--height", "64")
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.stdout)
    sidecar = json.loads(Path(job["result"]["sidecar"]).read_text())
    assert sidecar["sdpipe_version"] == pyproject["project"]["version"]


def test_generate_malformed_override_is_refused(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "a cat", "--override", "novalue")
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.stderr


def test_mock_sd_port_in_use_is_one_line_exit_2(sdpipe: Invoke) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = sdpipe("mock-sd", "--port", str(port))
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_generate_quality_sets_the_jpeg_quality(sdpipe: Invoke) -> None:
    sizes = {}
    for quality in ("20", "95"):
        args = ("generate", "a cat", "--sd-url", "mock://", "--format", "jpeg", "--quality", quality)
        result = sdpipe(*args, "--seed", "3", "--width", "128", "--height", "128")
        assert result.exit_code == 0, result.output
        (output,) = _outputs(result)
        sizes[quality] = output.stat().st_size
        assert json.loads(output.with_suffix(".json").read_text())["output"]["quality"] == int(quality)
    assert sizes["20"] < sizes["95"] / 2


def test_output_quality_setting_and_its_range(sdpipe: Invoke, tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    result = sdpipe("process", str(tmp_path / "a.png"), "--format", "webp", env={"OUTPUT_QUALITY": "30"})
    assert result.exit_code == 0, result.output
    assert json.loads(_outputs(result)[0].with_suffix(".json").read_text())["output"]["quality"] == 30
    refused = sdpipe("process", str(tmp_path / "a.png"), "--quality", "101")
    assert refused.exit_code == 2
    assert "quality must be between 1 and 100 (got 101)" in refused.stderr


def test_generate_name_template_makes_date_folders_and_fills_the_random_seed(sdpipe: Invoke, out_dir: Path) -> None:
    # When a random-seed job is named with a date folder and {seed}
    template = "{date:%Y-%m-%d}/{prompt}-{seed}"
    result = sdpipe("generate", "a red fox", "--sd-url", "mock://", "--name-template", template, *TINY)
    assert result.exit_code == 0, result.output
    (output,) = _outputs(result)
    # Then it sits in today's folder, named with the seed the server used (known only after generation)
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert output.parent.parent == out_dir.absolute()
    assert output.name == f"a-red-fox-{sidecar['seed']}.png" and sidecar["seed"] >= 0


def test_generate_non_latin_prompt_keeps_its_letters_in_the_name(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "東京の夜景", "--sd-url", "mock://", *TINY)
    assert result.exit_code == 0, result.output
    (output,) = _outputs(result)
    assert output.name.endswith("-東京の夜景.png")


def test_generate_name_template_outside_output_dir_is_refused(sdpipe: Invoke, out_dir: Path) -> None:
    result = sdpipe("generate", "a fox", "--sd-url", "mock://", "--name-template", "../{prompt}")
    assert result.exit_code == 2
    assert "--name-template '../{prompt}'" in result.stderr and "OUTPUT_DIR" in result.stderr
    assert not out_dir.exists() or not any(out_dir.rglob("*.png"))
    bad_setting = sdpipe("generate", "a fox", "--sd-url", "mock://", env={"OUTPUT_NAME": "/abs/{job}"})
    assert bad_setting.exit_code == 2 and "OUTPUT_NAME" in bad_setting.stderr


def test_process_twice_with_one_name_keeps_both_outputs(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "shot.png")
    for _ in range(2):
        assert sdpipe("process", str(tmp_path / "shot.png"), "--name-template", "{prompt}").exit_code == 0
    assert sorted(path.name for path in out_dir.glob("*.png")) == ["shot-0001.png", "shot.png"]
    again = sdpipe("process", str(tmp_path / "shot.png"), "--name-template", "{prompt}", "--overwrite")
    assert again.exit_code == 0
    assert sorted(path.name for path in out_dir.glob("*.png")) == ["shot-0001.png", "shot.png"]


def test_generate_interrupted_prints_the_results_already_finished(
    sdpipe: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cli.generate

    real_wait = cli.generate.wait_for_jobs

    def wait_then_interrupt(store: Any, job_ids: list[str], *, live: bool, **_: Any) -> Any:
        real_wait(store, job_ids[:1], live=live)  # the first job has finished when Ctrl-C comes
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.generate, "wait_for_jobs", wait_then_interrupt)
    result = sdpipe("generate", "x", "--count", "2", "--sd-url", "mock://?latency_ms=300", "--width", "64")
    assert result.exit_code == 130
    first_job = result.stdout.splitlines()[0].split()[1]
    record = json.loads(sdpipe("status", first_job, "--json").stdout)
    assert record["result"]["image"] in result.stdout.splitlines()
