"""``sdpipe status`` / ``sdpipe jobs`` read the store after the generating process has ended."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.jobs.planning import GenerationRequest, build_step_params, new_id, plan_generate
from pipeline.models import SDInfo
from pipeline.settings import load_settings
from pipeline.store import open_store
from pipeline.upscale.planning import UpscaleRequest, plan_upscale
from tests.test_cli.conftest import Invoke


def _generate(sdpipe: Invoke, *extra: str) -> list[dict[str, object]]:
    result = sdpipe("generate", "a red fox", "--sd-url", "mock://", "--json", "--width", "64", "--height", "64", *extra)
    return list(json.loads(result.stdout))


def test_status_shows_steps_and_result(sdpipe: Invoke) -> None:
    (job,) = _generate(sdpipe, "--seed", "42")
    job_id = str(job["job_id"])
    result = sdpipe("status", job_id[:8])
    assert result.exit_code == 0, result.output
    for fragment in ("succeeded", "a red fox", "generate", "merge", "seed 42", "attempt"):
        assert fragment in result.stdout
    as_json = json.loads(sdpipe("status", job_id, "--json").stdout)
    assert as_json["job_id"] == job_id
    assert as_json["steps"]["generate"]["attempts"] == 1


def test_status_says_when_a_later_job_replaced_the_image(sdpipe: Invoke) -> None:
    # Given a job whose output a later job of the same name has taken (its sidecar now names that job)
    (job,) = _generate(sdpipe)
    result = job["result"]
    assert isinstance(result, dict)
    sidecar = Path(str(result["sidecar"]))
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "job_id": "f" * 32}))
    # Then status does not present that file as this job's image
    shown = " ".join(sdpipe("status", str(job["job_id"])).stdout.split())
    assert "(gone: removed, or replaced by a later job of the same name)" in shown


def test_status_of_a_generate_batch_speaks_of_jobs_not_file_lines(sdpipe: Invoke) -> None:
    # Given a --count batch (no batch file) whose jobs failed: the mock sends images that do not decode
    failed = _generate(sdpipe, "--count", "2", "--sd-url", "mock://?faults=garbage:1")
    shown = sdpipe("status", "--batch", str(failed[0]["batch_id"])).stdout
    lines = [line.strip() for line in shown.splitlines()]
    # Then no file rows or line numbers are shown, and each failure carries its reason
    assert not any(line.startswith(("rows", "line ")) for line in lines)
    failures = [line for line in lines if " failed" in line]
    assert len(failures) == 2 and all(": generate: " in line or "does not decode" in line for line in failures)


def test_status_says_a_job_whose_step_is_done_waits_for_the_next(sdpipe: Invoke, out_dir: Path) -> None:
    # Given a job whose SD image is saved, no image worker having picked up its split yet
    settings = load_settings(output_dir=out_dir, sd_api_url="mock://")
    params = build_step_params(settings, grid="2x2", band_px=8, sigma=2.0)
    (spec,) = plan_generate(settings, GenerationRequest(prompt="x"), params, now=time.time())
    store = open_store(settings)
    try:
        store.create_jobs([spec])
        store.start_step(spec.job_id, "generate", now=time.time())
        store.finish_step(spec.job_id, "generate", now=time.time())
    finally:
        store.close()
    # Then status does not suggest the GPU is still at work on it
    shown = " ".join(sdpipe("status", spec.job_id).stdout.split())
    assert "generating (generate done; the next step waits for a worker thread to pick it up)" in shown


def test_status_unknown_job_exit_2(sdpipe: Invoke) -> None:
    _generate(sdpipe)
    result = sdpipe("status", "deadbeef")
    assert result.exit_code == 2
    assert "deadbeef" in result.stderr
    assert "sdpipe jobs" in result.stderr


def test_status_and_jobs_in_an_empty_folder_write_nothing(sdpipe: Invoke, out_dir: Path) -> None:
    status = sdpipe("status", "deadbeef")
    assert status.exit_code == 2
    assert "no sdpipe jobs under" in status.stderr
    assert sdpipe("jobs").stdout.strip() == "no jobs"
    assert not out_dir.exists()


def test_status_of_retried_job_shows_error_as_retried(sdpipe: Invoke) -> None:
    # the mock fails ~all calls; with fail_rate 0.5 and a fixed seed, the first call fails then one succeeds
    result = sdpipe(
        "generate", "x", "--sd-url", "mock://flaky?fail_rate=0.5&seed=3", "--json", "--count", "4",
        "--width", "64", "--height", "64",
    )  # fmt: skip
    jobs = json.loads(result.stdout)
    retried = [job for job in jobs if job["state"] == "succeeded" and job["steps"]["generate"]["attempts"] > 1]
    assert retried, "seed 3 must give at least one retried success"
    shown = sdpipe("status", retried[0]["job_id"]).stdout
    assert "retried after" in shown
    assert "error" not in shown.replace("retried after", "")


def test_jobs_filters_by_state(sdpipe: Invoke, monkeypatch: object) -> None:
    _generate(sdpipe)
    sdpipe(
        "generate",
        "x",
        "--sd-url",
        "mock://?fail_rate=1.0",
        "--width",
        "64",
        "--height",
        "64",
        env={"MAX_RETRIES": "0"},
    )
    failed = json.loads(sdpipe("jobs", "--state", "failed", "--json").stdout)
    succeeded = json.loads(sdpipe("jobs", "--state", "succeeded", "--json").stdout)
    assert [job["state"] for job in failed] == ["failed"]
    assert [job["state"] for job in succeeded] == ["succeeded"]
    assert "OutOfMemoryError" in failed[0]["error"]["message"] or "out of memory" in failed[0]["error"]["message"]
    table = sdpipe("jobs").stdout
    assert "failed" in table and "succeeded" in table


def test_doctor_reports_mock_ready(sdpipe: Invoke) -> None:
    result = sdpipe("doctor", "--sd-url", "mock://")
    assert result.exit_code == 0, result.output
    assert "embedded" in result.stdout


def test_doctor_unreachable_sd_exit_3_masks_secret(sdpipe: Invoke) -> None:
    result = sdpipe("doctor", "--sd-url", "http://user:topsecret@127.0.0.1:9", env={"SD_API_AUTH": "u:hunter2"})
    assert result.exit_code == 3, result.output
    assert "topsecret" not in result.output
    assert "hunter2" not in result.output
    assert "***" in result.output


def test_status_shows_what_the_server_did_differently(sdpipe: Invoke, out_dir: Path) -> None:
    # Given a job the server rendered with another sampler than the one asked for
    settings = load_settings(output_dir=out_dir, sd_api_url="mock://")
    params = build_step_params(settings, grid="2x2", band_px=8, sigma=2.0)
    (spec,) = plan_generate(settings, GenerationRequest(prompt="x"), params, now=time.time())
    warning = "the SD server used sampler 'DPM++ 2M', not 'Eulr a' (A1111 replaces a sampler it does not know)"
    store = open_store(settings)
    try:
        store.create_jobs([spec])
        store.set_sd_info(spec.job_id, SDInfo(seed=3, sampler="DPM++ 2M", warnings=[warning]))
    finally:
        store.close()
    # Then status says so
    shown = " ".join(sdpipe("status", spec.job_id).stdout.split())
    assert f"sd warning {warning}" in shown


def test_json_output_gives_moments_in_iso_8601_utc_like_sidecars(sdpipe: Invoke) -> None:
    (job,) = json.loads(sdpipe("generate", "x", "--sd-url", "mock://", "--width", "64", "--json").stdout)
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    for shown in (job, json.loads(sdpipe("status", job["job_id"], "--json").stdout)):
        assert re.fullmatch(iso, shown["created_at"]) and re.fullmatch(iso, shown["updated_at"])
        assert re.fullmatch(iso, shown["steps"]["merge"]["finished_at"])
        assert isinstance(shown["steps"]["merge"]["duration_s"], float)  # durations stay numbers
    sidecar = json.loads(Path(job["result"]["sidecar"]).read_text())
    assert sidecar["created_at"] == job["spec"]["created_at"]  # the same moment, written the same way
    manifest = json.loads(sdpipe("status", "--batch", job["batch_id"], "--json").stdout)
    assert re.fullmatch(iso, manifest["created_at"]) and re.fullmatch(iso, manifest["written_at"])


def test_jobs_at_80_columns_shows_one_line_per_job_and_status_the_whole_error(sdpipe: Invoke) -> None:
    long_prompt = "a lighthouse at dusk, " * 8
    failed = sdpipe(
        "generate", long_prompt, "--sd-url", "mock://?fail_rate=1.0", "--width", "64", env={"MAX_RETRIES": "0"}
    )
    assert failed.exit_code == 1
    job_id = failed.stdout.split()[1]
    assert sdpipe("generate", long_prompt, "--sd-url", "mock://", "--width", "64").exit_code == 0
    listing = sdpipe("jobs", env={"COLUMNS": "80"})
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), listing.stdout
    rows = [line for line in lines if "lighthouse" in line]
    assert len(rows) == 2  # one line per job: no wrapped prompt, path or error
    (failed_row,) = [line for line in rows if job_id[:8] in line]
    assert "generate: the SD ser" in failed_row and failed_row.rstrip("│ ").endswith("…")
    # the whole error is in `status`
    shown = " ".join(sdpipe("status", job_id, env={"COLUMNS": "80"}).stdout.split())
    assert "reserved in total by PyTorch" in shown


def test_json_output_leaves_parameters_alone_even_when_their_name_ends_in_at(sdpipe: Invoke) -> None:
    args = ("--refiner", "refiner.safetensors", "--refiner-switch-at", "0.8")
    (job,) = json.loads(sdpipe("generate", "x", "--sd-url", "mock://", "--width", "64", *args, "--json").stdout)
    assert job["spec"]["generation"]["refiner_switch_at"] == 0.8


def test_status_says_an_upscale_whose_split_is_done_renders_its_tiles(
    sdpipe: Invoke, out_dir: Path, tmp_path: Path
) -> None:
    # Given an upscale job whose first pass is done and 4 of its 9 tiles rendered
    settings = load_settings(output_dir=out_dir, sd_api_url="mock://")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 96, 3), dtype=np.uint8)).save(photo)
    [plan] = plan_upscale(
        settings,
        [photo],
        UpscaleRequest(scale=2, tile_px=64, overlap_px=16),
        build_step_params(settings, grid=None, band_px=None, sigma=None),
        output_dir=settings.output_dir.absolute(),
        batch_id=new_id(),
        now=time.time(),
    )
    job_id = plan.spec.job_id
    store = open_store(settings)
    try:
        store.create_jobs([plan.spec])
        store.start_step(job_id, "split", now=time.time())
        store.finish_step(job_id, "split", now=time.time())
        store.set_tile_total(job_id, 9)
        for index in range(4):
            store.add_tile_done(job_id, index)
    finally:
        store.close()
    # Then status says the tiles are rendering, not that a worker thread is awaited
    shown = " ".join(sdpipe("status", job_id).stdout.split())
    assert "splitting (split done; tiles rendering on the SD servers: 4/9 renders done)" in shown
