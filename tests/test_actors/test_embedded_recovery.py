"""Embedded mode: jobs a killed process left unfinished are marked failed (Interrupted), then retryable."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import Runtime, open_runtime
from pipeline.errors import PipelineError
from pipeline.jobs.files import JobFiles
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.jobs.retention import remove_orphaned_work
from pipeline.models import JobRecord, JobSpec, JobState
from pipeline.settings import Settings
from pipeline.storage import open_storage
from pipeline.store import open_store
from tests.conftest import S3Bucket
from tests.helpers import wait_until

Wait = Callable[[Runtime, list[str]], list[JobRecord]]


def _specs(settings: Settings, count: int) -> list[JobSpec]:
    params = build_step_params(settings, grid="2x2", band_px=4, sigma=1.0)
    request = GenerationRequest(prompt="left behind", seed=7, width=64, height=64)
    return plan_generate(settings, request, params, count=count, now=time.time())


def _leave_unfinished(settings: Settings) -> list[str]:
    """What a killed embedded process leaves: jobs queued, one generating, one already splitting."""
    store = open_store(settings)
    specs = _specs(settings, 3)
    store.create_jobs(specs)
    now = time.time()
    assert store.start_step(specs[0].job_id, "generate", now=now) is not None
    store.start_step(specs[1].job_id, "generate", now=now)
    store.finish_step(specs[1].job_id, "generate", now=now)
    assert store.start_step(specs[1].job_id, "split", now=now) is not None
    store.close()
    return [spec.job_id for spec in specs]


def test_embedded_open_marks_dead_process_jobs_interrupted_then_retry_succeeds(
    settings: Settings, wait_terminal: Wait, caplog: pytest.LogCaptureFixture
) -> None:
    # Given jobs left generating / splitting / queued with no embedded process alive
    ids = _leave_unfinished(settings)
    # When an embedded runtime opens on the same OUTPUT_DIR
    with caplog.at_level(logging.WARNING, logger="actors.runtime"), open_runtime(settings) as rt:
        records = [rt.store.get(job_id) for job_id in ids]
        # Then each is failed "Interrupted" at the step it was at, and retryable
        assert [r.state for r in records] == [JobState.FAILED] * 3
        errors = [r.error for r in records]
        assert all(e is not None and e.type == "Interrupted" and e.transient for e in errors)
        assert [e.step for e in errors if e is not None] == ["generate", "split", "generate"]
        assert "sdpipe retry" in (errors[0].message if errors[0] else "")
        assert [r.getMessage() for r in caplog.records if "Interrupted" in r.getMessage()] == [
            "3 job(s) left unfinished by an sdpipe process that ended (killed or crashed) marked failed "
            "(Interrupted); `sdpipe retry <id>` runs them again"
        ]
        # And a retry runs them to success (the one left splitting has no real image here: not run)
        generating, queued = records[0], records[2]
        assert len(rt.retry([generating, queued])) == 2
        done = wait_terminal(rt, [generating.job_id, queued.job_id])
        assert [r.state for r in done] == [JobState.SUCCEEDED] * 2
        assert done[0].steps["generate"].attempts == 2 and done[1].steps["generate"].attempts == 1


def test_embedded_open_pages_through_many_orphans(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.runtime

    monkeypatch.setattr(actors.runtime, "_ORPHAN_PAGE", 2)
    store = open_store(settings)
    store.create_jobs(_specs(settings, 5))
    store.close()
    with open_runtime(settings, start_embedded_worker=False) as rt:
        counts = rt.store.count_by_state()
    assert (counts[JobState.QUEUED], counts[JobState.FAILED]) == (0, 5)


def test_embedded_open_leaves_jobs_alone_while_another_runtime_is_open(settings: Settings) -> None:
    # Given a live embedded process (a cancel-style runtime: no worker, still holds the lock)
    with open_runtime(settings, start_embedded_worker=False) as live:
        # And unfinished jobs (they may be that live process's)
        ids = _leave_unfinished(settings)
        # When a second embedded runtime opens on the same OUTPUT_DIR (its worker idle: nothing queued)
        with open_runtime(settings) as second:
            states = [second.store.get(job_id).state for job_id in ids]
        # Then nothing was touched
        assert states == [JobState.GENERATING, JobState.SPLITTING, JobState.QUEUED]
        assert [live.store.get(job_id).error for job_id in ids] == [None, None, None]
    # Once every embedded process has ended, the next one recovers them
    with open_runtime(settings, start_embedded_worker=False) as rt:
        assert [rt.store.get(job_id).state for job_id in ids] == [JobState.FAILED] * 3


def test_embedded_close_releases_lock_even_if_store_close_fails(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = open_runtime(settings, start_embedded_worker=False)

    def broken_close() -> None:
        raise PipelineError("store gone")

    monkeypatch.setattr(rt.store, "close", broken_close)
    with pytest.raises(PipelineError):
        rt.close()
    ids = _leave_unfinished(settings)
    with open_runtime(settings, start_embedded_worker=False) as again:
        assert again.store.get(ids[0]).state is JobState.FAILED


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL, fcntl")
def test_embedded_generate_killed_mid_job_is_interrupted(settings: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "REDIS_", "OUTPUT_"))}
    env.update(OUTPUT_DIR=str(settings.output_dir), PYTHONUNBUFFERED="1")
    log = tmp_path / "generate.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "generate", "a lighthouse", "--sd-url", "mock://?latency_ms=3000"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:

        def generating() -> bool:
            path = settings.output_dir / ".sdpipe" / "status.sqlite3"
            if not path.exists():
                return False
            store = open_store(settings, create=False)
            try:
                return store.count_by_state()[JobState.GENERATING] == 1
            except PipelineError:
                return False
            finally:
                store.close()

        assert wait_until(generating, timeout_s=8, interval_s=0.1), log.read_text(errors="replace")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with open_runtime(settings, start_embedded_worker=False) as rt:
        (record,) = rt.store.list_jobs()
    assert record.state is JobState.FAILED
    assert record.error is not None and (record.error.type, record.error.step) == ("Interrupted", "generate")


def test_embedded_open_alone_removes_the_old_work_folder_of_a_succeeded_job(
    settings: Settings, wait_terminal: Wait
) -> None:
    # Given a succeeded job whose work folder a kill left (it goes just after the success is
    # recorded), and the old folder of a job left unfinished (it is failed on open, and retryable)
    with open_runtime(settings) as rt:
        (spec,) = _specs(settings, 1)
        rt.submit([spec])
        (done,) = wait_terminal(rt, [spec.job_id])
    assert done.state is JobState.SUCCEEDED, done.error
    unfinished = _leave_unfinished(settings)[0]
    work = settings.output_dir / ".sdpipe" / "work"
    folders = {job_id: work / job_id for job_id in (done.job_id, unfinished)}
    hours_ago = time.time() - 2 * 3600
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "source.img").write_bytes(b"x")
        os.utime(folder, (hours_ago, hours_ago))
    # When the next embedded process opens, alone on the OUTPUT_DIR
    with open_runtime(settings, start_embedded_worker=False) as rt:
        state = rt.store.get(unfinished).state
    # Then the succeeded job's folder is gone; the failed job keeps its own for a retry
    assert state is JobState.FAILED
    assert not folders[done.job_id].exists() and folders[unfinished].exists()


def test_embedded_open_beside_another_process_removes_no_work_folder(settings: Settings) -> None:
    # Given an old work folder of a job the store does not have, and a live embedded process
    folder = settings.output_dir / ".sdpipe" / "work" / "lost-old"
    folder.mkdir(parents=True)
    hours_ago = time.time() - 2 * 3600
    os.utime(folder, (hours_ago, hours_ago))
    with open_runtime(settings, start_embedded_worker=False):
        assert not folder.exists()  # the first process, alone, took it
        folder.mkdir(parents=True)
        os.utime(folder, (hours_ago, hours_ago))
        # When a second one opens while the first is alive
        with open_runtime(settings, start_embedded_worker=False):
            # Then it leaves the folder (the live process's jobs are not its to judge)
            assert folder.exists()


def test_embedded_open_alone_leaves_a_shared_buckets_work_folders(
    settings: Settings, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actors.runtime

    # Given work folders in OUTPUT_URL's bucket, which processes with status stores of their own share
    # (their jobs are not in this OUTPUT_DIR's store), and a sweep that would take any old enough
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    other = JobFiles(storage, "another-machines-job")
    other.source.write(b"a paid SD image, kept for its retry")
    sweeps: list[object] = []

    def sweep_now(store: object, where: object, *, now: float) -> int:
        sweeps.append(where)
        return remove_orphaned_work(store, where, now=now, older_than_s=0)  # type: ignore[arg-type]

    monkeypatch.setattr(actors.runtime, "remove_orphaned_work", sweep_now)
    # When an embedded process opens alone on its OUTPUT_DIR, its results going to that bucket
    with open_runtime(s3_bucket.settings(output_dir=settings.output_dir), start_embedded_worker=False):
        pass
    # Then it sweeps nothing there, and the other job's folder stays
    assert sweeps == [] and other.source.exists()
    # While one whose work folders are in its own OUTPUT_DIR does sweep them
    with open_runtime(settings, start_embedded_worker=False):
        pass
    assert len(sweeps) == 1
