"""The step actors on a StubBroker with in-process workers: success, retries, permanent failures, idempotency."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import respx
from PIL import Image

from actors import Runtime, open_runtime
from actors.steps import OUTRANKED_MAX_DELAY_MS, REQUEUE_DELAY_MS, requeue_delay_ms
from pipeline.errors import NoFreeSlot, Outranked, StorageUnavailable, StoreUnavailable
from pipeline.images.infotext import parse_infotext
from pipeline.jobs.files import JobFiles
from pipeline.jobs.planning import GenerationRequest, ProcessPlan, build_step_params, plan_generate, plan_process
from pipeline.jobs.retention import remove_orphaned_work
from pipeline.jobs.steps import run_step
from pipeline.models import JobRecord, JobSpec, JobState
from pipeline.settings import Settings
from pipeline.storage.local import LocalStorage
from tests.procs import wait_until
from tests.test_actors.conftest import SD_URL, sd_png_response

Wait = Callable[[Runtime, list[str]], list[JobRecord]]


def _submit(rt: Runtime, prompt: str = "a lighthouse at dusk", count: int = 1, seed: int = 7) -> list[str]:
    params = build_step_params(rt.settings, grid="2x2", band_px=8, sigma=2.0)
    request = GenerationRequest(prompt=prompt, seed=seed, width=128, height=96)
    specs = plan_generate(rt.settings, request, params, count=count, now=time.time())
    rt.submit(specs)
    return [spec.job_id for spec in specs]


def test_generate_job_writes_image_sidecar_and_succeeds(runtime: Runtime, wait_terminal: Wait) -> None:
    # Given two jobs on the in-process mock server
    ids = _submit(runtime, count=2)
    # When the workers run them
    records = wait_terminal(runtime, ids)
    # Then both succeeded, with an image and a sidecar whose seed is the one the server used
    for seed, record in zip((7, 8), records, strict=True):
        assert record.state is JobState.SUCCEEDED, record.error
        assert record.result is not None
        image_path = Path(record.result.image)
        sidecar = json.loads(Path(record.result.sidecar).read_text())
        assert sidecar["seed"] == seed == record.sd_info.seed
        # the step timings are "timings": "steps" is a sampling parameter (parameters.steps)
        assert set(sidecar["timings"]) == {"generate", "split", "seam_blur", "merge"} and "steps" not in sidecar
        assert sidecar["parameters"]["steps"] == record.spec.generation.steps  # type: ignore[union-attr]
        with Image.open(image_path) as image:
            assert image.size == (128, 96)
            params = parse_infotext(image.info["parameters"])
        assert params["Seed"] == str(seed)
        assert (params["Seam grid-1"], params["Seam grid-2"]) == ("2", "2")  # A1111 splits WxH values
        assert [step for step, info in record.steps.items() if info.attempts == 1] == [
            "generate",
            "split",
            "seam_blur",
            "merge",
        ]
        # and the intermediates are gone (removed right after the success is recorded)
        work = runtime.settings.output_dir / ".sdpipe" / "work" / record.job_id
        assert wait_until(lambda work=work: not work.exists(), timeout_s=10)


def test_generate_retries_out_of_memory_then_succeeds(respx_runtime: Runtime, wait_terminal: Wait) -> None:
    # Given an SD server that answers 500 OutOfMemoryError twice, then 200
    oom = {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory. Tried to allocate"}
    with respx.mock(base_url=SD_URL, assert_all_called=True) as sd:
        route = sd.post("/sdapi/v1/txt2img").mock(
            side_effect=[
                httpx.Response(500, json=oom),
                httpx.Response(500, json=oom),
                httpx.Response(200, json=sd_png_response(seed=7)),
            ]
        )
        ids = _submit(respx_runtime)
        (record,) = wait_terminal(respx_runtime, ids)
    # Then the job succeeded after 3 attempts of generate, and the server was called 3 times
    assert record.state is JobState.SUCCEEDED
    assert record.steps["generate"].attempts == 3
    assert route.call_count == 3


def test_generate_422_fails_at_once_with_server_message(respx_runtime: Runtime, wait_terminal: Wait) -> None:
    body = {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]}
    with respx.mock(base_url=SD_URL) as sd:
        route = sd.post("/sdapi/v1/txt2img").mock(return_value=httpx.Response(422, json=body))
        ids = _submit(respx_runtime)
        (record,) = wait_terminal(respx_runtime, ids)
        time.sleep(0.3)  # a retry, if any, would have come by now (backoff is 10-50 ms here)
        calls = route.call_count
    assert record.state is JobState.FAILED
    assert calls == 1
    assert record.steps["generate"].attempts == 1
    assert record.error is not None
    assert record.error.step == "generate"
    assert "value is not a valid integer" in record.error.message


def test_generate_unreachable_retries_then_fails_clearly(respx_runtime: Runtime, wait_terminal: Wait) -> None:
    with respx.mock(base_url=SD_URL) as sd:
        route = sd.post("/sdapi/v1/txt2img").mock(side_effect=httpx.ConnectError("Connection refused"))
        ids = _submit(respx_runtime)
        (record,) = wait_terminal(respx_runtime, ids)
    # max_retries=2: one attempt plus two retries, then on_retry_exhausted marks it failed
    assert route.call_count == 3
    assert record.state is JobState.FAILED
    assert record.steps["generate"].attempts == 3
    assert record.error is not None
    assert "cannot reach" in record.error.message
    assert "gave up after 3 attempts" in record.error.message


def test_redelivered_generate_does_not_call_sd_again(respx_runtime: Runtime, wait_terminal: Wait) -> None:
    with respx.mock(base_url=SD_URL) as sd:
        route = sd.post("/sdapi/v1/txt2img").mock(return_value=httpx.Response(200, json=sd_png_response()))
        params = build_step_params(respx_runtime.settings, grid="2x2", band_px=8, sigma=2.0)
        (spec,) = plan_generate(respx_runtime.settings, GenerationRequest(prompt="x"), params, now=time.time())
        respx_runtime.store.create_jobs([spec])
        # When generate is delivered twice before the job moves on (a worker died before its ack)
        assert run_step(respx_runtime.context, spec.job_id, "generate").ran
        second = run_step(respx_runtime.context, spec.job_id, "generate")
        # Then the second delivery finds the saved image and does not pay for another
        assert second.skipped
        assert route.call_count == 1
        # And a full pipeline delivered again after success does nothing at all
        respx_runtime.actors.chain_for(spec).run()
        (record,) = wait_terminal(respx_runtime, [spec.job_id])
        assert record.state is JobState.SUCCEEDED
        respx_runtime.actors.chain_for(spec).run()
        respx_runtime.broker.join("sd")
        respx_runtime.broker.join("images")
        assert route.call_count == 1
    assert respx_runtime.store.get(spec.job_id).steps["generate"].attempts == 3


def test_process_job_keeps_input_parameters(runtime: Runtime, wait_terminal: Wait, tmp_path: Path) -> None:
    # Given a PNG with A1111 parameters
    pixels = np.random.default_rng(3).integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
    source = tmp_path / "in.png"
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 99, Version: v1.10.1")
    Image.fromarray(pixels).save(source, pnginfo=meta)
    params = build_step_params(runtime.settings, grid="2x3", band_px=4, sigma=1.5)
    plans = plan_process(runtime.settings, [source], params, output_dir=runtime.settings.output_dir, now=time.time())
    for plan in plans:
        plan.ingest()
    runtime.submit([plan.spec for plan in plans])
    (record,) = wait_terminal(runtime, [plans[0].spec.job_id])
    assert record.state is JobState.SUCCEEDED, record.error
    assert "generate" not in record.steps
    assert record.result is not None
    with Image.open(record.result.image) as image:
        text = image.info["parameters"]
        out = np.asarray(image)
    assert parse_infotext(text)["Seed"] == "99"
    assert text.index("Seam grid: 2x3") < text.index("Version: v1.10.1")
    # pixels far from the cuts are the input's
    assert np.array_equal(out[:20, :20], pixels[:20, :20])


def test_merge_run_again_after_a_crash_keeps_its_claimed_name(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job named "same" while same.png belongs to an earlier job
    output_dir = runtime.settings.output_dir.absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "same.json").write_text(json.dumps({"job_id": "e" * 32}))
    (output_dir / "same.png").write_bytes(b"earlier")
    params = build_step_params(runtime.settings, grid="2x2", band_px=8, sigma=2.0)
    request = GenerationRequest(prompt="x", seed=3, width=64, height=64)
    (spec,) = plan_generate(runtime.settings, request, params, name="same", now=time.time())
    runtime.store.create_jobs([spec])
    for step in ("generate", "split", "seam_blur"):
        run_step(runtime.context, spec.job_id, step)  # type: ignore[arg-type]
    # When its merge dies after claiming same-0001 (writing the image fails once)
    real_write = LocalStorage.write

    def failing_write(self: LocalStorage, key: str, data: object, **options: bool) -> None:
        if key.endswith(".png"):
            raise OSError("disk full")
        real_write(self, key, data, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStorage, "write", failing_write)
    with pytest.raises(OSError):
        run_step(runtime.context, spec.job_id, "merge")
    monkeypatch.setattr(LocalStorage, "write", real_write)
    # and the earlier job's files are removed before the merge runs again
    (output_dir / "same.png").unlink()
    (output_dir / "same.json").unlink()
    run_step(runtime.context, spec.job_id, "merge")
    # Then the job wrote exactly one image, under the name it claimed first
    record = runtime.store.get(spec.job_id)
    assert record.state is JobState.SUCCEEDED
    assert sorted(p.name for p in output_dir.glob("*.png")) == ["same-0001.png"]
    assert Path(str(record.result.image)).name == "same-0001.png"  # type: ignore[union-attr]


def _at_merge(runtime: Runtime) -> JobSpec:
    """A recorded 64² job whose steps before the merge have run (in this thread)."""
    params = build_step_params(runtime.settings, grid="2x2", band_px=8, sigma=2.0)
    request = GenerationRequest(prompt="x", seed=3, width=64, height=64)
    (spec,) = plan_generate(runtime.settings, request, params, now=time.time())
    runtime.store.create_jobs([spec])
    for step in ("generate", "split", "seam_blur"):
        run_step(runtime.context, spec.job_id, step)  # type: ignore[arg-type]
    return spec


def test_merge_redelivered_after_a_crash_before_the_work_folder_went_removes_it(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job whose merge recorded its success, then died before removing the work folder
    spec = _at_merge(runtime)
    monkeypatch.setattr(JobFiles, "remove_work_dir", lambda self: None)  # the process dies right there
    run_step(runtime.context, spec.job_id, "merge")
    monkeypatch.undo()
    work = runtime.settings.output_dir / ".sdpipe" / "work" / spec.job_id
    assert runtime.store.get(spec.job_id).state is JobState.SUCCEEDED and work.is_dir()
    # When its merge message is delivered again (it was never acknowledged)
    outcome = run_step(runtime.context, spec.job_id, "merge")
    # Then the step does not run again, and the work folder is gone
    assert not outcome.ran and not work.exists()


def test_merge_whose_work_folder_cannot_be_removed_succeeds_and_leaves_it_to_the_orphan_rule(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job at its merge, and a bucket that stops answering when its work folder is removed
    spec = _at_merge(runtime)

    def unreachable(self: JobFiles) -> None:
        raise StorageUnavailable("cannot reach the bucket: connection refused")

    monkeypatch.setattr(JobFiles, "remove_work_dir", unreachable)
    # When the merge runs
    with caplog.at_level(logging.WARNING, logger="pipeline.jobs.steps"):
        outcome = run_step(runtime.context, spec.job_id, "merge")
    # Then the delivery ends normally (its success is recorded: nothing to retry), and says why the folder stays
    assert outcome.ran and runtime.store.get(spec.job_id).state is JobState.SUCCEEDED
    assert [r.getMessage() for r in caplog.records] == [
        f"job {spec.job_id}: work folder not removed (cannot reach the bucket: connection refused); "
        "the orphan rule removes it later"
    ]


def test_embedded_runtime_closed_once_a_job_succeeded_still_removes_its_work_folder(
    settings: Settings, wait_terminal: Wait, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a slow removal of the work folder, which comes after the job reads as succeeded
    real_remove = JobFiles.remove_work_dir

    def slow_remove(self: JobFiles) -> None:
        time.sleep(0.5)
        real_remove(self)

    monkeypatch.setattr(JobFiles, "remove_work_dir", slow_remove)
    # When a command sees its job succeeded and closes the embedded runtime at once (sdpipe generate)
    with open_runtime(settings) as rt:
        (done,) = wait_terminal(rt, _submit(rt))
    # Then the close waited for the job's thread: the work folder is gone, not left for an hour
    assert done.state is JobState.SUCCEEDED, done.error
    assert not (settings.output_dir / ".sdpipe" / "work" / done.job_id).exists()


def test_step_of_a_job_whose_record_is_gone_is_dropped_with_a_warning_and_its_work_folder_removed(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a message for a job the store lost (Redis restarted without persistence), with a work folder
    work = runtime.settings.output_dir / ".sdpipe" / "work" / "gone-1"
    work.mkdir(parents=True)
    (work / "tiles.arrays").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="pipeline.jobs.steps"):
        outcome = run_step(runtime.context, "gone-1", "split")
    # Then the step does not run, says why at WARNING, and the orphaned work folder is gone
    assert not outcome.ran and not work.exists()
    (line,) = [record for record in caplog.records if record.name == "pipeline.jobs.steps"]
    assert line.levelno == logging.WARNING and "job records are gone" in line.getMessage()


def _recorded(rt: Runtime, prompt: str) -> JobSpec:
    """A generation job recorded in the store and never sent: it stays queued."""
    (spec,) = plan_generate(
        rt.settings,
        GenerationRequest(prompt=prompt),
        build_step_params(rt.settings, grid=None, band_px=None, sigma=None),
        now=time.time(),
    )
    rt.store.create_jobs([spec])
    return spec


def test_remove_orphaned_work_removes_old_folders_of_jobs_without_records(runtime: Runtime) -> None:
    # Given work folders: an old one whose job the store lost, an old one of a known job, a fresh orphan
    spec = _recorded(runtime, "kept")
    work = runtime.settings.output_dir / ".sdpipe" / "work"
    folders = {name: work / name for name in ("lost-old", spec.job_id, "lost-fresh")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "source.img").write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    for name in ("lost-old", spec.job_id):
        os.utime(folders[name], (hours_ago, hours_ago))
    # When a worker starts and looks for them
    assert remove_orphaned_work(runtime.store, runtime.context.storage(), now=time.time()) == 1
    # Then only the old orphan is gone (a fresh one may be a process job about to be recorded)
    assert not folders["lost-old"].exists() and folders[spec.job_id].exists() and folders["lost-fresh"].exists()


def test_remove_orphaned_work_removes_old_folders_of_succeeded_jobs(
    runtime: Runtime, wait_terminal: Wait, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a succeeded job whose work folder a crash left (it is removed just after the success is
    # recorded), and an old folder of a job still queued
    (done,) = wait_terminal(runtime, _submit(runtime))
    assert done.state is JobState.SUCCEEDED, done.error
    queued = _recorded(runtime, "queued")
    work = runtime.settings.output_dir / ".sdpipe" / "work"
    folders = {job_id: work / job_id for job_id in (done.job_id, queued.job_id)}
    assert wait_until(lambda: not folders[done.job_id].exists(), timeout_s=10)
    hours_ago = time.time() - 2 * 3600
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "source.img").write_bytes(b"x")
        os.utime(folder, (hours_ago, hours_ago))
    # When a worker starts and looks for orphans
    with caplog.at_level(logging.INFO, logger="pipeline.jobs.retention"):
        assert remove_orphaned_work(runtime.store, runtime.context.storage(), now=time.time()) == 1
    # Then the succeeded job's folder is gone and the queued job's is kept
    assert not folders[done.job_id].exists() and folders[queued.job_id].exists()
    # And the log says what the folder was (no lost records to chase: a WARNING would say so)
    work_dir = runtime.settings.output_dir.absolute() / ".sdpipe" / "work"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.INFO,
            f"removed 1 work folder(s) under {work_dir} of jobs that succeeded (left by a process that ended "
            "before removing them)",
        )
    ]


def test_requeue_delay_of_a_generation_outranked_again_and_again_doubles_up_to_its_bound() -> None:
    outranked = Outranked("job 1234: higher-priority work waits for the SD servers; requeued")
    low, high = REQUEUE_DELAY_MS
    assert low <= requeue_delay_ms(outranked) <= high
    assert 2 * low <= requeue_delay_ms(outranked, outranked=1) <= 2 * high
    assert requeue_delay_ms(outranked, outranked=20) == OUTRANKED_MAX_DELAY_MS
    # A delivery that waited its whole slot wait for busy servers goes back at once: no delay queue
    assert requeue_delay_ms(NoFreeSlot("all busy"), outranked=20) is None


def _inputs(runtime: Runtime, tmp_path: Path, count: int) -> list[ProcessPlan]:
    paths = []
    for index in range(count):
        paths.append(tmp_path / f"in{index}.png")
        Image.new("RGB", (64, 64), (index, 0, 0)).save(paths[-1])
    params = build_step_params(runtime.settings, grid="2x2", band_px=8, sigma=2.0)
    output = runtime.settings.output_location
    return plan_process(runtime.settings, paths, params, output_dir=output, batch_id="b-in", now=time.time())


def test_stage_inputs_stopped_midway_takes_its_copies_back(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three inputs, and Ctrl-C while the second one is copied
    inputs = _inputs(runtime, tmp_path, 3)
    real = ProcessPlan.ingest
    copied: list[str] = []

    def interrupted(self: ProcessPlan, settings: Settings | None = None) -> None:
        if copied:
            raise KeyboardInterrupt
        real(self, settings)
        copied.append(self.spec.job_id)

    monkeypatch.setattr(ProcessPlan, "ingest", interrupted)
    # When the copies are staged
    with pytest.raises(KeyboardInterrupt):
        runtime.stage_inputs(inputs)
    # Then the one copy made is gone again
    assert copied and not (runtime.settings.output_dir / ".sdpipe" / "work" / copied[0]).exists()


def test_discard_unrecorded_reads_the_store_once_and_leaves_copies_when_it_cannot_answer(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given copies of inputs whose submission failed, and a store that does not answer (Redis hung)
    inputs = _inputs(runtime, tmp_path, 4)
    runtime.stage_inputs(inputs)
    reads: list[int] = []

    def hung(job_ids: list[str]) -> list[JobRecord]:
        reads.append(len(job_ids))
        raise StoreUnavailable("Redis did not answer in 10 s")

    monkeypatch.setattr(runtime.store, "get_many", hung)
    monkeypatch.setattr(runtime.store, "get", lambda job_id: pytest.fail("one read per job"))
    # When the failed submission's copies are discarded
    runtime.discard_unrecorded(inputs)
    # Then the store was asked once for all of them, and the copies are left to the orphan rule
    assert reads == [4]
    assert all((runtime.settings.output_dir / ".sdpipe" / "work" / p.spec.job_id).exists() for p in inputs)
    # And once it answers that none was recorded, they go
    monkeypatch.undo()
    runtime.discard_unrecorded(inputs)
    assert not any((runtime.settings.output_dir / ".sdpipe" / "work" / p.spec.job_id).exists() for p in inputs)
