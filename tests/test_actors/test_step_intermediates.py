"""The files a job's steps hand each other: one durable SD answer, unsynced arrays files that are made
again when they cannot be trusted (written before the machine last started, or cut short)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors import Runtime
from pipeline.images import seams
from pipeline.jobs.arrays import atomic_save_arrays, load_arrays
from pipeline.jobs.files import JobFiles
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.jobs.steps import run_step
from pipeline.models import JobSpec, JobState
from pipeline.storage import local
from pipeline.storage.local import boot_time


def _job(rt: Runtime, seed: int = 11) -> JobSpec:
    params = build_step_params(rt.settings, grid="2x2", band_px=8, sigma=2.0)
    request = GenerationRequest(prompt="a lighthouse", seed=seed, width=128, height=96)
    (spec,) = plan_generate(rt.settings, request, params, now=time.time())
    rt.store.create_jobs([spec])
    return spec


def _run(rt: Runtime, spec: JobSpec, *steps: str) -> None:
    for step in steps:
        assert run_step(rt.context, spec.job_id, step).ran  # type: ignore[arg-type]


def _before_boot(path: Path) -> None:
    """Make ``path`` look written before this machine last started (before a crash)."""
    moment = boot_time() - 60
    os.utime(path, (moment, moment))


def test_step_intermediates_sd_answer_is_one_durable_file_and_arrays_are_not_synced(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every local write recorded with whether it was durable
    writes: list[tuple[str, bool, bool]] = []
    real = local.atomic_write_bytes

    def recording(path: Path, data: local.Data, *, durable: bool = True, sync_folder: bool = True) -> None:
        writes.append((path.name, durable, sync_folder))
        real(path, data, durable=durable, sync_folder=sync_folder)

    monkeypatch.setattr(local, "atomic_write_bytes", recording)
    spec = _job(runtime)
    # When the steps before the merge run
    _run(runtime, spec, "generate", "split", "seam_blur")
    # Then the work folder holds one file per step: the SD answer (no sd.json beside it), tiles, blurred
    files = JobFiles(runtime.settings.output_dir.absolute(), spec.job_id)
    assert sorted(p.name for p in files.work_dir.iterdir()) == ["blurred.arrays", "source.img", "tiles.arrays"]
    assert writes == [("source.img", True, True), ("tiles.arrays", False, True), ("blurred.arrays", False, True)]
    # And the SD answer reads back as what the server said and the image it sent
    assert files.read_sd_answer()["seed"] == 11 == runtime.store.get(spec.job_id).sd_info.seed  # type: ignore[union-attr]
    answer = runtime.settings.output_dir.absolute() / "answer.png"
    answer.write_bytes(files.source_image())
    with Image.open(answer) as image:
        assert image.size == (128, 96)
    # And the merge writes the image and its sidecar durably, the folder synced once, after the sidecar,
    # and no name file (the name wanted was free)
    writes.clear()
    _run(runtime, spec, "merge")
    record = runtime.store.get(spec.job_id)
    assert record.state is JobState.SUCCEEDED and record.result is not None
    assert writes == [(Path(record.result.image).name, True, False), (Path(record.result.sidecar).name, True, True)]


@pytest.mark.parametrize("damage", ["written before a restart", "cut short"])
def test_step_intermediates_that_cannot_be_trusted_are_made_again(
    runtime: Runtime, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    # Given a job whose tiles and blurred tiles are saved, and what its merge should give
    spec = _job(runtime)
    _run(runtime, spec, "generate", "split", "seam_blur")
    files = JobFiles(runtime.settings.output_dir.absolute(), spec.job_id)
    expected = _merged_from_tiles(files, spec)
    # When a crash damaged both files: zeros where the data never reached the disk, or cut short
    for blob in (files.tiles, files.blurred):
        assert blob.path is not None
        size = blob.path.stat().st_size
        if damage == "cut short":
            with blob.path.open("r+b") as handle:
                handle.truncate(size // 2)
        else:
            data = blob.path.read_bytes()
            header_end = data.index(b"]}") + 2
            blob.path.write_bytes(data[:header_end] + bytes(size - header_end))
            _before_boot(blob.path)
    # Then the merge does not trust them: it makes them again from the SD image and succeeds
    with caplog.at_level(logging.WARNING, logger="pipeline.jobs.steps"):
        _run(runtime, spec, "merge")
    record = runtime.store.get(spec.job_id)
    assert record.state is JobState.SUCCEEDED and record.result is not None
    with Image.open(record.result.image) as image:
        assert np.array_equal(np.asarray(image), expected)
    remade = [r.getMessage() for r in caplog.records if "made again" in r.getMessage()]
    assert len(remade) == 2 and "blurred.arrays" in remade[0] and "tiles.arrays" in remade[1]
    assert ("cut short" in remade[0]) is (damage == "cut short")


def _merged_from_tiles(files: JobFiles, spec: JobSpec) -> np.ndarray:
    """What the merge must give: the saved tiles blurred and merged by the image functions themselves."""
    manifest, tiles = load_arrays(files.tiles)
    width, height = manifest["width"], manifest["height"]
    boxes = [seams.TileBox.from_dict(box) for box in manifest["tiles"]]
    blurred = [seams.seam_blur_tile(t, b, width, height, spec.step_params) for b, t in zip(boxes, tiles, strict=True)]
    return seams.merge(list(zip(boxes, blurred, strict=True)), width, height)


def test_step_intermediates_seam_blur_saves_only_the_bands_and_the_merge_puts_them_back(runtime: Runtime) -> None:
    # Given a job split and seam-blurred
    spec = _job(runtime)
    _run(runtime, spec, "generate", "split", "seam_blur")
    files = JobFiles(runtime.settings.output_dir.absolute(), spec.job_id)
    expected = _merged_from_tiles(files, spec)
    # Then the seam blur's file holds the bands alone, a small part of the tiles' pixels
    meta, pieces = load_arrays(files.blurred)
    _, tiles = load_arrays(files.tiles)
    assert len(meta["bands"]) == len(pieces) > 0
    assert sum(piece.nbytes for piece in pieces) < sum(tile.nbytes for tile in tiles) // 2
    # And the merge's image is the tiles blurred and merged, pixel for pixel
    _assert_merge_makes(runtime, spec, expected)


def _assert_merge_makes(runtime: Runtime, spec: JobSpec, expected: np.ndarray) -> None:
    """Run the job's merge; its image must be ``expected``, pixel for pixel."""
    _run(runtime, spec, "merge")
    record = runtime.store.get(spec.job_id)
    assert record.result is not None
    with Image.open(record.result.image) as image:
        assert np.array_equal(np.asarray(image), expected)


def test_step_intermediates_blurred_tiles_saved_whole_by_an_earlier_version_are_merged(runtime: Runtime) -> None:
    # Given a job whose seam blur saved the blurred tiles whole, as versions before the bands did
    spec = _job(runtime, seed=13)
    _run(runtime, spec, "generate", "split")
    files = JobFiles(runtime.settings.output_dir.absolute(), spec.job_id)
    expected = _merged_from_tiles(files, spec)
    manifest, tiles = load_arrays(files.tiles)
    boxes = [seams.TileBox.from_dict(box) for box in manifest["tiles"]]
    width, height = manifest["width"], manifest["height"]
    whole = [seams.seam_blur_tile(t, b, width, height, spec.step_params) for b, t in zip(boxes, tiles, strict=True)]
    atomic_save_arrays(files.blurred, manifest, whole, durable=False)
    runtime.store.start_step(spec.job_id, "seam_blur", now=time.time())
    runtime.store.finish_step(spec.job_id, "seam_blur", now=time.time())
    # When the merge runs after the upgrade, then it reads them as they are
    _assert_merge_makes(runtime, spec, expected)


def test_step_intermediates_a_split_redelivered_after_a_restart_splits_again(runtime: Runtime) -> None:
    # Given a job split before the machine restarted (its tiles file not synced)
    spec = _job(runtime)
    _run(runtime, spec, "generate", "split")
    files = JobFiles(runtime.settings.output_dir.absolute(), spec.job_id)
    assert files.tiles.path is not None
    _before_boot(files.tiles.path)
    # When the split is delivered again (before the job moved on)
    outcome = run_step(runtime.context, spec.job_id, "split")
    # Then it does not take the file for done: it splits again (a fresh file)
    assert outcome.ran and not outcome.skipped
    assert files.tiles.exists_unsynced()


def test_step_intermediates_from_an_earlier_version_are_still_read(runtime: Runtime) -> None:
    # Given a job generated by an earlier version: sd.json beside a source.img holding the image alone
    spec = _job(runtime, seed=12)
    _run(runtime, spec, "generate")
    files = JobFiles(runtime.settings.output_dir.absolute(), spec.job_id)
    said, image = files.read_sd_answer(), files.source_image()
    files.source.write(image)
    files.sd_info.write(json.dumps(said).encode())
    # When generate is delivered again, and the job goes on
    again = run_step(runtime.context, spec.job_id, "generate")
    _run(runtime, spec, "split", "seam_blur", "merge")
    # Then the server's answer came from sd.json, the image from source.img
    assert again.skipped
    record = runtime.store.get(spec.job_id)
    assert record.state is JobState.SUCCEEDED and record.sd_info is not None and record.sd_info.seed == 12
